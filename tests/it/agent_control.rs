//! A visible agent: the one a root `wfcg run` starts says so, `wfcg agent
//! status` shows it, `wfcg agent stop` stops it while runs go on.

use std::path::Path;
use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, TestAgent, TestUser, text};

/// `wfcg audit --json` records whose action is `action`.
fn audited(agent: &TestAgent, action: &str) -> Vec<serde_json::Value> {
    let out = agent.cli_expect(0, &["audit", "--json"]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    records
        .into_iter()
        .filter(|r| r["action"] == action)
        .collect()
}

/// `wfcg agent status --json`, which must exit 0.
fn agent_status(agent: &TestAgent) -> serde_json::Value {
    let out = agent.cli_expect(0, &["agent", "status", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The first root `wfcg run` that finds no agent starts one and says so on
/// stderr, once: its pid, its log and how to stop it. The next run says nothing
/// of the kind. (The agent it started runs in the test's cgroup root, which the
/// test agent's drop kills.)
#[test]
fn a_root_run_that_starts_the_agent_says_so_once_with_its_pid_log_and_how_to_stop_it() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    let first = agent.cli_expect(0, &["run", "--", "echo", "ran"]);
    let said = text(&first.stderr);
    assert_eq!(text(&first.stdout), "ran\n");
    let log = agent.state_dir.join("agent.log");
    assert_eq!(said.matches("started the wfcg agent").count(), 1, "{said}");
    assert!(
        said.contains(&log.display().to_string()),
        "no log path: {said}"
    );
    assert!(
        said.contains("wfcg agent stop"),
        "no way to stop it: {said}"
    );
    let pid: i32 = said
        .split("(pid ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid: {said}"));
    let cmdline = util::cmdline(pid);
    assert!(
        cmdline.contains(" agent ") && cmdline.contains(&agent.socket.display().to_string()),
        "pid {pid} is not the agent: {cmdline}"
    );
    assert_eq!(agent_status(&agent)["pid"], pid);

    let second = agent.cli_expect(0, &["run", "--", "true"]);
    assert!(
        !text(&second.stderr).contains("started the wfcg agent"),
        "said again: {}",
        text(&second.stderr)
    );
    let out = agent.cli_expect(0, &["agent", "stop"]);
    assert!(
        text(&out.stdout).contains("stopped"),
        "{}",
        text(&out.stdout)
    );
    assert!(!util::alive(pid), "the agent it started still runs");
}

#[test]
fn agent_status_says_pid_uptime_version_socket_state_dir_log_and_live_runs() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "exec sleep 1000");
    let s = agent_status(&agent);
    assert_eq!(s["ok"], true, "{s:#}");
    assert_eq!(s["pid"], agent.pid().unwrap(), "{s:#}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"), "{s:#}");
    assert_eq!(s["socket"], agent.socket.display().to_string(), "{s:#}");
    assert_eq!(
        s["state_dir"],
        agent.state_dir.display().to_string(),
        "{s:#}"
    );
    // The test agent's stderr is this file.
    let log = agent.dir.path().join("agent.log");
    assert_eq!(s["log"], log.display().to_string(), "{s:#}");
    assert_eq!(s["live_runs"], 1, "{s:#}");
    assert_eq!(s["service"], serde_json::Value::Null, "{s:#}");
    assert!(s["uptime_secs"].as_f64().unwrap() >= 0.0, "{s:#}");
    assert!(s["started_at"].as_str().unwrap().ends_with('Z'), "{s:#}");

    let human = text(&agent.cli_expect(0, &["agent", "status"]).stdout);
    for line in [
        format!("agent:      running, pid {}", agent.pid().unwrap()),
        format!("log:        {}", log.display()),
        "live runs:  1".to_string(),
        "service:    none (stop it with `wfcg agent stop`)".to_string(),
    ] {
        assert!(human.contains(&line), "no {line:?} in:\n{human}");
    }

    agent.kill_ok(&run.id, &[]);
    assert!(
        util::wait_until(
            Duration::from_secs(10),
            || agent_status(&agent)["live_runs"] == 0
        ),
        "{:#}",
        agent_status(&agent)
    );
}

#[test]
fn agent_status_without_an_agent_exits_5_naming_the_socket() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    for args in [&["agent", "status"][..], &["agent", "status", "--json"][..]] {
        let out = agent.cli_expect(5, args);
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(err.contains(&agent.socket.display().to_string()), "{err}");
    }
    // Nothing to stop is no failure.
    let out = agent.cli_expect(0, &["agent", "stop"]);
    assert!(
        text(&out.stderr).contains("nothing to stop"),
        "{}",
        text(&out.stderr)
    );
}

/// `wfcg agent stop` ends the agent and nothing else: a run started before it
/// keeps all its processes, and the next agent lists it and kills it. The stop
/// is on the record.
#[test]
fn agent_stop_leaves_a_live_run_running_and_a_new_agent_lists_and_kills_it() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let run = agent.start_run(&[], "sleep 1000 & exec sleep 1000");
    // The supervisor and two sleeps.
    assert!(agent.wait_procs(&run.id, 3));
    let pids = agent.run_cgroup(&run.id).procs_recursive().unwrap();

    let out = agent.cli_expect(0, &["agent", "stop"]);
    let said = text(&out.stdout);
    assert!(said.contains("its 1 live run goes on"), "{said}");
    let status = agent
        .wait_exit(Duration::from_secs(1))
        .expect("the agent still runs once `agent stop` returned");
    assert!(status.success(), "the agent exited with {status}");
    assert!(!agent.socket.exists(), "the socket is left behind");
    agent.cli_expect(5, &["ps"]);
    let dead: Vec<i32> = pids.iter().copied().filter(|&p| !util::alive(p)).collect();
    assert!(dead.is_empty(), "processes died with the agent: {dead:?}");

    agent.spawn();
    let listed = agent.ps(false);
    let info = listed
        .iter()
        .find(|r| r["run_id"] == run.id.as_str())
        .unwrap_or_else(|| panic!("{} not listed: {listed:#?}", run.id));
    // PROCS counts the payload: the two sleeps, not the supervisor.
    assert_eq!(info["processes"], 2, "{info:#}");
    agent.kill_ok(&run.id, &[]);
    agent.assert_run_gone(&run);

    let stops = audited(&agent, "agent_stop");
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["actor_uid"], 0, "{stops:#?}");
    assert_eq!(stops[0]["decision"], "allowed", "{stops:#?}");
    assert_eq!(stops[0]["outcome"], "stopping", "{stops:#?}");
}

/// Only root stops the agent; a user's attempt is refused (exit 4), the agent
/// goes on, and the attempt is on the record.
#[test]
fn agent_stop_is_root_only_and_a_refusal_is_audited() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let mut cmd = agent.wfcg_as(&user);
    cmd.args(["agent", "stop"]);
    let out = util::CommandExt::expect_code(&mut cmd, 4);
    assert!(
        text(&out.stderr).contains("only root"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        Path::new(&format!("/proc/{}", agent.pid().unwrap())).exists(),
        "the agent stopped"
    );
    agent.cli_expect(0, &["ps"]);
    let stops = audited(&agent, "agent_stop");
    assert_eq!(stops.len(), 1, "{stops:#?}");
    assert_eq!(stops[0]["actor_uid"], user.uid, "{stops:#?}");
    assert_eq!(stops[0]["decision"], "denied", "{stops:#?}");
}
