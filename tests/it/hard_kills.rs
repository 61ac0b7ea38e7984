//! Hard kills, second pass (issue 23, items 1, 4 and parts of 5), with real
//! programs on the real kernel: a run's log is not a critical section (its
//! stdout/stderr redirected into the workspace, by the executor or by itself),
//! nor is a lock file held but never written; a file written in place and a
//! temp file before its rename still are. The supervisor never blocks on a
//! user's file in its run directory, a killed run never exits 0, and `wfcg top`
//! ends when its terminal goes away or it is sent SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::require_privileges;
use crate::top::{Tmux, top_command};
use crate::util::{
    Dir, KillOnDrop, Run, TestAgent, TestUser, WFCG, alive, cmdline, marker, pids_with_env,
    wait_until,
};

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

/// A detached run of `sh -c SCRIPT` in workspace `ws`, returned once `file` in
/// the workspace holds `want`.
fn start_in(agent: &TestAgent, ws: &Dir, script: &str, file: &str, want: &str) -> Run {
    let run = agent.start_run(
        &["--workspace", ws.str(), "--init-timeout", "0"],
        &format!("cd '{}' && {script}", ws.path.display()),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(ws.join(file)).is_ok_and(|t| t.contains(want))
        }),
        "the run did not write {want:?} to {file}"
    );
    run
}

/// A graceful kill of a run whose log is `file` in the workspace: no files
/// section, no wait, and well under a second in all.
fn assert_log_is_not_a_section(agent: &TestAgent, run: &Run, what: &str) {
    let result = agent.kill_ok(&run.id, &[]);
    let ms = result["duration_ms"].as_f64().unwrap();
    eprintln!("graceful kill of a run with {what}: {ms:.0} ms");
    assert!(
        sections(&result, "files").is_empty(),
        "{what} reported as a files section: {result:#}"
    );
    assert_eq!(result["waited_ms"], 0.0, "{result:#}");
    assert!(ms < 1000.0, "the kill took {ms} ms: {result:#}");
    agent.wait_run_gone(run);
}

/// `exec > $WS/out.log 2>&1` inside the workflow: its own stdout and stderr
/// into the workspace, opened without O_APPEND. It used to cost every graceful
/// kill the whole files grace (10.1 s).
#[test]
fn a_workflow_that_redirects_its_own_output_into_the_workspace_is_killed_at_once() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-exec");
    let run = start_in(
        &agent,
        &ws,
        &format!(
            "exec > '{}' 2>&1; while :; do echo tick; sleep 0.2; done",
            ws.join("out.log").display()
        ),
        "out.log",
        "tick",
    );
    assert_log_is_not_a_section(&agent, &run, "`exec > $WS/out.log 2>&1`");
}

/// `cmd > ws/build.log 2>&1`: a command of the workflow writing to a log the
/// workflow's shell opened for it.
#[test]
fn a_command_whose_output_the_workflow_redirects_into_the_workspace_is_killed_at_once() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-cmd");
    let run = start_in(
        &agent,
        &ws,
        "sh -c 'while :; do echo building; sleep 0.2; done' > ws-build.log 2>&1",
        "ws-build.log",
        "building",
    );
    assert_log_is_not_a_section(&agent, &run, "`cmd > build.log 2>&1`");
}

/// The Python the writers below run: the system's.
pub(crate) fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A run of `python3 -c CODE` in workspace `ws`, returned once `file` is there
/// with content.
fn start_python(agent: &TestAgent, ws: &Dir, code: &str, file: &str) -> Run {
    let code = code.replace('\'', "'\\''");
    let run = agent.start_run(
        &["--workspace", ws.str(), "--init-timeout", "0"],
        &format!(
            "cd '{}' && exec {} -c '{code}'",
            ws.path.display(),
            python3()
        ),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            std::fs::metadata(ws.join(file)).is_ok_and(|m| m.len() > 0)
        }),
        "the writer did not start writing {file}"
    );
    run
}

/// A graceful kill with a files grace of 1 s: the result must report `path`
/// as the only files section and have waited its grace.
fn assert_waited_for(agent: &TestAgent, run: &Run, path: &Path) {
    let result = agent.kill_ok(&run.id, &["--grace-files", "1s"]);
    assert_eq!(
        sections(&result, "files"),
        vec![path.display().to_string()],
        "{result:#}"
    );
    let waited = result["waited_ms"].as_f64().unwrap();
    assert!((900.0..5000.0).contains(&waited), "{result:#}");
    assert_eq!(result["graces_expired"], serde_json::json!(["files"]));
    agent.wait_run_gone(run);
}

/// The other side: a file written in place (opened for writing without
/// O_APPEND, through an fd of its own) is a write a kill can tear.
#[test]
fn a_file_python_writes_in_place_is_still_waited_for() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-inplace");
    std::fs::write(ws.join("data.bin"), vec![0u8; 4096]).unwrap();
    let run = start_python(
        &agent,
        &ws,
        "import time\nf = open('data.bin', 'r+b')\nopen('started', 'w').write('yes')\nwhile True:\n    f.seek(0); f.write(b'x' * 4096); f.flush(); time.sleep(0.05)",
        "started",
    );
    assert_waited_for(&agent, &run, &ws.join("data.bin"));
}

/// A temp file being written, to be renamed over its target.
#[test]
fn a_temp_file_python_writes_before_its_rename_is_still_waited_for() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-rename");
    let run = start_python(
        &agent,
        &ws,
        "import os, time\nf = open('out.json.tmp', 'w')\nfor i in range(100000):\n    f.write('{}\\n'); f.flush(); time.sleep(0.05)\nf.close(); os.replace('out.json.tmp', 'out.json')",
        "out.json.tmp",
    );
    assert_waited_for(&agent, &run, &ws.join("out.json.tmp"));
}

/// A lock file held with flock for a process's whole life and never written
/// (empty, as codex's `*.lock`; or there before the run and unchanged) is not a
/// files section; a file written under a lock still is.
#[test]
fn a_lock_file_held_but_never_written_is_not_a_section() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-flock");
    std::fs::create_dir(ws.join("locks")).unwrap();
    std::fs::write(ws.join("locks/old.lock"), "4242\n").unwrap();
    // The run starts after the old lock's last change (its mtime is in the past).
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(ws.join("locks/old.lock"))
        .unwrap()
        .set_modified(past)
        .unwrap();
    let run = start_python(
        &agent,
        &ws,
        "import fcntl, time\n\
         empty = open('locks/empty.lock', 'w')\n\
         fcntl.flock(empty, fcntl.LOCK_EX)\n\
         old = open('locks/old.lock', 'r+')\n\
         fcntl.flock(old, fcntl.LOCK_EX)\n\
         data = open('locked.dat', 'w')\n\
         fcntl.flock(data, fcntl.LOCK_EX)\n\
         while True:\n    data.write('x'); data.flush(); time.sleep(0.05)",
        "locked.dat",
    );
    assert_waited_for(&agent, &run, &ws.join("locked.dat"));
}

/// The same lock files alone: the kill does not wait at all.
#[test]
fn a_run_holding_only_lock_files_is_killed_without_waiting() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-flock-only");
    let run = start_python(
        &agent,
        &ws,
        "import fcntl, os, time\n\
         os.makedirs('tmp/arg0', exist_ok=True)\n\
         a = open('tmp/arg0/.lock', 'w'); fcntl.flock(a, fcntl.LOCK_EX)\n\
         b = open('thread.lock', 'w'); fcntl.flock(b, fcntl.LOCK_EX)\n\
         open('started', 'w').write('yes')\n\
         time.sleep(1000)",
        "started",
    );
    let result = agent.kill_ok(&run.id, &[]);
    assert!(sections(&result, "files").is_empty(), "{result:#}");
    assert_eq!(result["waited_ms"], 0.0, "{result:#}");
    agent.wait_run_gone(&run);
}

/// A `wfcg run` in the foreground, with `extra` options: the child.
fn foreground_run(cmd: &mut Command, id: &str, extra: &[&str], script: &str) -> KillOnDrop {
    KillOnDrop(
        cmd.args(["run", "-q", "--run-id", id])
            .args(extra)
            .arg("--")
            .args(["sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// A user's FIFO where the stop reason goes: the supervisor (the user's own
/// `wfcg run`) used to open it blocking, and sat there until the agent killed
/// the whole run after the supervisor's grace (5 s). Now it is refused at once.
#[test]
fn a_fifo_at_stop_reason_does_not_hold_up_the_supervisor() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let ws = tempfile::Builder::new()
        .prefix("wfcg-hk-fifo")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(ws.path(), Some(user.uid), Some(user.gid)).unwrap();
    let ready = ws.path().join("ready");
    let id = format!("hk-fifo-{}", std::process::id());
    let mut run = foreground_run(
        agent.wfcg_as(&user).current_dir(ws.path()),
        &id,
        &[],
        &format!(
            "mkfifo \"$WFCG_RUN_DIR/stop-reason\" && touch '{}' && exec sleep 1000",
            ready.display()
        ),
    );
    let up = wait_until(Duration::from_secs(20), || ready.exists());
    if !up {
        let _ = run.0.kill();
        let _ = run.0.wait();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut err);
        panic!("the user's run did not start: {err}");
    }
    let t = Instant::now();
    let (_, result) = agent.kill(&id, &[]);
    let status = run
        .wait_timeout(Duration::from_secs(10))
        .expect("wfcg run did not exit");
    let took = t.elapsed();
    eprintln!("kill to the supervisor's exit with a FIFO at stop-reason: {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}: {result:#}");
    assert_eq!(status.code(), Some(143), "{result:#}");
    let supervisor = result["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "supervisor")
        .cloned()
        .unwrap_or_default();
    assert_eq!(supervisor["detail"], "the supervisor exited", "{result:#}");
}

/// A payload that catches SIGTERM and exits 0 (as gemini does): `wfcg run`
/// still says the run was killed, with a non-zero code (128 + SIGTERM), as
/// `status` does.
#[test]
fn a_killed_run_exits_non_zero_even_when_its_command_exits_0_on_sigterm() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-exit0");
    let started = ws.join("started");
    let id = format!("hk-exit0-{}", std::process::id());
    let mut cmd = agent.marked(&marker("exit0"));
    let mut run = foreground_run(
        &mut cmd,
        &id,
        &[],
        &format!(
            "trap 'exit 0' TERM; touch '{}'; while :; do sleep 0.1; done",
            started.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(20), || started.exists()));
    agent.kill_ok(&id, &[]);
    let status = run
        .wait_timeout(Duration::from_secs(10))
        .expect("wfcg run did not exit");
    let mut err = String::new();
    std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("killed by"), "{err}");
    assert!(agent.wait_status(&id, "killed"));
    // The command's own code stays what it was: its exit 0 is on record.
    let rec = agent.status(&id);
    assert_eq!(rec["exit_code"], 0, "{rec:#}");
}

/// The same, with the command removing `$WFCG_RUN_DIR/stop-reason` in its
/// handler before it exits 0: `wfcg run` knows it was killed from the agent
/// (the answer to its exit report), not from a file the command controls; for
/// a deadline it exits 124 the same way.
#[test]
fn a_killed_run_exits_non_zero_even_when_its_command_removes_the_stop_reason() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-unsaid");
    for (case, extra, want) in [
        ("killed", &[][..], 143),
        ("timed_out", &["--timeout", "2s"][..], 124),
    ] {
        let started = ws.join(case);
        let id = format!("hk-unsaid-{case}-{}", std::process::id());
        let mut cmd = agent.marked(&marker(case));
        let mut run = foreground_run(
            &mut cmd,
            &id,
            extra,
            &format!(
                r#"trap 'rm -f "$WFCG_RUN_DIR/stop-reason"; exit 0' TERM; touch '{}'; while :; do sleep 0.1; done"#,
                started.display()
            ),
        );
        assert!(wait_until(Duration::from_secs(20), || started.exists()));
        if case == "killed" {
            agent.kill_ok(&id, &[]);
        }
        let status = run
            .wait_timeout(Duration::from_secs(20))
            .expect("wfcg run did not exit");
        let mut err = String::new();
        std::io::Read::read_to_string(run.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(want), "{case}: {err}");
        assert!(agent.wait_status(&id, case), "{:#}", agent.status(&id));
        let rec = agent.status(&id);
        assert_eq!(rec["exit_code"], 0, "{rec:#}");
    }
}

/// The agent removes the stop reason it wrote before it looks at what is left
/// in the run directory (so that one holding nothing else needs no removal
/// process): whatever the run left there, a directory by that name included,
/// is still removed with it.
#[test]
fn a_run_dir_with_a_tree_at_stop_reason_is_removed_whole_by_a_force_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    let ws = Dir::new("wfcg-hk-rundir");
    let said = ws.join("run-dir");
    let run = agent.start_run(
        &[],
        &format!(
            r#"d="$WFCG_RUN_DIR"; mkdir -p "$d/stop-reason/deep" && echo x > "$d/stop-reason/deep/f" && echo y > "$d/left" && echo "$d" > '{0}.tmp' && mv '{0}.tmp' '{0}'; exec sleep 1000"#,
            said.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(20), || said.exists()));
    let dir = std::path::PathBuf::from(std::fs::read_to_string(&said).unwrap().trim());
    assert!(dir.join("stop-reason/deep/f").exists());
    let result = agent.kill_ok(&run.id, &["--force"]);
    assert_eq!(
        result["cleanup_status"]["run_dir_removed"], true,
        "{result:#}"
    );
    assert!(!dir.exists(), "{} is left: {result:#}", dir.display());
}

/// The agent unlinks the stop reason and the exit status as the run's owner, in
/// the run directory opened without following symlinks: a real user's run that
/// puts a symlink to a root-owned file at `$WFCG_RUN_DIR/stop-reason`, and one to
/// a root-owned directory at `exit-status`, loses its symlinks, never their
/// targets, to root's force kill.
#[test]
fn a_users_symlink_at_stop_reason_never_sends_the_cleanup_to_roots_file() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let victims = tempfile::Builder::new()
        .prefix("wfcg-hk-victim")
        .tempdir()
        .unwrap();
    let victim = victims.path().join("roots-file");
    std::fs::write(&victim, "root's\n").unwrap();
    let ws = tempfile::Builder::new()
        .prefix("wfcg-hk-link")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(ws.path(), Some(user.uid), Some(user.gid)).unwrap();
    let said = ws.path().join("run-dir");
    let id = format!("hk-link-{}", std::process::id());
    let mut run = foreground_run(
        agent.wfcg_as(&user).current_dir(ws.path()),
        &id,
        &[],
        &format!(
            "ln -s '{}' \"$WFCG_RUN_DIR/stop-reason\" && ln -s '{}' \"$WFCG_RUN_DIR/exit-status\" && echo \"$WFCG_RUN_DIR\" > '{2}.tmp' && mv '{2}.tmp' '{2}' && exec sleep 1000",
            victim.display(),
            victims.path().display(),
            said.display()
        ),
    );
    if !wait_until(Duration::from_secs(20), || said.exists()) {
        let _ = run.0.kill();
        let _ = run.0.wait();
        panic!("the user's run did not start");
    }
    let dir = std::path::PathBuf::from(std::fs::read_to_string(&said).unwrap().trim());
    let result = agent.kill_ok(&id, &["--force"]);
    let _ = run.wait_timeout(Duration::from_secs(10));
    assert_eq!(
        std::fs::read_to_string(&victim).ok().as_deref(),
        Some("root's\n"),
        "root's file was touched: {result:#}"
    );
    // The exit-status link to root's directory: unlinked as a name, never
    // followed (the directory and its file stay).
    assert!(victims.path().is_dir() && victim.exists(), "{result:#}");
    assert!(
        wait_until(Duration::from_secs(20), || !dir.exists()),
        "{} is left: {result:#}",
        dir.display()
    );
}

/// The pid of the `wfcg top` aimed at `agent`.
fn top_pid(agent: &TestAgent) -> i32 {
    let me = format!("{WFCG} top");
    let socket = agent.socket.display().to_string();
    let mut top = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        top = pids_with_env("WFCG_SOCKET", &socket)
            .into_iter()
            .filter(|&p| cmdline(p) == me)
            .collect();
        top.len() == 1
    }));
    top[0]
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// tmux killed under a running `wfcg top`: its terminal is gone (a hung-up
/// pty, reads fail with EIO). It used to read it in a loop at 100% CPU and
/// never exit; now it is gone at once.
#[test]
fn top_exits_when_its_terminal_goes_away() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmux = Tmux::start(80, 24, &top_command(&agent, "sleep 60"));
    tmux.wait_screen("the dashboard", |s| s.contains("Latest kills"));
    let pid = top_pid(&agent);
    let before = cpu_ticks(pid).unwrap();
    let t = Instant::now();
    let killed = tmux.cmd().arg("kill-server").status().unwrap();
    assert!(killed.success());
    let gone = wait_until(Duration::from_secs(5), || !alive(pid));
    let spent = cpu_ticks(pid).map(|after| after - before);
    if !gone {
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
    assert!(
        gone,
        "wfcg top still runs 5 s after its terminal went away ({spent:?} ticks of CPU since)"
    );
    eprintln!("wfcg top gone {:?} after tmux was killed", t.elapsed());
}

/// SIGTERM ends `wfcg top` (128 + SIGTERM) within a deadline, terminal or not.
#[test]
fn top_exits_on_sigterm_within_a_deadline() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmux = Tmux::start(80, 24, &top_command(&agent, "sleep 60"));
    tmux.wait_screen("the dashboard", |s| s.contains("Latest kills"));
    let pid = top_pid(&agent);
    let t = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(3), || !alive(pid)));
    assert_eq!(crate::top::wait_exit(&agent, &tmux), "143");
    eprintln!("wfcg top gone {:?} after SIGTERM", t.elapsed());
}
