//! Descriptors a user passes (SCM_RIGHTS) are never closed by a thread of the
//! agent. A TCP socket with `SO_LINGER` whose peer never reads blocks its final
//! close for as long as the linger says; when the kernel discarded such a socket
//! in the thread that read the message (read(2) without room for it, or too
//! little room), that thread stalled: the tokio workers (API and deadline monitor
//! frozen) or the notify thread (READY and heartbeats of every run ignored).

use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, TestUser, text, wait_until};

/// The attacker, run as an unprivileged user. `lingering()` makes a TCP socket
/// whose close would wait: its peer (kept open here) never reads, its send
/// buffer is full, and it lingers an hour.
///
/// - `api SOCKET N DONE`: N requests `GET /v1/health`, each passing one such
///   socket; writes DONE and stays alive (the peers with it).
/// - `notify DONE`: in a run, two datagrams to NOTIFY_SOCKET, each passing one
///   such socket and 20 descriptors of /dev/null, each sent by a child that
///   exits at once (a short-lived sender); writes DONE and stays alive.
const ATTACKER: &str = r#"
import array, os, socket, struct, sys, threading, time
keep = []
def lingering():
    lst = socket.socket(); lst.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lst.bind(("127.0.0.1", 0)); lst.listen(1)
    c = socket.socket(); c.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    c.connect(lst.getsockname()); peer, _ = lst.accept()
    c.setblocking(False)
    for _ in range(2):
        try:
            while True: c.send(b"x" * 65536)
        except BlockingIOError: pass
        time.sleep(0.3)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 3600))
    keep.extend([lst, peer])
    return c
def rights(fds):
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
mode = sys.argv[1]
if mode == "api":
    path, n, done = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    for i in range(n):
        c = lingering()
        a = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); a.connect(path)
        try:
            a.sendmsg([b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"], rights([c.fileno()]))
            # The copy in flight is now the last: the agent's close of it is final.
            c.close()
            print("passed", i + 1, flush=True)
        except OSError as e:
            # Refused: never closed here, where it is the last copy (a close that waits).
            keep.append(c)
            print("refused", i + 1, e, flush=True)
        keep.append(a)
else:
    done = sys.argv[2]
    for i in range(2):
        c = lingering()
        fds = [c.fileno()] + [os.open("/dev/null", os.O_RDONLY) for _ in range(20)]
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)   # once the parent let go of its copy
            d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # Read at once, this leaves the agent's notify thread in its batch
            # pause (50 ms): the next datagram is read after the close below.
            d.sendto(b"STATUS=tick", os.environ["NOTIFY_SOCKET"])
            time.sleep(0.01)
            d.sendmsg([b"STATUS=passing"], rights(fds), 0, os.environ["NOTIFY_SOCKET"])
            c.close()       # at once: the copy in flight is now the last
            os._exit(0)
        c.close()
        os.write(w, b"x")
        threading.Thread(target=os.waitpid, args=(pid, 0), daemon=True).start()
        for f in fds[1:]: os.close(f)
        time.sleep(0.3)
open(done, "w").close()
while True: time.sleep(3600)
"#;

/// A directory the user may write into.
fn user_dir(user: &TestUser) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wfcg-passfd")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    dir
}

/// Root's `wfcg ps` answers within `within`.
fn ps_answers(agent: &TestAgent, within: Duration) -> bool {
    let mut ps = KillOnDrop(
        agent
            .wfcg()
            .arg("ps")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    ps.wait_timeout(within).is_some_and(|s| s.success())
}

/// F1: four requests on the API socket, each passing a lingering TCP socket, used
/// to leave every tokio worker stuck in the socket's close: the API and the
/// deadline monitor froze while the attacker lived.
#[test]
fn sockets_passed_on_the_api_socket_cannot_freeze_the_agent() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = user_dir(&user);
    let done = dir.path().join("done");
    let mut attacker = KillOnDrop(
        user.command("/usr/bin/python3")
            .args(["-c", ATTACKER, "api"])
            .arg(&agent.socket)
            .arg("4")
            .arg(&done)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(30), || done.exists()),
        "the attacker did not get its requests out"
    );
    let out = attacker.0.stdout.take().unwrap();
    for line in std::io::BufReader::new(out).lines().take(4) {
        eprintln!("attacker: {}", line.unwrap());
    }
    assert!(
        ps_answers(&agent, Duration::from_secs(5)),
        "wfcg ps did not answer within 5 s; log:\n{}",
        agent.log_tail(30)
    );
    // The deadline monitor still kills on time.
    let mut run = KillOnDrop(
        agent
            .wfcg()
            .args(["run", "--timeout", "3s", "--", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let status = run.wait_timeout(Duration::from_secs(15));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(124),
        "a run with --timeout 3s was not killed on time; log:\n{}",
        agent.log_tail(30)
    );
    drop(attacker);
}

/// F2 and F3: from a user's run, two notify datagrams each passing a lingering
/// TCP socket and 20 descriptors of /dev/null, from senders that exit at once.
/// The closing thread stuck on the first, the notify thread read the second with
/// room for the credentials only and the kernel discarded its descriptors in the
/// notify thread itself: no run's READY was seen any more.
#[test]
fn descriptors_passed_in_notify_datagrams_cannot_stop_notify_handling() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = user_dir(&user);
    let done = dir.path().join("done");
    let out = agent
        .wfcg_as(&user)
        .current_dir(dir.path())
        .args([
            "run",
            "--detach",
            "--",
            "/usr/bin/python3",
            "-c",
            ATTACKER,
            "notify",
        ])
        .arg(&done)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let attacker = text(&out.stdout).trim().to_string();
    assert!(
        wait_until(Duration::from_secs(30), || done.exists()),
        "the attacker's run did not send its datagrams; log:\n{}",
        agent.log_tail(30)
    );
    let victim = agent.start_run(
        &["--init-timeout", "20s"],
        &format!("{} --ready; exec sleep 1000", systemd_notify().display()),
    );
    let mut st = serde_json::Value::Null;
    let ready = wait_until(Duration::from_secs(20), || {
        st = agent.status(&victim.id);
        st["status"] == "running"
    });
    assert!(
        ready,
        "READY=1 of another run was not seen: {st:#}; log:\n{}",
        agent.log_tail(30)
    );
    // The attacker's own datagrams were read too (their sender is judged by its
    // pidfd although it exited at once).
    let st = agent.status(&attacker);
    assert_eq!(st["status_text"], "passing", "{st:#}");
    agent.kill_ok(&victim.id, &[]);
    agent.kill_ok(&attacker, &[]);
}

fn systemd_notify() -> &'static Path {
    Path::new("/usr/bin/systemd-notify")
}
