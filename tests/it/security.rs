//! The privilege boundary, attacked: an unprivileged user (a real one, made with
//! useradd) tries to turn each root action of the agent on a path or input it
//! controls against a root-owned victim. Each test names what it guards in
//! SECURITY.md and asserts the victim is untouched or the request refused.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{self, KillOnDrop, TestAgent, TestUser, described, wait_until};

/// A root-owned directory (0755, so the user may look but not write) holding a
/// root-owned victim file, 0600, with known content.
struct Victim {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
}

impl Victim {
    fn new() -> Victim {
        let tmp = tempfile::Builder::new()
            .prefix("wfcg-victim")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "root's secret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Victim {
            _dir: tmp,
            dir,
            file,
        }
    }

    fn assert_untouched(&self) {
        let meta = std::fs::symlink_metadata(&self.file).expect("the victim file is gone");
        assert_eq!(meta.uid(), 0, "victim chowned");
        assert_eq!(meta.mode() & 0o7777, 0o600, "victim chmodded");
        assert_eq!(
            std::fs::read_to_string(&self.file).unwrap(),
            "root's secret\n",
            "victim written"
        );
    }
}

/// A directory owned by the test user (its workspace and scratch space).
fn user_dir(user: &TestUser) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wfcg-user")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    dir
}

/// An agent every user can reach, and the test user.
fn setup() -> (TestAgent, TestUser) {
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    (agent, user)
}

/// `wfcg ARGS` as the user, in `cwd`.
fn as_user(agent: &TestAgent, user: &TestUser, cwd: &Path, args: &[&str]) -> Output {
    agent
        .wfcg_as(user)
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_users_template_cannot_make_the_root_agent_run_a_command_or_widen_its_limits() {
    require_privileges!();
    let (agent, user) = setup();
    let victim = Victim::new();
    let home = user_dir(&user);
    let proof = victim.dir.join("pwned");
    let attempts = [
        (
            "alerts",
            format!("[alerts]\non_event = \"id > {}\"\n", proof.display()),
            "[alerts] may be set only by the operator",
        ),
        (
            "webhook",
            "[alerts]\nwebhook = \"http://127.0.0.1:1/x\"\n".to_string(),
            "[alerts] may be set only by the operator",
        ),
        (
            "cleanup",
            "[cleanup]\nworkspace = \"remove\"\n".to_string(),
            "[cleanup] may be set only by the operator",
        ),
        (
            "limits",
            "[limits]\n\"pids.max\" = \"max\"\n".to_string(),
            "[limits] may be set only by the operator",
        ),
        (
            "grace",
            "[kill]\nterm_grace = \"80000h\"\n".to_string(),
            "kill.term_grace = 80000h is longer than the operator's 5s",
        ),
        (
            "no-timeout",
            "[timeouts]\ntotal = \"0\"\n".to_string(),
            "timeouts.total = 0 (off) is longer than the operator's 1h",
        ),
    ];
    for (name, toml, expected) in attempts {
        let file = home.path().join(format!("{name}.toml"));
        std::fs::write(&file, toml).unwrap();
        let out = as_user(
            &agent,
            &user,
            home.path(),
            &[
                "run",
                "--template",
                file.to_str().unwrap(),
                "--init-timeout",
                "1s",
                "--",
                "sleep",
                "30",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{name}: {}", described(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "{name}: {}",
            described(&out)
        );
    }
    // The same through the flags: no timeout may be removed or lengthened.
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &["run", "--timeout", "0", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", described(&out));
    // What a user may do: shorten a timeout, choose readiness.
    let file = home.path().join("ok.toml");
    std::fs::write(
        &file,
        "[run]\nready = \"start\"\n[timeouts]\ntotal = \"10m\"\n",
    )
    .unwrap();
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &[
            "run",
            "-q",
            "--template",
            file.to_str().unwrap(),
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    assert!(
        agent.ps(true).len() == 1,
        "exactly the allowed run was started"
    );
    assert!(!proof.exists(), "the agent ran the user's command as root");
    victim.assert_untouched();
}

/// The notify socket is bound (and chmodded) in the agent's own directory, never
/// in the user's run directory: swapping a symlink in under the old name during
/// starts and restarts gains nothing.
#[test]
fn the_notify_socket_cannot_be_turned_into_a_chmod_of_a_root_file() {
    require_privileges!();
    let (mut agent, user) = setup();
    let victim = Victim::new();
    let home = user_dir(&user);
    let run_id = format!("sec-notify-{}", std::process::id());
    let run_dir = agent.socket.parent().unwrap().join("runs").join(&run_id);
    // The user swaps a symlink to the victim in as `notify`, as fast as it can, for
    // as long as the test starts and restarts.
    let swap = format!(
        "end=$(($(date +%s) + 8)); while [ $(date +%s) -lt $end ]; do \
           [ -d {dir} ] || continue; ln -sfn {victim} {dir}/L 2>/dev/null; \
           mv -Tf {dir}/L {dir}/notify 2>/dev/null; done",
        dir = run_dir.display(),
        victim = victim.file.display()
    );
    let _attacker = KillOnDrop(
        user.command("sh")
            .args(["-c", &swap])
            .current_dir(home.path())
            .spawn()
            .unwrap(),
    );
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &["run", "--detach", "--run-id", &run_id, "--", "sleep", "60"],
    );
    assert!(out.status.success(), "{}", described(&out));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        // Every start of the agent binds the live runs' sockets again.
        agent.kill9();
        agent.spawn();
        victim.assert_untouched();
    }
    let socket = agent.sql(&format!(
        "select notify_socket from runs where run_id = '{run_id}'"
    ));
    assert!(
        !socket.starts_with(run_dir.to_str().unwrap()),
        "the notify socket is in the user's run directory: {socket}"
    );
    victim.assert_untouched();
}

#[test]
fn stop_reason_is_never_written_through_a_users_symlink_or_into_a_fifo() {
    require_privileges!();
    let (agent, user) = setup();
    let victim = Victim::new();
    let home = user_dir(&user);
    for plant in [
        format!(
            "ln -s {} \"$WFCG_RUN_DIR/stop-reason\"",
            victim.file.display()
        ),
        "mkfifo \"$WFCG_RUN_DIR/stop-reason\"".to_string(),
    ] {
        let script = format!("{plant}; echo planted; exec sleep 1000");
        let out = as_user(
            &agent,
            &user,
            home.path(),
            &["run", "--detach", "--", "sh", "-c", &script],
        );
        assert!(out.status.success(), "{}", described(&out));
        let run_id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let run_dir = PathBuf::from(
            agent
                .sql(&format!(
                    "select run_dir from runs where run_id = '{run_id}'"
                ))
                .trim(),
        );
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::symlink_metadata(
                run_dir.join("stop-reason")
            )
            .is_ok()),
            "the run did not plant its stop-reason"
        );
        // The user kills their own run, with a reason meant for the victim.
        let started = Instant::now();
        let out = as_user(
            &agent,
            &user,
            home.path(),
            &["kill", &run_id, "--reason", "overwritten", "--json"],
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the kill hung on the planted file"
        );
        assert_eq!(out.status.code(), Some(0), "{plant}: {}", described(&out));
        victim.assert_untouched();
    }
}

#[test]
fn cleanup_workspace_removes_only_the_callers_own_directory() {
    require_privileges!();
    let (agent, user) = setup();
    let victim = Victim::new();
    let home = user_dir(&user);
    for target in [victim.dir.to_str().unwrap(), "/", "/proc"] {
        let out = as_user(
            &agent,
            &user,
            home.path(),
            &[
                "run",
                "--workspace",
                target,
                "--cleanup-workspace",
                "--",
                "true",
            ],
        );
        assert_eq!(out.status.code(), Some(2), "{target}: {}", described(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("cannot be removed"),
            "{target}: {}",
            described(&out)
        );
    }
    // A symlink of the user's own pointing at the victim directory is not followed.
    let link = home.path().join("ws-link");
    std::os::unix::fs::symlink(&victim.dir, &link).unwrap();
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &[
            "run",
            "--workspace",
            link.to_str().unwrap(),
            "--cleanup-workspace",
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", described(&out));
    victim.assert_untouched();
    // The user's own workspace is removed.
    let own = home.path().join("ws");
    std::fs::create_dir(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(user.uid), Some(user.gid)).unwrap();
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &[
            "run",
            "--workspace",
            own.to_str().unwrap(),
            "--cleanup-workspace",
            "--",
            "touch",
            "made",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    assert!(
        wait_until(Duration::from_secs(10), || !own.exists()),
        "the user's own workspace was not removed"
    );
}

/// A workspace turned into a symlink to a root directory after the run started
/// is not removed at its end.
#[test]
fn a_workspace_swapped_for_a_symlink_during_the_run_is_not_removed() {
    require_privileges!();
    let (agent, user) = setup();
    let victim = Victim::new();
    let home = user_dir(&user);
    let ws = home.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(user.uid), Some(user.gid)).unwrap();
    let swap = format!(
        "mv {ws} {ws}.away && ln -s {victim} {ws}",
        ws = ws.display(),
        victim = victim.dir.display()
    );
    let out = as_user(
        &agent,
        &user,
        home.path(),
        &[
            "run",
            "--workspace",
            ws.to_str().unwrap(),
            "--cleanup-workspace",
            "--",
            "sh",
            "-c",
            &swap,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    wait_until(Duration::from_secs(5), || agent.ps(false).is_empty());
    victim.assert_untouched();
    assert!(victim.dir.is_dir());
}

#[test]
fn a_user_reads_neither_the_store_nor_other_users_runs_in_the_metrics() {
    require_privileges!();
    let (agent, user) = setup();
    let root_run = agent.start_run(&[], "exec sleep 1000");
    // The store, its side files and the audit head are root's alone.
    for entry in std::fs::read_dir(&agent.state_dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_file() {
            assert_eq!(
                meta.mode() & 0o077,
                0,
                "{} is open to others",
                entry.path().display()
            );
        }
    }
    let out = user
        .command("sqlite3")
        .args([
            "-readonly",
            agent.db().to_str().unwrap(),
            "select command from runs",
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the user read the store: {}",
        described(&out)
    );
    // /metrics: the user sees aggregates, not root's run; root sees it.
    let metrics_as = |cmd: &mut Command| {
        let out = cmd
            .args([
                "-sf",
                "--unix-socket",
                agent.socket.to_str().unwrap(),
                "http://wfcg/metrics",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", described(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let theirs = metrics_as(&mut user.command("curl"));
    assert!(theirs.contains("wfcg_runs"), "{theirs}");
    assert!(!theirs.contains(&root_run.id), "{theirs}");
    let roots = metrics_as(&mut Command::new("curl"));
    assert!(roots.contains(&root_run.id), "{roots}");
}

/// The caller is pinned when its connection is accepted. A client that connects,
/// hands the socket to a child and exits, so that its pid can be given to another
/// process (here a root `sleep` made to get exactly that pid), never gets that
/// process moved into its run or killed.
#[test]
fn a_recycled_caller_pid_never_moves_or_kills_another_process() {
    require_privileges!();
    let (agent, user) = setup();
    let run_id = format!("sec-pid-{}", std::process::id());
    let client = format!(
        r#"
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect({socket:?})
if os.fork():
    print(os.getpid(), flush=True)
    os._exit(0)
sys.stdin.readline()
body = json.dumps({{"command": ["sleep", "100"], "run_id": {run_id:?}, "detach": True}})
s.sendall(("POST /v1/runs HTTP/1.1\r\nHost: wfcg\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)).encode())
answer = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    answer += chunk
print(answer.decode(errors="replace").split("\r\n", 1)[0], flush=True)
"#,
        socket = agent.socket.to_str().unwrap(),
    );
    let mut parent = user
        .command("/usr/bin/python3")
        .args(["-c", &client])
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut go = parent.stdin.take().unwrap();
    let mut lines = BufReader::new(parent.stdout.take().unwrap()).lines();
    let dead: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    // The connecting process is reaped: its pid is free.
    parent.wait().unwrap();
    // A root process takes exactly that pid (ns_last_pid), retried while other
    // tests take it first.
    let mut victim = None;
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (dead - 1).to_string()).unwrap();
        let child = KillOnDrop(Command::new("sleep").arg("1000").spawn().unwrap());
        if child.id() == dead {
            victim = Some(child);
            break;
        }
    }
    let victim = victim.expect("could not give a root process the dead caller's pid");
    let origin = std::fs::read_to_string(format!("/proc/{dead}/cgroup")).unwrap();
    writeln!(go, "go").unwrap();
    let answer = lines.next().unwrap().unwrap();
    assert!(
        answer.contains(" 400 "),
        "the request was not refused: {answer}"
    );
    assert!(util::alive(victim.id()), "the root process was killed");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{dead}/cgroup")).unwrap(),
        origin,
        "the root process was moved"
    );
    assert!(
        agent.ps(true).is_empty(),
        "a run was started: {:?}",
        agent.ps(true)
    );
}

/// Issue 9 item 5: `ln -s /root-owned/dir ws/.git`, then a run in `ws`. The git
/// lock cleanup used to read the directory through the symlink and unlink, as
/// root, a root-owned `important.lock` held open by a root process (the "held"
/// check compared the unresolved path) and a nested lock. Now git directories
/// are opened without following symlinks, only when the run's owner owns them,
/// and locks are unlinked as the run's owner: both survive.
#[test]
fn git_lock_cleanup_never_follows_a_workspace_symlink_into_a_root_directory() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let victim = base.join("root-owned");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    let ws = base.join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(user.uid), Some(user.gid)).unwrap();
    std::os::unix::fs::symlink(&victim, ws.join(".git")).unwrap();
    std::os::unix::fs::lchown(ws.join(".git"), Some(user.uid), Some(user.gid)).unwrap();
    // Repositories below the workspace are looked at too: one whose `.git` file
    // names a root-owned git directory, and a symlink to a root-owned repository.
    let root_repo = base.join("root-repo");
    std::fs::create_dir_all(root_repo.join(".git")).unwrap();
    let by_file = ws.join("by-file");
    std::fs::create_dir(&by_file).unwrap();
    std::fs::write(
        by_file.join(".git"),
        format!("gitdir: {}\n", root_repo.join(".git").display()),
    )
    .unwrap();
    for p in [&by_file, &by_file.join(".git")] {
        std::os::unix::fs::lchown(p, Some(user.uid), Some(user.gid)).unwrap();
    }
    std::os::unix::fs::symlink(&root_repo, ws.join("by-link")).unwrap();
    std::os::unix::fs::lchown(ws.join("by-link"), Some(user.uid), Some(user.gid)).unwrap();
    let started = ws.join("started");

    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--workspace"])
        .arg(&ws)
        .args(["--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 1000", started.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(wait_until(Duration::from_secs(20), || started.exists()));

    // Created after the run started, as a root process's locks would be.
    let important = victim.join("important.lock");
    let nested = victim.join("sub/nested.lock");
    let _holder = KillOnDrop(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec 3>{}; exec sleep 1000", important.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::fs::write(&nested, "").unwrap();
    let root_index = root_repo.join(".git/index.lock");
    std::fs::write(&root_index, "").unwrap();
    assert!(wait_until(Duration::from_secs(10), || important.exists()));

    let out = agent
        .wfcg_as(&user)
        .args(["kill", "--json", "--force", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert!(
        important.exists(),
        "the root-owned held lock was removed: {result:#}"
    );
    assert!(
        nested.exists(),
        "the root-owned nested lock was removed: {result:#}"
    );
    assert!(
        root_index.exists(),
        "a root-owned repository's lock reached from the workspace was removed: {result:#}"
    );
    assert_eq!(
        result["cleanup_status"]["stale_locks_removed"],
        serde_json::json!([]),
        "{result:#}"
    );
    let sections = result["sections"].as_array().unwrap();
    assert!(
        sections
            .iter()
            .all(|s| !s["path"].as_str().unwrap().contains("root-owned")),
        "a root-owned lock was reported as the user's section: {result:#}"
    );
}
