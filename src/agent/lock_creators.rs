//! Who created a run's git locks ([`crate::lockwatch`]): each run is watched
//! from its creation, on the filesystem of its workspace (else of its caller's
//! working directory), so that a lock is known as the run's by its creator, not
//! by who else has a shell in the repository. Without fanotify (an older
//! kernel, no CAP_SYS_ADMIN) or for a run the watch does not cover (one from
//! before the agent started, an adopted tree), the rule falls back to the
//! working directories of the processes outside the run; `GET /v1/health`
//! says which (`git_lock_creators`).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{Mode, OFlags};

use super::Agent;
use crate::gitlocks::{Creators, LockFile};

impl Agent {
    /// What `GET /v1/health` says of the evidence for git locks' creators.
    pub(super) fn lock_creators_status(&self) -> String {
        match &self.kills.lock_watch {
            Ok(_) => "fanotify".into(),
            Err(why) => format!("unavailable ({why}): the working-directory rule"),
        }
    }

    /// Starts watching a new run's lock creations, before its command starts:
    /// on the filesystem of `workspace`, else of the caller's working directory.
    pub(super) fn watch_run_locks(&self, run_id: &str, workspace: Option<&str>, caller: i32) {
        let Ok(watch) = &self.kills.lock_watch else {
            return;
        };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let dir: Option<OwnedFd> = match workspace {
            // A user's path: no symlink followed.
            Some(ws) => crate::gitlocks::open_dir(Path::new(ws)).ok(),
            None => rustix::fs::open(
                self.cfg.proc_root.join(caller.to_string()).join("cwd"),
                flags,
                Mode::empty(),
            )
            .ok(),
        };
        let Some(dir) = dir else {
            tracing::info!(
                run_id,
                "no directory to watch for git lock creations: the working-directory rule"
            );
            return;
        };
        if let Err(e) = watch.register(run_id, &[dir]) {
            tracing::info!(
                run_id,
                "git lock creations not watched ({e}): the working-directory rule"
            );
        }
    }

    /// Who created a run's locks, for its kill and cleanup.
    pub(super) fn lock_creators(&self, run_id: &str) -> Option<Creators> {
        let watch = self.kills.lock_watch.as_ref().ok()?.clone();
        let run_id = run_id.to_owned();
        Some(Creators(Arc::new(move |locks: &[LockFile]| {
            watch.creators(&run_id, locks)
        })))
    }

    /// The locks a run's processes created that are still there.
    pub(super) fn locks_created_by(&self, run_id: &str) -> Vec<LockFile> {
        self.kills
            .lock_watch
            .as_ref()
            .map(|w| w.created_by(run_id))
            .unwrap_or_default()
    }

    /// Reads the creations so far (before a kill: its processes are alive to be asked).
    pub(super) fn sync_lock_creators(&self) {
        if let Ok(watch) = &self.kills.lock_watch {
            watch.sync();
        }
    }

    /// Forgets a run's lock creations (its cleanup is done).
    pub(super) fn forget_lock_creators(&self, run_id: &str) {
        if let Ok(watch) = &self.kills.lock_watch {
            watch.forget(run_id);
        }
    }
}
