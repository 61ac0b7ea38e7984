//! `wfcg logs`: a detached run's output, escaped on a terminal, followed until
//! the run ends, and readable by the run's owner and root only.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::require_privileges;
use crate::util::{CommandExt, Dir, KillOnDrop, TestAgent, TestUser, WFCG, text};

/// What the run writes: a colour, a tab, a carriage return.
const SCRIPT: &str = r"printf 'one\n\033[31mred\033[0m\tx\rhidden\n'";
const WRITTEN: &[u8] = b"one\n\x1b[31mred\x1b[0m\tx\rhidden\n";

/// Waits until run `id` ended.
fn wait_ended(agent: &TestAgent, id: &str) {
    assert!(
        crate::util::wait_until(Duration::from_secs(15), || !matches!(
            agent.status(id)["status"].as_str(),
            Some("initializing" | "running" | "stopping")
        )),
        "{:#}",
        agent.status(id)
    );
}

#[test]
fn logs_prints_a_detached_runs_output_raw_into_a_pipe_and_escaped_on_a_terminal() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], SCRIPT);
    wait_ended(&agent, &run.id);

    let piped = agent.cli_expect(0, &["logs", &run.id]);
    assert_eq!(piped.stdout, WRITTEN, "{}", text(&piped.stdout));
    let raw = agent.cli_expect(0, &["logs", "--raw", &run.id]);
    assert_eq!(raw.stdout, WRITTEN);

    // On a terminal (script(1) gives the command one), nothing drives it.
    let on_tty = |extra: &str| {
        let mut cmd = Command::new("script");
        cmd.args([
            "-qec",
            &format!("{WFCG} logs {extra} {}", run.id),
            "/dev/null",
        ])
        .envs(agent.env());
        cmd.expect_code(0).stdout
    };
    let shown = text(&on_tty(""));
    assert!(
        shown.contains("\\u001b[31mred\\u001b[0m\tx\\rhidden"),
        "{shown:?}"
    );
    assert!(
        !shown.contains('\x1b'),
        "an escape reached the terminal: {shown:?}"
    );
    let raw_on_tty = on_tty("--raw");
    assert!(
        raw_on_tty.windows(5).any(|w| w == b"\x1b[31m"),
        "--raw escaped: {:?}",
        text(&raw_on_tty)
    );
}

/// `--follow` prints what the run writes while it runs, and ends (exit 0)
/// when the run ends.
#[test]
fn logs_follow_prints_until_the_run_ends() {
    require_privileges!();
    let agent = TestAgent::start();
    let gate = Dir::new("wfcg-logs-gate");
    let go = gate.join("go");
    let run = agent.start_run(
        &[],
        &format!(
            "echo first; while [ ! -e {} ]; do sleep 0.05; done; echo second",
            go.display()
        ),
    );
    let mut follow = KillOnDrop(
        agent
            .wfcg()
            .args(["logs", "--follow", &run.id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = follow.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout);
        let mut line = String::new();
        while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
            if tx.send(std::mem::take(&mut line)).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(first.as_deref(), Ok("first\n"));
    assert!(
        follow.0.try_wait().unwrap().is_none(),
        "--follow ended while the run goes on"
    );
    std::fs::write(&go, "").unwrap();
    let second = rx.recv_timeout(Duration::from_secs(30));
    assert_eq!(second.as_deref(), Ok("second\n"));
    let status = follow
        .wait_timeout(Duration::from_secs(30))
        .expect("--follow goes on after the run ended");
    let mut err = String::new();
    follow
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).ok(), None);

    // Of a run that ended: what it wrote, at once.
    let out = agent
        .wfcg()
        .args(["logs", "-f", &run.id])
        .output_within(Duration::from_secs(30));
    assert_eq!(text(&out.stdout), "first\nsecond\n");
}

#[test]
fn logs_says_what_is_wrong_no_such_run_an_attached_run_a_run_that_wrote_nothing() {
    require_privileges!();
    let agent = TestAgent::start();
    let out = agent.cli_expect(3, &["logs", "no-such-run"]);
    assert!(
        text(&out.stderr).contains("no such run"),
        "{}",
        text(&out.stderr)
    );
    agent.cli_expect(2, &["logs", "../v1/health"]);

    agent.cli_expect(
        0,
        &["run", "-q", "--run-id", "attached", "--", "echo", "hi"],
    );
    let out = agent.cli_expect(1, &["logs", "attached"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("no log") && err.contains("without --detach"),
        "{err}"
    );

    let run = agent.start_run(&[], "true");
    wait_ended(&agent, &run.id);
    let out = agent.cli_expect(0, &["logs", &run.id]);
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("wrote no output"),
        "{}",
        text(&out.stderr)
    );
}

/// A user reads their own run's output; another user may not, neither when the
/// policy does not let them see the run (the agent refuses) nor when it does
/// (`readonly`: the log stays the owner's). Root may.
#[test]
fn a_user_may_not_read_another_users_logs_even_with_view_all() {
    require_privileges!();
    let owner = TestUser::get();
    let viewer = TestUser::other();
    let agent = TestAgent::start_with_policy("[users]\nwfcgtest2 = \"readonly\"\n");
    agent.open_to_all_users();
    let start_as = |user: &TestUser, secret: &str| -> String {
        let out = agent
            .wfcg_as(user)
            .args(["run", "--detach", "--", "sh", "-c"])
            .arg(format!("echo {secret}; exec sleep 1000"))
            .expect_code(0);
        text(&out.stdout).trim().to_string()
    };
    let owners = start_as(&owner, "secret-of-the-owner");
    let viewers = start_as(&viewer, "secret-of-the-viewer");
    let logs_as = |user: &TestUser, id: &str, code: i32| {
        agent.wfcg_as(user).args(["logs", id]).expect_code(code)
    };
    let wrote = |id: &str| {
        crate::util::wait_until(Duration::from_secs(15), || {
            text(&agent.cli_expect(0, &["logs", id]).stdout).contains("secret")
        })
    };
    assert!(wrote(&owners) && wrote(&viewers));

    let own = logs_as(&owner, &owners, 0);
    assert_eq!(text(&own.stdout), "secret-of-the-owner\n");
    // readonly sees the run, but its log is not the viewer's to read.
    agent
        .wfcg_as(&viewer)
        .args(["status", &owners])
        .expect_code(0);
    let denied = logs_as(&viewer, &owners, 4);
    assert!(denied.stdout.is_empty(), "{}", text(&denied.stdout));
    let err = text(&denied.stderr);
    assert!(err.contains("readable by the run's owner"), "{err}");
    // An owner without view_all does not even see the viewer's run.
    let denied = logs_as(&owner, &viewers, 4);
    assert!(denied.stdout.is_empty(), "{}", text(&denied.stdout));
    let root = agent.cli_expect(0, &["logs", &viewers]);
    assert_eq!(text(&root.stdout), "secret-of-the-viewer\n");
}
