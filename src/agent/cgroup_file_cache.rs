//! The cgroup files a listing reads of each live run (the `cgroup.procs` of its
//! payload leaf, its `cpu.stat`), kept open from one listing to the next and read
//! from their start each time: every figure is the kernel's at the time of the
//! request, without the path lookup, setup and teardown of an open and a close
//! per file, which were two thirds of the time of a listing of many runs.
//!
//! Only on a host that gives the agent many files (at least [`MIN_LIMIT`]; the
//! service has a million), and at most a quarter of them; other runs, and runs
//! without a payload leaf (flat, adopted trees), are read by path. A run's files
//! are closed at its cleanup, before its cgroup is removed, and a listing of
//! every live run closes those of runs no longer live.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;

use super::layout::PAYLOAD;
use crate::cgroup::{self, CGROUP_PROCS, CPU_STAT, Cgroup, OpenFile};

/// Files are kept open only under an open-file limit at least this high.
const MIN_LIMIT: u64 = 4096;

/// One run's files: its payload's `cgroup.procs`, its `cpu.stat`.
struct Files([OpenFile; 2]);

impl Files {
    /// Only for a run with a payload leaf (one without is read by path).
    fn open(cg: &Cgroup) -> cgroup::Result<Files> {
        Ok(Files([
            cg.child(PAYLOAD).open(CGROUP_PROCS)?,
            cg.open(CPU_STAT)?,
        ]))
    }

    /// The run's processes (its payload) and CPU time, read now.
    fn read(&self) -> cgroup::Result<(u32, Option<u64>)> {
        let [payload, cpu] = &self.0;
        let count = cgroup::parse_procs(&payload.read()?, payload.path())?.len() as u32;
        Ok((count, cgroup::usage_usec(&cpu.read()?)))
    }
}

pub struct RunFiles {
    open: Mutex<HashMap<String, Arc<Files>>>,
    /// How many files may be kept open: a quarter of the open-file limit the
    /// agent started with (it raises its own before), none under [`MIN_LIMIT`].
    room: u64,
}

impl Default for RunFiles {
    fn default() -> RunFiles {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        RunFiles {
            open: Mutex::default(),
            room: if limit < MIN_LIMIT { 0 } else { limit / 4 },
        }
    }
}

impl RunFiles {
    /// The processes and CPU time of live run `run_id`, whose workload cgroup is
    /// `cg`, read now: through its files kept open, or by path.
    pub fn stats(&self, run_id: &str, cg: &Cgroup) -> (u32, Option<u64>) {
        if let Some(files) = self.files(run_id, cg) {
            match files.read() {
                Ok(stats) => return stats,
                // Its cgroup is gone (or changed): read by path, as for any other.
                Err(_) => self.forget(run_id),
            }
        }
        (super::layout::process_count(cg), cg.cpu_usage_usec())
    }

    /// The run's files, opened now if there is room for them.
    fn files(&self, run_id: &str, cg: &Cgroup) -> Option<Arc<Files>> {
        if let Some(files) = self.open.lock().get(run_id) {
            return Some(files.clone());
        }
        let kept = (self.open.lock().len() as u64).saturating_mul(2);
        if kept + 2 > self.room {
            return None;
        }
        let files = Arc::new(Files::open(cg).ok()?);
        self.open.lock().insert(run_id.to_owned(), files.clone());
        Some(files)
    }

    /// Closes a run's files (at its end, before its cgroup is removed).
    pub fn forget(&self, run_id: &str) {
        self.open.lock().remove(run_id);
    }

    /// Closes the files of every run but `live` (after a listing of every live run).
    pub fn keep_only<'a>(&self, live: impl IntoIterator<Item = &'a str>) {
        let live: HashSet<&str> = live.into_iter().collect();
        self.open.lock().retain(|id, _| live.contains(id.as_str()));
    }
}
