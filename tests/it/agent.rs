//! `wfcg agent`: restarts, reconciliation, and the socket API itself.

use std::process::Command;
use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, KillOnDrop, Run, TEST_MARK, TestAgent};

#[test]
fn runs_outlive_an_agent_killed_with_sigkill_and_a_new_agent_kills_them() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let runs: Vec<Run> = (0..3)
        .map(|_| agent.start_run(&[], "sleep 1000 & exec sleep 1000"))
        .collect();
    let mut pids = Vec::new();
    for run in &runs {
        // The supervisor and two sleeps.
        assert!(agent.wait_procs(&run.id, 3));
        pids.extend(agent.run_cgroup(&run.id).procs_recursive().unwrap());
    }

    agent.kill9();
    agent.cli_expect(5, &["ps"]);
    agent.spawn();

    let dead: Vec<i32> = pids.iter().copied().filter(|&p| !util::alive(p)).collect();
    assert!(dead.is_empty(), "processes died with the agent: {dead:?}");
    let listed = agent.ps(false);
    for run in &runs {
        let info = listed
            .iter()
            .find(|r| r["run_id"] == run.id.as_str())
            .unwrap_or_else(|| panic!("{} not listed: {listed:#?}", run.id));
        // Still initializing: the command never sent READY=1.
        assert_eq!(info["status"], "initializing", "{info:#}");
        // The two sleeps: PROCS counts the payload, not the supervisor.
        assert_eq!(info["processes"], 2, "{info:#}");
    }
    for run in &runs {
        agent.kill_ok(&run.id, &[]);
        agent.assert_run_gone(run);
    }
}

#[test]
fn a_cgroup_made_by_hand_is_adopted_as_unknown_and_can_be_killed() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let run = Run {
        id: util::marker("handmade"),
        marker: util::marker("handmade"),
    };
    let cg = agent.run_cgroup(&run.id);
    cg.create_new().unwrap();
    let mut stray = KillOnDrop(
        Command::new("sleep")
            .arg("1000")
            .env(TEST_MARK, &run.marker)
            .spawn()
            .unwrap(),
    );
    cg.add_process(stray.id()).unwrap();

    agent.kill9();
    agent.spawn();

    let info = agent.status(&run.id);
    assert_eq!(info["status"], "unknown", "{info:#}");
    assert_eq!(info["processes"], 1, "{info:#}");
    let result = agent.kill_ok(&run.id, &["--grace", "10s"]);
    let status = stray
        .wait_timeout(Duration::from_secs(10))
        .expect("the stray process lives");
    assert!(!status.success());
    agent.assert_run_gone(&run);
    // SIGTERM reached it: no hard kill after the grace was needed.
    let phases = result["phases"].as_array().unwrap();
    assert!(
        phases.iter().all(|p| p["name"] != "kill"),
        "SIGTERM did not reach the adopted process: {result:#}"
    );
}

/// `curl --unix-socket`: the HTTP status and the body.
pub(crate) fn curl(
    agent: &TestAgent,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--unix-socket"])
        .arg(&agent.socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    let out = cmd
        .arg(format!("http://wfcg{path}"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_string(), body.to_string())
}

/// The agent's log is plain text when it is no terminal (a file, the journal):
/// no colour escapes around the levels.
#[test]
fn the_agent_log_has_no_terminal_escapes() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.cli_expect(0, &["run", "-q", "--", "true"]);
    let log = agent.log();
    assert!(log.contains("wfcg agent listening"), "{log}");
    assert!(!log.contains('\x1b'), "escapes in agent.log: {log:?}");
}

#[test]
fn the_api_refuses_bad_run_ids() {
    require_privileges!();
    let agent = TestAgent::start();
    let (code, body) = curl(&agent, "GET", "/v1/runs", None);
    assert_eq!((code.as_str(), body.as_str()), ("200", "[]"));

    let too_long = "a".repeat(65);
    for id in [
        "../x",
        "a/b",
        "",
        too_long.as_str(),
        "a\0b",
        ".hidden",
        "a..b",
    ] {
        let req = serde_json::json!({ "run_id": id, "command": ["true"] }).to_string();
        let (code, body) = curl(&agent, "POST", "/v1/runs", Some(&req));
        assert_eq!(code, "400", "{id:?}: {body}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["kind"], "bad_input", "{id:?}: {body}");
    }
    agent.assert_nothing_created();
}

/// A detached run's supervisor once kept its request's connection (and so the
/// agent's pidfd of it) open for the run's whole life: a thousand runs, a
/// thousand sockets and pidfds in the agent.
#[test]
fn detached_runs_hold_no_connection_to_the_agent() {
    require_privileges!();
    let agent = TestAgent::start();
    let pid = agent.pid().expect("agent pid");
    let fd_targets = || -> Vec<String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|t| t.to_string_lossy().into_owned())
            .collect()
    };
    // A connection is a connected stream socket (type 0001, state 03 in
    // /proc/net/unix) bound to the agent's socket path; the listener, the
    // notify datagram sockets and the runtime's socketpairs are not.
    let path = agent.socket.to_string_lossy().into_owned();
    let connections = || {
        let net = std::fs::read_to_string("/proc/net/unix").unwrap();
        let connected: std::collections::HashSet<String> = net
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() >= 8 && f[4] == "0001" && f[5] == "03" && f[7] == path)
                    .then(|| f[6].to_string())
            })
            .collect();
        fd_targets()
            .iter()
            .filter_map(|t| t.strip_prefix("socket:[")?.strip_suffix(']'))
            .filter(|inode| connected.contains(*inode))
            .count()
    };
    let pidfds = || {
        fd_targets()
            .iter()
            .filter(|t| t.contains("[pidfd]"))
            .count()
    };
    for _ in 0..5 {
        agent.start_run(&[], "exec sleep 1000");
    }
    let settled = crate::util::wait_until(std::time::Duration::from_secs(5), || {
        pidfds() == 0 && connections() == 0
    });
    assert!(
        settled,
        "with 5 detached runs the agent holds {} pidfds and {} connections",
        pidfds(),
        connections()
    );
}
