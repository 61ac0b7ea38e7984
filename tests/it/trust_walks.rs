//! "Walks as the user" (SECURITY.md, Classes): trees a user made (run directory,
//! TMPDIR, workspace, git directories) are removed by a short-lived process of
//! their owner's within a budget, never recursively on an agent thread, and git
//! directories are followed only into the run's own. Each test attacks the root
//! agent as a real unprivileged user, or plants a trap for a root run.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, TestUser, described, wait_until};

/// Python that makes a chain of `levels` directories in `$WFCG_RUN_DIR` (relative
/// mkdir and chdir: no path grows), then touches `$WFCG_RUN_DIR/made`.
fn deep_tree_script(levels: usize) -> String {
    format!(
        "import os\nd = os.environ['WFCG_RUN_DIR']\nos.chdir(d)\n\
         for _ in range({levels}):\n    os.mkdir('d')\n    os.chdir('d')\n\
         open(os.path.join(d, 'made'), 'w').close()\n"
    )
}

/// An agent whose socket directory (and so its runs' directories) is on a tmpfs
/// of its own: a 60,000-level tree on this machine's ext4 takes minutes to make.
fn agent_on_tmpfs(env: &[(&'static str, &str)]) -> TestAgent {
    TestAgent::on_tmpfs("1g", env)
}

fn run_dir(agent: &TestAgent, id: &str) -> PathBuf {
    agent.socket.parent().unwrap().join("runs").join(id)
}

fn agent_answers(agent: &TestAgent) {
    let out = agent.cli(&["ps"]);
    assert!(
        out.status.success(),
        "the agent does not answer: {}",
        described(&out)
    );
    assert!(
        agent.pid().is_some(),
        "the agent is gone; log:\n{}",
        agent.log_tail(40)
    );
}

/// The Why of issue 21: a run leaving a 60,000-level tree in its run directory
/// overflowed the reaper's stack (`remove_dir_all`) and aborted the agent, and
/// again at every restart while it reconciled. Now the tree is removed by a
/// process of the user's, or reported when over the budget.
#[test]
fn a_60000_level_tree_in_the_run_dir_costs_only_its_owner() {
    require_privileges!();
    let user = TestUser::get();
    let mut agent = agent_on_tmpfs(&[]);

    // A run that ends by itself: its end is seen by the reaper, which cleans up.
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--", "python3", "-c"])
        .arg(deep_tree_script(60_000))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let ended = Instant::now();
    let gone = wait_until(Duration::from_secs(40), || {
        std::fs::read_dir(agent.socket.parent().unwrap().join("runs"))
            .unwrap()
            .count()
            == 0
    });
    println!("60,000 levels removed in {:?}", ended.elapsed());
    agent_answers(&agent);
    assert!(
        gone,
        "the run directory is still there; log:\n{}",
        agent.log_tail(40)
    );

    // A run that ends while the agent is away: the restart reconciles it, with a
    // depth budget below the tree's: the tree is reported, the agent goes on.
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--", "python3", "-c"])
        .arg(format!(
            "{}import time\nwhile not os.path.exists(os.path.join(d, 'end')):\n    time.sleep(0.05)\n",
            deep_tree_script(60_000)
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dir = run_dir(&agent, &id);
    assert!(wait_until(Duration::from_secs(60), || dir
        .join("made")
        .exists()));
    agent.kill9();
    std::fs::write(dir.join("end"), "").unwrap();
    let cg = agent.run_cgroup(&id);
    assert!(wait_until(Duration::from_secs(20), || cg
        .empty()
        .unwrap_or(true)));
    agent.agent_env = vec![("WFCG_WALK_MAX_DEPTH", PathBuf::from("1000"))];
    agent.spawn();
    assert!(
        wait_until(Duration::from_secs(30), || agent
            .logged("deeper than 1000 levels")
            > 0),
        "the tree left is not reported; log:\n{}",
        agent.log_tail(40)
    );
    agent_answers(&agent);
    assert!(dir.join("d").exists(), "kept, as reported");
    // Another restart reconciles again (the run is over): still alive.
    agent.kill9();
    agent.spawn();
    agent_answers(&agent);
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "a later run: {}", described(&out));
}

/// A directory over the walk's entry budget: the kill answers in bounded time and
/// its cleanup status says what was left and why.
#[test]
fn a_run_dir_over_the_entry_budget_is_reported_in_bounded_time() {
    require_privileges!();
    let user = TestUser::get();
    let agent = agent_on_tmpfs(&[("WFCG_WALK_MAX_ENTRIES", "1000")]);
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--", "python3", "-c"])
        .arg(
            "import os, time\nd = os.environ['WFCG_RUN_DIR']\nos.mkdir(os.path.join(d, 'w'))\n\
             for i in range(5000):\n    open(os.path.join(d, 'w', str(i)), 'w').close()\n\
             open(os.path.join(d, 'made'), 'w').close()\ntime.sleep(1000)\n",
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let dir = run_dir(&agent, &id);
    assert!(wait_until(Duration::from_secs(60), || dir
        .join("made")
        .exists()));
    let t = Instant::now();
    let result = agent.kill_ok(&id, &["--force"]);
    let took = t.elapsed();
    println!("kill with an over-budget run dir took {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    let status = &result["cleanup_status"];
    assert_eq!(status["run_dir_removed"], false, "{result}");
    let left = status["not_removed"].to_string();
    assert!(left.contains("more than 1000 entries"), "{result}");
    assert!(agent.logged("more than 1000 entries") > 0);
    agent_answers(&agent);
}

/// A shared, world-writable directory (as `/tmp`), with a root-owned repository
/// beside it whose git directory holds a lock root made after the run started.
struct SharedTrap {
    _tmp: tempfile::TempDir,
    shared: PathBuf,
    git: PathBuf,
}

impl SharedTrap {
    fn new() -> SharedTrap {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
        let shared = base.join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let git = base.join("root-repo/.git");
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        SharedTrap {
            _tmp: tmp,
            shared,
            git,
        }
    }

    /// `shared/evil/.git`, a file of `user`'s naming `target`.
    fn plant(&self, user: &TestUser, target: &Path) {
        let out = user
            .command("sh")
            .arg("-c")
            .arg(format!(
                "mkdir {0}/evil && printf 'gitdir: {1}\\n' > {0}/evil/.git",
                self.shared.display(),
                target.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", described(&out));
    }
}

/// The Why of issue 21: root starts a workflow in a shared directory where a user
/// planted `evil/.git` naming root's git directory; the lock cleanup followed it
/// and unlinked root's `*.lock` files.
#[test]
fn a_planted_git_file_in_a_shared_dir_never_sends_roots_cleanup_to_roots_locks() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    let trap = SharedTrap::new();
    trap.plant(&user, &trap.git);
    let started = trap.shared.join("started");
    let out = agent
        .wfcg()
        .args(["run", "--detach", "--workspace"])
        .arg(&trap.shared)
        .args(["--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 1000", started.display()))
        .current_dir(&trap.shared)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(wait_until(Duration::from_secs(20), || started.exists()));
    // Root's locks, made after the run started and held by nobody.
    let locks = [
        trap.git.join("index.lock"),
        trap.git.join("refs/heads/main.lock"),
    ];
    for l in &locks {
        std::fs::write(l, "").unwrap();
    }
    let result = agent.kill_ok(&id, &["--force"]);
    assert_eq!(
        result["cleanup_status"]["stale_locks_removed"],
        serde_json::json!([]),
        "{result}"
    );
    for l in &locks {
        assert!(l.exists(), "root's {} was removed", l.display());
    }
}

/// A user's `.git` file naming another user's git directory (one the user could
/// even write to) is not followed: the run's git directories are its owner's.
#[test]
fn a_users_git_file_into_another_users_directory_is_not_followed() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let trap = SharedTrap::new();
    // Another user's repository, its git directories open to all.
    std::os::unix::fs::chown(&trap.git, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(trap.git.join("refs/heads"), Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&trap.git, std::fs::Permissions::from_mode(0o777)).unwrap();
    trap.plant(&user, &trap.git);
    let ws = trap.shared.join("evil");
    let started = ws.join("started");
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--workspace"])
        .arg(&ws)
        .args(["--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 1000", started.display()))
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(wait_until(Duration::from_secs(20), || started.exists()));
    let lock = trap.git.join("index.lock");
    std::fs::write(&lock, "").unwrap();
    std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).unwrap();
    let result = agent.kill_ok(&id, &[]);
    assert_eq!(
        result["cleanup_status"]["stale_locks_removed"],
        serde_json::json!([]),
        "{result}"
    );
    assert!(lock.exists(), "another user's lock was removed");
}

/// `wfcg kill --json --force RUN` started, its output piped.
fn force_kill(agent: &TestAgent, id: &str) -> KillOnDrop {
    KillOnDrop(
        agent
            .wfcg()
            .args(["kill", "--json", "--force", id])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// The kill result a [`force_kill`] that has exited printed.
fn kill_result(kill: &mut KillOnDrop) -> serde_json::Value {
    let mut out = String::new();
    std::io::Read::read_to_string(kill.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A FUSE file system that never answers, mounted by root on `target` (a
/// directory or a file) for `uid`:`gid` (as `fusermount3` mounts one for a user
/// on a directory or file of theirs):
/// a Python process opens `/dev/fuse`, mounts it and never reads a request, so
/// every access below `target` (a lookup, a stat) waits in the kernel. Dropping
/// it ends the process, which aborts the connection (the waits fail with
/// ENOTCONN), and detaches the mount.
struct NeverAnsweringFuse {
    server: KillOnDrop,
    target: PathBuf,
}

const FUSE_SERVER: &str = r#"
import ctypes, os, sys
target, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Given (a directory) when the target may already be such a mount: a stat of it would wait.
rootmode = sys.argv[4] if len(sys.argv) > 4 else ('40000' if os.path.isdir(target) else '100000')
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open('/dev/fuse', os.O_RDWR)
opts = f'fd={fd},rootmode={rootmode},user_id={uid},group_id={gid},allow_other'.encode()
if libc.mount(b'wfcg-never', target.encode(), b'fuse', 0, opts) != 0:
    print('mount failed:', os.strerror(ctypes.get_errno()), flush=True)
    sys.exit(1)
print('mounted', flush=True)
sys.stdin.read()
"#;

impl NeverAnsweringFuse {
    fn mount(target: &Path, uid: u32, gid: u32) -> NeverAnsweringFuse {
        NeverAnsweringFuse::mount_with(target, uid, gid, &[])
    }

    /// A mount over the directory `target`, which may be such a mount already.
    fn mount_over_dir(target: &Path, uid: u32, gid: u32) -> NeverAnsweringFuse {
        NeverAnsweringFuse::mount_with(target, uid, gid, &["40000"])
    }

    fn mount_with(target: &Path, uid: u32, gid: u32, rootmode: &[&str]) -> NeverAnsweringFuse {
        let mut server = KillOnDrop(
            std::process::Command::new("python3")
                .args(["-c", FUSE_SERVER])
                .arg(target)
                .args([uid.to_string(), gid.to_string()])
                .args(rootmode)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut said = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
            &mut said,
        )
        .unwrap();
        assert_eq!(said.trim(), "mounted", "the FUSE server: {said}");
        NeverAnsweringFuse {
            server,
            target: target.to_path_buf(),
        }
    }
}

impl Drop for NeverAnsweringFuse {
    fn drop(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
    }
}

/// A user's workspace turned into a FUSE mount that never answers while the
/// run lives, and others over its TMPDIR, its run directory and the
/// `stop-reason` file in it: the walks in the user's trees (the workspace's
/// removal, the search for stale git locks) cost their time budget and are
/// reported, the mounts over the TMPDIR and the run directory are detached
/// without a question to them, the file mounted over is refused (the kill says
/// it could not write the reason); the agent answers other requests meanwhile,
/// and runs go on working.
#[test]
fn a_fuse_mount_that_never_answers_in_a_workspace_costs_only_the_walks_budget() {
    require_privileges!();
    let user = TestUser::get();
    let mut agent = TestAgent::unstarted();
    agent.agent_env = vec![("WFCG_WALK_SECONDS", PathBuf::from("2"))];
    agent.spawn();
    agent.open_to_all_users();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ws = tmp.path().canonicalize().unwrap().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(user.uid), Some(user.gid)).unwrap();
    let out = agent
        .wfcg_as(&user)
        .current_dir(&ws)
        .args([
            "run",
            "--detach",
            "--ready-when",
            "start",
            "--cleanup-workspace",
        ])
        .arg("--workspace")
        .arg(&ws)
        .args(["--", "sh", "-c"])
        .arg("touch \"$WFCG_RUN_DIR/stop-reason\" && exec sleep 1000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let run_dir = run_dir(&agent, &id);
    assert!(wait_until(Duration::from_secs(20), || run_dir
        .join("stop-reason")
        .exists()));
    let _fuse = NeverAnsweringFuse::mount(&ws, user.uid, user.gid);
    // Over the file the kill writes its reason to, and over the run directory.
    let _over_reason = NeverAnsweringFuse::mount(&run_dir.join("stop-reason"), user.uid, user.gid);
    let _over_run_dir = NeverAnsweringFuse::mount(&run_dir, user.uid, user.gid);
    // And one over its TMPDIR, a directory of the user's too.
    let tmpdir = agent.state_dir.join("tmp").join(&id);
    let _over_tmpdir = NeverAnsweringFuse::mount(&tmpdir, user.uid, user.gid);

    let t = Instant::now();
    let mut kill = force_kill(&agent, &id);
    // The agent answers while the kill's search for git locks waits on the file
    // system (its thread is there).
    let pid = agent.pid().unwrap();
    let searching = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim() == "wfcg-user-tree")
            })
    };
    assert!(wait_until(Duration::from_secs(20), searching));
    let asked = Instant::now();
    let ps = agent.cli(&["ps"]);
    println!("ps answered in {:?} during the search", asked.elapsed());
    assert!(ps.status.success(), "{}", described(&ps));
    assert!(searching(), "the search ended before ps answered");
    let status = kill.wait_timeout(Duration::from_secs(40));
    let took = t.elapsed();
    println!("the kill with a never-answering workspace took {took:?}");
    assert!(status.is_some(), "the kill never answered");
    let result = kill_result(&mut kill);
    let cleanup = &result["cleanup_status"];
    let workspace = cleanup["workspace"].as_str().unwrap_or_default();
    assert!(
        workspace.starts_with("removal failed") && workspace.contains("time budget"),
        "{result:#}"
    );
    assert!(
        agent.logged("the search for stale git locks did not end") > 0,
        "{}",
        agent.log_tail(30)
    );
    // The mount over the TMPDIR was detached unasked, and the TMPDIR removed.
    assert_eq!(cleanup["tmpdir_removed"], true, "{result:#}");
    assert!(agent.logged("detached 1 mount(s) made over") > 0);
    // The one over the run directory too; the file mounted over is refused, said.
    let message = result["message"].as_str().unwrap_or_default();
    assert!(message.contains("cannot write"), "{result:#}");
    // Runs go on working, the kill's record is written.
    let root = agent.cli(&["run", "-q", "--ready-when", "start", "--", "true"]);
    assert!(root.status.success(), "{}", described(&root));
    assert_eq!(
        agent.status(&id)["status"],
        "killed",
        "{}",
        agent.log_tail(30)
    );
}

/// More never-answering FUSE mounts stacked over a run's directory than the
/// agent used to detach (8): every one is detached before the kill writes why,
/// so root's kill answers, the reason is written and the run ends as killed.
#[test]
fn every_fuse_mount_stacked_over_a_run_directory_is_detached_before_the_kill_looks() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let out = agent
        .wfcg_as(&user)
        .args([
            "run",
            "--detach",
            "--ready-when",
            "start",
            "--",
            "sleep",
            "1000",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", described(&out));
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let run_dir = run_dir(&agent, &id);
    let _stacked: Vec<NeverAnsweringFuse> = (0..10)
        .map(|_| NeverAnsweringFuse::mount_over_dir(&run_dir, user.uid, user.gid))
        .collect();
    let mut kill = force_kill(&agent, &id);
    let status = kill.wait_timeout(Duration::from_secs(30));
    assert!(status.is_some(), "the kill never answered");
    let result = kill_result(&mut kill);
    assert_eq!(result["success"], true, "{result:#}");
    let message = result["message"].as_str().unwrap_or_default();
    assert!(!message.contains("cannot write"), "{result:#}");
    assert_eq!(agent.status(&id)["status"], "killed");
    let left = crate::util::mounts_below(&run_dir);
    assert!(
        left.is_empty(),
        "mounts left over the run directory: {left:?}"
    );
}
