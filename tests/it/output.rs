//! What the CLI does when its output cannot be written: a closed pipe is a quiet
//! exit 0, a full disk one line and exit 1; never a panic (exit 101).

use std::process::{Command, Stdio};

use crate::require_privileges;
use crate::util::{TestAgent, WFCG};

/// `wfcg ARGS | true` in bash: the reader is gone before wfcg writes. Returns
/// wfcg's exit status and its stderr.
fn into_closed_pipe(agent: &TestAgent, args: &str) -> (String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{WFCG} {args} 2>/tmp/wfcg-output-err.$$ | true; echo ${{PIPESTATUS[0]}}; cat /tmp/wfcg-output-err.$$ >&2; rm -f /tmp/wfcg-output-err.$$"
        ))
        .envs(agent.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_pipe_is_a_quiet_exit_0_and_a_full_disk_an_error() {
    require_privileges!();
    let agent = TestAgent::start();
    for _ in 0..3 {
        assert!(agent.cli(&["run", "-q", "--", "true"]).status.success());
    }
    for args in [
        "ps --all",
        "audit",
        "ps --all --json",
        "audit --json",
        "templates",
    ] {
        let (status, stderr) = into_closed_pipe(&agent, args);
        assert_eq!(
            status, "0",
            "wfcg {args} | true: exit {status}, stderr: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "wfcg {args}: {stderr}");
    }
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = agent
        .wfcg()
        .args(["ps", "--all"])
        .stdout(full)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the output"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
