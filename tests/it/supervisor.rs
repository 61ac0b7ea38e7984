//! The supervisor/payload split (issue 11 item 1): `wfcg run` lives in
//! `runs/<id>/supervisor` (root's stays where it was started and its keeper
//! lives there), its command in `runs/<id>/payload`; the kill acts on the
//! payload, so a foreground `wfcg run` outlives it and ends with the right code
//! and a line saying why.

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

/// The parent pid and the name of a process, from `/proc/<pid>/status`.
fn parent_and_name(pid: i32) -> Option<(i32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
    };
    Some((field("PPid:")?.parse().ok()?, field("Name:")?))
}

/// Whether `pid` is `supervisor`'s keeper (a root supervisor's stand-in in its leaf).
fn is_keeper_of(pid: i32, supervisor: i32) -> bool {
    parent_and_name(pid).is_some_and(|(ppid, name)| ppid == supervisor && name == "wfcg-keeper")
}

/// Waits until the run's supervisor leaf holds the supervisor, or its keeper
/// (a root supervisor that stayed in its own cgroup), alone, and `n`
/// processes are in the payload.
fn wait_split(agent: &TestAgent, id: &str, supervisor: i32, n: usize) {
    let run = agent.run_cgroup(id);
    let split = wait_until(Duration::from_secs(20), || {
        run.child("supervisor")
            .procs()
            .is_ok_and(|p| p.len() == 1 && (p[0] == supervisor || is_keeper_of(p[0], supervisor)))
            && run.child("payload").procs().is_ok_and(|p| p.len() >= n)
    });
    assert!(
        split,
        "supervisor {supervisor} (or its keeper) not alone in runs/{id}/supervisor with {n} in payload: {:?} / {:?}",
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

/// The `0::` line of a `/proc/<pid>/cgroup` dump: the cgroup v2 path.
fn v2_lines(out: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| l.strip_prefix("0::").map(str::to_string))
        .collect()
}

/// The cgroup v2 path of this process.
fn own_cgroup() -> String {
    v2_lines(&std::fs::read("/proc/self/cgroup").unwrap())
        .pop()
        .unwrap()
}

/// A command that prints where it is and where its parent (the supervisor) is,
/// as its first instructions.
const WHERE_AM_I: &str = "cat /proc/self/cgroup; cat /proc/$PPID/cgroup";

/// Root's `wfcg run` moves no process between cgroups: it stays in its
/// caller's cgroup and clones (clone3 CLONE_INTO_CGROUP) its keeper into the
/// supervisor leaf and its command into the payload. The keeper, its child,
/// holds the leaf before the command's first instruction.
#[test]
fn a_root_run_starts_without_moving_a_process() {
    require_privileges!();
    let agent = TestAgent::start();
    let mine = own_cgroup();
    for i in 0..3 {
        let id = format!("direct-{i}-{}", std::process::id());
        let leaf = agent.run_cgroup(&id).child("supervisor");
        let script = format!(
            "{WHERE_AM_I}; for p in $(cat {}/cgroup.procs); do \
             echo \"keeper $(grep -h '^PPid:' /proc/$p/status | cut -f2) $(cat /proc/$p/comm)\"; \
             done; echo \"supervisor $PPID\"",
            leaf.path().display()
        );
        let out = agent
            .marked(&marker("direct"))
            .args(["run", "-q", "--run-id", &id, "--", "sh", "-c", &script])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let lines = v2_lines(&out.stdout);
        assert_eq!(lines.len(), 2, "{out:?}");
        assert!(
            lines[0].ends_with(&format!("/runs/{id}/payload")),
            "{lines:?}"
        );
        assert_eq!(lines[1], mine, "the supervisor was moved");
        let text = String::from_utf8_lossy(&out.stdout);
        let supervisor = text
            .lines()
            .find_map(|l| l.strip_prefix("supervisor "))
            .unwrap();
        let keepers: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("keeper "))
            .collect();
        assert_eq!(
            keepers,
            vec![format!("{supervisor} wfcg-keeper")],
            "the supervisor leaf does not hold the supervisor's keeper alone: {text}"
        );
        assert!(agent.wait_status(&id, "exited"));
        assert!(
            wait_until(Duration::from_secs(20), || !agent.run_cgroup(&id).exists()),
            "the run's cgroup is left"
        );
    }
}

/// A detached root run's supervisor outlives its caller: it is in its run's
/// supervisor leaf (moved there), not left in the caller's cgroup, where a stop
/// of the caller's service would kill it and the run's exit would go unreported.
#[test]
fn a_detached_root_runs_supervisor_is_in_its_leaf_not_beside_it() {
    require_privileges!();
    let agent = TestAgent::start();
    let id = format!("detached-leaf-{}", std::process::id());
    let out = agent
        .marked(&marker("detached-leaf"))
        .args(["run", "--detach", "--run-id", &id, "--", "sleep", "60"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let leaf = agent.run_cgroup(&id).child("supervisor");
    let comms = || -> Vec<String> {
        std::fs::read_to_string(leaf.path().join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || comms() == ["wfcg"]),
        "the supervisor leaf holds {:?}, not the detached supervisor alone",
        comms()
    );
    let kill = agent
        .wfcg()
        .args(["kill", &id, "--force"])
        .output()
        .unwrap();
    assert!(kill.status.success(), "{kill:?}");
    assert!(agent.wait_status(&id, "killed"));
}

/// A root supervisor outside its run reports how the run ended even when its
/// keeper is gone and the run's cgroup empties before the report: the run is
/// not over while the supervisor lives (here stopped until the test lets it
/// go on), and is `lost` once it died without a report.
#[test]
fn a_run_whose_keeper_died_waits_for_its_supervisor() {
    require_privileges!();
    let agent = TestAgent::start();
    for resume in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let id = format!("keeperless-{resume}-{}", std::process::id());
        let leaf = agent.run_cgroup(&id).child("supervisor");
        // Kills the keeper, stops the supervisor, and ends with 3.
        let script = format!(
            "kill -9 $(cat {}/cgroup.procs); kill -STOP $PPID; exit 3",
            leaf.path().display()
        );
        let mut child = foreground(&agent, &dir, &id, &["--init-timeout", "0"], &script);
        let stopped = wait_until(Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{}/stat", child.id())).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('T')
            }) && agent
                .run_cgroup(&id)
                .procs_recursive()
                .is_ok_and(|p| p.is_empty())
        });
        assert!(stopped, "{}", stderr(&dir));
        // The agent looks at an empty run again every second: two looks.
        let ended = wait_until(Duration::from_millis(2500), || {
            agent.status(&id)["status"] != "running"
        });
        assert!(!ended, "{:#}", agent.status(&id));
        let pid = rustix::process::Pid::from_raw(child.id()).unwrap();
        if resume {
            rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
            let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
            assert_eq!(status.code(), Some(3), "{}", stderr(&dir));
            assert!(agent.wait_status(&id, "exited"), "{:#}", agent.status(&id));
            assert_eq!(agent.status(&id)["exit_code"], 3);
        } else {
            rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
            child.wait_timeout(Duration::from_secs(20)).unwrap();
            assert!(agent.wait_status(&id, "lost"), "{:#}", agent.status(&id));
        }
        assert!(
            wait_until(Duration::from_secs(20), || !agent.run_cgroup(&id).exists()),
            "the run's cgroup is left"
        );
    }
}

/// Installs a seccomp filter that makes clone3(2) fail with ENOSYS, as
/// container runtimes' default profiles do (glibc and std fall back to clone).
fn refuse_clone3() -> std::io::Result<()> {
    const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
    let stmt = |code: u16, k: u32| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let load = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let ret = (libc::BPF_RET | libc::BPF_K) as u16;
    let filter = [
        stmt(load, 4), // seccomp_data.arch
        jeq(AUDIT_ARCH_X86_64, 0, 3),
        stmt(load, 0), // seccomp_data.nr
        jeq(libc::SYS_clone3 as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with a valid sock_fprog that outlives the call; the
    // kernel copies the filter.
    let ok = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) == 0
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A root caller whose seccomp filter refuses clone3 still gets its command
/// into the payload (the supervisor enters it, forks, and leaves through the
/// agent: the migration the clone3 start avoids), and its supervisor ends in
/// its leaf.
#[test]
fn a_root_caller_that_cannot_clone3_still_starts_its_command_in_the_payload() {
    use std::os::unix::process::CommandExt;
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let id = format!("noclone3-{}", std::process::id());
    let mut cmd = agent.marked(&marker("noclone3"));
    cmd.args(["run", "-q", "--run-id", &id, "--init-timeout", "0", "--"])
        .args(["sh", "-c", "cat /proc/self/cgroup; exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    // SAFETY: refuse_clone3 only calls prctl(2), async-signal-safe.
    unsafe { cmd.pre_exec(refuse_clone3) };
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    wait_split(&agent, &id, child.id(), 1);
    // The command prints its cgroup when it runs, which may be after the split.
    let stdout = dir.path().join("stdout");
    wait_until(Duration::from_secs(20), || {
        std::fs::read(&stdout).is_ok_and(|out| !v2_lines(&out).is_empty())
    });
    let out = std::fs::read(&stdout).unwrap();
    let lines = v2_lines(&out);
    assert!(
        lines.len() == 1 && lines[0].ends_with(&format!("/runs/{id}/payload")),
        "{lines:?}; stderr: {}",
        stderr(&dir)
    );
    agent.kill_ok(&id, &["--force"]);
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(137), "stderr: {}", stderr(&dir));
}

/// A root caller in a cgroup namespace of its own cannot reach the run's
/// cgroups with clone3 (the kernel refuses what its namespace does not
/// contain): the agent places it in the payload, as any caller's, and the run
/// works as it always did.
#[test]
fn a_root_caller_in_another_cgroup_namespace_gets_the_usual_start() {
    require_privileges!();
    let agent = TestAgent::start();
    let id = format!("cgns-{}", std::process::id());
    let out = std::process::Command::new("unshare")
        .args(["--cgroup", "--", crate::util::WFCG])
        .args(["run", "-q", "--run-id", &id, "--", "sh", "-c", WHERE_AM_I])
        .envs(agent.env())
        .env(crate::util::TEST_MARK, marker("cgns"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let lines = v2_lines(&out.stdout);
    assert!(
        lines.len() == 2 && lines[0].ends_with(&format!("/runs/{id}/payload")),
        "{out:?}"
    );
}

/// A user's `wfcg run` keeps the way that needs no cgroup file of the user's:
/// placed in the payload, it forks its command there and then enters its
/// supervisor leaf through the agent.
#[test]
fn a_users_run_forks_its_command_in_the_payload_and_then_enters_its_leaf() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = crate::util::TestUser::get();
    let dir = tempfile::tempdir().unwrap();
    let id = format!("user-split-{}", std::process::id());
    let mut child = KillOnDrop(
        agent
            .wfcg_as(&user)
            .env(crate::util::TEST_MARK, marker("user-split"))
            .current_dir("/")
            .args(["run", "-q", "--run-id", &id, "--", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap(),
    );
    let started = wait_until(Duration::from_secs(20), || {
        agent.run_cgroup(&id).exists() || child.0.try_wait().ok().flatten().is_some()
    });
    assert!(
        started && agent.run_cgroup(&id).exists(),
        "{}",
        stderr(&dir)
    );
    wait_split(&agent, &id, child.id(), 1);
    agent.kill_ok(&id, &["--force"]);
    let status = child.wait_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(137), "{}", stderr(&dir));
}
