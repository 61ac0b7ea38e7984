//! Who the caller is and what the policy lets them do. The policy file is read
//! at start (a broken file stops the agent), and again on SIGHUP and whenever it
//! changes; a broken reload keeps the previous policy.

use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::inotify;

use super::Caller;
use crate::policy::{Identity, Policy, PolicyError};
use crate::users;

pub struct Access {
    path: PathBuf,
    policy: RwLock<Arc<Policy>>,
}

/// Reads the policy file; a missing file is the built-in policy.
fn read(path: &Path) -> Result<Policy, PolicyError> {
    if !path.exists() {
        return Ok(Policy::default());
    }
    Policy::load(path)
}

impl Access {
    pub fn load(path: PathBuf) -> Result<Access, PolicyError> {
        let policy = read(&path)?;
        Ok(Access {
            path,
            policy: RwLock::new(Arc::new(policy)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> Arc<Policy> {
        self.policy.read().clone()
    }

    /// Reads the file again; on error the previous policy stays in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        let policy = read(&self.path)?;
        *self.policy.write() = Arc::new(policy);
        Ok(())
    }

    /// The caller's identity: uid and gid from the socket, names from NSS, groups
    /// from the group database for that uid (`getgrouplist(3)`), never from a pid
    /// that could have been recycled by the time it is read.
    pub fn identity(&self, caller: &Caller) -> Identity {
        let mut gids = users::gids_of_uid(caller.uid)
            .map(|(_, g)| g)
            .unwrap_or_default();
        gids.push(caller.gid);
        gids.sort_unstable();
        gids.dedup();
        Identity {
            uid: caller.uid,
            user: users::user_name_cached(caller.uid),
            groups: gids
                .into_iter()
                .filter_map(users::group_name_cached)
                .collect(),
        }
    }

    /// The identity of a user who is not on the line (for "may uid U ..."
    /// questions), as [`Access::identity`] makes it for a caller with that uid
    /// and its primary group.
    pub fn identity_of_uid(&self, uid: u32) -> Identity {
        let gids = users::gids_of_uid(uid).map(|(_, g)| g).unwrap_or_default();
        Identity {
            uid,
            user: users::user_name_cached(uid),
            groups: gids
                .into_iter()
                .filter_map(users::group_name_cached)
                .collect(),
        }
    }

    /// Calls `changed` whenever the policy file is written, created, moved or
    /// removed (an inotify watch on its directory, so editors that replace the
    /// file are seen too).
    pub fn watch(&self, changed: impl Fn() + Send + 'static) {
        let Some(dir) = self.path.parent().map(Path::to_path_buf) else {
            return;
        };
        let Some(name) = self.path.file_name().map(|n| n.to_os_string()) else {
            return;
        };
        let ino = match inotify::init(inotify::CreateFlags::CLOEXEC) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!("cannot watch the policy file: {e}");
                return;
            }
        };
        let flags = inotify::WatchFlags::CLOSE_WRITE
            | inotify::WatchFlags::MOVED_TO
            | inotify::WatchFlags::MOVED_FROM
            | inotify::WatchFlags::CREATE
            | inotify::WatchFlags::DELETE;
        if let Err(e) = inotify::add_watch(&ino, &dir, flags) {
            tracing::info!("not watching {} for policy changes: {e}", dir.display());
            return;
        }
        std::thread::Builder::new()
            .name("wfcg-policy-watch".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
                let mut reader = inotify::Reader::new(&ino, &mut buf);
                loop {
                    match reader.next() {
                        Ok(ev) => {
                            if ev
                                .file_name()
                                .is_some_and(|n| n.to_bytes() == name.as_encoded_bytes())
                            {
                                changed();
                            }
                        }
                        Err(rustix::io::Errno::INTR) => {}
                        Err(_) => return,
                    }
                }
            })
            .expect("spawning the policy watcher");
    }
}
