//! Leases (`wfcg run --lease DUR`, `wfcg lease RUN`, `POST /v1/runs/{id}/lease`):
//! a run renewed lives on, one nobody renews is killed (the whole tree, even the
//! processes that try to get away) once its lease runs out, a renewal by
//! someone who may not is refused and changes nothing, and an agent restart does
//! not count as a lapse. Real agents, real trees, real unprivileged users.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::require_privileges;
use crate::util::{Run, TestAgent, TestUser, assert_exit_code, marker, text, wait_until};

const LEASE_EXPIRED: &str = "lease expired: its executor stopped renewing it";

/// A tree that tries to outlive its run: a background sleep, one in a session
/// of its own, and one that ignores SIGTERM (the graceful kill must end in
/// `cgroup.kill`).
const ESCAPING_TREE: &str = "sleep 1000 & setsid sleep 1001 & \
     (trap '' TERM HUP; sleep 1002) & wait";

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .into()
}

/// `wfcg lease --json RUN` as root, which must succeed; the answer.
fn renew(agent: &TestAgent, run_id: &str) -> Value {
    let out = agent.cli_expect(0, &["lease", "--json", run_id]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Renews `run_id` every half second (`wfcg lease`, as an executor's loop
/// would) for `span`; the last answer.
fn renew_for(agent: &TestAgent, run_id: &str, span: Duration) -> Value {
    let end = Instant::now() + span;
    let mut last = renew(agent, run_id);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(500));
        let answer = renew(agent, run_id);
        assert!(time(&answer["expires_at"]) > time(&last["expires_at"]));
        last = answer;
    }
    last
}

/// The audit records of a run with `action`.
fn records(agent: &TestAgent, run_id: &str, action: &str) -> Vec<Value> {
    let out = agent.cli_expect(0, &["audit", "--json", "--run", run_id]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter().filter(|r| r["action"] == action).collect()
}

/// Waits until the run ended as `timed_out` by its lease, then checks what
/// is left (nothing), its end reason, and that its kill began after `expires`
/// (never early) and soon after it: the deadline queue sleeps until the
/// earliest deadline, so the margin is only for a loaded machine (it is far
/// below the 5 s at which the agent writes its heartbeats, or any polling
/// period that would have been a bug).
fn assert_killed_by_lease(agent: &TestAgent, run: &Run, expires: DateTime<Utc>) {
    let ended = wait_until(Duration::from_secs(30), || {
        agent.status(&run.id)["status"] == "timed_out"
    });
    let status = agent.status(&run.id);
    assert!(ended, "{status:#}\nagent log:\n{}", agent.log_tail(30));
    assert_eq!(status["end_reason"], LEASE_EXPIRED, "{status:#}");
    assert_eq!(status["kill_result"]["reason"], LEASE_EXPIRED, "{status:#}");
    agent.wait_run_gone(run);
    let auto = records(agent, &run.id, "auto_kill");
    assert_eq!(auto.len(), 1, "{auto:#?}");
    assert_eq!(auto[0]["actor_name"], "monitor");
    assert_eq!(auto[0]["reason"], LEASE_EXPIRED);
    assert_eq!(auto[0]["outcome"], "killed", "{auto:#?}");
    let start = records(agent, &run.id, "kill_start");
    let began = time(&start[0]["time"]);
    assert!(
        began >= expires,
        "killed {} ms before its lease ran out",
        (expires - began).num_milliseconds()
    );
    assert!(
        began <= expires + chrono::Duration::milliseconds(2500),
        "killed {} ms after its lease ran out",
        (began - expires).num_milliseconds()
    );
}

#[test]
fn a_leased_run_lives_while_renewed_and_its_whole_tree_dies_a_lease_after_the_last_renewal() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    let alerts = agent.dir.path().join("alerts.jsonl");
    agent.spawn_with(&["--on-event", &format!("cat >> {}", alerts.display())]);
    let run = agent.start_run(&["--init-timeout", "0", "--lease", "2s"], ESCAPING_TREE);
    assert!(agent.wait_procs(&run.id, 5), "{:#}", agent.status(&run.id));
    let status = agent.status(&run.id);
    assert_eq!(status["lease_ms"], 2000, "{status:#}");
    assert_eq!(status["lease_renewed_at"], Value::Null, "{status:#}");
    let first = time(&status["lease_expires_at"]);
    // `ps` shows the lease as the run's next deadline.
    let ps = text(&agent.cli_expect(0, &["ps"]).stdout);
    assert!(ps.contains("lease "), "{ps}");

    // Renewed for three leases' time: alive, with every process.
    let last = renew_for(&agent, &run.id, Duration::from_secs(6));
    let status = agent.status(&run.id);
    assert_eq!(status["status"], "running", "{status:#}");
    assert!(time(&status["lease_expires_at"]) > first + chrono::Duration::seconds(4));
    assert_eq!(status["lease_renewed_at"], last["renewed_at"]);
    assert_eq!(status["lease_expires_at"], last["expires_at"]);
    assert!(agent.wait_procs(&run.id, 5));
    let shown = text(&agent.cli_expect(0, &["status", &run.id]).stdout);
    assert!(
        shown.contains("lease:      2s, last renewed ")
            && shown.contains(last["renewed_at"].as_str().unwrap()),
        "{shown}"
    );

    assert_killed_by_lease(&agent, &run, time(&last["expires_at"]));
    // Alerted as a lease's lapse, then as the automatic kill; counted.
    let alerted = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&alerts)
            .is_ok_and(|t| t.contains("\"lease_expired\"") && t.contains("\"auto_killed\""))
    });
    assert!(alerted, "{:?}", std::fs::read_to_string(&alerts));
    let metrics = std::process::Command::new("curl")
        .args(["-sf", "--unix-socket", agent.socket.to_str().unwrap()])
        .arg("http://wfcg/metrics")
        .output()
        .unwrap();
    let metrics = text(&metrics.stdout);
    assert!(metrics.contains("wfcg_lease_expired_total 1"), "{metrics}");
    // An ended run's lease is not renewed (409: exit 2), and says why.
    let out = agent.cli_expect(2, &["lease", &run.id]);
    assert!(
        text(&out.stderr).contains("timed_out"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn only_the_owner_or_kill_any_renews_a_lease_and_a_refusal_is_audited_and_extends_nothing() {
    require_privileges!();
    let (bob, admin) = (TestUser::get(), TestUser::other());
    let agent = TestAgent::start_with_policy("[users]\nwfcgtest2 = \"admin\"\n");
    agent.open_to_all_users();
    let roots = agent.start_run(&["--init-timeout", "0", "--lease", "1h"], "sleep 1000");
    let before = agent.status(&roots.id)["lease_expires_at"].clone();

    let path = format!("/v1/runs/{}/lease", roots.id);
    let (code, answer) = agent.http_as(&bob, "POST", &path, "{}");
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("kill_any"), "{answer}");
    let out = agent
        .wfcg_as(&bob)
        .current_dir("/")
        .args(["lease", &roots.id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert_eq!(agent.status(&roots.id)["lease_expires_at"], before);
    assert_eq!(agent.status(&roots.id)["lease_renewed_at"], Value::Null);
    let denied = records(&agent, &roots.id, "lease_renew");
    assert!(!denied.is_empty(), "the refusal is not audited");
    assert_eq!(denied[0]["decision"], "denied", "{denied:#?}");
    assert_eq!(denied[0]["permission"], "kill_any", "{denied:#?}");
    assert_eq!(denied[0]["actor_uid"], bob.uid, "{denied:#?}");

    // A caller with kill_any may.
    let (code, answer) = agent.http_as(&admin, "POST", &path, "");
    assert_eq!(code, 200, "{answer}");
    let renewed: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(renewed["run_id"], roots.id.as_str());
    assert_eq!(renewed["lease_ms"], 3_600_000);
    assert!(time(&renewed["expires_at"]) > time(&before));
    assert_eq!(
        agent.status(&roots.id)["lease_renewed_at"],
        renewed["renewed_at"]
    );

    // An unprivileged owner renews their own run's lease.
    let mark = marker("lease-owner");
    let out = agent
        .wfcg_as(&bob)
        .current_dir("/")
        .env(crate::util::TEST_MARK, &mark)
        .args(["run", "--detach", "--lease", "1h", "--", "sleep", "1000"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bobs = Run {
        id: text(&out.stdout).trim().to_string(),
        marker: mark,
    };
    let (code, answer) = agent.http_as(&bob, "POST", &format!("/v1/runs/{}/lease", bobs.id), "{}");
    assert_eq!(code, 200, "{answer}");
    // No such run, a run without a lease, a body that is not `{}`.
    let plain = agent.start_run(&["--init-timeout", "0"], "sleep 1000");
    for (path, body, want, says) in [
        ("/v1/runs/run_000000000000/lease", "{}", 404, "no such run"),
        (
            &format!("/v1/runs/{}/lease", plain.id),
            "{}",
            403,
            "kill_any",
        ),
        (
            &format!("/v1/runs/{}/lease", bobs.id),
            "{\"lease_ms\":5}",
            400,
            "lease_ms",
        ),
    ] {
        let (code, answer) = agent.http_as(&bob, "POST", path, body);
        assert_eq!(code, want, "{path} {body}: {answer}");
        assert!(answer.contains(says), "{path} {body}: {answer}");
    }
    let out = agent.cli_expect(2, &["lease", &plain.id]);
    assert!(
        text(&out.stderr).contains("has no lease"),
        "{}",
        text(&out.stderr)
    );
    for run in [&roots, &bobs, &plain] {
        agent.kill_ok(&run.id, &["--force"]);
        agent.assert_run_gone(run);
    }
}

#[test]
fn an_agent_restart_is_no_lapse_and_renewals_resume_after_it() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let run = agent.start_run(&["--init-timeout", "0", "--lease", "4s"], ESCAPING_TREE);
    assert!(agent.wait_procs(&run.id, 5));
    let renewed = renew(&agent, &run.id);
    let lapse = time(&renewed["expires_at"]);
    // The agent is away for less than a lease, across the moment the lease
    // would have run out.
    std::thread::sleep(Duration::from_secs(1));
    agent.kill9();
    let away = (lapse - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(500);
    std::thread::sleep(away);
    let back = Utc::now();
    agent.spawn();
    let status = agent.status(&run.id);
    assert_eq!(status["status"], "running", "{status:#}");
    assert!(agent.wait_procs(&run.id, 5));
    // A fresh full lease from the agent's start; the last renewal is kept.
    assert!(time(&status["lease_expires_at"]) >= back + chrono::Duration::seconds(4));
    assert_eq!(status["lease_renewed_at"], renewed["renewed_at"]);
    assert_eq!(agent.status(&run.id)["lease_ms"], 4000);

    let last = renew_for(&agent, &run.id, Duration::from_secs(5));
    assert_eq!(agent.status(&run.id)["status"], "running");
    assert_killed_by_lease(&agent, &run, time(&last["expires_at"]));
}

#[test]
fn leases_out_of_bounds_or_not_durations_are_refused_naming_the_value() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    for (lease, says) in [
        ("0", "0 ms is shorter than the shortest lease accepted"),
        (
            "500ms",
            "500 ms is shorter than the shortest lease accepted",
        ),
        (
            "31d",
            "2678400000 ms is longer than the longest lease accepted",
        ),
        ("soon", "\"soon\" is not a duration"),
    ] {
        let mut cmd = agent.wfcg();
        cmd.args(["run", "--detach", "--lease", lease, "--", "true"]);
        let out = cmd.output().unwrap();
        assert_exit_code(&cmd, &out, 2);
        let err = text(&out.stderr);
        assert!(
            err.contains("--lease") && err.contains(says),
            "{lease}: {err}"
        );
    }
    for (value, says) in [
        ("0", "lease_ms: 0 ms is shorter"),
        ("500", "lease_ms: 500 ms is shorter"),
        ("2678400000", "lease_ms: 2678400000 ms is longer"),
        ("\"10s\"", "lease_ms: invalid type"),
        ("1.5", "lease_ms: invalid type"),
        ("-1", "lease_ms: invalid value"),
        ("99999999999999999999999", "lease_ms"),
    ] {
        let body = format!("{{\"command\":[\"true\"],\"lease_ms\":{value}}}");
        let (code, answer) = agent.http_as(&user, "POST", "/v1/runs", &body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
    // The edges are accepted.
    for lease in ["1s", "30d"] {
        let run = agent.start_run(&["--init-timeout", "0", "--lease", lease], "sleep 1000");
        agent.kill_ok(&run.id, &["--force"]);
        agent.assert_run_gone(&run);
    }
    assert_eq!(agent.ps(false).len(), 0);
}
