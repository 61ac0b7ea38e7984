//! Issue 21 item 1, "identity comes only from the kernel", attacked as a real
//! unprivileged user against root's runs: a notify datagram whose passed
//! descriptor once took the room of the kernel's pidfd, an exit report from a
//! process that got the dead supervisor's pid number, an exit report for an
//! adopted run (which has no supervisor).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::require_privileges;
use crate::util::{self, KillOnDrop, TestAgent, TestUser, wait_until};

/// A Python client that waits for a line on stdin, then POSTs `body` to `path`
/// on the agent's socket and prints the answer's status line and body. It prints
/// its pid first.
fn poster(agent: &TestAgent, path: &str, body: &str) -> String {
    format!(
        r#"
import os, socket, sys
print(os.getpid(), flush=True)
sys.stdin.readline()
s = socket.socket(socket.AF_UNIX)
s.connect({socket:?})
body = {body:?}
s.sendall(("POST {path} HTTP/1.1\r\nHost: wfcg\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
answer = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
head, _, rest = answer.decode(errors="replace").partition("\r\n\r\n")
print(head.split("\r\n", 1)[0] + " " + rest.replace("\n", " "), flush=True)
sys.stdin.readline()
"#,
        socket = agent.socket.to_str().unwrap(),
    )
}

/// The audit records of `action` for `run_id`: `decision|actor_name|caller_pid` lines.
fn audited(agent: &TestAgent, action: &str, run_id: &str) -> String {
    agent.sql(&format!(
        "select decision || '|' || actor_name || '|' || caller_pid from audit \
         where action = '{action}' and run_id = '{run_id}'"
    ))
}

/// Why: "A notify datagram that carries one passed fd (the fd takes the room of
/// the kernel's pidfd) from a sender that exits at once is believed". The user
/// sends READY, STATUS, a 30-day EXTEND_TIMEOUT_USEC and WATCHDOG_USEC=1 to
/// root's run, each time passing one descriptor, and exits at once: nothing of it
/// is taken (the run stays initializing, its status text, deadline and watchdog
/// untouched, and it is not killed), and each datagram is reported dropped.
#[test]
fn a_notify_datagram_passing_a_descriptor_from_a_sender_gone_at_once_is_dropped() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let run = agent.start_run(
        &["--init-timeout", "1m"],
        &format!("{} notify --status=inside; exec sleep 100", util::WFCG),
    );
    assert!(
        wait_until(
            Duration::from_secs(10),
            || agent.status(&run.id)["status_text"] == "inside"
        ),
        "{:#}",
        agent.status(&run.id)
    );
    let before = agent.status(&run.id);
    let socket = agent.sql(&format!(
        "select notify_socket from runs where run_id = '{}'",
        run.id
    ));
    assert!(!socket.is_empty());
    let attack = format!(
        r#"
import array, os, socket, time
child = os.fork()
if child == 0:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    # Wakes the agent's notify thread: its next read comes a batch (50 ms) later,
    # when this process is gone and reaped.
    s.sendto(b"X_WAKE=1", {socket:?})
    time.sleep(0.01)
    fd = os.open("/dev/null", os.O_RDONLY)
    msg = b"READY=1\nSTATUS=spoofed\nEXTEND_TIMEOUT_USEC=2592000000000\nWATCHDOG_USEC=1\n"
    s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))], 0, {socket:?})
    os._exit(0)
os.waitpid(child, 0)
"#
    );
    let dropped = "notify message from a process outside the run dropped";
    for attempt in 0..3 {
        // Two datagrams dropped each time: the wake-up and the attack.
        let seen = agent.logged(dropped) + 1;
        let st = user
            .command("/usr/bin/python3")
            .args(["-c", &attack])
            .current_dir("/")
            .status()
            .unwrap();
        assert!(st.success(), "attempt {attempt}: the sender failed");
        assert!(
            agent.wait_logged_more(dropped, seen),
            "attempt {attempt}: not dropped; log:\n{}",
            agent.log()
        );
    }
    let after = agent.status(&run.id);
    assert_eq!(after["status"], "initializing", "{after:#}");
    assert!(after["ready_at"].is_null(), "{after:#}");
    assert_eq!(after["status_text"], "inside", "{after:#}");
    assert_eq!(after["init_deadline"], before["init_deadline"], "{after:#}");
    assert_eq!(
        after["watchdog_deadline"], before["watchdog_deadline"],
        "{after:#}"
    );
    agent.kill_ok(&run.id, &["--force"]);
}

/// Why: "`POST /v1/runs/ID/exit` is judged by pid alone: with pid recycling a
/// read-only user kills root's adopted run and rewrites finished runs' exit
/// codes, and the audit trail does not name them." Root's run loses its
/// supervisor (SIGKILL); a read-only user's process is given exactly its pid
/// (`ns_last_pid`) and reports the run's exit: refused, audited with the user's
/// name and pid, and the run's command lives on, its exit unrecorded.
#[test]
fn an_exit_report_from_a_process_given_the_dead_supervisors_pid_is_refused_and_audited() {
    require_privileges!();
    let user = TestUser::get();
    let agent =
        TestAgent::start_with_policy(&format!("[users]\n{} = \"readonly\"\n", TestUser::NAME));
    agent.open_to_all_users();
    // The supervisor is this test's child, so that it is reaped and its pid freed.
    let id = format!("sup-{}", std::process::id());
    let mut supervisor = KillOnDrop(
        agent
            .wfcg()
            .args(["run", "--run-id", &id, "--", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let run = util::Run {
        id,
        marker: String::new(),
    };
    assert!(agent.wait_procs(&run.id, 2), "{:#}", agent.status(&run.id));
    let supervisor_pid = supervisor.id();
    assert_eq!(
        agent.sql(&format!("select pid from runs where run_id = '{}'", run.id)),
        supervisor_pid.to_string()
    );
    // The supervisor in its own leaf, its command alone in the payload.
    let payload_cg = agent.run_cgroup(&run.id).child("payload");
    let mut payload = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            payload = payload_cg.procs().unwrap_or_default();
            payload.len() == 1 && payload[0] != supervisor_pid
        }),
        "{payload:?}"
    );
    // The supervisor dies; the run lives on in its command.
    supervisor.0.kill().unwrap();
    supervisor.0.wait().unwrap();
    let supervisor = supervisor_pid;
    let script = poster(
        &agent,
        &format!("/v1/runs/{}/exit", run.id),
        r#"{"exit_code": 3}"#,
    );
    // The user's process takes exactly that pid, retried while others take it first.
    let mut attacker = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (supervisor - 1).to_string()).unwrap();
        let mut child = KillOnDrop(
            user.command("/usr/bin/python3")
                .args(["-c", &script])
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        let pid: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        if pid == supervisor {
            attacker = Some((child, lines));
            break;
        }
    }
    let (mut attacker, mut lines) =
        attacker.expect("could not give the user's process the supervisor's pid");
    let mut go = attacker.0.stdin.take().unwrap();
    writeln!(go, "go").unwrap();
    let answer = lines.next().unwrap().unwrap();
    assert!(
        answer.contains(" 403 "),
        "the report was not refused: {answer}"
    );
    assert!(answer.contains("supervisor"), "{answer}");
    assert!(util::alive(payload[0]), "root's run was killed");
    let st = agent.status(&run.id);
    assert!(
        matches!(st["status"].as_str(), Some("initializing" | "running")),
        "{st:#}"
    );
    assert!(st["exit_code"].is_null(), "{st:#}");
    assert_eq!(
        audited(&agent, "exit_report", &run.id),
        format!("denied|{}|{supervisor}", TestUser::NAME)
    );
    drop(go);
    agent.kill_ok(&run.id, &["--force"]);
}

/// An adopted run has no supervisor: its end is seen by the agent, never
/// reported. Not even the adopted tree's own root (pid and start time as
/// recorded) may report it: refused and audited, the tree untouched.
#[test]
fn an_exit_report_for_an_adopted_run_is_refused() {
    require_privileges!();
    let agent = TestAgent::start();
    let run_id = format!("adopted-{}", std::process::id());
    let script = poster(
        &agent,
        &format!("/v1/runs/{run_id}/exit"),
        r#"{"exit_code": 0}"#,
    );
    // A session of its own: nothing else is taken with it.
    let mut tree = KillOnDrop(
        Command::new("setsid")
            .args(["/usr/bin/python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(tree.0.stdout.take().unwrap()).lines();
    let pid: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    assert_eq!(pid, tree.id());
    let out = agent.cli(&["adopt", &pid.to_string(), "--run-id", &run_id, "--json"]);
    assert!(out.status.success(), "{}", util::described(&out));
    let mut go = tree.0.stdin.take().unwrap();
    writeln!(go, "go").unwrap();
    let answer = lines.next().unwrap().unwrap();
    assert!(
        answer.contains(" 403 "),
        "the report was not refused: {answer}"
    );
    assert!(answer.contains("adopted"), "{answer}");
    let st = agent.status(&run_id);
    assert_eq!(st["status"], "running", "{st:#}");
    assert!(st["exit_code"].is_null(), "{st:#}");
    assert!(util::alive(pid));
    assert_eq!(
        audited(&agent, "exit_report", &run_id),
        format!("denied|root|{pid}")
    );
    // Its end is seen by the agent.
    drop(go);
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(
        agent.wait_status(&run_id, "exited"),
        "{:#}",
        agent.status(&run_id)
    );
}
