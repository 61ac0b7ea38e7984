//! Adopted trees found whole: markers inferred from the root's environment,
//! and what an adoption never takes. Trees are started by the test, outside
//! wfcg, in a source cgroup of their own (see adopt.rs).

use std::time::Duration;

use crate::adopt::{Source, Sweep, json, running, stderr};
use crate::hard_kills::python3;
use crate::require_privileges;
use crate::util::{self, Dir, TestAgent, wait_until};

/// A root that leaves a daemon of the worst kind: forked twice (its parent is
/// init), in a session of its own, every catchable signal blocked, re-executed
/// under a kernel thread's name (argv and `comm`). It carries only the
/// environment the tree gave it. `argv[1]` gets the daemon's pid.
const ADVERSARY: &str = r#"
import os, signal, sys
DAEMON = '''
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"kworker/u8:3", 0, 0, 0)
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(1000)
'''
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        os.execv(sys.executable, ["[kworker/u8:3]", "-c", DAEMON, sys.argv[1]])
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"#;

/// The adversary's tree, started in `source`, and its daemon's pid once it runs.
fn adversary(source: &Source, marker: &str, dir: &Dir) -> (util::KillOnDrop, i32) {
    let ready = dir.join("daemon.pid");
    let tree = source.spawn(
        marker,
        &[
            python3(),
            "-c",
            ADVERSARY,
            dir.join("daemon.pid").to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || ready.exists()),
        "the adversary's daemon did not start"
    );
    let daemon: i32 = std::fs::read_to_string(&ready)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        util::ppid(daemon),
        tree.id(),
        "the daemon did not leave its tree"
    );
    assert!(
        util::cmdline(daemon).starts_with("[kworker/u8:3]"),
        "{}",
        util::cmdline(daemon)
    );
    (tree, daemon)
}

/// A double-forked, setsid, renamed, signal-blocking daemon of a tree is found
/// by the environment the tree gave it (a value no process outside the tree
/// has), named in a dry run, and killed by `kill --pid` with no `--marker`.
#[test]
fn kill_pid_finds_a_renamed_setsid_daemon_by_an_inferred_marker() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("adversary");
    let _sweep = Sweep(&marker);
    let dir = Dir::new("wfcg-adversary");
    let (mut tree, daemon) = adversary(&source, &marker, &dir);

    let out = agent.cli(&[
        "kill",
        "--pid",
        &tree.id().to_string(),
        "--grace",
        "2s",
        "--json",
    ]);

    let survivors = util::pids_with_env(util::TEST_MARK, &marker);
    eprintln!(
        "survivors of kill --pid with no --marker: {} ({})",
        survivors.len(),
        util::describe(&survivors)
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(survivors.is_empty(), "{result:#}");
    assert!(!util::alive(daemon));
    assert_eq!(result["success"], true, "{result:#}");
    let _ = running;
}
