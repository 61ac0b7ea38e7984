//! Honest critical sections (issue 11 items 2 and 3): the run's inherited
//! output and append-only logs are not "files" sections, a temp file being
//! written is; git locks that git holds with its fd closed (hooks, the editor,
//! submodules, worktrees) are git sections, waited for, and removed after a
//! force kill.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::require_privileges;
use crate::util::{Dir, KillOnDrop, Run, TestAgent, marker, text, wait_until};

/// The paths of a kill result's sections of one kind, each once.
fn sections(result: &Value, kind: &str) -> Vec<String> {
    let mut paths: Vec<String> = result["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .filter(|s| s["kind"] == kind)
        .map(|s| s["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The executor's pattern: the run's output redirected into a file in its
/// workspace (and a log the run appends to itself). Neither is a write a kill can
/// tear, so the graceful kill does not wait (it used to wait the whole 10 s
/// files grace).
#[test]
fn output_redirected_into_the_workspace_is_not_a_files_section() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-files-log");
    let id = format!("files-log-{}", std::process::id());
    let job_log = std::fs::File::create(ws.join("job.log")).unwrap();
    let mut run = KillOnDrop(
        agent
            .marked(&marker("files-log"))
            .args(["run", "-q", "--run-id", &id, "--init-timeout", "0"])
            .args(["--workspace", ws.str(), "--"])
            .args([
                "sh",
                "-c",
                "exec 3>>own.log; echo started; echo more >&3; sleep 1000",
            ])
            .stdin(Stdio::null())
            .stdout(job_log.try_clone().unwrap())
            .stderr(job_log)
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(ws.join("own.log")).is_ok_and(|t| t == "more\n")
        }),
        "the run did not start"
    );

    let result = agent.kill_ok(&id, &[]);

    assert!(
        sections(&result, "files").is_empty(),
        "inherited or append-only output reported as a files section: {result:#}"
    );
    assert_eq!(result["waited_ms"], 0.0, "{result:#}");
    assert!(run.wait_timeout(Duration::from_secs(10)).is_some());
}

/// The other side of the rule: a temp file being written, to be renamed over its
/// target, is a files section and the kill waits for it (here until its grace).
#[test]
fn a_temp_file_being_written_before_its_rename_is_still_waited_for() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-files-tmp");
    let run = start_writer(
        &agent,
        &ws,
        "&& while :; do echo x >&3; sleep 0.05; done 3> out.tmp && mv out.tmp out",
    );

    let result = agent.kill_ok(&run.id, &["--grace-files", "1s"]);

    let tmp = ws.join("out.tmp").display().to_string();
    assert_eq!(sections(&result, "files"), vec![tmp], "{result:#}");
    assert!(result["waited_ms"].as_f64().unwrap() >= 900.0, "{result:#}");
    assert_eq!(result["graces_expired"], serde_json::json!(["files"]));
}

/// A run in workspace `ws` whose script is `cd WS` then `rest`, which writes
/// `out.tmp` there; returned once the file has content.
fn start_writer(agent: &TestAgent, ws: &Dir, rest: &str) -> Run {
    let run = agent.start_run(
        &["--workspace", ws.str(), "--init-timeout", "0"],
        &format!("cd {} {rest}", ws.path.display()),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::metadata(ws.join("out.tmp")).is_ok_and(|m| m.len() > 0)
    }));
    run
}

/// `wfcg status` names each open section on one `critical:` line, whole, also
/// when the holder's command has a newline in it (it was cut there).
#[test]
fn a_critical_line_holds_a_command_with_a_newline_whole() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-files-newline");
    // The holder is `sh -c SCRIPT`, and SCRIPT has two lines.
    let run = start_writer(
        &agent,
        &ws,
        "\nwhile :; do echo x >&3; sleep 0.05; done 3> out.tmp",
    );
    let status = text(&agent.cli_expect(0, &["status", &run.id]).stdout);
    let line = status
        .lines()
        .find(|l| l.starts_with("critical:") && l.contains("out.tmp") && l.contains("sh -c"))
        .unwrap_or_else(|| panic!("no critical: line for out.tmp:\n{status}"));
    assert!(
        line.contains("\\nwhile :;") && line.ends_with(" s"),
        "the command is cut: {line:?}\n{status}"
    );
    agent.kill_ok(&run.id, &["--force"]);
}
