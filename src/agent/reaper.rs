//! Notices runs whose cgroup has emptied: one inotify instance with a watch on
//! every live run's `cgroup.events`, read by one thread. Scales to thousands of
//! runs without polling any of them.

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::inotify;

use crate::cgroup::{CGROUP_EVENTS, Cgroup};

/// Called with a run id when its cgroup reports `populated 0` (or vanished).
pub trait OnEmpty: Send + Sync + 'static {
    fn on_run_empty(&self, run_id: &str);
}

pub struct Reaper {
    ino: Arc<OwnedFd>,
    watches: Arc<Mutex<Watches>>,
    /// Watches whose `cgroup.events` could not be read at the last look.
    unsure: Arc<Mutex<HashSet<i32>>>,
}

/// The watches, by watch descriptor and by run: a run's end forgets its
/// watches without a look at every other run's.
#[derive(Default)]
struct Watches {
    by_wd: HashMap<i32, (String, Cgroup)>,
    by_run: HashMap<String, Vec<i32>>,
}

impl Watches {
    fn insert(&mut self, wd: i32, run_id: &str, cg: &Cgroup) {
        // The kernel reuses a descriptor whose watch went (its cgroup removed).
        if let Some((old, _)) = self.by_wd.insert(wd, (run_id.to_owned(), cg.clone()))
            && old != run_id
        {
            self.unlink(&old, wd);
        }
        let wds = self.by_run.entry(run_id.to_owned()).or_default();
        if !wds.contains(&wd) {
            wds.push(wd);
        }
    }

    fn get(&self, wd: i32) -> Option<(String, Cgroup)> {
        self.by_wd.get(&wd).cloned()
    }

    fn remove(&mut self, wd: i32) {
        if let Some((run_id, _)) = self.by_wd.remove(&wd) {
            self.unlink(&run_id, wd);
        }
    }

    /// Removes a run's watches; their descriptors.
    fn remove_run(&mut self, run_id: &str) -> Vec<i32> {
        let wds = self.by_run.remove(run_id).unwrap_or_default();
        for wd in &wds {
            self.by_wd.remove(wd);
        }
        wds
    }

    fn unlink(&mut self, run_id: &str, wd: i32) {
        if let Some(wds) = self.by_run.get_mut(run_id) {
            wds.retain(|w| *w != wd);
            if wds.is_empty() {
                self.by_run.remove(run_id);
            }
        }
    }
}

/// How often a cgroup that could not be read is looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// Whether the watched cgroup is empty. A failed read is "unknown": the watch
/// is marked to be looked at again, and the run is not over.
fn check(run_id: &str, cg: &Cgroup, wd: i32, unsure: &Mutex<HashSet<i32>>) -> bool {
    match cg.empty() {
        Ok(empty) => {
            unsure.lock().remove(&wd);
            empty
        }
        Err(e) => {
            if unsure.lock().insert(wd) {
                tracing::warn!(
                    run_id,
                    "cannot tell whether the run ended, will look again: {e}"
                );
            }
            false
        }
    }
}

impl Reaper {
    pub fn new() -> std::io::Result<Reaper> {
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        Ok(Reaper {
            ino: Arc::new(ino),
            watches: Arc::default(),
            unsure: Arc::default(),
        })
    }

    /// Starts the thread that reads events and calls `target` for emptied runs.
    /// A run whose `cgroup.events` cannot be read is not taken as empty: it is
    /// looked at again every [`RECHECK`] until a read answers.
    pub fn start<T: OnEmpty>(&self, target: Weak<T>) {
        let ino = self.ino.clone();
        let watches = self.watches.clone();
        let unsure = self.unsure.clone();
        std::thread::Builder::new()
            .name("wfcg-reaper".into())
            .spawn(move || {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 8192];
                loop {
                    let mut fired = Vec::new();
                    let mut fds = [PollFd::new(&*ino, PollFlags::IN)];
                    let timeout = Timespec::try_from(RECHECK).ok();
                    match poll(&mut fds, timeout.as_ref()) {
                        Ok(n) if n > 0 => {
                            let mut reader = inotify::Reader::new(&*ino, &mut buf);
                            match reader.next() {
                                Ok(ev) => fired.push(ev.wd()),
                                Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
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
                        }
                        Ok(_) | Err(rustix::io::Errno::INTR) => {}
                        Err(e) => {
                            tracing::error!("reaper: poll on inotify failed: {e}");
                            return;
                        }
                    }
                    fired.extend(unsure.lock().iter().copied());
                    fired.sort_unstable();
                    fired.dedup();
                    if fired.is_empty() {
                        continue;
                    }
                    let Some(target) = target.upgrade() else {
                        return;
                    };
                    for wd in fired {
                        let entry = watches.lock().get(wd);
                        let Some((run_id, cg)) = entry else {
                            unsure.lock().remove(&wd);
                            continue;
                        };
                        if check(&run_id, &cg, wd, &unsure) {
                            watches.lock().remove(wd);
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
        let wd = match inotify::add_watch(&*self.ino, &path, inotify::WatchFlags::MODIFY) {
            Ok(wd) => {
                self.watches.lock().insert(wd, run_id, cg);
                Some(wd)
            }
            Err(e) => {
                tracing::warn!("cannot watch {}: {e}", path.display());
                None
            }
        };
        // Checked after the watch is in place, so no change can fall between.
        let empty = match wd {
            Some(wd) => check(run_id, cg, wd, &self.unsure),
            None => matches!(cg.empty(), Ok(true)),
        };
        if empty {
            self.forget(run_id);
            target.on_run_empty(run_id);
        }
    }

    /// Watches a run's cgroup and looks at it again within [`RECHECK`] (not at
    /// once): for an end that could not be recorded yet for want of a read.
    /// Whether the watch is in place (not when the cgroup is gone).
    pub fn recheck(&self, run_id: &str, cg: &Cgroup) -> bool {
        let path = cg.path().join(CGROUP_EVENTS);
        match inotify::add_watch(&*self.ino, &path, inotify::WatchFlags::MODIFY) {
            Ok(wd) => {
                self.watches.lock().insert(wd, run_id, cg);
                self.unsure.lock().insert(wd);
                true
            }
            Err(e) => {
                tracing::warn!("cannot watch {}: {e}", path.display());
                false
            }
        }
    }

    /// Stops watching a run.
    pub fn forget(&self, run_id: &str) {
        let mut watches = self.watches.lock();
        for wd in watches.remove_run(run_id) {
            self.unsure.lock().remove(&wd);
            let _ = inotify::remove_watch(&*self.ino, wd);
        }
    }

    /// How many runs are watched.
    pub fn len(&self) -> usize {
        self.watches.lock().by_run.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CGROUP_PROCS;
    use std::fs;
    use std::time::Instant;

    #[derive(Default)]
    struct Ended(Mutex<Vec<String>>);

    impl OnEmpty for Ended {
        fn on_run_empty(&self, run_id: &str) {
            self.0.lock().push(run_id.to_owned());
        }
    }

    /// A fake cgroup whose `cgroup.events` fails to read with EIO (it points at
    /// `/proc/self/mem`, whose page 0 is unmapped).
    fn unreadable_cgroup(dir: &std::path::Path) -> Cgroup {
        let cg = Cgroup::new(dir.join("run"));
        cg.create().unwrap();
        fs::write(cg.path().join(CGROUP_PROCS), "1\n").unwrap();
        std::os::unix::fs::symlink("/proc/self/mem", cg.path().join(CGROUP_EVENTS)).unwrap();
        let err = cg.empty().unwrap_err().to_string();
        assert!(err.contains("Input/output error"), "{err}");
        cg
    }

    #[test]
    fn an_unreadable_cgroup_is_not_an_ended_run_and_is_looked_at_again() {
        let dir = tempfile::tempdir().unwrap();
        let cg = unreadable_cgroup(dir.path());
        let ended = Arc::new(Ended::default());
        let reaper = Reaper::new().unwrap();
        reaper.start(Arc::downgrade(&ended));
        reaper.watch("r1", &cg, &*ended);
        std::thread::sleep(RECHECK * 2);
        assert!(ended.0.lock().is_empty(), "a failed read taken as empty");
        assert_eq!(reaper.len(), 1);

        // The read answers again, with `populated 0`: no inotify event comes for
        // it (the watch is on the symlink's target), the recheck finds it.
        fs::remove_file(cg.path().join(CGROUP_EVENTS)).unwrap();
        fs::write(cg.path().join(CGROUP_EVENTS), "populated 0\nfrozen 0\n").unwrap();
        let deadline = Instant::now() + RECHECK * 5;
        while ended.0.lock().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(*ended.0.lock(), vec!["r1".to_string()]);
        assert_eq!(reaper.len(), 0);
    }

    #[test]
    fn a_runs_watches_are_found_by_run_and_a_reused_descriptor_moves() {
        let cg = Cgroup::new("/nonexistent");
        let mut w = Watches::default();
        w.insert(1, "a", &cg);
        w.insert(1, "a", &cg); // watched again: one descriptor
        w.insert(2, "b", &cg);
        assert_eq!(w.remove_run("a"), vec![1]);
        assert!(w.get(1).is_none());
        assert_eq!(w.by_run.len(), 1);
        // b's cgroup went (IN_IGNORED): the kernel gives its descriptor to c.
        w.insert(2, "c", &cg);
        assert!(w.remove_run("b").is_empty());
        assert_eq!(w.get(2).map(|(id, _)| id), Some("c".to_string()));
        w.remove(2);
        assert!(w.by_run.is_empty() && w.by_wd.is_empty());
    }

    #[test]
    fn a_vanished_cgroup_is_an_ended_run() {
        let dir = tempfile::tempdir().unwrap();
        let ended = Ended::default();
        let reaper = Reaper::new().unwrap();
        reaper.watch("gone", &Cgroup::new(dir.path().join("nope")), &ended);
        assert_eq!(*ended.0.lock(), vec!["gone".to_string()]);
    }
}
