//! Regressions of a fresh attack on the trust classes, each as a real
//! unprivileged user (`TestUser`) against root's runs or root's agent:
//! a notify flood that grew the agent's log, a STATUS flood that held up root's
//! READY, allowed questions that grew the audit trail, adoptions past the live-run
//! cap, and another user's fds that slowed root's kill.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{CommandExt, KillOnDrop, TestAgent, TestUser, WFCG, wait_until};

/// `python3 -c CODE ARGS...` as `user`, from `/`.
fn python_as(user: &TestUser, code: &str, args: &[&str]) -> Command {
    let mut cmd = user.command("/usr/bin/python3");
    cmd.arg("-c").arg(code).args(args).current_dir("/");
    cmd
}

/// A user's flood of datagrams at root's run's notify socket is dropped, and
/// the agent's log says so a bounded number of times (it wrote one line per
/// datagram: 70 KB a second per socket, on the state filesystem when `wfcg run`
/// started the agent).
#[test]
fn a_notify_flood_from_outside_grows_the_agents_log_by_a_bounded_amount() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let run = agent.start_run(&[], "exec sleep 300");
    let socket = agent.socket.parent().unwrap().join("notify").join(&run.id);
    assert!(wait_until(Duration::from_secs(10), || socket.exists()));
    let dropped = "notify message from a process outside the run dropped";
    let before = agent.logged(dropped);
    let out = python_as(
        &user,
        "import socket, sys\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         for _ in range(500): s.sendto(b'STATUS=spoofed', sys.argv[1])\n",
        &[socket.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The last datagrams are read within a wake-up or two.
    std::thread::sleep(Duration::from_secs(2));
    let lines = agent.logged(dropped) - before;
    assert!(
        (1..=9).contains(&lines),
        "{lines} log lines for 500 dropped datagrams"
    );
    assert_ne!(agent.status(&run.id)["status_text"], "spoofed");
    agent.kill_ok(&run.id, &["--force"]);
}

/// A user's runs flooding their own notify sockets with STATUS texts (accepted:
/// the senders are inside) filled one unbounded queue that every run's READY
/// goes through: root's run, ready at once, was killed by its init timeout.
#[test]
fn a_users_status_flood_never_delays_roots_ready() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let flood = "import socket, os, time\n\
                 s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
                 p = os.environ['NOTIFY_SOCKET']; pad = 'x' * 1000\n\
                 end = time.time() + 40\n\
                 while time.time() < end: s.sendto(('STATUS=' + pad).encode(), p)\n";
    let mut floods = Vec::new();
    for _ in 0..6 {
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["run", "--detach", "--", "/usr/bin/python3", "-c", flood])
            .expect_code(0);
        floods.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    // Let the backlog build up.
    std::thread::sleep(Duration::from_secs(12));
    let out = agent
        .wfcg()
        .current_dir("/")
        .args(["run", "--init-timeout", "5s", "--", "sh", "-c"])
        .arg(format!("{WFCG} notify --ready && sleep 6"))
        .output_within(Duration::from_secs(60));
    for id in &floods {
        agent.kill_ok(id, &["--force"]);
    }
    assert!(
        out.status.success(),
        "root's run, ready at once, did not run to its end: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Questions a user may repeat at will (may I kill my own run? kill my run that
/// ended) were each an audit record written and synced: 150 a second, 1.2 GB an
/// hour per user. They are coalesced like denials.
#[test]
fn a_users_repeated_questions_grow_the_audit_by_a_bounded_amount() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let out = agent
        .wfcg_as(&user)
        .current_dir("/")
        .args(["run", "--detach", "--run-id", "asks", "--", "sleep", "300"])
        .expect_code(0);
    assert!(out.status.success());
    let ask = python_as(
        &user,
        "import socket, sys\n\
         for _ in range(200):\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
         \x20   s.sendall(b'GET /v1/runs/asks/may-kill HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
         \x20   while s.recv(65536): pass\n\
         \x20   s.close()\n",
        &[agent.socket.to_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(ask.status.success(), "{ask:?}");
    agent.kill_ok("asks", &["--force"]);
    for _ in 0..20 {
        let kill = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["kill", "asks"])
            .output()
            .unwrap();
        assert!(kill.status.success(), "{kill:?}");
    }
    let count = |action: &str| -> u32 {
        agent
            .sql(&format!(
                "select count(*) from audit where actor_uid = {} and action = '{action}'",
                user.uid
            ))
            .trim()
            .parse()
            .unwrap()
    };
    let asked = count("permission_query");
    let killed = count("kill");
    assert!(asked <= 2, "{asked} records for 200 questions");
    assert!(killed <= 2, "{killed} records for 20 kills of an ended run");
    assert!(agent.cli(&["audit", "verify"]).status.success());
}

/// `wfcg adopt` of one's own processes made live runs with no cap at all
/// (43 with `max_live_runs = 3`).
#[test]
fn adopting_counts_against_a_users_live_run_cap() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    std::fs::write(agent.policy_path(), "[limits]\nmax_live_runs = 2\n").unwrap();
    agent.spawn();
    agent.open_to_all_users();
    let user = TestUser::get();
    let mut sleeps = Vec::new();
    let mut adopted = 0;
    for _ in 0..5 {
        let sleep = KillOnDrop(
            user.command("sleep")
                .arg("300")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["adopt", &sleep.id().to_string()])
            .output()
            .unwrap();
        if out.status.success() {
            adopted += 1;
        }
        sleeps.push(sleep);
    }
    let live = agent
        .sql(&format!(
            "select count(*) from runs where owner_uid = {} and status in ('initializing', 'running')",
            user.uid
        ))
        .trim()
        .to_string();
    for r in agent.ps(false) {
        agent.kill_ok(r["run_id"].as_str().unwrap(), &["--force"]);
    }
    assert_eq!(adopted, 2, "adopted past the cap of 2 live runs");
    assert_eq!(live, "2");
}

/// Whether a git lock root's run left is held by a process outside the run was
/// told by reading every fd of every process on the host: another user holding
/// a million dup'ed fds made root's graceful kill of root's own run take 47 s
/// instead of 0.2 s.
#[test]
fn another_users_fds_do_not_slow_roots_graceful_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let repo = tempfile::tempdir().unwrap();
    let init = Command::new("git")
        .args(["init", "-q"])
        .arg(repo.path())
        .status()
        .unwrap();
    assert!(init.success());
    let ready = tempfile::Builder::new().prefix("fds").tempdir().unwrap();
    std::fs::set_permissions(
        ready.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let holders: Vec<KillOnDrop> = (0..25)
        .map(|i| {
            KillOnDrop(
                python_as(
                    &user,
                    "import os, sys, time, resource\n\
                     soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n\
                     n = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000\n\
                     resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))\n\
                     fd = os.open('/dev/null', os.O_RDONLY)\n\
                     for _ in range(n - 100): os.dup(fd)\n\
                     open(sys.argv[1], 'w').close()\n\
                     time.sleep(300)\n",
                    &[ready.path().join(i.to_string()).to_str().unwrap()],
                )
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
            )
        })
        .collect();
    assert!(wait_until(Duration::from_secs(60), || {
        std::fs::read_dir(ready.path()).unwrap().count() == holders.len()
    }));
    let ws = repo.path().to_str().unwrap();
    let run = agent.start_run(
        &["--workspace", ws],
        "touch .git/index.lock && exec sleep 300",
    );
    assert!(wait_until(Duration::from_secs(10), || {
        repo.path().join(".git/index.lock").exists()
    }));
    let t = Instant::now();
    let (out, result) = agent.kill(&run.id, &["--grace", "1s"]);
    let took = t.elapsed();
    drop(holders);
    assert!(out.status.success(), "{result:#}");
    assert!(
        took < Duration::from_secs(8),
        "root's graceful kill took {took:?} while another user held fds"
    );
}
