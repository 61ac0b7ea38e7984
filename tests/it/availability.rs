//! Root can always kill: a real second user floods the agent (connections, kill
//! requests, run starts, sd_notify messages) or tries to hold a run in `stopping`
//! with huge graces, and root's kill of another run must still answer promptly.
//! Each test prints root's kill latency under its flood (docs/reliability.md's
//! table); the asserted bound is loose on purpose: what it guards is a hang or an
//! unreachable agent, not speed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, TestUser, wait_until};

/// Far above what a kill takes here, far below the hangs this guards against.
const PROMPT: Duration = Duration::from_secs(5);

/// Starts a root run and times root's `wfcg kill --force` of it, which must
/// succeed; prints and returns the time.
fn root_kill_latency(agent: &TestAgent, flood: &str) -> Duration {
    let run = agent.start_run(&[], "exec sleep 1000");
    let t = Instant::now();
    let out = agent
        .wfcg()
        .args(["kill", "--force", "--json", &run.id])
        .output()
        .unwrap();
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "root's kill under {flood} failed: {}{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log_tail(30)
    );
    eprintln!(
        "root's kill --force under {flood}: {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(took < PROMPT, "root's kill under {flood} took {took:?}");
    took
}

/// Runs a Python program as the test user, its stdin and stdout piped.
fn python_as(user: &TestUser, program: &str, args: &[&str]) -> Child {
    user.command("/usr/bin/python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The first line the child prints.
fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    line.trim().to_string()
}

fn user_agent(policy: Option<&str>) -> (TestAgent, TestUser) {
    let user = TestUser::get();
    let agent = match policy {
        Some(p) => TestAgent::start_with_policy(p),
        None => TestAgent::start(),
    };
    agent.open_to_all_users();
    (agent, user)
}

/// A run of the test user's, started in `/`.
fn user_run(agent: &TestAgent, user: &TestUser, extra: &[&str], script: &str) -> String {
    let out = agent
        .wfcg_as(user)
        .current_dir("/")
        .args(["run", "--detach"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

const HOLD_CONNECTIONS: &str = r#"
import socket, sys
held = []
for _ in range(int(sys.argv[2])):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(2)
        s.connect(sys.argv[1])
        s.sendall(b"GET /v1/runs HTTP/1.1\r\nHost: wfcg\r\n")
        held.append(s)
    except OSError:
        pass
print(len(held), flush=True)
sys.stdin.read()
"#;

/// On a host whose agent may open 1024 files, a user's 1100 idle connections with
/// unfinished headers took every one of them: root got "agent unreachable".
#[test]
fn root_kills_while_a_user_holds_a_thousand_idle_connections() {
    require_privileges!();
    let user = TestUser::get();
    let mut agent = TestAgent::unstarted();
    agent.fd_limit = Some(1024);
    agent.spawn();
    agent.open_to_all_users();
    let mut flood = KillOnDrop(python_as(
        &user,
        HOLD_CONNECTIONS,
        &[agent.socket.to_str().unwrap(), "1100"],
    ));
    let opened = first_line(&mut flood.0);
    eprintln!("the user opened {opened} connections");
    root_kill_latency(&agent, "1100 idle connections of one user");
    let ps = agent.cli(&["ps", "--all"]);
    assert!(
        ps.status.success(),
        "{}",
        String::from_utf8_lossy(&ps.stderr)
    );
}

const FLOOD_KILLS: &str = r#"
import json, socket, sys, threading
path, run_id, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
body = json.dumps({"grace_ms": 2**63}).encode()
req = (b"POST /v1/runs/%s/kill HTTP/1.1\r\nHost: wfcg\r\nContent-Type: application/json\r\n"
       b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (run_id.encode(), len(body))) + body
def one():
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(req)
        while s.recv(65536):
            pass
    except OSError:
        pass
threads = [threading.Thread(target=one) for _ in range(n)]
for t in threads:
    t.start()
print("sent", flush=True)
for t in threads:
    t.join()
"#;

/// A user's run that keeps its kill from finishing quickly (a FIFO where the
/// stop reason goes, a process that ignores SIGTERM), and 600 kill requests of it
/// at once: once they held every agent thread, root's requests hung behind them.
/// Root's emergency kill of that run also preempts the graceful one under way.
#[test]
fn root_kills_while_a_user_floods_kill_requests_of_a_stuck_run() {
    require_privileges!();
    let (agent, user) = user_agent(None);
    let stuck = user_run(
        &agent,
        &user,
        &[],
        "mkfifo \"$WFCG_RUN_DIR/stop-reason\"; trap '' TERM; while :; do sleep 1; done",
    );
    assert!(agent.wait_procs(&stuck, 3));
    let mut flood = KillOnDrop(python_as(
        &user,
        FLOOD_KILLS,
        &[agent.socket.to_str().unwrap(), &stuck, "600"],
    ));
    assert_eq!(first_line(&mut flood.0), "sent");
    root_kill_latency(&agent, "600 kill requests of a stuck run");
    // Root's emergency kill of the user's run does not wait behind the graceful one.
    let t = Instant::now();
    let out = agent
        .wfcg()
        .args(["kill", "--emergency", "--json", &stuck])
        .output()
        .unwrap();
    eprintln!("root's --emergency of the flooded run: {:?}", t.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < PROMPT,
        "the emergency kill took {:?}",
        t.elapsed()
    );
    assert!(agent.wait_status(&stuck, "killed"));
    assert!(
        flood.wait_timeout(Duration::from_secs(60)).is_some(),
        "the user's kill requests were never answered"
    );
}

/// A user starts runs as fast as it can: past the policy's limits it is refused
/// with a clear error, and root (never limited) kills and starts as before.
#[test]
fn a_user_starting_runs_in_a_loop_is_capped_and_root_is_not() {
    require_privileges!();
    let (agent, user) = user_agent(Some(
        "[limits]\nmax_live_runs = 10\nmax_starts_per_minute = 15\n",
    ));
    let mut refused = None;
    for i in 0..30 {
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["run", "--detach", "--", "sleep", "1000"])
            .output()
            .unwrap();
        if !out.status.success() {
            refused = Some((i, out));
            break;
        }
    }
    let (started, out) = refused.expect("the user was never refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(started, 10, "{err}");
    assert!(err.contains("max_live_runs = 10"), "{err}");
    assert_eq!(out.status.code(), Some(2), "{err}");
    root_kill_latency(&agent, "a user at their run limit");
    // Killing some makes room again, until the start rate says no.
    let theirs: Vec<String> = agent
        .ps(false)
        .iter()
        .filter(|r| r["owner_uid"] == user.uid)
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect();
    for id in &theirs {
        agent.kill_ok(id, &["--force"]);
    }
    let mut rate_refusal = String::new();
    for _ in 0..10 {
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["run", "--detach", "--", "sleep", "1000"])
            .output()
            .unwrap();
        if !out.status.success() {
            rate_refusal = String::from_utf8_lossy(&out.stderr).into_owned();
            break;
        }
    }
    assert!(
        rate_refusal.contains("max_starts_per_minute = 15"),
        "{rate_refusal:?}"
    );
    for _ in 0..12 {
        agent.start_run(&[], "exec sleep 1000");
    }
}

const FLOOD_NOTIFY: &str = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
addr = os.environ["NOTIFY_SOCKET"]
end = time.time() + 15
i = 0
while time.time() < end:
    i += 1
    try:
        s.sendto(b"STATUS=flood %d\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=1000000" % i, addr)
    except OSError:
        pass
"#;

/// A run that sends sd_notify messages as fast as it can does not slow root down.
#[test]
fn root_kills_while_a_users_run_floods_its_notify_socket() {
    require_privileges!();
    let (agent, user) = user_agent(None);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("flood.py");
    std::fs::write(&script, FLOOD_NOTIFY).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let flooding = user_run(
        &agent,
        &user,
        &[],
        &format!("exec /usr/bin/python3 {}", script.display()),
    );
    assert!(agent.wait_procs(&flooding, 2));
    // Let the flood build up.
    assert!(wait_until(Duration::from_secs(10), || {
        agent.status(&flooding)["status_text"]
            .as_str()
            .is_some_and(|s| s.starts_with("flood"))
    }));
    root_kill_latency(&agent, "a run's sd_notify flood");
    agent.kill_ok(&flooding, &["--force"]);
}

/// A grace of 2^64 ms on one's own run (or a template's) once held the run in
/// `stopping` for ever, past its timeout: graces from users are capped at the
/// operator's, so the kill ends within the template's term grace.
#[test]
fn a_users_huge_grace_does_not_keep_its_run_alive() {
    require_privileges!();
    let (agent, user) = user_agent(None);
    let run = user_run(
        &agent,
        &user,
        &[],
        "trap '' TERM; while :; do sleep 1; done",
    );
    assert!(agent.wait_procs(&run, 3));
    let mut kill = KillOnDrop(
        agent
            .wfcg_as(&user)
            .current_dir("/")
            .args([
                "kill",
                &run,
                "--grace",
                "80000h",
                "--max-wait",
                "80000h",
                "--json",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = kill.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the kill did not end: {status:?}"
    );
    assert!(agent.wait_status(&run, "killed"));
}

/// A 2 MB reason (once, with kill requests for missing runs, 1.4 GB of audit in
/// 20 s) is refused with a clear error; what is recorded is at most 1 KiB.
#[test]
fn a_huge_kill_reason_is_refused_and_not_stored() {
    require_privileges!();
    let (agent, user) = user_agent(None);
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body.json");
    let reason = "x".repeat(2 << 20);
    std::fs::write(&body, format!("{{\"reason\": \"{reason}\"}}")).unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&body, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let before = std::fs::metadata(agent.db()).unwrap().len();
    for _ in 0..20 {
        let out = user
            .command("curl")
            .args([
                "-s",
                "--unix-socket",
                agent.socket.to_str().unwrap(),
                "--data-binary",
                &format!("@{}", body.display()),
                "http://wfcg/v1/runs/run_000000000000/kill",
            ])
            .output()
            .unwrap();
        let answer = String::from_utf8_lossy(&out.stdout);
        assert!(
            answer.contains("bad_input") && answer.contains("at most"),
            "{answer:.300}"
        );
    }
    let wal = agent.state_dir.join("wfcg.db-wal");
    let grown = std::fs::metadata(agent.db()).unwrap().len() - before
        + std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(grown < 2 << 20, "the store grew by {grown} bytes");
    let longest: usize = agent
        .sql("select coalesce(max(length(reason)), 0) from audit")
        .parse()
        .unwrap();
    assert!(longest <= 1024, "a reason of {longest} bytes was stored");
    root_kill_latency(&agent, "huge reasons");
}

/// A kill of one's own run held by a critical section (a git lock held open, the
/// 30 s git grace) is preempted by root's `--force`: both get the answer at once.
#[test]
fn root_force_preempts_a_users_graceful_kill_waiting_on_a_section() {
    require_privileges!();
    let (agent, user) = user_agent(None);
    let ws = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(ws.path(), Some(user.uid), Some(user.gid)).unwrap();
    std::fs::create_dir(ws.path().join(".git")).unwrap();
    std::os::unix::fs::chown(ws.path().join(".git"), Some(user.uid), Some(user.gid)).unwrap();
    let out = agent
        .wfcg_as(&user)
        .current_dir(ws.path())
        .args([
            "run",
            "--detach",
            "--",
            "sh",
            "-c",
            "exec 3>.git/index.lock; exec sleep 1000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(wait_until(Duration::from_secs(10), || ws
        .path()
        .join(".git/index.lock")
        .exists()));
    let mut graceful = KillOnDrop(
        agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["kill", &run, "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(
        Duration::from_secs(10),
        || agent.status(&run)["status"] == "stopping"
    ));
    let t = Instant::now();
    let out = agent
        .wfcg()
        .args(["kill", "--force", "--json", &run])
        .output()
        .unwrap();
    let took = t.elapsed();
    eprintln!("root's --force during a graceful kill waiting on a git lock: {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < PROMPT,
        "root's --force waited {took:?} behind the graceful kill"
    );
    assert!(
        graceful.wait_timeout(PROMPT).is_some(),
        "the graceful request was not answered with the forced kill"
    );
    assert!(agent.wait_status(&run, "killed"));
}
