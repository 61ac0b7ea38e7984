//! Root can always kill, whatever fails underneath: a full state disk, an agent
//! SIGKILLed in the middle of a kill, a corrupt store, an agent out of file
//! descriptors, a run whose id is the tail of another cgroup's path. Each test
//! injects the fault for real (a small tmpfs, SIGKILL, garbage pages, a low
//! RLIMIT_NOFILE and a real second user holding connections) and checks that
//! the kill happened, nothing was reported that did not happen, and no record
//! was lost.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{self, KillOnDrop, TestAgent, TestUser, wait_until};

/// A tmpfs mounted for one test, detached (MNT_DETACH) when dropped, so a
/// failing test leaves no mount behind.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0711")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .expect("mount");
        assert!(ok.success(), "cannot mount a tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes zeros into `file` until the filesystem says it is full.
fn fill(file: &Path) {
    let mut f = std::fs::File::create(file).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", file.display()),
        }
    }
    let _ = f.sync_all();
}

fn audit_actions(agent: &TestAgent, run_id: &str) -> Vec<String> {
    agent
        .sql(&format!(
            "select action || ':' || outcome from audit where run_id = '{run_id}' order by seq"
        ))
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The state directory on a full filesystem: root's `--emergency` kill still
/// freezes and cgroup.kills the run at once, answers `"audit": "pending"`, and
/// the records (audit rows and the run's end) land in order once space returns.
#[test]
fn an_emergency_kill_on_a_full_state_disk_kills_and_keeps_its_records_pending() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    let state = agent.state_dir.clone();
    {
        let _disk = Tmpfs::mount(&state, "8m");
        agent.spawn();
        // The baseline: the same kill with room on the disk, in the same agent.
        let baseline = agent.start_run(&[], "sleep 1000 & sleep 1000");
        let run = agent.start_run(&[], "sleep 1000 & sleep 1000");
        assert!(agent.wait_procs(&baseline.id, 3) && agent.wait_procs(&run.id, 3));
        let t = Instant::now();
        let base = agent.kill_ok(&baseline.id, &["--emergency"]);
        let with_room = t.elapsed();
        assert_eq!(base["audit"], "written", "{base:#}");
        // The write-ahead log emptied to nothing first: once checkpointed,
        // the log's pages are written again in place, so a full disk would
        // refuse only what no longer fits in them.
        assert!(
            wait_until(Duration::from_secs(10), || agent
                .sql("PRAGMA wal_checkpoint(TRUNCATE)")
                == "0|0|0"),
            "the write-ahead log was never emptied"
        );
        let filler = state.join("filler");
        fill(&filler);

        let t = Instant::now();
        let (out, result) = agent.kill(&run.id, &["--emergency", "--reason", "disk full"]);
        let took = t.elapsed();
        println!(
            "emergency kill (CLI start to exit): full state disk {took:?}, with room \
             {with_room:?}, ratio {:.2}",
            took.as_secs_f64() / with_room.as_secs_f64()
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            agent.log_tail(30)
        );
        assert_eq!(result["success"], true, "{result:#}");
        assert_eq!(result["audit"], "pending", "{result:#}");
        agent.assert_run_gone(&run);
        // While the records wait, the agent answers from them: the run is over.
        let ps = agent.ps(true);
        let shown = ps.iter().find(|r| r["run_id"] == run.id.as_str()).unwrap();
        assert_eq!(shown["status"], "killed", "{shown:#}");
        let (_, again) = agent.kill(&run.id, &["--emergency"]);
        assert_eq!(again["already_ended"], true, "{again:#}");
        let verify = agent.cli(&["audit", "verify"]);
        assert!(
            String::from_utf8_lossy(&verify.stdout).contains("pending"),
            "{verify:?}"
        );

        std::fs::remove_file(&filler).unwrap();
        let landed = wait_until(Duration::from_secs(15), || {
            agent.sql(&format!(
                "select status from runs where run_id = '{}'",
                run.id
            )) == "killed"
                && audit_actions(&agent, &run.id).len() >= 4
        });
        assert!(
            landed,
            "pending records not written; log:\n{}",
            agent.log_tail(30)
        );
        assert_eq!(
            audit_actions(&agent, &run.id),
            vec![
                "run_start:started".to_string(),
                "kill_start:started, ending as killed".into(),
                "run_end:killed".into(),
                "kill:killed".into(),
                "kill:already_ended".into(),
            ]
        );
        assert_eq!(agent.kill_count(&run.id), 1);
        let verify = agent.cli(&["audit", "verify"]);
        let text = String::from_utf8_lossy(&verify.stdout).to_string();
        assert!(verify.status.success(), "{text}");
        assert!(
            text.contains("chain intact") && !text.contains("pending"),
            "{text}"
        );
        agent.kill9();
    }
    let left = util::mounts_below(&state);
    assert!(left.is_empty(), "{left:?}");
}

/// A run that fills its TMPDIR (as the issue's attacker did, `yes > $TMPDIR/fill`)
/// fills only a tmpfs of its own, of the template's size, owned by the run's
/// user: the store stays writable and the kill is recorded at once. The tmpfs is
/// gone with the run.
#[test]
fn a_run_filling_its_tmpdir_fills_only_its_own_tmpfs() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let template = dir.path().join("small-tmp.toml");
    std::fs::write(&template, "[tmpdir]\nsize = \"4M\"\n").unwrap();
    std::fs::set_permissions(&template, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--template", template.to_str().unwrap()])
        .args(["--", "sh", "-c", "yes > \"$TMPDIR/fill\"; exec sleep 1000"])
        .current_dir("/")
        .output()
        .unwrap();
    // A user's template may not set [tmpdir] (the operator's size holds)...
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[tmpdir] may be set only by the operator"),
        "{out:?}"
    );
    // ... root's may.
    let run = agent.start_run(
        &["--template", template.to_str().unwrap()],
        "yes > \"$TMPDIR/fill\"; mkdir \"$TMPDIR/full\"; exec sleep 1000",
    );
    let tmpdir = agent.state_dir.join("tmp").join(&run.id);
    let fill = tmpdir.join("fill");
    assert!(
        wait_until(Duration::from_secs(30), || tmpdir.join("full").exists()),
        "the run did not fill its TMPDIR and go on"
    );
    let size = std::fs::metadata(&fill).unwrap().len();
    assert!(
        (3 << 20..=4 << 20).contains(&size),
        "TMPDIR took {size} bytes, not its 4M tmpfs"
    );
    let mounts = util::mounts_below(&tmpdir);
    assert_eq!(
        mounts,
        vec![tmpdir.clone()],
        "TMPDIR is not a mount of its own"
    );
    let fs = rustix::fs::statfs(&tmpdir).unwrap();
    assert_eq!(fs.f_type as i64, libc::TMPFS_MAGIC);
    let result = agent.kill_ok(&run.id, &["--reason", "filled its TMPDIR"]);
    assert_eq!(result["audit"], "written", "{result:#}");
    assert_eq!(
        result["cleanup_status"]["tmpdir_removed"], true,
        "{result:#}"
    );
    agent.assert_run_gone(&run);
    assert!(util::mounts_below(&agent.state_dir).is_empty());
    assert!(!tmpdir.exists());
}

/// SIGKILL of the agent while a graceful kill waits for a git lock: the
/// `kill_start` record is there, and the next agent records the interruption,
/// resumes the kill and ends the run (it does not stay `stopping`).
#[test]
fn an_agent_killed_mid_kill_leaves_a_trace_and_its_successor_finishes_the_kill() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let ws = tempfile::Builder::new()
        .prefix("wfcg-midkill")
        .tempdir()
        .unwrap();
    std::fs::create_dir(ws.path().join(".git")).unwrap();
    let template = ws.path().join("short-git-grace.toml");
    std::fs::write(&template, "[critical_sections]\ngit = \"2s\"\n").unwrap();
    let ready = ws.path().join("ready");
    let run = agent.start_run(
        &["--template", template.to_str().unwrap()],
        &format!(
            "cd '{ws}' && exec 3> .git/index.lock && touch '{ready}' && exec sleep 1000",
            ws = ws.path().display(),
            ready = ready.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(10), || ready.exists()));

    let mut kill = KillOnDrop(
        agent
            .wfcg()
            .args(["kill", "--json", &run.id, "--grace-git", "10m"])
            .args(["--reason", "stuck on its lock"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = wait_until(Duration::from_secs(10), || {
        agent.status(&run.id)["status"] == "stopping"
            && audit_actions(&agent, &run.id)
                .iter()
                .any(|a| a.starts_with("kill_start:"))
    });
    assert!(started, "no kill_start trace; log:\n{}", agent.log_tail(30));
    agent.kill9();
    assert!(kill.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(
        !util::pids_with_env("WFCG_RUN_ID", &run.id).is_empty(),
        "the run died with the agent"
    );
    assert_eq!(
        agent.sql(&format!(
            "select status from runs where run_id = '{}'",
            run.id
        )),
        "stopping"
    );

    let t = Instant::now();
    agent.spawn();
    assert!(
        agent.wait_status(&run.id, "killed"),
        "the interrupted kill was not finished: {:#}\nlog:\n{}",
        agent.status(&run.id),
        agent.log_tail(30)
    );
    println!(
        "interrupted graceful kill finished {:?} after the restart (template git grace 2 s)",
        t.elapsed()
    );
    agent.wait_run_gone(&run);
    let actions = audit_actions(&agent, &run.id);
    assert!(
        actions.contains(&"kill_interrupted:resumed".to_string()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"run_end:killed".to_string()),
        "{actions:?}"
    );
    assert!(
        actions.contains(&"kill_resumed:killed".to_string()),
        "{actions:?}"
    );
    let reason = agent.sql(&format!(
        "select reason from audit where run_id = '{}' and action = 'kill_interrupted'",
        run.id
    ));
    assert!(reason.contains("graceful kill by"), "{reason}");
    let verify = agent.cli(&["audit", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
}

/// A corrupt `wfcg.db` stops the agent with a line that says how to recover; the
/// recovery it names works: a live run is re-adopted from the cgroup tree.
#[test]
fn a_corrupt_store_stops_the_agent_with_how_to_recover() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let run = agent.start_run(&[], "exec sleep 1000");
    agent.kill9();
    let db = agent.db();
    // Enough pages to corrupt, all in the main file.
    agent.sql(
        "create table filler(x); with recursive n(i) as (select 1 union all select i + 1 \
         from n where i < 200) insert into filler select randomblob(900) from n; \
         pragma wal_checkpoint(truncate);",
    );
    let mut bytes = std::fs::read(&db).unwrap();
    let page = 4096;
    assert!(bytes.len() > 8 * page, "{} bytes", bytes.len());
    for (i, b) in bytes[page..].iter_mut().enumerate() {
        *b = (i * 7 + 13) as u8;
    }
    std::fs::write(&db, &bytes).unwrap();

    let mut child = KillOnDrop(
        agent
            .wfcg()
            .arg("agent")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = child.wait_timeout(Duration::from_secs(20));
    let mut err = String::new();
    BufReader::new(child.0.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .for_each(|l| err.push_str(&l));
    let status = status.expect("the agent went on with a corrupt store");
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("corrupt") || err.contains("malformed") || err.contains("not a database"),
        "{err}"
    );
    assert!(
        err.contains("move it aside") && err.contains("re-adopts"),
        "{err}"
    );
    assert!(err.contains(&db.display().to_string()), "{err}");

    for ext in ["", "-wal", "-shm"] {
        let f = PathBuf::from(format!("{}{ext}", db.display()));
        if f.exists() {
            std::fs::rename(&f, format!("{}.bad", f.display())).unwrap();
        }
    }
    agent.spawn();
    let ps = agent.ps(false);
    assert!(
        ps.iter().any(|r| r["run_id"] == run.id.as_str()),
        "run not re-adopted: {ps:#?}"
    );
    agent.kill_ok(&run.id, &["--force"]);
    agent.assert_run_gone(&run);
}

/// A run whose id is the last component of another cgroup's path: a process in
/// that other cgroup is not in the run (its notify message is dropped).
#[test]
fn a_run_id_that_ends_another_cgroups_path_does_not_hold_its_processes() {
    require_privileges!();
    let agent = TestAgent::start();
    let mount = wfcg::cgroup::cgroup2_mount().unwrap();
    let name = util::marker("sfx").replace('-', ".");
    // A cgroup outside the agent's tree whose path ends like the run's.
    let other = wfcg::cgroup::Cgroup::new(mount.join(&name));
    other.create().unwrap();
    struct Remove(wfcg::cgroup::Cgroup);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait_unpopulated(Duration::from_secs(5));
            let _ = self.0.remove();
        }
    }
    let other = Remove(other);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let sock_file = dir.path().join("socket");
    let run = agent.start_run(
        &["--run-id", &name, "--init-timeout", "1m"],
        &format!(
            "echo \"$NOTIFY_SOCKET\" > '{f}.tmp' && mv '{f}.tmp' '{f}'; exec sleep 1000",
            f = sock_file.display()
        ),
    );
    assert!(wait_until(Duration::from_secs(10), || sock_file.exists()));
    let socket = std::fs::read_to_string(&sock_file).unwrap();
    let dropped = "notify message from a process outside the run dropped";
    let before = agent.logged(dropped);
    // The sender moves itself into /<name>, then sends READY=1, and stays (so that
    // it is dropped for its cgroup, not for being gone: on kernels before 6.15 a
    // sender already gone is dropped too); the cgroup's removal kills it.
    let sent = dir.path().join("sent");
    let _sender = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{procs}' && exec python3 -c 'import socket, sys, time; \
             s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); \
             s.sendto(b\"READY=1\\nSTATUS=spoofed\", sys.argv[1]); \
             open(sys.argv[2], \"w\").close(); time.sleep(1000)' '{socket}' '{sent}'",
                procs = other.0.path().join("cgroup.procs").display(),
                socket = socket.trim(),
                sent = sent.display()
            ))
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || sent.exists()),
        "nothing sent"
    );
    assert!(
        agent.wait_logged_more(dropped, before),
        "a process of /{name} was taken as one of run {name}: {:#}",
        agent.status(&run.id)
    );
    let st = agent.status(&run.id);
    assert_eq!(st["status"], "initializing", "{st:#}");
    assert_ne!(st["status_text"], "spoofed", "{st:#}");
    agent.kill_ok(&run.id, &["--force"]);
}

/// Runs a python script as `user`; its stdout's first line is returned once
/// printed, and the process lives (holding what it opened) until dropped.
fn python_as(user: &TestUser, script: &str, args: &[&str]) -> (KillOnDrop, String) {
    let mut child = KillOnDrop(
        // The system's python, which every user may run (not a root-only shim).
        user.command(if Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3"
        } else {
            "python3"
        })
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

/// Holds as many connections to the agent as it can, reopening those the agent
/// closes, until killed.
const HOLD_CONNECTIONS: &str = r#"
import socket, sys, time
path, want = sys.argv[1], int(sys.argv[2])
held = []
def top_up():
    while len(held) < want:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(path)
        except BlockingIOError:
            s.close()
            return
        held.append(s)
top_up()
print(len(held), flush=True)
while True:
    for s in list(held):
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                held.remove(s); s.close()
        except BlockingIOError:
            pass
        except OSError:
            held.remove(s); s.close()
    top_up()
    time.sleep(0.1)
"#;

/// An agent out of file descriptors (a low RLIMIT_NOFILE, a real second user
/// holding connections): the monitor's timeout kill cannot read the run's cgroup.
/// The run must not be recorded as killed, lost or exited, nor its TMPDIR
/// removed, while its processes live; once descriptors return, the kill is
/// retried and done.
#[test]
fn fd_exhaustion_by_a_user_never_ends_a_live_run_on_a_failed_read() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("quick.toml");
    std::fs::write(
        &template,
        "[kill]\nterm_grace = \"1s\"\nkill_deadline = \"2s\"\n",
    )
    .unwrap();
    let run = agent.start_run(
        &[
            "--template",
            template.to_str().unwrap(),
            "--init-timeout",
            "4s",
        ],
        "sleep 1000 & exec sleep 1000",
    );
    assert!(agent.wait_procs(&run.id, 3));
    // A run that ends by itself during the flood, with status 3.
    let exits = agent.start_run(&[], "sleep 3; exit 3");
    let tmpdir = agent.state_dir.join("tmp").join(&run.id);
    let pid = agent.pid().unwrap();
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open_fds + 8;
    let ok = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(ok.success());
    let (flood, held) = python_as(
        &user,
        HOLD_CONNECTIONS,
        &[agent.socket.to_str().unwrap(), "200"],
    );
    assert!(held.trim().parse::<u32>().unwrap() > 8, "{held}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count()
                >= limit
        }),
        "the agent's descriptors were not exhausted"
    );

    // The init deadline (4 s) passes during the flood. A run recorded as ended
    // must really be over (the flood may let a read through now and then); a
    // live one keeps its TMPDIR.
    let status = || {
        agent.sql(&format!(
            "select status from runs where run_id = '{}'",
            run.id
        ))
    };
    let exit_of = || {
        agent.sql(&format!(
            "select status || ' ' || coalesce(exit_code, '-') from runs where run_id = '{}'",
            exits.id
        ))
    };
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let ended = exit_of();
        assert!(
            [
                "running 3",
                "initializing 3",
                "running -",
                "initializing -",
                "exited 3"
            ]
            .contains(&ended.as_str()),
            "the run that exited 3 was recorded {ended}; log:\n{}",
            agent.log_tail(30)
        );
        let st = status();
        if ["initializing", "running", "stopping"].contains(&st.as_str()) {
            assert!(tmpdir.exists(), "the TMPDIR of a live run was removed");
        } else {
            let left = util::pids_with_env(util::TEST_MARK, &run.marker);
            assert!(
                left.is_empty(),
                "run recorded {st} while its processes live ({}): a failed read \
                 taken as an end; log:\n{}",
                util::describe(&left),
                agent.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = agent.log();
    assert!(
        log.contains("could not be confirmed") || log.contains("cannot tell whether"),
        "no failed read reached the kill; log:\n{}",
        agent.log_tail(30)
    );

    drop(flood);
    assert!(
        wait_until(Duration::from_secs(30), || status() == "timed_out"),
        "the kill was not retried once descriptors returned: {}; log:\n{}",
        status(),
        agent.log_tail(30)
    );
    agent.wait_run_gone(&run);
    assert!(
        wait_until(Duration::from_secs(15), || exit_of() == "exited 3"),
        "{}; log:\n{}",
        exit_of(),
        agent.log_tail(30)
    );
    agent.wait_run_gone(&exits);
}
