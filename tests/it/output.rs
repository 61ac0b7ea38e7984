//! What the CLI does when its output cannot be written: a closed pipe is a quiet
//! exit 0, a full disk one line and exit 1; never a panic (exit 101).

use std::process::{Command, Stdio};

use crate::require_privileges;
use crate::util::{CommandExt, DEFAULT_TEMPLATE, TestAgent, WFCG, text};

/// `wfcg ARGS | READER` in bash. Returns wfcg's exit status, its stderr and
/// what the reader printed.
fn into_pipe(agent: &TestAgent, args: &str, reader: &str) -> (String, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "{WFCG} {args} 2>/tmp/wfcg-output-err.$$ | {reader} >/tmp/wfcg-output-out.$$; \
             echo ${{PIPESTATUS[0]}}; cat /tmp/wfcg-output-out.$$; \
             cat /tmp/wfcg-output-err.$$ >&2; rm -f /tmp/wfcg-output-*.$$"
        ))
        .envs(agent.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let (status, read) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    (status.to_string(), text(&out.stderr), read.to_string())
}

#[test]
fn a_closed_pipe_is_a_quiet_exit_0_and_a_full_disk_an_error() {
    require_privileges!();
    let agent = TestAgent::start();
    for _ in 0..3 {
        agent.cli_expect(0, &["run", "-q", "--", "true"]);
    }
    // `| true`: the reader is gone before wfcg writes; `| head -1`: it goes after
    // the first line.
    for reader in ["true", "head -1"] {
        for args in [
            "ps --all",
            "audit",
            "ps --all --json",
            "audit --json",
            "audit export",
            "templates",
            "breaker",
            "generate bash",
        ] {
            let (status, stderr, _) = into_pipe(&agent, args, reader);
            assert_eq!(
                status, "0",
                "wfcg {args} | {reader}: exit {status}, stderr: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "wfcg {args}: {stderr}");
            assert!(
                !stderr.contains("wfcg:"),
                "wfcg {args} | {reader}: {stderr}"
            );
        }
    }
    let (_, _, first) = into_pipe(&agent, "ps --all", "head -1");
    assert!(first.starts_with("RUN"), "the header comes first: {first}");
    for args in [
        &["ps", "--all"][..],
        &["audit"],
        &["audit", "--json"],
        &["templates"],
        &["generate", "man"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = agent.wfcg().args(args).stdout(full).expect_code(1);
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("cannot write the output"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: one line: {stderr}");
    }
}

/// The column of `ps` or `audit` output that starts where `header` names it.
fn column_at<'a>(table: &'a str, header: &str, row_starting: &str) -> &'a str {
    let head = table.lines().next().unwrap();
    let at = head
        .find(header)
        .unwrap_or_else(|| panic!("no {header}: {table}"));
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with(row_starting))
        .unwrap_or_else(|| panic!("no row of {row_starting}: {table}"));
    row.get(at..)
        .unwrap_or_else(|| panic!("{row:?} ends before {header}"))
}

#[test]
fn ps_columns_line_up_with_a_long_workflow_and_audit_has_a_header() {
    require_privileges!();
    let agent = TestAgent::start();
    let long = agent.start_run(
        &[
            "--workflow",
            "a-workflow-with-a-rather-long-name",
            "--template",
            DEFAULT_TEMPLATE,
        ],
        "exec sleep 1000",
    );
    let short = agent.start_run(&[], "exec sleep 1001");
    let ps = text(&agent.cli_expect(0, &["ps"]).stdout);
    for (run, command) in [
        (&long, "sh -c exec sleep 1000"),
        (&short, "sh -c exec sleep 1001"),
    ] {
        assert!(
            ["initializing", "running"]
                .iter()
                .any(|s| column_at(&ps, "STATUS", &run.id).starts_with(s)),
            "{}: STATUS is not under its header:\n{ps}",
            run.id
        );
        assert!(
            column_at(&ps, "COMMAND", &run.id).starts_with(command),
            "{}: COMMAND is not under its header:\n{ps}",
            run.id
        );
    }

    let audit = text(&agent.cli_expect(0, &["audit"]).stdout);
    let head = audit.lines().next().unwrap_or_default();
    for column in [
        "SEQ", "TIME", "ACTOR", "ACTION", "RUN", "DECISION", "OUTCOME",
    ] {
        assert!(head.contains(column), "no {column} in the header:\n{audit}");
    }
    let records: serde_json::Value =
        serde_json::from_slice(&agent.cli_expect(0, &["audit", "--json"]).stdout).unwrap();
    let first = &records[0];
    let seq = first["seq"].to_string();
    assert!(
        column_at(&audit, "ACTION", &seq).starts_with(first["action"].as_str().unwrap()),
        "ACTION is not under its header:\n{audit}"
    );
    agent.kill_ok(&long.id, &["--force"]);
    agent.kill_ok(&short.id, &["--force"]);
}

/// An error said on a stderr that cannot be written (`2>/dev/full`) is no panic:
/// the command keeps its exit code (`eprintln!` panicked with 101).
#[test]
fn an_unwritable_stderr_keeps_the_exit_code() {
    let dir = crate::util::Dir::new("wfcg-output-stderr");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[kill]\nbogus = 1\n").unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    Command::new(WFCG)
        .args(["template", "check"])
        .arg(&bad)
        .stderr(full)
        .expect_code(2);
}
