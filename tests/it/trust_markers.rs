//! Markers (`WFCG_RUN_ID=<id>` and `adopt --marker VAR=VALUE`) are hints their
//! carriers control: attacked here as real unprivileged users, they may add a
//! user's own processes to their own run, never make root's kill fail, never be
//! killed for another's run, and never tell a user what is in another user's
//! environment.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::adopt::{Source, unmarked};
use crate::require_privileges;
use crate::util::{self, KillOnDrop, TestAgent, TestUser, wait_until};

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

/// `wfcg run --detach -- sleep SECS` as `user` (in `/`), marked; the run id.
fn user_run(agent: &TestAgent, user: &TestUser, marker: &str, secs: &str) -> String {
    let out = agent
        .wfcg_as(user)
        .current_dir("/")
        .env(util::TEST_MARK, marker)
        .args(["run", "--detach", "--", "sleep", secs])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::described(&out));
    util::text(&out.stdout).trim().to_string()
}

/// `sleep SECS` as `user`, carrying `WFCG_RUN_ID=run_id`: a planted marker.
fn plant(user: &TestUser, run_id: &str, marker: &str, secs: &str) -> KillOnDrop {
    let child = user
        .command("sleep")
        .arg(secs)
        .current_dir("/")
        .env("WFCG_RUN_ID", run_id)
        .env(util::TEST_MARK, marker)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let planted = KillOnDrop(child);
    let pid = planted.id();
    assert!(
        wait_until(Duration::from_secs(10), || {
            util::pids_with_env("WFCG_RUN_ID", run_id).contains(&pid)
        }),
        "the planted marker did not show"
    );
    planted
}

#[test]
fn a_marker_planted_by_another_user_never_makes_a_kill_fail() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let (attacker, victim) = (TestUser::get(), TestUser::other());
    let marker = util::marker("planted");

    // The victim's run, and the attacker's process carrying its marker.
    let run_id = user_run(&agent, &victim, &marker, "1000");
    let planted = plant(&attacker, &run_id, &marker, "1001");
    let (out, result) = agent.kill(&run_id, &["--force"]);
    assert!(out.status.success(), "{}", util::described(&out));
    assert_eq!(result["success"], true, "{result:#}");
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    assert_eq!(agent.status(&run_id)["status"], "killed");
    // Not the run's: left alone, not killed by root on the victim's behalf.
    assert!(
        util::alive(planted.id()),
        "the attacker's process was killed"
    );

    // Later kills work, the victim's own included, with the marker still there.
    let again = user_run(&agent, &victim, &marker, "1002");
    let planted_again = plant(&attacker, &again, &marker, "1003");
    let out = agent
        .wfcg_as(&victim)
        .current_dir("/")
        .args(["kill", "--json", &again])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", util::described(&out));
    assert_eq!(json(&out)["success"], true, "{:#}", json(&out));
    assert!(util::alive(planted_again.id()));

    // Root's own run: a user's process carrying its marker is no escapee of it.
    let root_run = agent.start_run(&["--init-timeout", "0"], "exec sleep 1004");
    let planted_root = plant(&attacker, &root_run.id, &marker, "1005");
    let result = agent.kill_ok(&root_run.id, &["--force"]);
    assert_eq!(
        result["cleanup_status"]["escapees_killed"],
        serde_json::json!([])
    );
    assert!(
        util::alive(planted_root.id()),
        "root killed a user's process"
    );
    assert!(!agent.run_cgroup(&root_run.id).path().exists());
    drop((planted, planted_again, planted_root));
    util::assert_no_marked_processes(&run_id, &marker);
}

#[test]
fn the_marker_oracle_answers_the_same_whether_or_not_roots_process_holds_the_guess() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let source = Source::new(&agent);
    let marker = util::marker("oracle");
    let uid = user.uid.to_string();
    let gid = user.gid.to_string();
    // The user's own process, root of the tree they ask about.
    let mine = source.spawn(
        &marker,
        &[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--clear-groups",
            "--",
            "sleep",
            "1010",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        util::cmdline(mine.id()) == "sleep 1010"
    }));
    let ask = |secret: &str| -> (i32, Vec<i32>) {
        // Root's process in the same cgroup, started after theirs, holding a secret.
        let roots = source.spawn_with(&marker, &[("SECRET", secret)], &["sleep", "1011"]);
        assert!(wait_until(Duration::from_secs(10), || {
            util::cmdline(roots.id()) == "sleep 1011"
        }));
        let out = agent
            .wfcg_as(&user)
            .current_dir("/")
            .args(["adopt", &mine.id().to_string(), "--dry-run", "--json"])
            .args(["--marker", "SECRET=hunter2"])
            .output()
            .unwrap();
        let members = json(&out)["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["pid"].as_i64())
                    .map(|p| p as i32)
                    .collect()
            })
            .unwrap_or_default();
        (out.status.code().unwrap_or(-1), members)
    };
    let guessed = ask("hunter2");
    let missed = ask("something-else");
    assert_eq!(guessed, missed, "the answer depends on root's environment");
    assert_eq!(guessed, (0, vec![mine.id()]));
    // Nothing was adopted by a dry run.
    agent.assert_nothing_created();
}

/// Kill while another user floods the process table with processes whose
/// environments are large: root's force kill of a run stays within 2× of the
/// same kill on a quiet host (the scan reads no environment of theirs).
#[test]
fn roots_force_kill_is_not_slowed_by_another_users_large_environments() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let kill_ms = |agent: &TestAgent| -> f64 {
        let run = agent.start_run(
            &["--init-timeout", "0"],
            "for i in 1 2 3 4 5 6 7 8 9; do sleep 1020 & done; exec sleep 1020",
        );
        assert!(agent.wait_procs(&run.id, 11));
        let t = std::time::Instant::now();
        agent.kill_ok(&run.id, &["--force"]);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        // (Not assert_run_gone: its scan of the host would read the flood whole.)
        assert_eq!(agent.status(&run.id)["status"], "killed");
        assert!(!agent.run_cgroup(&run.id).path().exists());
        ms
    };
    let quiet: f64 = (0..3).map(|_| kill_ms(&agent)).fold(f64::MAX, f64::min);
    // 500 processes sharing a 6 MB environment (a test's share of the 3,000 of
    // the benchmark, scripts/bench-marker-flood.sh): one exec of a shell with
    // the environment, which forks sleeps (a fork shares it, and it is read whole
    // from each).
    let marker = util::marker("flood");
    let flood = Flood::start(&user, &marker, 500, FLOOD_ENV);
    let busy: f64 = (0..3).map(|_| kill_ms(&agent)).fold(f64::MAX, f64::min);
    drop(flood);
    // A guard, not a figure: reading the flood's environments took minutes
    // (30 s and more per kill); the ratio itself is measured by
    // scripts/bench-marker-flood (docs/benchmarks.md), not asserted here, where
    // the host's load decides it.
    assert!(
        busy <= 10.0 * quiet.max(100.0),
        "kill took {busy:.0} ms with the flood, {quiet:.0} ms without"
    );
}

/// A "6 MB" environment: 58 entries of 100 KiB, under the kernel's cap on
/// arguments and environment together (6 MiB, three quarters of 8 MiB).
pub(crate) const FLOOD_ENV: usize = 58 * 100 * 1024;

/// `n` processes of `user` sharing one environment of `bytes` (forks of one
/// shell, never exec'd: the pages are shared, yet each process's `environ`
/// reads them whole), gone when dropped.
pub(crate) struct Flood {
    shell: KillOnDrop,
    _fifo_dir: tempfile::TempDir,
}

impl Flood {
    pub(crate) fn start(user: &TestUser, marker: &str, n: usize, bytes: usize) -> Flood {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt as _;
        // Each fork blocks opening a FIFO no one writes to.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fifo = dir.path().join("never");
        assert!(
            Command::new("mkfifo")
                .args(["-m", "0666"])
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let mut cmd = user.command("sh");
        unmarked(&mut cmd);
        // Entries of 100 KiB (one may not pass 128 KiB).
        for i in 0..bytes.div_ceil(100 * 1024) {
            cmd.env(format!("WFCG_PAD{i}"), "x".repeat(100 * 1024));
        }
        let script = format!(
            "i=0; while [ $i -lt {n} ]; do (: < {fifo}) & i=$((i+1)); done; wait",
            fifo = fifo.display()
        );
        // SAFETY: setrlimit(2) is async-signal-safe and touches only the child's
        // limits; the struct lives on this stack frame for the call.
        unsafe {
            cmd.pre_exec(|| {
                // Environment and arguments may take a quarter of the stack limit.
                let lim = libc::rlimit {
                    rlim_cur: 256 << 20,
                    rlim_max: 256 << 20,
                };
                if libc::setrlimit(libc::RLIMIT_STACK, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shell = cmd
            .args(["-c", &script])
            .current_dir("/")
            .env(util::TEST_MARK, marker)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let flood = Flood {
            shell: KillOnDrop(shell),
            _fifo_dir: dir,
        };
        let shell = flood.shell.id();
        assert!(
            wait_until(Duration::from_secs(120), || {
                wfcg::procfs::children(std::path::Path::new("/proc"), shell).len() >= n
            }),
            "the flood did not start"
        );
        flood
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let shell = self.shell.id();
        let mut pids = wfcg::procfs::children(std::path::Path::new("/proc"), shell);
        pids.push(shell);
        for pid in pids {
            // SAFETY: kill(2) of pids the flood's shell forked (its children,
            // which cannot be reaped and reused while it lives), or the shell.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
