//! Runs started from inside a run: its children, recorded with their parent
//! and killed with it. Attacked as a real unprivileged user: a process of a run
//! that drops `WFCG_RUN_ID` and starts a run of its own does not outlive the
//! kill of the first run, whoever kills it and however.

use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, TestAgent, TestUser, wait_until};

/// The runs whose parent is `run_id`, as `ps --all --json` lists them.
fn children(agent: &TestAgent, run_id: &str) -> Vec<serde_json::Value> {
    agent
        .ps(true)
        .into_iter()
        .filter(|r| r["parent_run_id"] == run_id)
        .collect()
}

/// Waits until `run_id` has a child run with `procs` processes; its id.
fn wait_child(agent: &TestAgent, run_id: &str, procs: usize) -> String {
    let mut child = None;
    let found = wait_until(Duration::from_secs(20), || {
        child = children(agent, run_id)
            .first()
            .and_then(|c| c["run_id"].as_str().map(str::to_owned));
        child.as_ref().is_some_and(|c| agent.wait_procs(c, procs))
    });
    assert!(found, "no child run of {run_id}: {:#?}", agent.ps(true));
    child.unwrap()
}

/// A run whose command leaves it: `env -u WFCG_RUN_ID wfcg run --detach`.
fn escaping_script() -> String {
    format!(
        "env -u WFCG_RUN_ID {wfcg} run --detach -- sleep 1041 >/dev/null; \
         exec sleep 1040",
        wfcg = util::WFCG
    )
}

#[test]
fn a_run_started_from_inside_a_run_dies_with_its_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    for (killer_is_root, mode) in [(true, "--force"), (false, "--grace=2s")] {
        let marker = util::marker("nest");
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .env(util::TEST_MARK, &marker)
            .args(["run", "--detach", "--", "sh", "-c"])
            .arg(escaping_script())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", util::described(&out));
        let parent = util::text(&out.stdout).trim().to_string();
        let child = wait_child(&agent, &parent, 2);
        assert_eq!(agent.status(&child)["owner_uid"], user.uid);

        let out = if killer_is_root {
            agent
                .wfcg()
                .args(["kill", "--json", mode, &parent])
                .output()
        } else {
            agent
                .wfcg_as(&user)
                .current_dir("/")
                .args(["kill", "--json", mode, &parent])
                .output()
        }
        .unwrap();
        assert!(out.status.success(), "{}", util::described(&out));
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["success"], true, "{result:#}");
        let reported: Vec<&str> = result["children"]
            .as_array()
            .map(|c| c.iter().filter_map(|c| c["run_id"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(reported, vec![child.as_str()], "{result:#}");
        assert_eq!(result["children"][0]["success"], true, "{result:#}");
        assert_eq!(agent.status(&child)["status"], "killed");
        // Nothing of either run is left anywhere.
        let left = util::pids_with_env(util::TEST_MARK, &marker);
        assert!(left.is_empty(), "left running: {}", util::describe(&left));
    }
}

#[test]
fn a_nested_wfcg_run_works_and_shows_its_parent() {
    require_privileges!();
    let agent = TestAgent::start();
    let script = format!(
        "{wfcg} run --init-timeout 0 -- sh -c 'echo nested; exec sleep 1051'; exec sleep 1050",
        wfcg = util::WFCG
    );
    let run = agent.start_run(&["--init-timeout", "0"], &script);
    // The nested supervisor and its command.
    let child = wait_child(&agent, &run.id, 2);
    assert_eq!(agent.status(&child)["status"], "running");
    assert_eq!(agent.status(&child)["parent_run_id"], run.id);

    let out = agent.cli(&["status", &child]);
    let text = util::text(&out.stdout);
    assert!(text.contains(&format!("parent:     {}", run.id)), "{text}");
    // `ps` lists the child right under its parent, indented.
    let out = agent.cli(&["ps"]);
    let text = util::text(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&run.id))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        lines
            .get(at + 1)
            .is_some_and(|l| l.starts_with(&format!("  {child}"))),
        "{text}"
    );

    let result = agent.kill_ok(&run.id, &[]);
    assert_eq!(
        result["children"][0]["run_id"],
        child.as_str(),
        "{result:#}"
    );
    assert_eq!(agent.status(&child)["status"], "killed");
    agent.assert_run_gone(&run);
}
