//! The life of a run (issue 5 item 9): sd_notify from real clients
//! (`systemd-notify` and `wfcg notify`) moves a run from initializing to running,
//! heartbeats keep it alive, EXTEND_TIMEOUT_USEC moves its deadline, messages from
//! outside the run are dropped; the monitor kills runs past a deadline (exit 124
//! in the foreground, `timed_out`, audited as `auto_kill` by `monitor`), also
//! after an agent restart; `ps --stuck` and `kill --stuck` find only stuck runs;
//! a restart loop while initializing is flagged but not killed.
//!
//! These tests mostly wait on the clock: each asserts both that nothing happens
//! too early and that the deadline does fire, with slack for a loaded host.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, WFCG, marker, text, wait_until};

/// `systemd-notify` (Debian package `systemd`): the real sd_notify client.
fn systemd_notify() -> PathBuf {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("systemd-notify"))
        .find(|p| p.is_file());
    found.expect("systemd-notify not found on PATH: install the Debian package `systemd`")
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Waits up to `timeout` for a run's status to become `want`; how long it took.
fn time_until_status(
    agent: &TestAgent,
    run_id: &str,
    want: &str,
    timeout: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    wait_until(timeout, || agent.status(run_id)["status"] == want).then(|| t.elapsed())
}

/// Asserts that a run keeps status `want` for `window` (polled), and returns it then.
fn stays(agent: &TestAgent, run_id: &str, want: &str, window: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let changed = wait_until(window, || {
        last = agent.status(run_id);
        last["status"] != want
    });
    assert!(!changed, "run {run_id} did not stay {want}: {last:#}");
    last
}

/// `wfcg audit --run RUN --json` parsed.
fn audit(agent: &TestAgent, run_id: &str) -> Vec<serde_json::Value> {
    let out = agent.cli(&["audit", "--run", run_id, "--json"]);
    assert!(out.status.success(), "audit: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The `auto_kill` records of a run (each by `monitor`).
fn auto_kills(agent: &TestAgent, run_id: &str) -> Vec<serde_json::Value> {
    audit(agent, run_id)
        .into_iter()
        .filter(|r| r["action"] == "auto_kill")
        .collect()
}

/// Asserts that a run was killed by the monitor: status `timed_out`, an
/// `auto_kill` audit record by `monitor` whose reason contains `why`, and nothing left.
fn assert_timed_out(agent: &TestAgent, run: &crate::util::Run, why: &str) {
    // The kill may still be finishing (`stopping`) when its supervisor exits.
    agent.wait_status(&run.id, "timed_out");
    let st = agent.status(&run.id);
    assert_eq!(st["status"], "timed_out", "{st:#}");
    // The record is written by the audit writer, a moment after the status.
    let mut kills = Vec::new();
    wait_until(Duration::from_secs(10), || {
        kills = auto_kills(agent, &run.id);
        !kills.is_empty()
    });
    assert_eq!(kills.len(), 1, "{kills:#?}");
    assert_eq!(kills[0]["actor_name"], "monitor", "{:#}", kills[0]);
    let reason = kills[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "{why:?} not in the reason {reason:?}");
    agent.wait_run_gone(run);
}

/// A directory the workflow and the test share (files as signals both ways).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wfcg-lifecycle")
        .tempdir()
        .unwrap();
    // Workflows run as root here, but keep it usable by anyone, as a host's would be.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    dir
}

/// A shell line that waits for `file` to exist.
fn wait_for_file(file: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.05; done", file.display())
}

fn touch(file: &Path) {
    std::fs::write(file, b"").unwrap();
}

#[test]
fn systemd_notify_ready_moves_a_run_from_initializing_to_running() {
    require_privileges!();
    let notify = systemd_notify();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let (said, go) = (dir.path().join("said"), dir.path().join("go"));
    let run = agent.start_run(
        &["--init-timeout", "1m"],
        &format!(
            "{n} --status='cloning repo' && touch '{said}'; {wait}; {n} --ready --status='building'; sleep 100",
            n = notify.display(),
            said = said.display(),
            wait = wait_for_file(&go),
        ),
    );
    assert!(
        wait_until(Duration::from_secs(10), || said.exists()),
        "systemd-notify --status did not return; log:\n{}",
        agent.log()
    );
    // STATUS= alone leaves the run initializing.
    let mut st = serde_json::Value::Null;
    let shown = wait_until(Duration::from_secs(5), || {
        st = agent.status(&run.id);
        st["status_text"] == "cloning repo"
    });
    assert!(shown, "STATUS= not shown: {st:#}");
    assert_eq!(st["status"], "initializing", "{st:#}");
    assert!(st["ready_at"].is_null(), "{st:#}");
    assert!(st["init_deadline"].is_string(), "{st:#}");

    let before_ready = Utc::now();
    touch(&go);
    assert!(
        agent.wait_status(&run.id, "running"),
        "READY=1 did not make the run running: {:#}",
        agent.status(&run.id)
    );
    let st = agent.status(&run.id);
    let ready_at = time(&st["ready_at"]);
    assert!(
        ready_at >= before_ready - chrono::Duration::milliseconds(50)
            && ready_at >= time(&st["started_at"]),
        "ready_at {ready_at} before the READY was sent ({before_ready}): {st:#}"
    );
    assert_eq!(st["status_text"], "building", "{st:#}");
    // Once running, the init deadline no longer applies (and it is not stuck).
    assert!(st["init_deadline"].is_null(), "{st:#}");
    assert!(st["stuck"].is_null(), "{st:#}");
    assert!(st["processes"].as_u64().unwrap() >= 1, "{st:#}");
}

#[test]
fn a_run_that_never_sends_ready_is_killed_at_its_init_timeout_and_run_exits_124() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let run_id = format!("init-timeout-{}", std::process::id());
    let mark = marker("init-timeout");
    let stderr_path = dir.path().join("stderr");
    let t0 = Instant::now();
    let mut child = KillOnDrop(
        agent
            .marked(&mark)
            .args(["run", "--run-id", &run_id, "--init-timeout", "2s"])
            .args(["--", "sleep", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("wfcg run still going 20 s after a 2 s init timeout");
    let took = t0.elapsed();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(124), "{status:?}; stderr:\n{stderr}");
    assert!(
        stderr.contains("initialization timeout 2s exceeded"),
        "stderr does not say why:\n{stderr}"
    );
    assert!(
        took >= Duration::from_millis(1900),
        "killed after {took:?}, before its 2 s init timeout"
    );
    assert!(took < Duration::from_secs(8), "killed only after {took:?}");
    let run = crate::util::Run {
        id: run_id,
        marker: mark,
    };
    assert_timed_out(&agent, &run, "initialization timeout 2s exceeded");
    let st = agent.status(&run.id);
    assert!(st["ready_at"].is_null(), "{st:#}");
    let reason = st["kill_result"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("still initializing since"), "{st:#}");
}

/// Starts a run with `--watchdog 1s` that says READY and then beats with
/// `beat` (a shell command) every 300 ms until `stop` exists.
fn heartbeat_run(agent: &TestAgent, ready: &str, beat: &str, stop: &Path) -> crate::util::Run {
    agent.start_run(
        &["--init-timeout", "1m", "--watchdog", "1s"],
        &format!(
            "{ready}; while [ ! -e '{stop}' ]; do {beat}; sleep 0.3; done; sleep 100",
            stop = stop.display()
        ),
    )
}

#[test]
fn watchdog_heartbeats_keep_a_run_alive_and_missing_ones_get_it_killed() {
    require_privileges!();
    let notify = systemd_notify();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let stop = dir.path().join("stop");
    // One run per client, so each must keep its run alive on its own.
    let runs = [
        heartbeat_run(
            &agent,
            &format!("{} --ready", notify.display()),
            &format!("{} WATCHDOG=1", notify.display()),
            &stop,
        ),
        heartbeat_run(
            &agent,
            &format!("{WFCG} notify --ready"),
            &format!("{WFCG} notify --heartbeat"),
            &stop,
        ),
    ];
    for run in &runs {
        assert!(
            agent.wait_status(&run.id, "running"),
            "{:#}",
            agent.status(&run.id)
        );
    }
    // Four intervals, twice the miss threshold: both stay running, and their
    // last heartbeat keeps moving.
    let first: Vec<_> = runs
        .iter()
        .map(|r| agent.status(&r.id)["last_heartbeat"].clone())
        .collect();
    stays(&agent, &runs[0].id, "running", Duration::from_secs(4));
    for (run, first) in runs.iter().zip(&first) {
        let st = agent.status(&run.id);
        assert_eq!(st["status"], "running", "{st:#}");
        assert!(
            st["last_heartbeat"].is_string() && st["last_heartbeat"] != *first,
            "heartbeats not recorded (first {first}): {st:#}"
        );
        assert!(st["stuck"].is_null(), "{st:#}");
    }
    let t = Instant::now();
    touch(&stop);
    for run in &runs {
        let took = time_until_status(&agent, &run.id, "timed_out", Duration::from_secs(15));
        assert!(
            took.is_some(),
            "not killed after its heartbeats stopped: {:#}",
            agent.status(&run.id)
        );
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1200),
        "killed {took:?} after the last heartbeats, before the 2 s threshold"
    );
    for run in &runs {
        assert_timed_out(&agent, run, "heartbeat missed");
    }
}

#[test]
fn extend_timeout_usec_pushes_the_init_deadline_out() {
    require_privileges!();
    let notify = systemd_notify();
    let agent = TestAgent::start();
    let t0 = Instant::now();
    let runs = [
        agent.start_run(
            &["--init-timeout", "2s"],
            &format!(
                "{} EXTEND_TIMEOUT_USEC=6000000; sleep 100",
                notify.display()
            ),
        ),
        agent.start_run(
            &["--init-timeout", "2s"],
            &format!("{WFCG} notify --extend 6s; sleep 100"),
        ),
    ];
    // The deadline moved: about 6 s after the start instead of 2 s.
    for run in &runs {
        let mut st = serde_json::Value::Null;
        let moved = wait_until(Duration::from_secs(2), || {
            st = agent.status(&run.id);
            st["init_deadline"].is_string()
                && time(&st["init_deadline"]) - time(&st["started_at"])
                    > chrono::Duration::milliseconds(5500)
        });
        assert!(moved, "init deadline not extended: {st:#}");
    }
    // Past the original 2 s (with a second to spare): still initializing.
    let window = Duration::from_secs(3).saturating_sub(t0.elapsed());
    stays(&agent, &runs[0].id, "initializing", window);
    for run in &runs {
        assert_eq!(agent.status(&run.id)["status"], "initializing");
    }
    // Then the extended deadline kills them.
    for run in &runs {
        assert!(
            time_until_status(&agent, &run.id, "timed_out", Duration::from_secs(15)).is_some(),
            "not killed at the extended deadline: {:#}",
            agent.status(&run.id)
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(5800) && took < Duration::from_secs(10),
        "killed {took:?} after the start; the extended deadline was 6 s"
    );
    for run in &runs {
        assert_timed_out(&agent, run, "initialization timeout 2s exceeded");
    }
}

#[test]
fn a_notify_message_from_a_process_outside_the_run_is_dropped() {
    require_privileges!();
    let notify = systemd_notify();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let (sock_file, go) = (dir.path().join("socket"), dir.path().join("go"));
    let run = agent.start_run(
        &["--init-timeout", "1m"],
        &format!(
            "echo \"$NOTIFY_SOCKET\" > '{f}.tmp' && mv '{f}.tmp' '{f}'; {wait}; {n} --ready --status=inside; sleep 100",
            f = sock_file.display(),
            wait = wait_for_file(&go),
            n = notify.display(),
        ),
    );
    assert!(
        wait_until(Duration::from_secs(10), || sock_file.exists()),
        "the workflow did not report its NOTIFY_SOCKET"
    );
    let socket = std::fs::read_to_string(&sock_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(!socket.is_empty(), "NOTIFY_SOCKET empty in the run");
    // This test process is not in the run's cgroup.
    let dropped = "notify message from a process outside the run dropped";
    let before = agent.logged(dropped);
    UnixDatagram::unbound()
        .unwrap()
        .send_to(
            b"READY=1\nSTATUS=spoofed\nEXTEND_TIMEOUT_USEC=3600000000",
            &socket,
        )
        .unwrap();
    let mut st = serde_json::Value::Null;
    let handled = wait_until(Duration::from_secs(10), || {
        st = agent.status(&run.id);
        st["status"] != "initializing" || agent.logged(dropped) > before
    });
    assert_eq!(
        st["status"], "initializing",
        "READY=1 from outside taken: {st:#}"
    );
    assert!(
        handled,
        "the agent did not report dropping the message; log:\n{}",
        agent.log()
    );
    assert!(st["ready_at"].is_null(), "{st:#}");
    assert_ne!(st["status_text"], "spoofed", "{st:#}");
    let deadline = time(&st["init_deadline"]) - time(&st["started_at"]);
    assert!(
        deadline < chrono::Duration::minutes(2),
        "the init deadline moved: {st:#}"
    );
    // The same from inside the run is taken.
    touch(&go);
    assert!(
        agent.wait_status(&run.id, "running"),
        "{:#}",
        agent.status(&run.id)
    );
    assert_eq!(agent.status(&run.id)["status_text"], "inside");
}

#[test]
fn deadlines_survive_an_agent_restart() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let t0 = Instant::now();
    let on_time = agent.start_run(&["--init-timeout", "4s"], "sleep 100");
    // Its deadline passes while no agent runs: the new agent fires it at once.
    let passed = agent.start_run(&["--init-timeout", "2s"], "sleep 100");
    let passed_deadline = time(&agent.status(&passed.id)["init_deadline"]);
    agent.kill9();
    assert!(
        wait_until(Duration::from_secs(10), || Utc::now()
            > passed_deadline + chrono::Duration::milliseconds(300)),
        "the clock did not reach the deadline"
    );
    let down_for = t0.elapsed();
    assert_eq!(
        agent.sql(&format!(
            "select status from runs where run_id = '{}'",
            passed.id
        )),
        "initializing",
        "changed while no agent ran"
    );
    assert!(
        agent
            .run_cgroup(&passed.id)
            .procs_recursive()
            .unwrap()
            .len()
            >= 2
    );
    agent.spawn();
    let respawned = Instant::now();
    assert!(
        time_until_status(&agent, &passed.id, "timed_out", Duration::from_secs(10)).is_some(),
        "a deadline passed during the restart did not fire: {:#}",
        agent.status(&passed.id)
    );
    let late = respawned.elapsed();
    assert!(
        late < Duration::from_secs(3),
        "fired {late:?} after the restart"
    );
    // The other is still initializing, and is killed at its original deadline.
    assert_eq!(
        agent.status(&on_time.id)["status"],
        "initializing",
        "(agent down for {down_for:?})"
    );
    assert!(
        time_until_status(&agent, &on_time.id, "timed_out", Duration::from_secs(15)).is_some(),
        "not killed after the restart: {:#}",
        agent.status(&on_time.id)
    );
    let took = t0.elapsed();
    eprintln!(
        "agent down for {down_for:?}; the passed deadline fired {late:?} after the restart; killed {took:?} after the start"
    );
    assert!(
        took >= Duration::from_millis(3900) && took < Duration::from_secs(7),
        "killed {took:?} after its start; its init timeout was 4 s"
    );
    assert_timed_out(&agent, &on_time, "initialization timeout 4s exceeded");
    assert_timed_out(&agent, &passed, "initialization timeout 2s exceeded");
}

/// `wfcg ps --stuck --json`: the ids listed.
fn stuck_ids(agent: &TestAgent) -> Vec<String> {
    let out = agent.cli(&["ps", "--stuck", "--json"]);
    assert!(out.status.success(), "ps --stuck: {}", text(&out.stderr));
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ps_stuck_and_kill_stuck_find_only_stuck_runs() {
    require_privileges!();
    let agent = TestAgent::start();
    let t0 = Instant::now();
    // Stuck from 8 s (80% of its init timeout) until the monitor kills it at 10 s.
    let stuck = agent.start_run(&["--init-timeout", "10s"], "sleep 100");
    // The same deadline, but it said READY.
    let ready = agent.start_run(
        &["--init-timeout", "10s"],
        &format!("{WFCG} notify --ready; sleep 100"),
    );
    // Initializing, far from its deadline.
    let young = agent.start_run(&["--init-timeout", "1h"], "sleep 100");
    assert!(agent.wait_status(&ready.id, "running"));
    assert_eq!(stuck_ids(&agent), Vec::<String>::new(), "stuck too early");

    assert!(
        wait_until(Duration::from_secs(12), || !stuck_ids(&agent).is_empty()),
        "nothing listed as stuck: {:#}",
        agent.status(&stuck.id)
    );
    let when = t0.elapsed();
    assert!(
        when >= Duration::from_millis(7500),
        "listed as stuck after {when:?}, before 80% of its 10 s init timeout"
    );
    assert_eq!(stuck_ids(&agent), vec![stuck.id.clone()]);
    let st = agent.status(&stuck.id);
    assert_eq!(st["status"], "initializing", "{st:#}");
    assert!(
        st["stuck"]
            .as_str()
            .unwrap_or_default()
            .contains("initializing"),
        "{st:#}"
    );
    let text_ps = text(&agent.cli(&["ps", "--stuck"]).stdout);
    assert!(text_ps.contains(&stuck.id), "{text_ps}");
    assert!(
        !text_ps.contains(&ready.id) && !text_ps.contains(&young.id),
        "{text_ps}"
    );

    // --dry-run lists it and kills nothing.
    let out = agent.cli_expect(0, &["kill", "--stuck", "--dry-run"]);
    let listed = text(&out.stdout);
    assert!(
        listed.contains(&format!("would kill {}", stuck.id)),
        "{listed}"
    );
    assert!(
        !listed.contains(&ready.id) && !listed.contains(&young.id),
        "{listed}"
    );
    let out = agent.cli_expect(0, &["kill", "--stuck", "--dry-run", "--older-than", "1h"]);
    assert!(
        text(&out.stdout).contains("no stuck runs"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(agent.kill_count(&stuck.id), 0);
    assert_eq!(agent.status(&stuck.id)["status"], "initializing");

    // The real thing kills it (before the monitor would), and only it.
    let out = agent.cli(&["kill", "--stuck"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let st = agent.status(&stuck.id);
    assert_eq!(st["status"], "killed", "{st:#}");
    let reason = st["kill_result"]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("stuck: "), "{st:#}");
    agent.assert_run_gone(&stuck);
    for (run, want) in [(&ready, "running"), (&young, "initializing")] {
        let st = agent.status(&run.id);
        assert_eq!(st["status"], want, "{st:#}");
        assert!(st["processes"].as_u64().unwrap() >= 1, "{st:#}");
        assert_eq!(agent.kill_count(&run.id), 0);
    }
    assert_eq!(stuck_ids(&agent), Vec::<String>::new());
}

#[test]
fn a_command_started_again_and_again_while_initializing_is_flagged_not_killed() {
    require_privileges!();
    let agent = TestAgent::start();
    // Each `sleep 2.5` is a new process with the same command line; the agent
    // samples every 2 s, so it sees each of them.
    let looping = agent.start_run(
        &["--init-timeout", "2m"],
        "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 2.5; done; sleep 100",
    );
    let calm = agent.start_run(&["--init-timeout", "2m"], "sleep 100");
    let mut st = serde_json::Value::Null;
    let t = Instant::now();
    let flagged = wait_until(Duration::from_secs(25), || {
        st = agent.status(&looping.id);
        !st["loop_suspected"].is_null()
    });
    assert!(flagged, "no loop suspected after {:?}: {st:#}", t.elapsed());
    let hint = st["loop_suspected"].as_str().unwrap();
    assert!(
        hint.contains("suspected initialization loop") && hint.contains("sleep 2.5"),
        "{hint}"
    );
    // Said once by `status` and `ps --stuck` (the loop is also why it is stuck).
    for args in [&["status", looping.id.as_str()][..], &["ps", "--stuck"][..]] {
        let out = String::from_utf8_lossy(&agent.cli(args).stdout).into_owned();
        let n = out.matches("suspected initialization loop").count();
        assert_eq!(n, 1, "{args:?}: {out}");
    }
    // A hint, not a kill.
    assert_eq!(st["status"], "initializing", "{st:#}");
    assert!(st["processes"].as_u64().unwrap() >= 1, "{st:#}");
    assert!(st["kill_result"].is_null(), "{st:#}");
    assert_eq!(agent.kill_count(&looping.id), 0);
    // It shows in ps too, and the calm run is not flagged.
    let ps = agent.ps(false);
    let row = ps.iter().find(|r| r["run_id"] == looping.id.as_str());
    assert_eq!(row.unwrap()["loop_suspected"], hint, "{ps:#?}");
    let calm_st = agent.status(&calm.id);
    assert!(calm_st["loop_suspected"].is_null(), "{calm_st:#}");
    stays(&agent, &looping.id, "initializing", Duration::from_secs(1));
}

/// The sender check asks the kernel which cgroup a process is in through a pidfd
/// (`PIDFD_GET_INFO`): the answer is the inode number of that cgroup's directory,
/// which is what wfcg compares with the run's cgroups; a sibling whose name
/// starts like the run's is another cgroup; a process reaped keeps the answer.
#[test]
fn the_kernel_names_a_processs_cgroup_by_the_inode_of_its_directory() {
    require_privileges!();
    use wfcg::cgroup::Cgroup;
    let mount = wfcg::cgroup::cgroup2_mount().unwrap();
    let name = marker("cgid");
    let run = Cgroup::new(mount.join(&name));
    let leaf = run.child("payload");
    let sibling = Cgroup::new(mount.join(format!("{name}x")));
    struct Remove(Vec<Cgroup>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for cg in &self.0 {
                let _ = cg.kill();
                let _ = cg.wait_unpopulated(Duration::from_secs(5));
                let _ = cg.remove();
            }
        }
    }
    let _remove = Remove(vec![leaf.clone(), run.clone(), sibling.clone()]);
    for cg in [&run, &leaf, &sibling] {
        cg.create().unwrap();
    }
    let ids = run.subtree_ids().unwrap();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&leaf.id().unwrap()) && ids.contains(&run.id().unwrap()));
    assert!(!ids.contains(&sibling.id().unwrap()));

    let mut child = std::process::Command::new("sleep")
        .arg("100")
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let pidfd = wfcg::procfs::pidfd_open(pid).unwrap();
    leaf.add_process(pid).unwrap();
    match wfcg::procfs::pidfd_cgroup_id(&pidfd) {
        Ok(id) => {
            assert_eq!(
                id,
                leaf.id().unwrap(),
                "the kernel's id is not the leaf's inode"
            );
            assert!(ids.contains(&id));
            sibling.add_process(pid).unwrap();
            let id = wfcg::procfs::pidfd_cgroup_id(&pidfd).unwrap();
            assert_eq!(id, sibling.id().unwrap());
            assert!(!ids.contains(&id));
            child.kill().unwrap();
            child.wait().unwrap();
            // Reaped, it is still named by the cgroup it died in (Linux ≥ 6.15).
            assert_eq!(
                wfcg::procfs::pidfd_cgroup_id(&pidfd).unwrap(),
                sibling.id().unwrap()
            );
        }
        // Before Linux 6.13: wfcg reads /proc/<pid>/cgroup instead.
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            assert!(
                matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)),
                "PIDFD_GET_INFO failed: {e}"
            );
            eprintln!("this kernel has no PIDFD_GET_INFO ({e}): the procfs fallback is used");
        }
    }
}

/// Judged by the sender's own cgroup on every message: a process outside the
/// run is refused on the run's socket even after the run's own messages were
/// taken, and a process in a cgroup made below the run since then is taken.
#[test]
fn notify_senders_are_judged_one_by_one_by_their_cgroup() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(
        &["--init-timeout", "1m"],
        &format!("{WFCG} notify --status=inside; exec sleep 100"),
    );
    let status_text = || agent.status(&run.id)["status_text"].clone();
    assert!(
        wait_until(Duration::from_secs(10), || status_text() == "inside"),
        "{:#}",
        agent.status(&run.id)
    );
    let socket = agent.sql(&format!(
        "select notify_socket from runs where run_id = '{}'",
        run.id
    ));
    assert!(!socket.is_empty());
    // `sh` moves itself into `cg` (if any), then becomes the sender.
    let send = |cg: Option<&Path>, text: &str| {
        let join = cg
            .map(|cg| format!("echo $$ > '{}/cgroup.procs' && ", cg.display()))
            .unwrap_or_default();
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{join}exec {WFCG} notify --status={text}"))
            .env("NOTIFY_SOCKET", &socket)
            .status()
            .unwrap();
        assert!(st.success());
    };
    let dropped = "notify message from a process outside the run dropped";
    for attempt in 0..3 {
        let before = agent.logged(dropped);
        send(None, &format!("outside{attempt}"));
        assert!(
            agent.wait_logged_more(dropped, before),
            "not dropped; log:\n{}",
            agent.log()
        );
        assert_eq!(status_text(), "inside");
    }
    let extra = agent.run_cgroup(&run.id).child("extra");
    extra.create().unwrap();
    send(Some(extra.path()), "extra");
    assert!(
        wait_until(Duration::from_secs(10), || status_text() == "extra"),
        "a sender in a cgroup made below the run was refused: {:#}\nlog:\n{}",
        agent.status(&run.id),
        agent.log()
    );
}
