//! Budgets per user at a start, so that one user cannot take what the others (and
//! root) need: live runs, starts a minute, the TMPDIR memory of their live runs
//! together, and the free space of the agent's state filesystem.
//!
//! The live-run and TMPDIR caps are exact under concurrent starts: the check and
//! a reservation are made under one lock, and the reservation ([`super::runs::Slot`]) is held
//! until the start has inserted its run (or failed), so a start in between sees
//! it. A start gives its reservation back under the same lock as its insert
//! ([`super::runs::Slot::recording`]), so no start sees a run both recorded and reserved.
//! (An adoption gives it back when it ends: between its insert and its end the
//! run counts twice, so a start racing with it may be refused, never wrongly
//! admitted.)
//!
//! What the tmpfs of a user's ended runs still hold (src/agent/ended_tmpfs.rs)
//! counts against their TMPDIR cap as well, until it is let go.
//!
//! The state filesystem keeps a reserve for root (`[limits] state_reserve`):
//! users' starts are refused below it, with a clear error (exit 7). Files users
//! write there themselves (a detached run's log) could still eat into it, so
//! the agent also keeps a ballast file of that size (`<state-dir>/reserve`),
//! made while there is room and given up when root needs the space: root's
//! start then finds room for its records.

use std::path::Path;
use std::time::Instant;

use super::runs::{Slot, free_bytes};
use super::{Agent, Caller, Failure, Result};
use crate::api::ErrorKind;
use crate::template::Template;

/// The ballast file that holds root's reserve, in the state directory.
const BALLAST: &str = "reserve";

/// The most tmpfs of ended runs a user may hold open from outside them (each
/// is a mount: the host's mount table is not theirs to fill).
const MAX_HELD: usize = 32;

fn too_many_starts(uid: u32, n: usize, max: u32) -> String {
    format!(
        "uid {uid} started {n} runs in the last minute, the most a user may (policy \
         [limits] max_starts_per_minute = {max}); try again shortly"
    )
}

/// `n` bytes for people: `3.2 MiB`.
fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

impl Agent {
    /// The free space kept for root on the state filesystem, in bytes.
    pub(super) fn state_reserve(&self) -> u64 {
        crate::tmpfs::size_bytes(&self.access.policy().limits.state_reserve).unwrap_or(0)
    }

    /// The checks of a start against the caller's budgets, and its reservation
    /// (held until the run is recorded; `None` for root, who is never limited
    /// but for whom the reserve is given up when the disk is short).
    pub(super) fn check_budgets(
        &self,
        caller: &Caller,
        template: &Template,
    ) -> Result<Option<Slot>> {
        let tmpdir = crate::tmpfs::size_bytes(&template.tmpdir.size).unwrap_or(0);
        self.check_budgets_with(caller, tmpdir)
    }

    /// [`Agent::check_budgets`] for a run whose TMPDIR takes `tmpdir` bytes (an
    /// adopted run: none).
    pub(super) fn check_budgets_with(&self, caller: &Caller, tmpdir: u64) -> Result<Option<Slot>> {
        self.keep_reserve(caller)?;
        if caller.is_root() {
            // Root is never limited, but the tmpfs of root's ended runs that
            // emptied are let go here too.
            self.held_tmpfs_of(caller.uid);
            return Ok(None);
        }
        let uid = caller.uid;
        let limits = self.access.policy().limits.clone();
        let max_tmpdir = crate::tmpfs::size_bytes(&limits.max_tmpdir_total).unwrap_or(u64::MAX);
        let refuse = |msg: String| Err(Failure::new(ErrorKind::Conflict, msg));
        if let Some(n) = self.starts_in_the_last_minute(uid, limits.max_starts_per_minute) {
            return refuse(too_many_starts(uid, n, limits.max_starts_per_minute));
        }
        // Outside the lock every start takes: it reads the user's held tmpfs
        // (what is let go meanwhile only makes the count too high, never too low).
        let held = self.held_tmpfs_of(uid);
        if held.len() >= MAX_HELD {
            return refuse(format!(
                "uid {uid} holds the tmpfs of {} ended runs open from outside them (a file \
                 deleted but open or mapped, a working directory), the most a user may: {}{}; \
                 close what holds them",
                held.len(),
                held.iter()
                    .take(5)
                    .map(|h| format!("{} of {}", h.path.display(), h.run_id))
                    .collect::<Vec<_>>()
                    .join(", "),
                if held.len() > 5 { ", ..." } else { "" }
            ));
        }
        let mut pending = self.runs.budgets.pending.lock();
        let mine = pending.get(&uid).copied().unwrap_or_default();
        let live = self.store().live_runs_of(uid)?;
        let runs = (live.len() as u64).saturating_add(mine.runs);
        if runs >= u64::from(limits.max_live_runs) {
            return refuse(format!(
                "uid {uid} has {runs} live runs, the most a user may have (policy [limits] \
                 max_live_runs = {}); end some first",
                limits.max_live_runs
            ));
        }
        let held_bytes = held.iter().map(|h| h.bytes).fold(0, u64::saturating_add);
        let used: u64 = live
            .iter()
            .map(|r| {
                r.template
                    .as_ref()
                    .and_then(|t| crate::tmpfs::size_bytes(&t.tmpdir.size))
                    .unwrap_or(0)
            })
            .fold(mine.tmpdir, u64::saturating_add)
            .saturating_add(held_bytes);
        if used.saturating_add(tmpdir) > max_tmpdir {
            let ended = if held.is_empty() {
                String::new()
            } else {
                let named: Vec<String> = held
                    .iter()
                    .take(5)
                    .map(|h| format!("{} ({}) of {}", h.path.display(), human(h.bytes), h.run_id))
                    .collect();
                format!(
                    ", {} of it held by the tmpfs of ended runs that processes of the user's \
                     outside them still hold open (a file deleted but open or mapped, a working \
                     directory): {}{}; close what holds them or empty them",
                    human(held_bytes),
                    named.join(", "),
                    if held.len() > 5 { ", ..." } else { "" }
                )
            };
            return refuse(format!(
                "uid {uid}'s live runs have TMPDIRs of {} together{ended}; another of {} would \
                 pass the most a user may have (policy [limits] max_tmpdir_total = {}); end \
                 some runs first, or ask for a smaller TMPDIR",
                human(used),
                human(tmpdir),
                limits.max_tmpdir_total
            ));
        }
        let now = Instant::now();
        let mut starts = self.runs.budgets.starts.lock();
        let recent = starts.entry(uid).or_default();
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t).as_secs() >= 60)
        {
            recent.pop_front();
        }
        if recent.len() as u64 >= u64::from(limits.max_starts_per_minute) {
            return refuse(too_many_starts(
                uid,
                recent.len(),
                limits.max_starts_per_minute,
            ));
        }
        recent.push_back(now);
        let p = pending.entry(uid).or_default();
        p.runs += 1;
        p.tmpdir = p.tmpdir.saturating_add(tmpdir);
        Ok(Some(Slot {
            pending: self.runs.budgets.pending.clone(),
            uid,
            tmpdir,
        }))
    }

    /// How many runs `uid` started in the last minute, when that is already
    /// `max` or more (a cheap check before anything is read for the start).
    fn starts_in_the_last_minute(&self, uid: u32, max: u32) -> Option<usize> {
        let starts = self.runs.budgets.starts.lock();
        let now = Instant::now();
        let n = starts.get(&uid).map_or(0, |recent| {
            recent
                .iter()
                .filter(|t| now.duration_since(**t).as_secs() < 60)
                .count()
        });
        (n as u64 >= u64::from(max)).then_some(n)
    }

    /// Root's reserve on the state filesystem: a user's start below it is
    /// refused (exit 7); for root the ballast is given up when the free space
    /// is below it, and made again once there is room for it twice.
    fn keep_reserve(&self, caller: &Caller) -> Result<()> {
        let reserve = self.state_reserve();
        let dir = &self.cfg.state_dir;
        let Some(free) = free_bytes(dir) else {
            return Ok(());
        };
        let ballast = dir.join(BALLAST);
        let _held = self.runs.budgets.ballast.lock();
        if free < reserve {
            if caller.is_root() {
                match std::fs::remove_file(&ballast) {
                    Ok(()) => tracing::warn!(
                        "the state filesystem {} has {} free, less than root's reserve of {}: \
                         the reserve is given up for a start of root's",
                        dir.display(),
                        human(free),
                        human(reserve)
                    ),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => tracing::error!("cannot remove {}: {e}", ballast.display()),
                }
                return Ok(());
            }
            return Err(Failure::new(
                ErrorKind::NoSpace,
                format!(
                    "the agent's state filesystem ({}) has {free} bytes ({}) free, less than the \
                     {reserve} bytes ({}) kept for root (policy [limits] state_reserve = {}): \
                     starts of users are refused until space is freed there",
                    dir.display(),
                    human(free),
                    human(reserve),
                    self.access.policy().limits.state_reserve
                ),
            ));
        }
        if reserve > 0 && free / 2 >= reserve && !ballast.exists() {
            make_ballast(&ballast, reserve);
        }
        Ok(())
    }
}

/// Makes the ballast file of `len` bytes, allocated (`fallocate(2)`), 0600.
fn make_ballast(path: &Path, len: u64) {
    use std::os::unix::fs::OpenOptionsExt;
    let made = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| {
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, len)
                .map_err(std::io::Error::from)
        });
    if let Err(e) = made {
        tracing::warn!("cannot make the reserve file {}: {e}", path.display());
        let _ = std::fs::remove_file(path);
    }
}

/// The failure of a start whose records found the disk full: exit 7, saying so.
pub(super) fn no_space(e: &crate::store::Error, state_dir: &Path) -> Option<Failure> {
    let crate::store::Error::Sqlite(e) = e else {
        return None;
    };
    (e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)).then(|| {
        Failure::new(
            ErrorKind::NoSpace,
            format!(
                "the agent's state filesystem ({}) is full: the run cannot be recorded, so \
                 it was not started ({e})",
                state_dir.display()
            ),
        )
    })
}
