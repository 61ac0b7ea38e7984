//! Starting the run's command. Three ways, each leaving it in the run's payload
//! from its first instruction:
//!
//! - forked where the supervisor is (the payload, which the supervisor leaves
//!   afterwards through the agent): the way for everyone;
//! - cloned straight into the payload with `clone3(CLONE_INTO_CGROUP)` when the
//!   agent placed the supervisor in its own leaf already;
//! - for a root caller that the agent left where it was: a [`Keeper`] cloned
//!   into the supervisor leaf and the command into the payload, both with
//!   `clone3(CLONE_INTO_CGROUP)`. No process changes cgroup (a migration,
//!   whose cost is the kernel's: it waits for an RCU grace period), and no
//!   request to leave the payload is made.
//!
//! The kernel checks the caller's own right to write the target's
//! `cgroup.procs` and that of the common ancestor of where it is and where the
//! child goes, which only root has; the agent offers the last two ways to
//! root callers in its cgroup and mount namespaces only.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};

/// The command's process, however it was started.
pub enum Process {
    Forked(Child),
    Cloned(rustix::process::Pid),
}

impl Process {
    pub fn pid(&self) -> rustix::process::Pid {
        match self {
            Process::Forked(child) => rustix::process::Pid::from_child(child),
            Process::Cloned(pid) => *pid,
        }
    }

    /// Its exit status if it ended (and is reaped now), without waiting.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self {
            Process::Forked(child) => child.try_wait(),
            Process::Cloned(pid) => {
                let status =
                    rustix::process::waitpid(Some(*pid), rustix::process::WaitOptions::NOHANG)?;
                Ok(status.map(|(_, s)| ExitStatus::from_raw(s.as_raw())))
            }
        }
    }
}

/// What [`clone_into`] did.
pub enum Cloned {
    /// The command runs in the cgroup.
    Started(Process),
    /// The child was made in the cgroup but the command could not be executed
    /// (not found, not executable, …): as a failed fork + exec would say.
    ExecFailed(io::Error),
    /// No child was made (the cgroup could not be opened, or clone3 refused:
    /// an old kernel, a seccomp filter, no permission): start it another way.
    Refused(io::Error),
}

/// Opens the cgroup directory at `cgroup` for clone3 (`O_PATH`, not through a symlink).
fn open_cgroup(cgroup: &Path) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        cgroup,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Starts `cmd` (its program, arguments, environment, working directory, stdio
/// and `pre_exec` hooks, as `Command::spawn` would) in the cgroup at `cgroup`,
/// with `clone3(CLONE_INTO_CGROUP)`.
///
/// Refused unless this process has a single thread: the child runs ordinary
/// Rust code (`Command::exec`) between clone and exec.
pub fn clone_into(cmd: &mut Command, cgroup: &Path) -> Cloned {
    let dir = match open_cgroup(cgroup) {
        Ok(fd) => fd,
        Err(e) => return Cloned::Refused(e),
    };
    // The child tells why exec failed through this pipe; a successful exec closes it.
    let (report_r, report_w) = match rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) {
        Ok(pair) => pair,
        Err(e) => return Cloned::Refused(e.into()),
    };
    match crate::sys::process::fork_into_cgroup(&dir) {
        Err(e) => Cloned::Refused(e),
        Ok(None) => {
            // The child, in the cgroup: become the command, or say why not.
            drop(report_r);
            let err = cmd.exec();
            let code = err.raw_os_error().unwrap_or(libc::EINVAL);
            let _ = rustix::io::write(&report_w, &code.to_ne_bytes());
            // Ends this child at once, running nothing of the parent's.
            crate::sys::process::exit_now(127)
        }
        Ok(Some(pid)) => {
            drop(report_w);
            drop(dir);
            match exec_error(report_r) {
                None => Cloned::Started(Process::Cloned(pid)),
                Some(e) => {
                    let _ =
                        rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
                    Cloned::ExecFailed(e)
                }
            }
        }
    }
}

/// The supervisor's stand-in in the supervisor leaf, when the supervisor stays
/// in its caller's cgroup: a child that holds nothing (no file but its end of a
/// pipe, every signal blocked, named `wfcg-keeper`) and exits when the
/// supervisor does, however it does (the pipe's other end closes). So the run's
/// cgroup stays populated until the supervisor has reported the exit and read
/// why the run ended, as when the supervisor itself lives in the leaf, and the
/// agent's kill and end of a run need not know the difference.
pub struct Keeper {
    /// The write end of the keeper's pipe: never written, closed at exit.
    hold: OwnedFd,
}

impl Keeper {
    /// Keeps the keeper for the rest of this process's life: its pipe closes
    /// only when this process exits.
    pub fn hold_until_exit(self) {
        let _ = std::os::fd::IntoRawFd::into_raw_fd(self.hold);
    }
}

/// Starts a [`Keeper`] in the cgroup at `cgroup` with `clone3(CLONE_INTO_CGROUP)`.
///
/// Fails unless this process has a single thread (the child runs Rust code
/// until it waits).
pub fn start_keeper(cgroup: &Path) -> io::Result<Keeper> {
    let dir = open_cgroup(cgroup)?;
    let (wait_r, hold) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    match crate::sys::process::fork_into_cgroup(&dir)? {
        None => {
            drop(hold);
            keep(wait_r)
        }
        Some(_) => Ok(Keeper { hold }),
    }
}

/// The keeper's life: waits for the end of its pipe, then exits.
fn keep(wait: OwnedFd) -> ! {
    let all = super::signals::SignalSet::all();
    all.block();
    let _ = rustix::thread::set_name(c"wfcg-keeper");
    // Holds none of the supervisor's files: no terminal, pipe or socket of the
    // caller is kept open by it.
    crate::sys::process::close_others_and_wait(wait)
}

/// Reads the errno a child sends when its exec failed; `None` when the pipe
/// closed empty (the exec succeeded).
fn exec_error(pipe: OwnedFd) -> Option<io::Error> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(&pipe, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Some(e.into()),
        }
    }
    (got == buf.len()).then(|| io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))
}

/// Moves this process into the cgroup at `cgroup` (by writing its
/// `cgroup.procs`): the way back when [`clone_into`] could not clone into it.
pub fn enter(cgroup: &Path) -> io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a cgroup to clone into, no child is made (and nothing runs).
    #[test]
    fn no_cgroup_no_child() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let mut cmd = Command::new("touch");
        cmd.arg(&marker);
        match clone_into(&mut cmd, &dir.path().join("missing")) {
            Cloned::Refused(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
            _ => panic!("a child was made"),
        }
        assert!(!marker.exists());
    }
}
