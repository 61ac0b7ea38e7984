//! Stuck means one thing everywhere (issue 11 item 7): `ps --stuck`, `kill
//! --stuck`, `/metrics` and top read one predicate, which includes a suspected
//! initialization loop; a fan-out of many processes at once is not a loop; a run
//! with no init timeout is running from the start.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{TestAgent, wait_until};

fn stuck_ids(agent: &TestAgent) -> Vec<String> {
    let out = agent.cli(&["ps", "--stuck", "--json"]);
    assert!(out.status.success());
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

fn metrics(agent: &TestAgent) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&agent.socket)
        .arg("http://wfcg/metrics")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_init_timeout_of_zero_means_running_from_the_start() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&["--init-timeout", "0"], "sleep 100");
    let st = agent.status(&run.id);
    assert_eq!(st["status"], "running", "{st:#}");
    assert!(!st["ready_at"].is_null(), "{st:#}");
}

/// `for i in $(seq 500); do sleep 3600 & done`: 500 starts of one command line,
/// all at once. None of them exited, so none was restarted: no loop.
#[test]
fn a_fan_out_of_500_processes_is_not_a_loop() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(
        &["--init-timeout", "2m"],
        "for i in $(seq 500); do sleep 3600 & done; wait",
    );
    assert!(agent.wait_procs(&run.id, 502));
    // The loop sampler looks every 2 s: three samples.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        let st = agent.status(&run.id);
        assert!(
            st["loop_suspected"].is_null(),
            "fan-out taken for a loop: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(stuck_ids(&agent).is_empty());
}

/// A command restarted again and again is flagged, and then it is stuck for
/// every reader: `ps --stuck`, `kill --stuck --dry-run` and `wfcg_stuck_runs`.
#[test]
fn a_run_flagged_as_a_loop_is_stuck_for_every_reader() {
    require_privileges!();
    let agent = TestAgent::start();
    let looping = agent.start_run(&["--init-timeout", "2m"], "while :; do sleep 1.5; done");
    let calm = agent.start_run(&["--init-timeout", "2m"], "sleep 100");
    let flagged = wait_until(Duration::from_secs(40), || {
        !agent.status(&looping.id)["loop_suspected"].is_null()
    });
    assert!(flagged, "{:#}", agent.status(&looping.id));

    assert_eq!(stuck_ids(&agent), vec![looping.id.clone()]);
    let out = agent.cli(&["kill", "--stuck", "--dry-run"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("would kill {}", looping.id)),
        "{listed}"
    );
    assert!(!listed.contains(&calm.id), "{listed}");
    let text = metrics(&agent);
    assert!(text.contains("\nwfcg_stuck_runs 1\n"), "{text}");
}
