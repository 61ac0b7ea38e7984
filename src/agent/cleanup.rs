//! What an ended run leaves behind, removed: stale git locks, its cgroup, run
//! directory, TMPDIR and (if asked) workspace, and any process still carrying its
//! marker outside its cgroup.

use std::path::{Path, PathBuf};

use super::kill_and_record::lock_owner;
use super::{Agent, adopt};
use crate::api::RUN_ID_ENV;
use crate::api::{self, AuditEntry, CleanupStatus};
use crate::cgroup::Cgroup;
use crate::gitlocks;
use crate::kill;
use crate::procfs;
use crate::sections::{self, Finding};
use crate::store::RunRecord;
use crate::userfs::{self, Cred};

/// Which processes may be a run's escapees: those its owner could have started
/// (real, effective and saved uids all the owner's; root's for root's runs)
/// since it started (a second of slack for the clock conversion). The run's
/// start unknown, or `/proc/uptime` unreadable: any time.
pub(super) fn escapee_filter(proc_root: &Path, rec: &RunRecord) -> procfs::EnvFilter {
    let since = rec
        .started_at
        .and_then(|t| procfs::ticks_at(proc_root, t.into()))
        .map_or(0, |ticks| {
            ticks.saturating_sub(rustix::param::clock_ticks_per_second())
        });
    procfs::EnvFilter {
        uid: rec.owner_uid,
        since,
    }
}

impl Agent {
    /// Removes what an ended run leaves (stale git locks of its dead tree, its
    /// cgroup, run dir, TMPDIR, and the workspace if asked) and checks that no
    /// process of it remains anywhere (by cgroup and by its environment marker).
    /// `seen` are the critical sections its processes were found in.
    pub(super) fn cleanup(&self, rec: &RunRecord, seen: &[Finding]) -> CleanupStatus {
        self.cleanup_timed(rec, seen).0
    }

    /// [`Agent::cleanup`], with how long each of its steps took (ms, by name):
    /// the search for escapees runs beside the others.
    pub(super) fn cleanup_timed(
        &self,
        rec: &RunRecord,
        seen: &[Finding],
    ) -> (CleanupStatus, Vec<(&'static str, f64)>) {
        // Nothing of the run may remain anywhere: what carries its marker outside
        // its cgroup (a root workflow can move itself out) is killed too. A scan
        // of the host's processes, made while the rest is removed.
        let deadline = self.run_template(rec).kill.kill_deadline;
        let filter = escapee_filter(&self.cfg.proc_root, rec);
        let (escapees, status) = std::thread::scope(|s| {
            let escapees = s.spawn(|| {
                let t = std::time::Instant::now();
                let found = kill::kill_escapees(
                    &self.cfg.proc_root,
                    RUN_ID_ENV,
                    &rec.run_id,
                    filter,
                    deadline,
                );
                (found, ms(t))
            });
            let mut steps = Vec::new();
            let status = self.remove_leftovers(rec, seen, &mut steps);
            (escapees.join(), (status, steps))
        });
        let (status, mut steps) = status;
        let escapees = escapees.map(|(found, took)| {
            steps.push(("escapees", took));
            found
        });
        let escapees = escapees.unwrap_or_else(|_| {
            tracing::error!(run_id = rec.run_id, "the search for escapees failed");
            kill::Escapees::default()
        });
        if !escapees.killed.is_empty() {
            tracing::warn!(
                run_id = rec.run_id,
                "killed {} process(es) carrying the run's marker outside its cgroup: {:?}",
                escapees.killed.len(),
                escapees.killed
            );
        }
        if !escapees.ignored.is_empty() || escapees.unread > 0 || escapees.cut > 0 {
            tracing::info!(
                run_id = rec.run_id,
                ignored = ?escapees.ignored,
                unread = escapees.unread,
                cut = escapees.cut,
                "the search for escapees left processes alone"
            );
        }
        let mut remaining: Vec<i32> = escapees.survivors.iter().map(|s| s.pid).collect();
        if !status.cgroup_removed {
            remaining.extend(
                Cgroup::new(&rec.cgroup_path)
                    .procs_recursive()
                    .unwrap_or_default(),
            );
        }
        remaining.sort_unstable();
        remaining.dedup();
        let status = CleanupStatus {
            processes_remaining: remaining.len() as u32,
            escapees_killed: escapees.killed,
            escapees_unread: escapees.unread + escapees.cut,
            survivors: escapees
                .survivors
                .iter()
                .map(kill::Survivor::describe)
                .collect(),
            ..status
        };
        (status, steps)
    }

    /// The cleanup but for the escapees: stale git locks, the cgroup, TMPDIR,
    /// run directory and workspace.
    fn remove_leftovers(
        &self,
        rec: &RunRecord,
        seen: &[Finding],
        steps: &mut Vec<(&'static str, f64)>,
    ) -> CleanupStatus {
        let t = std::time::Instant::now();
        let seen = self.forget_run(rec, seen);
        let budget = crate::walk::Budget::from_env();
        let stale_locks_removed = self.remove_stale_locks(rec, seen, &budget);
        steps.push(("git_locks", ms(t)));
        let t = std::time::Instant::now();
        let cgroup_removed = remove_cgroup(rec);
        steps.push(("cgroup", ms(t)));
        let t = std::time::Instant::now();
        let ([tmpdir_removed, run_dir_removed], mut not_removed) =
            self.remove_run_dirs(rec, &budget);
        steps.push(("tmpdir_and_run_dir", ms(t)));
        let t = std::time::Instant::now();
        let workspace = self.clean_workspace(rec);
        steps.push(("workspace", ms(t)));
        if let Some(why) = workspace.strip_prefix("removal failed: ") {
            not_removed.push(why.to_string());
        }
        CleanupStatus {
            cgroup_removed,
            tmpdir_removed,
            run_dir_removed,
            stale_locks_removed,
            workspace,
            not_removed,
            ..Default::default()
        }
    }

    /// Forgets what the agent kept of the run while it lived (reaper,
    /// lifecycle, sightings, open files, supervisor); returns the sections
    /// seen open, with the stale-lock candidates noted for it.
    fn forget_run(&self, rec: &RunRecord, seen: &[Finding]) -> Vec<Finding> {
        self.watch.reaper.forget(&rec.run_id);
        self.lifecycle_end(&rec.run_id);
        self.kills.sightings.lock().remove(&rec.run_id);
        self.runs.files.forget(&rec.run_id);
        self.runs.supervisors.forget(&rec.run_id);
        let mut seen = seen.to_vec();
        if let Some(more) = self.kills.stale_candidates.lock().remove(&rec.run_id) {
            seen.extend(more);
        }
        seen
    }

    /// Removes the git locks the dead tree left (as the run's owner), and
    /// forgets who created the run's locks; returns the locks removed.
    fn remove_stale_locks(
        &self,
        rec: &RunRecord,
        seen: Vec<Finding>,
        budget: &crate::walk::Budget,
    ) -> Vec<String> {
        // The git directories are in trees the run's owner made: a file system
        // there that never answers (FUSE) must hold up neither the cleanup nor
        // the agent. So the search runs on a thread of its own, waited for at
        // most the walk's time budget.
        let proc_root = self.cfg.proc_root.clone();
        let ws = rec.workspace_path.clone();
        let owner_uid = lock_owner(rec);
        let since = rec.started_at.map(std::time::SystemTime::from);
        let run_owner = Cred::of_uid(rec.owner_uid);
        let owner = rec.owner_uid;
        // Who created each lock (fanotify), and the locks its processes created.
        let creators = self.lock_creators(&rec.run_id);
        let created = self.locks_created_by(&rec.run_id);
        let search = move || {
            git_lock_cleanup(
                &proc_root,
                &seen,
                ws.as_deref(),
                owner_uid,
                since,
                &run_owner,
                Evidence {
                    creators: creators.as_ref(),
                    created,
                    owner,
                },
            )
        };
        let removed = match bounded(budget.time, search) {
            Some(Ok(removed)) => removed,
            Some(Err(e)) => {
                tracing::error!(run_id = rec.run_id, "cannot act as the run's owner: {e}");
                Vec::new()
            }
            None => {
                tracing::warn!(
                    run_id = rec.run_id,
                    "the search for stale git locks did not end within {:?} (a file system \
                     that does not answer in the workspace?): no lock was removed",
                    budget.time
                );
                Vec::new()
            }
        };
        for lock in &removed {
            tracing::warn!(
                run_id = rec.run_id,
                "removed stale lock {lock} left by the dead tree"
            );
        }
        self.forget_lock_creators(&rec.run_id);
        removed
    }

    /// Ends the run's TMPDIR and run directory: each a tmpfs of its own (or a
    /// plain directory), emptied and let go, or kept and counted against the
    /// owner while something still holds it. Trees the run's owner made are
    /// removed by a short-lived process of their own, as them, within a budget
    /// (src/walk.rs); what is left is said. Returns whether each was removed
    /// (`[tmpdir, run_dir]`) and why not.
    fn remove_run_dirs(
        &self,
        rec: &RunRecord,
        budget: &crate::walk::Budget,
    ) -> ([bool; 2], Vec<String>) {
        let owner = Cred::of_uid(rec.owner_uid);
        let mut not_removed = Vec::new();
        let dirs = [rec.tmpdir.as_deref(), rec.run_dir.as_deref()].map(|d| d.map(Path::new));
        let ended = self.end_run_tmpfs(&rec.run_id, dirs[0], dirs[1], &owner, budget);
        let mut removed = [true; 2];
        for ((dir, ended), removed) in dirs.iter().zip(ended).zip(&mut removed) {
            if let (Some(d), Err(e)) = (dir, ended) {
                tracing::warn!(run_id = rec.run_id, "cannot remove {}: {e}", d.display());
                not_removed.push(e);
                *removed = false;
            }
        }
        (removed, not_removed)
    }

    /// The run's workspace at its end, as said in its cleanup status, its exit
    /// acknowledgement, `wfcg status` and the audit trail (action `workspace`):
    /// `none` (no explicit workspace), `kept` (nobody asked for its removal),
    /// `removed PATH`, `kept: WHY` (it holds what the run did not make, or a
    /// git repository with changes: src/workspace_check.rs), or `removal
    /// failed: WHY`. Done once: later calls answer what the audit trail says.
    pub(super) fn clean_workspace(&self, rec: &RunRecord) -> String {
        let Some(ws) = &rec.workspace_path else {
            return "none".into();
        };
        if !rec.cleanup_workspace {
            return "kept".into();
        }
        // Its end is seen twice (the exit report, then the empty cgroup or a
        // kill's cleanup): one look and one audit record. Rare enough (asked
        // for explicitly) for one lock for all runs.
        let _once = self.runs.workspace_lock.lock();
        if let Some(said) = self.workspace_outcome(&rec.run_id) {
            return said;
        }
        let owner = Cred::of_uid(rec.owner_uid);
        // Even whether it is still there is asked by the removal process: it may
        // be on a file system that never answers.
        let (outcome, said) = match rec.started_at {
            None => (
                "kept",
                "kept: the run's start is unknown, so what it made cannot be told".to_string(),
            ),
            Some(started) => match crate::walk::remove_in_child(
                Path::new(ws),
                &owner,
                crate::walk::Removal::Workspace {
                    started: started.into(),
                },
                &crate::walk::Budget::from_env(),
            ) {
                Ok(()) => ("removed", format!("removed {ws}")),
                Err(e) => match e.strip_prefix(crate::walk::KEPT) {
                    Some(why) => ("kept", format!("kept: {why}")),
                    None => ("removal_failed", format!("removal failed: {e}")),
                },
            },
        };
        tracing::info!(run_id = rec.run_id, "workspace {ws}: {said}");
        self.records.auditor.record(
            &self.runs.store,
            AuditEntry {
                time: super::time::now(),
                actor_name: "agent".into(),
                decision: api::Decision::NotNeeded,
                action: WORKSPACE_ACTION,
                run_id: Some(rec.run_id.clone()),
                outcome: outcome.into(),
                reason: Some(said.clone()),
                ..Default::default()
            },
        );
        said
    }

    /// What [`Agent::clean_workspace`] did with the run's workspace, from the
    /// audit trail, if it did anything yet.
    pub(super) fn workspace_outcome(&self, run_id: &str) -> Option<String> {
        let filter = crate::store::AuditFilter {
            run_id: Some(run_id.to_owned()),
            actor: None,
            actor_uid: None,
            since: None,
            limit: None,
        };
        let records = self.store().audit_records(&filter).ok()?;
        let rec = records
            .iter()
            .rev()
            .find(|r| r.entry.action == WORKSPACE_ACTION)?;
        rec.entry.reason.clone()
    }
}

/// The stale git locks of an ended run, found and removed: those its processes
/// were seen holding (`seen`), and those made since `since` in the git
/// directories it was seen using and at and directly below its workspace `ws`
/// (a force kill looks at nothing before it kills). Checked as root (which
/// processes hold what), unlinked as the run's owner. The locks removed.
/// What the agent knows of who created the git locks, for [`git_lock_cleanup`].
struct Evidence<'a> {
    creators: Option<&'a gitlocks::Creators>,
    /// The locks the run's processes created that are still there.
    created: Vec<gitlocks::LockFile>,
    /// The run's owner's uid.
    owner: u32,
}

fn git_lock_cleanup(
    proc_root: &Path,
    seen: &[Finding],
    ws: Option<&str>,
    lock_owner: Option<u32>,
    since: Option<std::time::SystemTime>,
    owner: &Cred,
    evidence: Evidence<'_>,
) -> std::io::Result<Vec<String>> {
    let mut stale = sections::stale_git_locks(proc_root, seen);
    let mut git_dirs: Vec<PathBuf> = seen
        .iter()
        .filter(|f| f.kind == api::SectionKind::Git)
        .filter_map(|f| sections::git_dir_of(&f.path))
        .collect();
    if let Some(ws) = ws
        && ws != "/"
    {
        let used = git_dirs.clone();
        git_dirs.extend(gitlocks::git_dirs_in(Path::new(ws), lock_owner, &used));
    }
    let git_dirs = gitlocks::outermost(git_dirs);
    if let Some(since) = since {
        let orphans =
            sections::orphan_git_locks(proc_root, &git_dirs, since, lock_owner, evidence.creators);
        let new: Vec<_> = orphans
            .into_iter()
            .filter(|o| !stale.iter().any(|s| s.path == o.path))
            .collect();
        stale.extend(new);
    }
    // And wherever else its processes created a lock that is still there (a
    // repository outside its workspace), in a git directory of its owner's.
    let created: Vec<_> = evidence
        .created
        .into_iter()
        .filter(|l| sections::is_git_lock(&l.path.to_string_lossy()))
        .filter(|l| {
            l.path.parent().is_some_and(|d| {
                gitlocks::open_dir(d)
                    .and_then(rustix::fs::fstat)
                    .is_ok_and(|st| st.st_uid == evidence.owner)
            })
        })
        .filter(|l| !stale.iter().any(|s| s.path == l.path))
        .collect();
    if !created.is_empty() {
        let paths: Vec<String> = created
            .iter()
            .map(|l| l.path.display().to_string())
            .collect();
        let refs: Vec<&str> = paths.iter().map(String::as_str).collect();
        let held = sections::held_anywhere(proc_root, &refs);
        stale.extend(
            created
                .into_iter()
                .filter(|l| !held.contains(&l.path.display().to_string())),
        );
    }
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    userfs::as_user(owner, || sections::remove_locks(&stale))
}

/// Milliseconds since `t`.
fn ms(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// At most this many threads of [`bounded`] at once: a file system that never
/// answers holds each of them until it is gone.
const MAX_BOUNDED: usize = 32;

/// Runs `work` on a thread of its own and waits for it at most `limit`. `None`
/// when it has not ended by then (it is left to end by itself, holding only
/// that thread), or when [`MAX_BOUNDED`] such threads are still running.
fn bounded<T: Send + 'static>(
    limit: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static RUNNING: AtomicUsize = AtomicUsize::new(0);
    if RUNNING.fetch_add(1, Ordering::SeqCst) >= MAX_BOUNDED {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        tracing::error!("{MAX_BOUNDED} searches in users' trees are still stuck: not one more");
        return None;
    }
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("wfcg-user-tree".into())
        .spawn(move || {
            let out = work();
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(out);
        });
    if spawned.is_err() {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    rx.recv_timeout(limit).ok()
}

/// The audit action of a workspace's removal or keeping.
pub const WORKSPACE_ACTION: api::AuditAction = api::AuditAction::Workspace;

/// Removes the run's cgroup; whether it is gone. A cgroup adopted in place is
/// not wfcg's: it is left (empty) to its owner.
fn remove_cgroup(rec: &RunRecord) -> bool {
    let cg = Cgroup::new(&rec.cgroup_path);
    rec.adopted.as_deref() != Some(adopt::IN_PLACE)
        && match cg.remove_recursive() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{e}");
                false
            }
        }
}
