//! Every request of the CLI to the agent has a deadline: an agent that takes the
//! connection and never answers (or a socket nobody accepts on) is an error with
//! exit 5 ("agent unreachable"), never a hung CLI.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::{CommandExt, WFCG, assert_exit_code, text};

/// The deadline the tests give the CLI.
const DEADLINE: &str = "300ms";
/// Longer than any deadline of these tests: a CLI still running then is hung.
const HUNG: Duration = Duration::from_secs(60);

/// `wfcg ARGS` aimed at `socket`, with the short deadline.
fn wfcg(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(WFCG);
    cmd.env("WFCG_SOCKET", socket)
        .env("WFCG_AGENT_TIMEOUT", DEADLINE)
        .env("WFCG_STATE_DIR", socket.with_extension("state"))
        .args(args);
    cmd
}

/// What the CLI is asked against a mute agent: reads, a run and kills.
const COMMANDS: [&[&str]; 6] = [
    &["ps", "--all"],
    &["status", "run_a"],
    &["audit"],
    &["breaker"],
    &["run", "--", "true"],
    &["kill", "run_a", "--max-wait", "0", "--grace", "0"],
];

/// Each command ends with exit 5 and says the agent did not answer in time.
fn each_times_out(socket: &Path) {
    for args in COMMANDS {
        let mut cmd = wfcg(socket, args);
        let out = cmd.output_within(HUNG);
        assert_exit_code(&cmd, &out, 5);
        let err = text(&out.stderr);
        assert!(
            err.contains("did not answer within"),
            "wfcg {args:?}: {err}"
        );
        if args[0] == "kill" {
            // A kill's deadline is its course (here the template's freezes and
            // hard-kill deadline) plus the margin: longer than a query's.
            assert!(!err.contains(&format!("within {DEADLINE}")), "{err}");
        } else {
            assert!(
                err.contains(&format!("within {DEADLINE}")),
                "wfcg {args:?}: {err}"
            );
        }
    }
}

/// A private directory for a socket, and the socket's path in it.
fn socket_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("wfcg-mute")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("agent.sock");
    (dir, socket)
}

#[test]
fn an_agent_that_accepts_and_never_answers_is_exit_5() {
    let (_dir, socket) = socket_dir();
    let listener = UnixListener::bind(&socket).unwrap();
    // Takes every connection and keeps it open, reading nothing, saying nothing.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn);
        }
    });
    each_times_out(&socket);
}

#[test]
fn a_socket_nobody_accepts_on_is_exit_5() {
    let (_dir, socket) = socket_dir();
    // Listening (connections wait in the backlog), never accepting.
    let _listener = UnixListener::bind(&socket).unwrap();
    each_times_out(&socket);
}

#[test]
fn no_socket_is_exit_5_at_once_and_a_bad_deadline_is_usage() {
    let (_dir, socket) = socket_dir();
    let out = wfcg(&socket, &["ps"]).expect_code(5);
    assert!(
        text(&out.stderr).contains("no wfcg agent answers"),
        "{}",
        text(&out.stderr)
    );
    for bad in ["0", "soon"] {
        let out = wfcg(&socket, &["ps"])
            .env("WFCG_AGENT_TIMEOUT", bad)
            .expect_code(2);
        assert!(
            text(&out.stderr).contains("--agent-timeout"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// A kill may take its course (worked out from the host's templates only once
/// the answer takes longer than the margin): an agent that answers a kill after
/// the margin but within the course is answered, not timed out.
#[test]
fn a_kill_answered_after_the_margin_but_within_its_course_is_no_timeout() {
    use std::io::{BufRead, BufReader, Write};
    let (_dir, socket) = socket_dir();
    let listener = UnixListener::bind(&socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                // Read the request head and body, answer after twice the margin.
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length];
                let _ = std::io::Read::read_exact(&mut reader, &mut body);
                std::thread::sleep(Duration::from_millis(600));
                let json = r#"{"kind":"not_found","error":"no such run: run_a"}"#;
                let _ = write!(
                    conn,
                    "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{json}",
                    json.len()
                );
            });
        }
    });
    let mut cmd = wfcg(&socket, &["kill", "run_a", "--force"]);
    let out = cmd.output_within(HUNG);
    assert_exit_code(&cmd, &out, 3);
    assert!(
        text(&out.stderr).contains("no such run"),
        "{}",
        text(&out.stderr)
    );
    // A query gets the margin only.
    let mut cmd = wfcg(&socket, &["status", "run_a"]);
    let out = cmd.output_within(HUNG);
    assert_exit_code(&cmd, &out, 5);
}
