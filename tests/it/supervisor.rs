//! The supervisor/payload split (issue 11 item 1): `wfcg run` lives in
//! `runs/<id>/supervisor`, its command in `runs/<id>/payload`; the kill acts on
//! the payload, so a foreground `wfcg run` outlives it and ends with the right
//! code and a line saying why.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, marker, wait_until};

/// A foreground `wfcg run --run-id ID [extra] -- sh -c SCRIPT`, stderr to a file.
fn foreground(
    agent: &TestAgent,
    dir: &tempfile::TempDir,
    id: &str,
    extra: &[&str],
    script: &str,
) -> KillOnDrop {
    KillOnDrop(
        agent
            .marked(&marker("fg"))
            .args(["run", "--run-id", id])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn stderr(dir: &tempfile::TempDir) -> String {
    std::fs::read_to_string(dir.path().join("stderr")).unwrap()
}

/// Waits until the run's supervisor is in its leaf and `n` processes are in the payload.
fn wait_split(agent: &TestAgent, id: &str, supervisor: i32, n: usize) {
    let run = agent.run_cgroup(id);
    let split = wait_until(Duration::from_secs(20), || {
        run.child("supervisor")
            .procs()
            .is_ok_and(|p| p == vec![supervisor])
            && run.child("payload").procs().is_ok_and(|p| p.len() >= n)
    });
    assert!(
        split,
        "supervisor {supervisor} not alone in runs/{id}/supervisor with {n} in payload: {:?} / {:?}",
        run.child("supervisor").procs(),
        run.child("payload").procs()
    );
}

/// The typical stuck workflow: stuck in initialization, ignoring SIGTERM. The
/// monitor's kill needs the hard kill, which used to kill `wfcg run` too (137,
/// nothing said); now it reaches the payload only and `wfcg run` exits 124 and
/// says why.
#[test]
fn a_stuck_run_that_ignores_sigterm_ends_its_foreground_run_with_124_and_the_reason() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("short.toml");
    std::fs::write(&template, "[kill]\nterm_grace = \"300ms\"\n").unwrap();
    let id = format!("stuck-term-{}", std::process::id());
    let t0 = Instant::now();
    let mut child = foreground(
        &agent,
        &dir,
        &id,
        &[
            "--init-timeout",
            "2s",
            "--template",
            template.to_str().unwrap(),
        ],
        "trap '' TERM; sleep 1000; true",
    );
    wait_split(&agent, &id, child.id(), 2);
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .expect("wfcg run still going 30 s after a 2 s init timeout");
    let err = stderr(&dir);
    assert_eq!(status.code(), Some(124), "{status:?}; stderr:\n{err}");
    assert!(
        err.contains("timed out: initialization timeout 2s exceeded"),
        "stderr does not say why:\n{err}"
    );
    assert!(t0.elapsed() < Duration::from_secs(15), "{:?}", t0.elapsed());
    assert!(agent.wait_status(&id, "timed_out"));
    let result = &agent.status(&id)["kill_result"];
    let phases: Vec<&str> = result["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // SIGTERM was ignored: the hard kill ended the payload, then the supervisor left.
    assert!(
        phases.contains(&"kill") && phases.contains(&"supervisor"),
        "{result:#}"
    );
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    assert!(!agent.run_cgroup(&id).exists(), "the run's cgroup is left");
}

/// An operator's kill: the command's status (143 after SIGTERM, 137 after the
/// hard kill) and a line naming who killed it and why.
#[test]
fn an_operators_kill_ends_the_foreground_run_with_the_commands_status_and_who_killed_it() {
    require_privileges!();
    let agent = TestAgent::start();
    for (mode, extra, code) in [("graceful", &[][..], 143), ("force", &["--force"][..], 137)] {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("op-{mode}-{}", std::process::id());
        let mut child = foreground(
            &agent,
            &dir,
            &id,
            &["--init-timeout", "0"],
            "sleep 1000; true",
        );
        wait_split(&agent, &id, child.id(), 2);
        let mut args = vec!["--reason", "testing the split"];
        args.extend_from_slice(extra);
        let result = agent.kill_ok(&id, &args);
        let status = child
            .wait_timeout(Duration::from_secs(20))
            .expect("wfcg run outlived its kill");
        let err = stderr(&dir);
        assert_eq!(
            status.code(),
            Some(code),
            "{mode}: {status:?}\n{err}\n{result:#}"
        );
        assert!(
            err.contains(&format!("run {id} killed by"))
                && err.contains(&format!("({mode}): testing the split")),
            "{mode}: stderr does not say who killed it and why:\n{err}"
        );
        assert_eq!(agent.status(&id)["status"], "killed");
    }
}

/// A signal sent to `wfcg run` is relayed to the command: 128+N, and no kill line.
#[test]
fn a_signal_relayed_to_the_command_gives_128_plus_n() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let id = format!("relay-{}", std::process::id());
    let mut child = foreground(
        &agent,
        &dir,
        &id,
        &["--init-timeout", "0"],
        "sleep 1000; true",
    );
    wait_split(&agent, &id, child.id(), 2);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child.id()).unwrap(),
        rustix::process::Signal::HUP,
    )
    .unwrap();
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
    let err = stderr(&dir);
    assert_eq!(status.code(), Some(128 + 1), "{err}");
    assert!(!err.contains("killed by"), "{err}");
}
