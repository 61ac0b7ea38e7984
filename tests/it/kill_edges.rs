//! The kill in its edge cases (issue 11 items 5 and 6): a freeze that does not
//! confirm in time is an error of its phase and the kill still ends the tree; a
//! process carrying the run's marker that left the run's cgroup is killed too.

use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, TestAgent, wait_until};

/// A freeze timeout far too short for a tree of 1000 processes: the freeze is
/// not confirmed. That is said (an error, the scan marked "tree not frozen"),
/// and the kill goes on without it: `cgroup.kill` still ends every process and
/// nothing is left frozen.
#[test]
fn an_unconfirmed_freeze_is_an_error_of_its_phase_and_the_tree_still_dies() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("hasty.toml");
    std::fs::write(&template, "[kill]\nfreeze_timeout = \"1ms\"\n").unwrap();
    let run = agent.start_run(
        &[
            "--init-timeout",
            "0",
            "--template",
            template.to_str().unwrap(),
        ],
        "for i in $(seq 1000); do sleep 1000 & done; wait",
    );
    assert!(agent.wait_procs(&run.id, 1002));

    let result = agent.kill_ok(&run.id, &["--force"]);

    let message = result["message"].as_str().unwrap();
    assert!(
        message.contains("not confirmed") && message.contains("the tree was not frozen"),
        "the unconfirmed freeze is not reported: {result:#}"
    );
    let scan = result["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "scan")
        .unwrap();
    assert!(
        scan["detail"]
            .as_str()
            .unwrap()
            .starts_with("tree not frozen: "),
        "{scan}"
    );
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    agent.assert_run_gone(&run);
}

/// A root workflow moves one of its processes out of its cgroup (into another
/// cgroup of the host). It still carries the run's marker: the kill finds it,
/// kills it through a pidfd and says so, and the run ends as `killed` with
/// nothing left (it used to be left alive and reported as remaining).
#[test]
fn a_marked_process_that_left_the_runs_cgroup_is_killed_through_a_pidfd() {
    require_privileges!();
    let agent = TestAgent::start();
    let outside = agent.cgroup_root.join("elsewhere");
    std::fs::create_dir(&outside).unwrap();
    let run = agent.start_run(
        &["--init-timeout", "0"],
        &format!(
            "sleep 1001 & echo $! > {}/cgroup.procs; exec sleep 1000",
            outside.display()
        ),
    );
    let escaped = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(outside.join("cgroup.procs")).is_ok_and(|t| !t.trim().is_empty())
    });
    assert!(escaped, "the process did not leave the run's cgroup");
    let pid: i32 = std::fs::read_to_string(outside.join("cgroup.procs"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(util::cmdline(pid), "sleep 1001");

    let result = agent.kill_ok(&run.id, &[]);

    assert_eq!(
        result["cleanup_status"]["escapees_killed"],
        serde_json::json!([pid]),
        "{result:#}"
    );
    assert_eq!(
        result["cleanup_status"]["processes_remaining"], 0,
        "{result:#}"
    );
    assert!(
        result["message"]
            .as_str()
            .unwrap()
            .contains("killed through pidfds")
    );
    assert!(!util::alive(pid), "the escapee lives on");
    assert_eq!(agent.status(&run.id)["status"], "killed");
    agent.assert_run_gone(&run);
}
