//! The two-process harness of the benchmarks that start process trees.
//!
//! The outer process is a child subreaper: it starts the inner one (this binary
//! again, which does the work), reaps every process orphaned below it at once
//! (as init does on a host; a container's PID 1 may not), and when the inner one
//! ends, however it ends (panic, Ctrl-C, SIGKILL), kills and removes every
//! cgroup the inner one created (`wfcg-bench-<pid>*` and the test agents'
//! `wfcg-test-<pid>-*`) and its temporary directory.

use std::process::Command;
use std::time::Duration;

use wfcg::cgroup::{self, Cgroup};

/// Set in the inner process's environment.
const INNER_ENV: &str = "WFCG_BENCH_INNER";

/// Runs `inner` in a child of this process under the outer process's care;
/// returns (exits with) the inner process's status. Without root or cgroup2 it
/// fails as the integration tests do (see `util::privileged`).
pub fn main(inner: fn()) {
    if std::env::var_os(INNER_ENV).is_some() {
        clear_signal_mask();
        inner();
    } else {
        std::process::exit(outer());
    }
}

fn outer() -> i32 {
    if !crate::util::privileged() {
        return 0; // WFCG_TEST_ALLOW_SKIP=1 without root or cgroup2
    }
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        eprintln!(
            "bench: cannot become a child subreaper: {}",
            std::io::Error::last_os_error()
        );
        return 1;
    }
    // Signals are taken with sigwait below; blocked before the inner process exists
    // (which inherits the mask: std::process::Command keeps it; the inner process
    // clears it first thing).
    let signals = [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
    // SAFETY: `set` is initialised by sigemptyset before use; pthread_sigmask only
    // reads it. This process has no other threads yet.
    let set = unsafe {
        let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(set.as_mut_ptr());
        for s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        let set = set.assume_init();
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    // The agent's socket, state and logs go below this directory (tempfile honours TMPDIR).
    let tmp = tempfile::Builder::new()
        .prefix("wfcg-bench")
        .tempdir()
        .expect("creating a temporary directory");
    let exe = std::env::current_exe().expect("finding the benchmark binary");
    let inner = match Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(INNER_ENV, "1")
        .env("TMPDIR", tmp.path())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: cannot start the inner process: {e}");
            return 1;
        }
    };
    let inner_pid = inner.id() as i32;
    let code = loop {
        let mut sig = 0;
        // SAFETY: `set` is a valid signal set and `sig` a valid place to write to.
        unsafe { libc::sigwait(&set, &mut sig) };
        if sig != libc::SIGCHLD {
            // Ctrl-C reaches the inner process from the terminal; other senders do not.
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(inner_pid, libc::SIGTERM) };
            continue;
        }
        if let Some(status) = reap_all(inner_pid) {
            break status;
        }
    };
    let left = cleanup_leftovers(inner_pid);
    if left > 0 {
        eprintln!("bench: cleaned up {left} cgroups the benchmark left behind");
    }
    // Orphans of the cleanup (trees just killed) are reaped before returning.
    std::thread::sleep(Duration::from_millis(50));
    reap_all(-1);
    drop(tmp);
    code
}

/// The outer process's blocked signals were inherited: let Ctrl-C end the inner
/// process (the outer one cleans up), and start the agent and the trees with a
/// clean mask.
fn clear_signal_mask() {
    // SAFETY: `empty` is initialised by sigemptyset; pthread_sigmask only reads it.
    unsafe {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
    }
}

/// Reaps every exited child; returns the exit code when `watched` was among them.
fn reap_all(watched: i32) -> Option<i32> {
    let mut result = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) writes the status into `status`, a valid i32.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return result;
        }
        if pid == watched {
            result = Some(if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            });
        }
    }
}

/// Kills and removes the cgroups named after the inner process: the benchmark's
/// own roots (`wfcg-bench-<pid>…`) and the test agents' roots (`wfcg-test-<pid>-<n>`,
/// see util.rs).
fn cleanup_leftovers(inner_pid: i32) -> usize {
    let Ok(mount) = cgroup::cgroup2_mount() else {
        return 0;
    };
    let names = [
        format!("wfcg-bench-{inner_pid}"),
        format!("wfcg-test-{inner_pid}-"),
    ];
    let mut n = 0;
    for entry in std::fs::read_dir(&mount).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if names.iter().any(|p| name.starts_with(p.as_str())) {
            let cg = Cgroup::new(entry.path());
            let _ = cg.kill();
            let _ = cg.wait_unpopulated(Duration::from_secs(10));
            if let Err(e) = cg.remove_recursive() {
                eprintln!("bench: {e}");
            }
            n += 1;
        }
    }
    n
}
