//! Making processes and ending them: fork(2) and `clone3(CLONE_INTO_CGROUP)`
//! (allowed only while this process has a single thread, which is checked),
//! `_exit(2)`, the hooks a `Command` runs between fork and exec, and the
//! allocator's arenas (`mallopt(3)`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use rustix::process::Pid;

/// `CLONE_INTO_CGROUP` (Linux 5.7). Not libc's: that one is 0 on x86_64 glibc
/// (an overflowed constant).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` of clone3(2), up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The number of threads of this process (`Threads:` of `/proc/self/status`).
fn threads() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no thread count in /proc/self/status"))
}

/// Fails unless this process has a single thread: then a forked child holds no
/// lock a thread it lacks would release, and may run ordinary Rust code. (A
/// thread just joined may linger in the count a moment: asked again briefly.)
fn single_threaded() -> io::Result<()> {
    for _ in 0..50 {
        match threads()? {
            1 => return Ok(()),
            _ => std::thread::sleep(std::time::Duration::from_millis(1)),
        }
    }
    Err(io::Error::other(format!(
        "this process has {} threads: it cannot fork safely",
        threads()?
    )))
}

/// fork(2), in a process with a single thread (an error otherwise): `Ok(None)`
/// in the child, `Ok(Some(pid))` in the parent.
pub fn fork() -> io::Result<Option<Pid>> {
    single_threaded()?;
    // SAFETY: this process has one thread (checked above, and only it could start
    // another), so the child is a whole copy of it and may run any code.
    match unsafe { libc::fork() } {
        -1 => Err(super::last_error()),
        0 => Ok(None),
        pid => Ok(Pid::from_raw(pid)),
    }
}

/// `clone3(CLONE_INTO_CGROUP)`: a fork whose child starts in the cgroup `dir`
/// names, in a process with a single thread (an error otherwise, as when the
/// kernel or a seccomp filter refuses clone3). `Ok(None)` in the child,
/// `Ok(Some(pid))` in the parent.
pub fn fork_into_cgroup(dir: &OwnedFd) -> io::Result<Option<Pid>> {
    single_threaded()?;
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir.as_raw_fd() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 with a valid, initialised clone_args of the size given and
    // without CLONE_VM: the child gets a copy of this process's memory, like fork,
    // and this process has a single thread (checked above).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(super::last_error()),
        0 => Ok(None),
        // A positive return of clone3 is the new child's pid.
        pid => Ok(Pid::from_raw(pid as i32)),
    }
}

/// `_exit(2)`: ends this process at once, running nothing of what it was doing
/// (no destructor, no atexit handler, no flush): the end of a forked child.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes a plain integer and never returns.
    unsafe { libc::_exit(code) }
}

/// The rest of a keeper's life: closes every descriptor but `wait`
/// (`close_range(2)`), waits until `wait` reads end of file, and exits 0.
pub fn close_others_and_wait(wait: OwnedFd) -> ! {
    let fd = wait.as_raw_fd() as u32;
    // SAFETY: close_range(2) takes plain integers; the descriptors it closes are
    // never used again, as this function ends the process without returning.
    unsafe {
        if fd > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, fd - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, fd + 1, u32::MAX, 0u32);
    }
    let mut byte = [0u8; 1];
    while let Ok(1) | Err(rustix::io::Errno::INTR) = rustix::io::read(&wait, &mut byte) {}
    exit_now(0)
}

/// Makes `cmd`'s child start a new session (setsid(2)) before it execs.
pub fn setsid_before_exec(cmd: &mut Command) {
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

/// Makes `cmd`'s child get SIGKILL when its parent thread dies
/// (`prctl(PR_SET_PDEATHSIG)`), set before it execs.
pub fn die_with_parent_before_exec(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            Ok(())
        });
    }
}

/// Makes `cmd`'s child unblock every signal before it execs, so the command
/// does not inherit this process's mask ([`super::signal::clear_mask`]).
pub fn clear_signal_mask_before_exec(cmd: &mut Command) {
    // SAFETY: clear_mask only calls sigprocmask(2), which is async-signal-safe.
    unsafe { cmd.pre_exec(super::signal::clear_mask) };
}

/// `mallopt(M_ARENA_MAX, n)`: at most `n` malloc arenas.
pub fn limit_malloc_arenas(n: i32) {
    // SAFETY: mallopt(3) only tunes the allocator (under its own lock).
    unsafe { libc::mallopt(libc::M_ARENA_MAX, n) };
}

/// Gives this thread a mount namespace and filesystem attributes of its own
/// (`unshare(CLONE_NEWNS | CLONE_FS)`), for tests that bind-mount files.
#[cfg(test)]
pub fn unshare_mounts() -> io::Result<()> {
    use rustix::thread::{UnshareFlags, unshare_unsafe};
    // SAFETY: only the mount namespace and this thread's filesystem attributes
    // are unshared, not the file descriptor table, so no thread can see a
    // descriptor another cannot.
    Ok(unsafe { unshare_unsafe(UnshareFlags::NEWNS | UnshareFlags::FS) }?)
}
