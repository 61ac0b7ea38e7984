//! Notices runs whose cgroup has emptied: one inotify instance with a watch on
//! every live run's `cgroup.events`, read by one thread. Scales to thousands of
//! runs without polling any of them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, Weak};

use rustix::fs::inotify;

use crate::cgroup::{CGROUP_EVENTS, Cgroup};

/// Called with a run id when its cgroup reports `populated 0` (or vanished).
pub trait OnEmpty: Send + Sync + 'static {
    fn on_run_empty(&self, run_id: &str);
}

pub struct Reaper {
    ino: Arc<OwnedFd>,
    watches: Arc<Mutex<HashMap<i32, (String, Cgroup)>>>,
}

impl Reaper {
    pub fn new() -> std::io::Result<Reaper> {
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        Ok(Reaper {
            ino: Arc::new(ino),
            watches: Arc::default(),
        })
    }

    /// Starts the thread that reads events and calls `target` for emptied runs.
    pub fn start<T: OnEmpty>(&self, target: Weak<T>) {
        let ino = self.ino.clone();
        let watches = self.watches.clone();
        std::thread::Builder::new()
            .name("wfcg-reaper".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
                loop {
                    let mut fired = Vec::new();
                    let mut reader = inotify::Reader::new(&*ino, &mut buf);
                    // The first read blocks; then take what else is queued.
                    match reader.next() {
                        Ok(ev) => fired.push(ev.wd()),
                        Err(rustix::io::Errno::INTR) => continue,
                        Err(e) => {
                            tracing::error!("reaper: reading inotify failed: {e}");
                            return;
                        }
                    }
                    while !reader.is_buffer_empty() {
                        match reader.next() {
                            Ok(ev) => fired.push(ev.wd()),
                            Err(_) => break,
                        }
                    }
                    let Some(target) = target.upgrade() else {
                        return;
                    };
                    for wd in fired {
                        let entry = watches.lock().unwrap().get(&wd).cloned();
                        if let Some((run_id, cg)) = entry
                            && !cg.events().map(|e| e.populated).unwrap_or(false)
                        {
                            watches.lock().unwrap().remove(&wd);
                            target.on_run_empty(&run_id);
                        }
                    }
                }
            })
            .expect("spawning the reaper thread");
    }

    /// Watches a run's cgroup. If it is empty already, `target` is told at once.
    pub fn watch<T: OnEmpty>(&self, run_id: &str, cg: &Cgroup, target: &T) {
        let path = cg.path().join(CGROUP_EVENTS);
        match inotify::add_watch(&*self.ino, &path, inotify::WatchFlags::MODIFY) {
            Ok(wd) => {
                self.watches
                    .lock()
                    .unwrap()
                    .insert(wd, (run_id.to_owned(), cg.clone()));
            }
            Err(e) => tracing::warn!("cannot watch {}: {e}", path.display()),
        }
        // Checked after the watch is in place, so no change can fall between.
        if !cg.events().map(|e| e.populated).unwrap_or(false) {
            self.forget(run_id);
            target.on_run_empty(run_id);
        }
    }

    /// Stops watching a run.
    pub fn forget(&self, run_id: &str) {
        let mut watches = self.watches.lock().unwrap();
        let wds: Vec<i32> = watches
            .iter()
            .filter(|(_, (id, _))| id == run_id)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in wds {
            watches.remove(&wd);
            let _ = inotify::remove_watch(&*self.ino, wd);
        }
    }

    /// How many runs are watched.
    pub fn len(&self) -> usize {
        self.watches.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
