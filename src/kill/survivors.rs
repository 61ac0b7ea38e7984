//! The processes that outlived a kill: named with their state, wait channel
//! and innermost kernel frames.

use std::path::Path;

use super::Report;
use crate::cgroup::Cgroup;
use crate::procfs;

/// A process that outlived the hard kill.
#[derive(Debug, Clone, PartialEq)]
pub struct Survivor {
    pub pid: i32,
    pub state: Option<char>,
    pub cmdline: Option<String>,
    pub wchan: Option<String>,
    pub stack: Option<String>,
}

impl Survivor {
    /// `pid N (CMD) state D wchan W stack f1 < f2 < f3`: the innermost kernel
    /// frames say where it is stuck.
    pub fn describe(&self) -> String {
        let stack: Vec<&str> = self
            .stack
            .as_deref()
            .unwrap_or("")
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .take(3)
            .collect();
        format!(
            "pid {} ({}) state {} wchan {} stack {}",
            self.pid,
            self.cmdline.as_deref().unwrap_or("?"),
            self.state.unwrap_or('?'),
            self.wchan.as_deref().unwrap_or("?"),
            if stack.is_empty() {
                "?".into()
            } else {
                stack.join(" < ")
            }
        )
    }
}

pub(super) fn survivor(proc_root: &Path, pid: i32) -> Survivor {
    let (wchan, stack) = procfs::wchan_and_stack(proc_root, pid);
    Survivor {
        pid,
        state: procfs::state(proc_root, pid),
        cmdline: procfs::cmdline(proc_root, pid),
        wchan,
        stack,
    }
}

/// Names the processes that outlived a kill of `cg` in the report. A listing that
/// fails, or lists none while the cgroup says populated, proves nothing: the kill
/// is then unconfirmed, never taken as done.
pub(super) fn name_survivors(report: &mut Report, cg: &Cgroup, proc_root: &Path, what: &str) {
    match survivors(cg, proc_root) {
        Ok(s) if s.is_empty() => {
            report.unconfirmed = Some(format!("{what} is still populated but lists no process"))
        }
        Ok(s) => report.survivors = s,
        Err(e) => report.unconfirmed = Some(format!("cannot list the survivors: {e}")),
    }
}

fn survivors(cg: &Cgroup, proc_root: &Path) -> crate::cgroup::Result<Vec<Survivor>> {
    Ok(cg
        .procs_recursive()?
        .into_iter()
        .map(|pid| survivor(proc_root, pid))
        .collect())
}
