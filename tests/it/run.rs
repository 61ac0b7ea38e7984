//! `wfcg run`: exit status, signals, detach, run ids, the run's directories,
//! leftovers, and what a user sees without an agent.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::process::Signal;

use crate::require_privileges;
use crate::util::{self, CommandExt, KillOnDrop, Run, TestAgent, TestUser, wait_until};

/// A command given without `--` is refused (exit 2, nothing started: no agent
/// is needed to say so) with the line to write.
#[test]
fn run_without_dashes_says_to_write_them() {
    for (args, want) in [
        (&["run", "sleep", "1"][..], "wfcg run [OPTIONS] -- sleep 1"),
        (
            &["run", "--timeout", "5", "make", "--", "test"][..],
            "wfcg run [OPTIONS] -- make test",
        ),
    ] {
        let out = std::process::Command::new(util::WFCG)
            .args(args)
            .env("WFCG_SOCKET", "/nonexistent/agent.sock")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("the command goes after `--`") && err.contains(want),
            "{err}"
        );
    }
    // With `--`, or without a command, clap's own usage is unchanged.
    let out = std::process::Command::new(util::WFCG)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: wfcg run [OPTIONS] -- <CMD>..."));
}

#[test]
fn exit_status_is_relayed() {
    require_privileges!();
    let agent = TestAgent::start();
    for (script, want) in [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 128 + 9)] {
        let out = agent.cli(&["run", "-q", "--", "sh", "-c", script]);
        assert_eq!(
            out.status.code(),
            Some(want),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Starts `wfcg run` in the foreground with a shell that traps `name`, sends the
/// supervisor `signal` as a process would, and checks the command got it.
fn signal_is_forwarded(signal: Signal, name: &str, code: i32) {
    let agent = TestAgent::start();
    let seen = agent.dir.path().join("seen");
    let marker = util::marker("fwd");
    let script = format!(
        r#"trap 'echo got-{name} > "$F"; exit {code}' {name}; while :; do sleep 0.1; done"#
    );
    let mut supervisor = KillOnDrop(
        agent
            .marked(&marker)
            .env("F", &seen)
            .args(["run", "-q", "--", "sh", "-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning wfcg run"),
    );
    // The run exists and its shell set the trap: it runs a `sleep` of its loop.
    let mut run_id = None;
    let started = wait_until(Duration::from_secs(15), || {
        run_id = agent
            .ps(false)
            .into_iter()
            .find(|r| r["pid"] == supervisor.id() && r["processes"].as_u64() >= Some(2))
            .map(|r| r["run_id"].as_str().unwrap().to_string());
        run_id.is_some()
    });
    assert!(
        started,
        "the run did not start; agent log:\n{}",
        agent.log()
    );
    let run = Run {
        id: run_id.unwrap(),
        marker,
    };

    rustix::process::kill_process(
        rustix::process::Pid::from_raw(supervisor.id()).unwrap(),
        signal,
    )
    .unwrap();

    let status = supervisor
        .wait_timeout(Duration::from_secs(15))
        .expect("wfcg run did not end");
    assert_eq!(status.code(), Some(code));
    assert_eq!(
        std::fs::read_to_string(&seen).ok().as_deref(),
        Some(format!("got-{name}\n").as_str()),
        "the command did not see SIG{name}"
    );
    let info = agent.status(&run.id);
    assert_eq!(info["status"], "exited");
    assert_eq!(info["exit_code"], code);
    agent.wait_run_gone(&run);
}

#[test]
fn ctrl_c_is_forwarded_to_the_command() {
    require_privileges!();
    signal_is_forwarded(Signal::INT, "INT", 130);
}

#[test]
fn sigterm_is_forwarded_to_the_command() {
    require_privileges!();
    signal_is_forwarded(Signal::TERM, "TERM", 143);
}

#[test]
fn detach_prints_the_run_id_and_returns_while_the_run_goes_on() {
    require_privileges!();
    let agent = TestAgent::start();
    let marker = util::marker("detach");
    let out = agent
        .marked(&marker)
        .args(["run", "--detach", "--", "sh", "-c"])
        .arg("echo to-stdout; echo to-stderr >&2; exec sleep 1000")
        .output()
        .expect("running wfcg run --detach");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stdout = String::from_utf8(out.stdout).unwrap();
    let id = stdout.strip_suffix('\n').unwrap_or(&stdout);
    let hex = id.strip_prefix("run_").unwrap_or("");
    assert!(
        hex.len() == 12
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "stdout is not one run id: {stdout:?}"
    );
    let run = Run {
        id: id.to_string(),
        marker,
    };
    // No READY=1 sent, but its output makes it ready (the default readiness).
    assert!(
        agent.wait_status(&run.id, "running"),
        "{:#}",
        agent.status(&run.id)
    );
    let info = agent.status(&run.id);
    assert!(info["processes"].as_u64() > Some(0), "{info:#}");
    let log = PathBuf::from(info["log_path"].as_str().expect("a log_path"));
    let logged = wait_until(Duration::from_secs(15), || {
        std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("to-stdout") && l.contains("to-stderr"))
    });
    assert!(
        logged,
        "the output did not reach {}: {:?}",
        log.display(),
        std::fs::read_to_string(&log)
    );

    agent.kill_ok(&run.id, &["--force"]);
    agent.assert_run_gone(&run);
}

#[test]
fn bad_run_ids_are_refused_with_exit_2_before_anything_is_created() {
    require_privileges!();
    let agent = TestAgent::start();
    let ran = agent.dir.path().join("ran");
    let too_long = "a".repeat(65);
    // NUL cannot travel in argv: see agent::the_api_refuses_bad_run_ids.
    for id in ["../x", "a/b", "", too_long.as_str()] {
        let out = agent
            .wfcg()
            .args(["run", "--run-id", id, "--", "touch"])
            .arg(&ran)
            .expect_code(2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("run id"), "run --run-id {id:?}: {stderr}");
        for verb in ["kill", "status"] {
            agent.cli_expect(2, &[verb, id]);
        }
    }
    assert!(!ran.exists(), "the command ran");
    agent.assert_nothing_created();
}

/// Parses the two lines `$TMPDIR` and `$WFCG_RUN_DIR` a run wrote.
fn dirs_reported(report: &Path) -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(report).unwrap();
    let mut lines = text.lines().map(PathBuf::from);
    (lines.next().unwrap(), lines.next().unwrap())
}

/// Shell that fails unless its TMPDIR and WFCG_RUN_DIR are directories, leaves a
/// file in each, and writes their paths to `report` (atomically).
fn check_dirs_script(report: &Path) -> String {
    let r = report.display();
    format!(
        r#"test -d "$TMPDIR" && test -d "$WFCG_RUN_DIR" || exit 1
        touch "$TMPDIR/scratch" "$WFCG_RUN_DIR/note" || exit 1
        printf '%s\n%s\n' "$TMPDIR" "$WFCG_RUN_DIR" > {r}.tmp && mv {r}.tmp {r}"#
    )
}

#[test]
fn tmpdir_and_run_dir_exist_while_a_run_runs_and_go_when_it_is_killed() {
    require_privileges!();
    let agent = TestAgent::start();
    let report = agent.dir.path().join("dirs");
    let run = agent.start_run(
        &[],
        &format!("{} && exec sleep 1000", check_dirs_script(&report)),
    );
    assert!(wait_until(Duration::from_secs(15), || report.exists()));
    let (tmpdir, run_dir) = dirs_reported(&report);
    assert_ne!(tmpdir, run_dir);
    assert!(tmpdir.join("scratch").is_file());
    assert!(run_dir.join("note").is_file());

    let result = agent.kill_ok(&run.id, &[]);

    assert!(!tmpdir.exists(), "TMPDIR {} is left", tmpdir.display());
    assert!(
        !run_dir.exists(),
        "WFCG_RUN_DIR {} is left",
        run_dir.display()
    );
    assert_eq!(result["cleanup_status"]["tmpdir_removed"], true);
    assert_eq!(result["cleanup_status"]["run_dir_removed"], true);
    agent.assert_run_gone(&run);
}

#[test]
fn tmpdir_and_run_dir_go_when_the_command_exits() {
    require_privileges!();
    let agent = TestAgent::start();
    let report = agent.dir.path().join("dirs");
    let out = agent.cli(&["run", "-q", "--", "sh", "-c", &check_dirs_script(&report)]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the command did not find its directories: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (tmpdir, run_dir) = dirs_reported(&report);
    let removed = wait_until(Duration::from_secs(15), || {
        !tmpdir.exists() && !run_dir.exists()
    });
    assert!(
        removed,
        "left: TMPDIR {} {}, WFCG_RUN_DIR {} {}",
        tmpdir.display(),
        tmpdir.exists(),
        run_dir.display(),
        run_dir.exists()
    );
}

#[test]
fn processes_left_behind_by_an_exiting_command_are_killed() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = Run {
        id: util::marker("leftover"),
        marker: util::marker("leftover"),
    };
    let out = agent
        .marked(&run.marker)
        .args(["run", "-q", "--run-id", &run.id, "--"])
        // The leftover must not hold our stdout, or a failure would hang `output()`.
        .args(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!; exit 0"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leftover: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .expect("the command printed the pid of its background sleep");

    agent.wait_run_gone(&run);

    assert!(
        !util::alive(leftover) || util::cmdline(leftover) != "sleep 1000",
        "the leftover {leftover} lives"
    );
    let info = agent.status(&run.id);
    assert_eq!(info["status"], "exited", "{info:#}");
    assert_eq!(info["exit_code"], 0, "{info:#}");
}

#[test]
fn without_an_agent_a_user_gets_exit_5_and_how_to_start_one() {
    require_privileges!();
    let user = TestUser::get();
    let dir = tempfile::Builder::new()
        .prefix("wfcg-test")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    let socket = dir.path().join("agent.sock");
    let out = user
        .command(util::WFCG)
        .env("WFCG_SOCKET", &socket)
        .env("WFCG_STATE_DIR", dir.path().join("state"))
        .args(["run", "--", "echo", "ran"])
        .expect_code(5);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("start") && stderr.contains("wfcg agent"),
        "no hint how to start an agent: {stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ran"),
        "the command ran"
    );
    assert!(!socket.exists(), "an agent was started");
}

/// Root's `wfcg run` with no agent answering starts one in the background and
/// runs the command through it (the create request finds no agent; only then is
/// one started).
#[test]
fn without_an_agent_root_gets_one_started_and_the_command_runs() {
    require_privileges!();
    let agent = TestAgent::unstarted();
    let out = agent
        .wfcg()
        .args(["run", "--", "echo", "ran"])
        .output()
        .unwrap();
    // The agent it started: the process whose command line names this socket.
    let socket = agent.socket.to_string_lossy().into_owned();
    let started: Vec<i32> = wfcg::procfs::all_pids(Path::new("/proc"))
        .into_iter()
        .filter(|&p| {
            let cmd = util::cmdline(p);
            cmd.contains(" agent ") && cmd.contains(&socket)
        })
        .collect();
    for &pid in &started {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            Signal::TERM,
        );
    }
    assert!(
        wait_until(Duration::from_secs(10), || started
            .iter()
            .all(|&p| !util::alive(p))),
        "the agent it started did not stop"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ran\n");
    assert_eq!(started.len(), 1, "agents started: {started:?}");
}
