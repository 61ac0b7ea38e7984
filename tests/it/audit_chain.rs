//! An audit chain that cannot be shortened silently (issue 11 item 4): the agent
//! remembers the head it wrote last; records deleted from the end (or a changed
//! newest record) are not chained over: a `chain_break` record names the range,
//! an `audit_tampered` alert goes out, and `audit verify` fails from then on.

use std::time::Duration;

use serde_json::Value;

use crate::require_privileges;
use crate::util::{TestAgent, wait_until};

/// `wfcg audit verify --json`: exit code and answer.
fn verify(agent: &TestAgent) -> (Option<i32>, Value) {
    let out = agent.cli(&["audit", "verify", "--json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

/// Starts a run and kills it (a run_start, a kill, a run_end record).
fn run_and_kill(agent: &TestAgent) {
    let run = agent.start_run(&["--init-timeout", "0"], "sleep 100");
    agent.kill_ok(&run.id, &["--force"]);
}

#[test]
fn deleting_the_newest_audit_rows_is_never_chained_over() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    let alerts = agent.dir.path().join("alerts.jsonl");
    let on_event = format!("cat >> {}", alerts.display());
    agent.spawn_with(&["--on-event", &on_event]);
    for i in 0..4 {
        assert_eq!(
            agent.cli(&["kill", &format!("run_none{i}")]).status.code(),
            Some(3)
        );
    }
    let (code, v) = verify(&agent);
    assert_eq!((code, &v["records"]), (Some(0), &5.into()), "{v:#}");

    agent.sql("DELETE FROM audit WHERE seq >= 4");
    run_and_kill(&agent);

    let (code, v) = verify(&agent);
    assert_eq!(code, Some(1), "a cut chain verified: {v:#}");
    let message = v["message"].as_str().unwrap();
    assert!(
        message.contains("records 4..5"),
        "the range is not named: {v:#}"
    );
    let breaks = agent.sql("SELECT seq, outcome FROM audit WHERE action = 'chain_break'");
    assert!(breaks.starts_with("6|records 4..5 are missing"), "{breaks}");
    let alerted = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&alerts).is_ok_and(|t| t.contains("\"audit_tampered\""))
    });
    assert!(
        alerted,
        "no audit_tampered alert; log:\n{}",
        agent.log_tail(30)
    );

    // From then on, whatever is written, the break is reported.
    run_and_kill(&agent);
    let (code, v) = verify(&agent);
    assert_eq!(code, Some(1), "{v:#}");
    assert!(
        v["message"].as_str().unwrap().contains("records 4..5"),
        "{v:#}"
    );
}

#[test]
fn an_edited_middle_row_keeps_failing_verify_after_new_records() {
    require_privileges!();
    let agent = TestAgent::start();
    for i in 0..4 {
        agent.cli(&["kill", &format!("run_none{i}")]);
    }
    agent.sql("UPDATE audit SET reason = 'nothing happened' WHERE seq = 3");
    run_and_kill(&agent);
    run_and_kill(&agent);
    let (code, v) = verify(&agent);
    assert_eq!(code, Some(1), "{v:#}");
    assert_eq!(v["first_bad_seq"], 3, "{v:#}");
}

/// The audit rule as a user meets it: every state-changing route (every
/// `POST` of `api::route` but a run's start, whose refusals change nothing and
/// are answered with why) refused to an unprivileged user is on the record,
/// with the user as its actor (the server answers a refusal that is not
/// recorded as an internal error in a debug build).
#[test]
fn every_state_changing_request_refused_to_a_user_is_audited() {
    require_privileges!();
    let bob = crate::util::TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let run = agent.start_run(&["--init-timeout", "0", "--lease", "1h"], "sleep 1000");
    let mut outside = crate::util::KillOnDrop(
        std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap(),
    );
    let id = &run.id;
    let asks = [
        ("agent_stop", "/v1/agent/stop".to_string(), "{}".to_string()),
        ("kill", format!("/v1/runs/{id}/kill"), "{}".into()),
        ("lease_renew", format!("/v1/runs/{id}/lease"), "{}".into()),
        ("exit_report", format!("/v1/runs/{id}/exit"), "{}".into()),
        (
            "enter_supervisor",
            format!("/v1/runs/{id}/supervisor"),
            "".into(),
        ),
        (
            "breaker_reset",
            "/v1/breakers/some-workflow/reset".into(),
            "".into(),
        ),
        (
            "adopt",
            "/v1/runs/adopt".into(),
            format!("{{\"pid\": {}}}", outside.0.id()),
        ),
    ];
    for (action, path, body) in &asks {
        let (code, answer) = agent.http_as(&bob, "POST", path, body);
        assert_eq!(code, 403, "{action}: POST {path}: {answer}");
    }
    let out = agent.cli(&["audit", "--json"]);
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for (action, path, _) in &asks {
        assert!(
            all.iter()
                .any(|r| r["action"] == *action && r["actor_uid"] == bob.uid),
            "the refusal of POST {path} is not audited as {action}: {all:#?}"
        );
    }
    assert_eq!(agent.status(id)["status"], "running");
    let _ = outside.0.kill();
    let _ = outside.0.wait();
    agent.kill_ok(id, &["--force"]);
    agent.assert_run_gone(&run);
}
