//! The kill in its edge cases (issue 11 item 6): a process carrying the run's
//! marker that left the run's cgroup is killed too. (An unconfirmed freeze, item
//! 5, is tested on a fake cgroup tree in `src/kill.rs` and `src/cgroup.rs`: no task
//! state the test could produce on demand keeps the real freezer from confirming.)

use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, TestAgent, wait_until};

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
    // Moved as soon as forked: it may not have exec'd `sleep` yet.
    let moved = || {
        std::fs::read_to_string(outside.join("cgroup.procs"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
    };
    let escaped = wait_until(Duration::from_secs(20), || {
        moved().is_some_and(|pid| util::cmdline(pid) == "sleep 1001")
    });
    assert!(escaped, "the process did not leave the run's cgroup");
    let pid = moved().unwrap();

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

/// A run whose stored template does not read (edited by hand, here with the
/// sqlite3 CLI) is not killed with the default template's graces, as it once
/// silently was: the kill is refused with an error naming the run and the
/// column, and the run is left as it was. Set to NULL on purpose (no template:
/// the agent's default), the kill goes on.
#[test]
fn a_kill_of_a_run_whose_stored_template_does_not_read_is_refused_naming_the_column() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&["--init-timeout", "0"], "exec sleep 1000");
    let sql = |statement: &str| {
        let out = std::process::Command::new("sqlite3")
            .args(["-cmd", ".timeout 5000"])
            .arg(agent.db())
            .arg(statement)
            .output()
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3 {statement}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sql(&format!(
        "UPDATE runs SET template = '{{\"kill\": 1}}' WHERE run_id = '{}'",
        run.id
    ));
    let (out, _) = agent.kill(&run.id, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&run.id) && err.contains("column template") && err.contains("not a template"),
        "{err}"
    );
    let events = agent
        .cgroup_root
        .join("runs")
        .join(&run.id)
        .join("cgroup.events");
    let populated = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(populated.contains("populated 1"), "{populated}");
    sql(&format!(
        "UPDATE runs SET template = NULL WHERE run_id = '{}'",
        run.id
    ));
    agent.kill_ok(&run.id, &[]);
}
