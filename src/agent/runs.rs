//! The runs wing: where runs live and what is known of them. The cgroup below
//! which every run is created, the agent-owned directories of their files
//! (run dirs, notify sockets, TMPDIRs, logs), the store, the cgroup files of
//! live runs kept open, the per-user start budgets, who each run's supervisor
//! is, and the locks that serialize a workspace's removal and an adoption.
//! The operations that use it are in `create.rs`, `adopt.rs`, `budget.rs`,
//! `cleanup.rs`, `queries.rs` and most others: every operation reads the store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::cgroup_file_cache::RunFiles;
use crate::cgroup::Cgroup;
use crate::procfs::Identity;
use crate::store::Store;

/// Where runs live and what is known of them.
pub(super) struct Runs {
    /// `<root>/runs`: every run's cgroup is a child of it.
    pub(super) cg: Cgroup,
    /// The runs' directories, `<socket dir>/runs/<id>` (agent-owned, 0711).
    pub(super) run_dirs: PathBuf,
    /// The runs' sd_notify sockets, `<socket dir>/notify/<id>` (agent-owned, 0711).
    pub(super) notify_dirs: PathBuf,
    /// The runs' TMPDIRs, `<state dir>/tmp/<id>` (agent-owned, 0711).
    pub(super) tmp_dirs: PathBuf,
    /// Detached runs' logs, `<state dir>/logs/<id>.log` (agent-owned, 0711).
    pub(super) log_dirs: PathBuf,
    /// Runs and audit records. Lock order (see the agent's doc): after
    /// `kills.inflight` and `budgets.pending`, before the auditor's locks.
    pub(super) store: Mutex<Store>,
    /// The cgroup files of live runs that listings read, kept open.
    pub(super) files: RunFiles,
    /// The per-user start budgets (live runs, starts a minute, TMPDIR memory).
    pub(super) budgets: Budgets,
    /// Who each run's supervisor is, as the kernel identified it at the run's creation.
    pub(super) supervisors: Supervisors,
    /// Held while a run's workspace is removed or kept (cleanup.rs).
    pub(super) workspace_lock: Mutex<()>,
    /// Held while a tree is adopted: concurrent adoptions of one tree make one run.
    pub(super) adopt_lock: Mutex<()>,
}

/// The agent-owned directories of the runs' files.
pub(super) struct RunDirs {
    pub(super) runs: PathBuf,
    pub(super) notify: PathBuf,
    pub(super) tmp: PathBuf,
    pub(super) logs: PathBuf,
}

impl Runs {
    /// Runs below `cg`, their files in `dirs`, recorded in `store`.
    pub(super) fn new(cg: Cgroup, dirs: RunDirs, store: Store) -> Runs {
        Runs {
            cg,
            run_dirs: dirs.runs,
            notify_dirs: dirs.notify,
            tmp_dirs: dirs.tmp,
            log_dirs: dirs.logs,
            store: Mutex::new(store),
            files: RunFiles::default(),
            budgets: Budgets::default(),
            supervisors: Supervisors::default(),
            workspace_lock: Mutex::default(),
            adopt_lock: Mutex::default(),
        }
    }

    pub(super) fn store(&self) -> parking_lot::MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (each call is one
        // statement or transaction), so a poisoned lock is safe to use.
        self.store.lock()
    }
}

/// Bytes free for unprivileged writers on the filesystem of `path` (`statvfs(3)`).
pub(super) fn free_bytes(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Starts not finished yet, per user.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Pending {
    pub(super) runs: u64,
    pub(super) tmpdir: u64,
}

/// The per-user start budgets' state.
#[derive(Default)]
pub(super) struct Budgets {
    /// When each user (never root) started runs in the last minute.
    pub(super) starts: Mutex<HashMap<u32, VecDeque<Instant>>>,
    /// Starts admitted and not yet recorded (or failed), per user.
    pub(super) pending: Arc<Mutex<HashMap<u32, Pending>>>,
    /// Held while the ballast is made or given up.
    pub(super) ballast: Mutex<()>,
    /// The tmpfs of ended runs that still hold something: owner and run, by path.
    pub(super) held: Mutex<BTreeMap<PathBuf, (u32, String)>>,
}

/// A start's reservation of one live run and its TMPDIR: given back when dropped
/// (after the run is recorded, or the start failed).
pub(super) struct Slot {
    pub(super) pending: Arc<Mutex<HashMap<u32, Pending>>>,
    pub(super) uid: u32,
    pub(super) tmpdir: u64,
}

impl Slot {
    /// Runs `insert` (the start's insert of its run) and gives the reservation
    /// back under the same lock: a concurrent start's check, made under that
    /// lock, sees the run either reserved or recorded, never both.
    pub(super) fn recording<T>(slot: Option<Slot>, insert: impl FnOnce() -> T) -> T {
        let Some(slot) = slot else {
            return insert();
        };
        let pending = slot.pending.clone();
        let mut all = pending.lock();
        let out = insert();
        slot.give_back(&mut all);
        std::mem::forget(slot);
        out
    }

    fn give_back(&self, all: &mut HashMap<u32, Pending>) {
        if let Some(p) = all.get_mut(&self.uid) {
            p.runs = p.runs.saturating_sub(1);
            p.tmpdir = p.tmpdir.saturating_sub(self.tmpdir);
            if p.runs == 0 {
                all.remove(&self.uid);
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let pending = self.pending.clone();
        self.give_back(&mut pending.lock());
    }
}

/// The supervisors' identities of the runs created by this agent, by run id.
#[derive(Default)]
pub(super) struct Supervisors(Mutex<HashMap<String, Identity>>);

impl Supervisors {
    pub(super) fn pin(&self, run_id: &str, id: Identity) {
        self.0.lock().insert(run_id.to_owned(), id);
    }

    pub(super) fn forget(&self, run_id: &str) {
        self.0.lock().remove(run_id);
    }

    pub(super) fn get(&self, run_id: &str) -> Option<Identity> {
        self.0.lock().get(run_id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runs(dir: &Path) -> Runs {
        let store = Store::open(&dir.join("wfcg.db")).unwrap();
        let dirs = RunDirs {
            runs: dir.join("runs"),
            notify: dir.join("notify"),
            tmp: dir.join("tmp"),
            logs: dir.join("logs"),
        };
        Runs::new(Cgroup::new(dir.join("cg/runs")), dirs, store)
    }

    #[test]
    fn a_starts_reservation_is_given_back_when_recorded_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let runs = runs(dir.path());
        assert!(runs.store().get_run("run_a").unwrap().is_none());
        let reserve = |uid| {
            let mut pending = runs.budgets.pending.lock();
            let p = pending.entry(uid).or_default();
            p.runs += 1;
            p.tmpdir += 10;
            Slot {
                pending: runs.budgets.pending.clone(),
                uid,
                tmpdir: 10,
            }
        };
        let held = |uid| runs.budgets.pending.lock().get(&uid).copied();
        let slot = reserve(1000);
        let second = reserve(1000);
        assert_eq!(held(1000).map(|p| (p.runs, p.tmpdir)), Some((2, 20)));
        // The insert runs under the reservations' lock (a concurrent start's
        // check waits), and the reservation is given back under it after.
        let locked = Slot::recording(Some(slot), || runs.budgets.pending.try_lock().is_none());
        assert!(locked, "the insert runs under the reservations' lock");
        assert_eq!(held(1000).map(|p| (p.runs, p.tmpdir)), Some((1, 10)));
        drop(second);
        assert!(held(1000).is_none());
        assert_eq!(Slot::recording(None, || 7), 7);
    }

    #[test]
    fn a_supervisor_is_known_from_its_pin_until_it_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let runs = runs(dir.path());
        let id = Identity {
            pid: 42,
            starttime: 7,
            ino: None,
        };
        assert_eq!(runs.supervisors.get("run_a"), None);
        runs.supervisors.pin("run_a", id);
        assert_eq!(runs.supervisors.get("run_a"), Some(id));
        runs.supervisors.forget("run_a");
        assert_eq!(runs.supervisors.get("run_a"), None);
    }
}
