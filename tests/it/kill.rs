//! `wfcg kill`: whole trees, escapees, graceful handlers, idempotence,
//! concurrent kills, permissions.

use std::collections::HashSet;
use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, TestAgent, TestUser, phase_names, wait_until};

#[test]
fn force_kill_leaves_nothing_of_a_tree_of_1000_processes() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "for i in $(seq 1000); do sleep 1000 & done; wait");
    // The supervisor, the shell and its 1000 sleeps.
    assert!(
        agent.wait_procs(&run.id, 1002),
        "the tree did not grow to 1002 processes"
    );

    let result = agent.kill_ok(&run.id, &["--force"]);

    // The kill acts on the payload (the shell and its sleeps); the supervisor,
    // in its own leaf, exits once the payload is empty.
    assert_eq!(result["processes_killed"], 1001, "{result:#}");
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    agent.assert_run_gone(&run);
    assert_eq!(agent.status(&run.id)["status"], "killed");
}

/// The kill result's `cleanup` phase says in words what was cleaned up (it was
/// the Rust debug text of a struct).
#[test]
fn the_cleanup_phase_is_described_in_words() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "exec sleep 1000");
    let result = agent.kill_ok(&run.id, &["--force"]);
    let cleanup = result["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .find(|p| p["name"] == "cleanup")
        .unwrap_or_else(|| panic!("no cleanup phase: {result:#}"));
    let detail = cleanup["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("nothing left running; removed: cgroup, TMPDIR, run directory"),
        "{detail}"
    );
    assert!(
        !detail.contains('{') && !detail.contains("CleanupStatus"),
        "{detail}"
    );
}

#[test]
fn graceful_kill_leaves_no_escapee() {
    require_privileges!();
    let agent = TestAgent::start();
    // Each kind of escapee is a `sleep` with its own duration, to find it by.
    let run = agent.start_run(
        &[],
        r#"
        setsid sh -c 'sleep 1001 &' &                   # double fork + setsid daemon
        setsid -f sleep 1002                            # setsid(1) forking a daemon
        nohup sleep 1003 >/dev/null 2>&1 &              # nohup
        sh -c 'trap "" TERM; exec sleep 1004' &         # ignores SIGTERM
        sh -c 'trap "" TERM
               while :; do (sleep 1005 &); sleep 0.02; done' &  # keeps forking, ignores SIGTERM
        wait
        "#,
    );
    // Every escapee runs, and the setsid daemon has really left the tree: its
    // parent is no process of the run (a kill by process tree would miss it).
    let all_started = wait_until(Duration::from_secs(30), || {
        let pids = util::pids_with_env("WFCG_RUN_ID", &run.id);
        let sleeping = |arg: &str| {
            let cmd = format!("sleep {arg}");
            pids.clone()
                .into_iter()
                .filter(move |&p| util::cmdline(p) == cmd)
        };
        sleeping("1001").any(|p| !pids.contains(&util::ppid(p)))
            && ["1002", "1003", "1004", "1005"]
                .iter()
                .all(|a| sleeping(a).next().is_some())
    });
    assert!(
        all_started,
        "not every escapee started: {}",
        util::describe(&util::pids_with_env("WFCG_RUN_ID", &run.id))
    );

    let result = agent.kill_ok(&run.id, &["--grace", "500ms"]);

    agent.assert_run_gone(&run);
    assert!(
        phase_names(&result).contains(&"kill".to_string()),
        "processes that ignore SIGTERM must have needed the hard kill: {result:#}"
    );
}

#[test]
fn graceful_kill_lets_a_sigterm_handler_finish() {
    require_privileges!();
    let agent = TestAgent::start();
    let done = agent.dir.path().join("handler-done");
    let run = agent.start_run(
        &[],
        &format!(
            "trap 'sleep 0.3; echo done > {}; exit 0' TERM; while :; do sleep 0.1; done",
            done.display()
        ),
    );
    // Supervisor, shell, and a `sleep 0.1` of the loop: the trap is set.
    assert!(agent.wait_procs(&run.id, 3));

    let result = agent.kill_ok(&run.id, &["--grace", "10s"]);

    assert_eq!(
        std::fs::read_to_string(&done).ok().as_deref(),
        Some("done\n"),
        "the handler did not finish: {result:#}"
    );
    let phases = phase_names(&result);
    assert!(phases.contains(&"term_wait".to_string()), "{result:#}");
    assert!(
        !phases.contains(&"kill".to_string()),
        "the hard kill was not needed: {result:#}"
    );
    agent.assert_run_gone(&run);
}

#[test]
fn kill_of_an_unknown_run_exits_3() {
    require_privileges!();
    let agent = TestAgent::start();
    let (out, _) = agent.kill("no-such-run", &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such run"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_of_an_ended_run_succeeds_with_already_ended() {
    require_privileges!();
    let agent = TestAgent::start();
    let id = util::marker("ended");
    agent.cli_expect(0, &["run", "-q", "--run-id", &id, "--", "true"]);

    let result = agent.kill_ok(&id, &[]);

    assert_eq!(result["already_ended"], true, "{result:#}");
    assert_eq!(result["ended_as"], "exited", "{result:#}");
    assert_eq!(agent.kill_count(&id), 0, "no kill sequence may run");
}

/// A kill that arrives while the agent records the end of a run (its cgroup
/// just emptied) once deadlocked the agent: each path held one of two locks and
/// waited for the other. Here four clients ask to kill each run the moment its
/// command exits, until told it ended; every request must be answered.
#[test]
fn kills_racing_the_end_of_runs_are_all_answered() {
    require_privileges!();
    let agent = TestAgent::start();
    let (answered_tx, answered_rx) = std::sync::mpsc::channel();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (go_tx, go_rx) = std::sync::mpsc::channel::<String>();
            let (socket, answered_tx) = (agent.socket.clone(), answered_tx.clone());
            std::thread::spawn(move || {
                let client = wfcg::client::Client::new(&socket);
                let req = wfcg::api::KillRequest::default();
                for id in go_rx {
                    let ended =
                        (0..1000).any(|_| client.kill(&id, &req).is_ok_and(|r| r.already_ended));
                    answered_tx.send((id, ended)).unwrap();
                }
            });
            go_tx
        })
        .collect();
    for i in 0..200 {
        let id = util::marker(&format!("race{i}"));
        let mut run = agent
            .wfcg()
            .args(["run", "-q", "--run-id", &id, "--", "true"])
            .spawn()
            .expect("spawning wfcg run");
        assert!(run.wait().unwrap().success());
        for go in &clients {
            go.send(id.clone()).unwrap();
        }
        for _ in &clients {
            let answer = answered_rx.recv_timeout(Duration::from_secs(20));
            assert_eq!(
                answer,
                Ok((id.clone(), true)),
                "kills of run {id} as it ended; agent log: {}",
                agent.log_tail(5)
            );
        }
    }
}

#[test]
fn concurrent_kills_of_one_run_share_one_kill_sequence() {
    require_privileges!();
    let agent = TestAgent::start();
    // Ignores SIGTERM, so the sequence lasts the whole grace and the kills overlap.
    let run = agent.start_run(&[], "trap '' TERM; while :; do sleep 0.1; done");
    assert!(agent.wait_procs(&run.id, 3));

    let outs = agent.kill_concurrently(&run.id, 20, &["--grace", "1s"]);

    let mut sequences = HashSet::new();
    for out in &outs {
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\nagent log (end):\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log_tail(30)
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(result["success"], true, "{result:#}");
        if result["already_ended"] == false {
            sequences.insert(result["killed_at"].to_string());
        }
    }
    assert_eq!(agent.kill_count(&run.id), 1, "kill sequences recorded");
    assert_eq!(
        sequences.len(),
        1,
        "the kills that joined the sequence got its result: {sequences:?}"
    );
    agent.assert_run_gone(&run);
    // And one more, later, finds it ended.
    assert_eq!(agent.kill_ok(&run.id, &[])["already_ended"], true);
    assert_eq!(agent.kill_count(&run.id), 1);
}

#[test]
fn a_user_cannot_kill_another_users_run() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let run = agent.start_run(&[], "exec sleep 1000");
    assert!(agent.wait_procs(&run.id, 2));

    let out = agent
        .wfcg_as(&user)
        .args(["kill", "--force", &run.id])
        .output()
        .expect("running wfcg kill as the test user");

    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = agent.status(&run.id);
    assert_eq!(status["status"], "initializing"); // no READY=1 sent
    // The sleep, not the supervisor (which leaves the payload just after the start).
    assert!(wait_until(Duration::from_secs(10), || {
        agent.status(&run.id)["processes"] == 1
    }));
    assert_eq!(agent.kill_count(&run.id), 0);
    agent.kill_ok(&run.id, &["--force"]);
    agent.assert_run_gone(&run);
}

/// Kills at once beyond the agent's threads for requests: each run's
/// supervisor reports its exit while its kill waits for it, since kills have
/// threads of their own. On the requests' threads, the kills held them all, the
/// reports they waited for queued behind them, and each kill waited out the
/// supervisor's grace (5 s) and then killed it.
#[test]
fn kills_beyond_the_request_threads_do_not_wait_out_the_supervisors_grace() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    agent.agent_env = vec![("WFCG_REQUEST_THREADS", std::path::PathBuf::from("3"))];
    agent.spawn();
    let runs: Vec<util::Run> = (0..6)
        .map(|_| agent.start_run(&["--ready-when", "start"], "exec sleep 1000"))
        .collect();
    for r in &runs {
        assert!(agent.wait_procs(&r.id, 2), "run {} did not start", r.id);
    }
    let kills: Vec<_> = runs
        .iter()
        .map(|r| {
            agent
                .wfcg()
                .args(["kill", "--json", "--force", &r.id])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawning wfcg kill")
        })
        .collect();
    for (kill, run) in kills.into_iter().zip(&runs) {
        let out = kill.wait_with_output().expect("waiting for wfcg kill");
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let supervisor = result["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "supervisor")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            supervisor["detail"],
            "the supervisor exited",
            "run {}: {result:#}\nagent log (end):\n{}",
            run.id,
            agent.log_tail(20)
        );
        agent.assert_run_gone(run);
    }
}
