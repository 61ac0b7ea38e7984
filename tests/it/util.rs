//! Shared helpers for the integration tests: a private agent per test (its own
//! socket, state dir and cgroup root), the `wfcg` binary pointed at it, and
//! waiting with deadlines.
//!
//! Every test that needs root and cgroup2 calls [`privileged`] first: without
//! them it fails loudly, unless a human set `WFCG_TEST_ALLOW_SKIP=1`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wfcg::cgroup::{self, Cgroup};

/// The binary under test.
pub const WFCG: &str = env!("CARGO_BIN_EXE_wfcg");

/// Whether this test may go on. Panics (fails the test) without root or cgroup2,
/// unless `WFCG_TEST_ALLOW_SKIP=1`, where it returns false and the test returns.
pub fn privileged() -> bool {
    let problem = if !rustix::process::geteuid().is_root() {
        Some("these tests need root (they create cgroups and move processes)".to_string())
    } else {
        match cgroup::cgroup2_mount() {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    };
    match problem {
        None => true,
        Some(p) if std::env::var("WFCG_TEST_ALLOW_SKIP").as_deref() == Ok("1") => {
            eprintln!("SKIPPED (WFCG_TEST_ALLOW_SKIP=1): {p}");
            false
        }
        Some(p) => panic!("{p}; run as root on a host with cgroup2 (or set WFCG_TEST_ALLOW_SKIP=1 on a laptop)"),
    }
}

/// Returns from the test when [`privileged`] allows a skip.
#[macro_export]
macro_rules! require_privileges {
    () => {
        if !$crate::util::privileged() {
            return;
        }
    };
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes anywhere on the host carrying `key=value` in their environment.
pub fn pids_with_env(key: &str, value: &str) -> Vec<i32> {
    wfcg::procfs::pids_with_env(Path::new("/proc"), key, value)
}

/// A unique marker value for one test's processes.
pub fn marker(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// One agent of our own, with its own socket, state directory and cgroup root.
/// Dropping it kills the agent and everything under its cgroup root, and removes
/// the cgroups: a test leaves nothing behind, even when it fails.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    child: Option<Child>,
}

impl TestAgent {
    /// Starts an agent and waits until it answers.
    pub fn start() -> TestAgent {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new().prefix("wfcg-test").tempdir().unwrap();
        let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
        let cgroup_root = mount.join(format!(
            "wfcg-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut agent = TestAgent {
            socket: dir.path().join("agent.sock"),
            state_dir: dir.path().join("state"),
            cgroup_root,
            dir,
            child: None,
        };
        agent.spawn();
        agent
    }

    /// Starts the agent process (again) and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let child = Command::new(WFCG)
            .arg("agent")
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting wfcg agent");
        self.child = Some(child);
        let answered = wait_until(Duration::from_secs(10), || {
            self.wfcg().args(["ps"]).output().map(|o| o.status.success()).unwrap_or(false)
        });
        assert!(answered, "agent did not answer; log:\n{}", self.log());
    }

    /// SIGKILLs the agent process, leaving its runs alone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The environment that points `wfcg` at this agent.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("WFCG_SOCKET", self.socket.clone()),
            ("WFCG_STATE_DIR", self.state_dir.clone()),
            ("WFCG_CGROUP_ROOT", self.cgroup_root.clone()),
        ]
    }

    /// A `wfcg` command aimed at this agent.
    pub fn wfcg(&self) -> Command {
        let mut cmd = Command::new(WFCG);
        cmd.envs(self.env());
        cmd
    }

    /// Runs `wfcg ARGS` to the end.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.wfcg().args(args).output().expect("running wfcg")
    }

    /// `wfcg run --detach [extra...] -- sh -c SCRIPT`; returns the run id.
    pub fn start_run(&self, extra: &[&str], script: &str) -> String {
        let mut args = vec!["run", "--detach"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sh", "-c", script]);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "wfcg run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The cgroup of a run.
    pub fn run_cgroup(&self, run_id: &str) -> Cgroup {
        Cgroup::new(self.cgroup_root.join("runs").join(run_id))
    }

    /// Waits until a run's cgroup holds at least `n` processes.
    pub fn wait_procs(&self, run_id: &str, n: usize) -> bool {
        let cg = self.run_cgroup(run_id);
        wait_until(Duration::from_secs(30), || {
            cg.procs_recursive().map(|p| p.len() >= n).unwrap_or(false)
        })
    }

    /// `wfcg status --json RUN` parsed.
    pub fn status(&self, run_id: &str) -> serde_json::Value {
        let out = self.cli(&["status", "--json", run_id]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until a run's status is `want`.
    pub fn wait_status(&self, run_id: &str, want: &str) -> bool {
        wait_until(Duration::from_secs(15), || self.status(run_id)["status"] == want)
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("wfcg.db")
    }

    /// One value from the store through the sqlite3 CLI, as an operator would read it.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("sqlite3").arg(self.db()).arg(query).output().expect("sqlite3");
        assert!(out.status.success(), "sqlite3: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        let root = Cgroup::new(&self.cgroup_root);
        if root.exists() {
            // cgroup.kill on the root reaches every run below it.
            let _ = root.kill();
            let _ = root.wait_unpopulated(Duration::from_secs(10));
            let _ = root.remove_recursive();
        }
    }
}
