//! `wfcg run`: the supervisor side of a run (the `systemd-run --scope` model).
//!
//! The process asks the agent for a run; the agent moves this very process into
//! the run's cgroup, or (root's) leaves it where it is, and answers. Then it
//! starts the command, which is inside the run's payload from its first
//! instruction, forwards SIGINT/SIGTERM/SIGHUP/SIGQUIT
//! to it, waits for it, reports its exit and exits with its status.
//! With `--detach` the work happens in a forked child in a new session, and the
//! parent prints the run id as soon as the run exists.

mod signals;
mod spawn;
mod watch;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::api::{
    self, CreateRun, EXIT_STATUS_FILE, ExitAck, ExitReport, RUN_ID_ENV, RunStarted, RunStatus,
    STOP_REASON_FILE,
};
use crate::client::{self, Client};
use crate::exit::{self, Failure};
use crate::output::outln;

/// Where the agent is and how to start one.
#[derive(Debug, Clone)]
pub struct AgentAddr {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub cgroup_root: Option<PathBuf>,
    /// How long each request to the agent may take.
    pub timeout: Duration,
}

/// What `wfcg run` was asked for: the request for the agent (command, run id,
/// template, timeouts, …) plus what only the supervisor needs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub request: CreateRun,
    /// The workspace as given (the request carries it made absolute).
    pub workspace: Option<PathBuf>,
    pub quiet: bool,
}

/// How long an agent started on demand gets to answer.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the exit report is retried while the agent is away (e.g. restarting).
const REPORT_RETRY: Duration = Duration::from_secs(5);

/// Runs `wfcg run`; returns the exit code.
pub fn run(addr: &AgentAddr, mut opts: Options) -> Result<i32, Failure> {
    if let Some(id) = &opts.request.run_id
        && let Some(problem) = api::run_id_problem(id)
    {
        return Err(Failure::usage(problem));
    }
    if opts.request.command.is_empty() {
        return Err(Failure::usage(
            "no command given: wfcg run [OPTIONS] -- CMD [ARGS...]",
        ));
    }
    if let Some(ws) = &opts.workspace
        && !ws.is_dir()
    {
        return Err(Failure::usage(format!(
            "workspace {} is not a directory",
            ws.display()
        )));
    }
    // Root may start its command straight into the run's payload, and its
    // keeper into the supervisor leaf (clone3 CLONE_INTO_CGROUP): no process
    // moves between cgroups, and no request to leave the payload (see spawn.rs).
    // Not a detached run: its supervisor outlives the caller, and left in the
    // caller's cgroup it would die with it (a service's stop kills its cgroup),
    // the run's exit unreported.
    let root = rustix::process::geteuid().is_root();
    opts.request.spawn_into_payload = root;
    opts.request.stay_outside = root && !opts.request.detach;
    opts.request.workspace = opts.workspace.as_ref().map(|w| {
        std::path::absolute(w)
            .unwrap_or(w.clone())
            .display()
            .to_string()
    });
    if opts.request.detach {
        detach_then(addr, opts)
    } else {
        supervise(addr, &opts, None)
    }
}

/// Forks; the child (in a new session) starts and supervises the run and sends
/// the parent `ok RUN_ID` or `err CODE MESSAGE` through a pipe.
fn detach_then(addr: &AgentAddr, opts: Options) -> Result<i32, Failure> {
    let (read_end, write_end) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Failure::new(exit::FAILED, format!("pipe: {e}")))?;
    // This process is single-threaded here (no runtime or helper thread has been
    // started yet), so the child may go on running ordinary Rust code.
    match crate::sys::process::fork() {
        Err(e) => Err(Failure::new(exit::FAILED, format!("fork: {e}"))),
        Ok(None) => {
            drop(read_end);
            let _ = rustix::process::setsid();
            let code = match supervise(addr, &opts, Some(write_end)) {
                Ok(code) => code,
                Err(_) => exit::FAILED, // already sent to the parent
            };
            #[allow(
                clippy::exit,
                reason = "the forked supervisor ends here: returning would run the parent's code a second time"
            )]
            std::process::exit(code);
        }
        _ => {
            drop(write_end);
            let mut msg = String::new();
            let _ = std::fs::File::from(read_end).read_to_string(&mut msg);
            let msg = msg.trim_end();
            if let Some(id) = msg.strip_prefix("ok ") {
                outln!("{id}")?;
                Ok(exit::OK)
            } else if let Some(rest) = msg.strip_prefix("err ") {
                let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
                Err(Failure::new(code.parse().unwrap_or(exit::FAILED), text))
            } else {
                Err(Failure::new(
                    exit::FAILED,
                    "the detached run's supervisor died before the run started",
                ))
            }
        }
    }
}

/// Makes sure an agent answers; a root caller gets one started in the background,
/// and is told so on stderr (with its pid, log and how to stop it).
fn ensure_agent(client: &Client, addr: &AgentAddr) -> Result<(), Failure> {
    match client.ping() {
        Ok(()) => return Ok(()),
        // An agent took the connection and did not answer: another would not help.
        Err(e @ client::Error::Timeout { .. }) => return Err(e.into()),
        Err(_) => {}
    }
    if !rustix::process::geteuid().is_root() {
        return Err(Failure::new(
            exit::UNREACHABLE,
            format!(
                "no wfcg agent answers on {}; ask root to start one (`sudo wfcg agent`), or pass --socket",
                addr.socket.display()
            ),
        ));
    }
    let fail = |m: String| Failure::new(exit::UNREACHABLE, m);
    if std::path::Path::new("/run/systemd/system").is_dir() && addr.cgroup_root.is_none() {
        // Under systemd the agent is wfcg.service: an agent started from here would
        // not be in a delegated cgroup (and refuses to start).
        let started = Command::new("systemctl")
            .args(["start", "wfcg.service"])
            .status()
            .is_ok_and(|s| s.success());
        if started && client.ping().is_ok() {
            crate::output::errln!(
                "wfcg: started the agent as wfcg.service (`systemctl start wfcg.service`); \
                 its log: `journalctl -u wfcg.service`; `wfcg agent status` shows it, \
                 `systemctl stop wfcg.service` stops it (runs go on)"
            );
            return Ok(());
        }
        return Err(fail(format!(
            "no wfcg agent answers on {} and `systemctl start wfcg.service` did not start one \
             (install it with `wfcg install-service`), or pass --socket",
            addr.socket.display()
        )));
    }
    std::fs::create_dir_all(&addr.state_dir)
        .map_err(|e| fail(format!("cannot create {}: {e}", addr.state_dir.display())))?;
    let log_path = addr.state_dir.join("agent.log");
    // Root's log of runs' commands: readable by root only.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .map_err(|e| fail(format!("cannot open {}: {e}", log_path.display())))?;
    let exe = std::env::current_exe().map_err(|e| fail(format!("cannot find wfcg itself: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("agent")
        .arg("--socket")
        .arg(&addr.socket)
        .arg("--state-dir")
        .arg(&addr.state_dir);
    if let Some(root) = &addr.cgroup_root {
        cmd.arg("--cgroup-root").arg(root);
    }
    // The agent tells a NOTIFY_SOCKET it is ready: not the one of a run this is in.
    cmd.env_remove("NOTIFY_SOCKET");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| fail(e.to_string()))?)
        .stderr(log);
    crate::sys::process::setsid_before_exec(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start the agent: {e}")))?;
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    while Instant::now() < deadline {
        if client.ping().is_ok() {
            // Said once, by the command that started it: a daemon now runs.
            crate::output::errln!(
                "wfcg: started the wfcg agent in the background (pid {}, socket {}); \
                 it logs to {}; `wfcg agent status` shows it, `wfcg agent stop` stops it \
                 (runs go on)",
                child.id(),
                addr.socket.display(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "the agent exited at start ({status}); see {}",
                log_path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(fail(format!(
        "the agent started but did not answer within {}s; see {}",
        AGENT_START_TIMEOUT.as_secs(),
        log_path.display()
    )))
}

/// Creates the run (this process moves into it), runs the command, reports its end.
fn supervise(addr: &AgentAddr, opts: &Options, parent: Option<OwnedFd>) -> Result<i32, Failure> {
    let client = Client::new(&addr.socket).with_timeout(addr.timeout);
    let create = || client.create_run(&opts.request);
    // The request itself says whether an agent answers (no health check first: a
    // round trip less on every start); only then is one started. (Only a refused
    // connection is retried: a request that timed out may have created the run.)
    let started = match create() {
        Err(crate::client::Error::Unreachable { .. }) => {
            ensure_agent(&client, addr).and_then(|()| create().map_err(Failure::from))
        }
        other => other.map_err(Failure::from),
    };
    let started = match (started, parent) {
        (Ok(s), Some(pipe)) => {
            if let Err(e) = redirect_stdio(s.log_path.as_deref()) {
                tell_parent(pipe, &format!("err {} {e}", exit::FAILED));
                return Err(Failure::new(exit::FAILED, e));
            }
            tell_parent(pipe, &format!("ok {}", s.run_id));
            s
        }
        (Ok(s), None) => s,
        (Err(e), Some(pipe)) => {
            tell_parent(pipe, &format!("err {} {}", e.code, e.message));
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    };
    if !opts.quiet {
        for w in &started.warnings {
            crate::output::errln!("wfcg: warning: {w}");
        }
        if !opts.request.detach {
            crate::output::errln!(
                "wfcg: run {} started (template {})",
                started.run_id,
                started.template
            );
        }
    }

    let forwarded = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];
    let mut all = forwarded.to_vec();
    all.push(libc::SIGCHLD);
    let set = signals::SignalSet::new(&all);
    set.block();

    let command = &opts.request.command;
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..])
        .env(RUN_ID_ENV, &started.run_id)
        .env("WFCG_RUN_DIR", &started.run_dir)
        .env("TMPDIR", &started.tmpdir);
    match &started.notify_socket {
        Some(sock) => cmd.env("NOTIFY_SOCKET", sock),
        None => cmd.env_remove("NOTIFY_SOCKET"),
    };
    if let Some(ws) = &opts.workspace {
        cmd.current_dir(ws);
    }
    crate::sys::process::clear_signal_mask_before_exec(&mut cmd);
    let spawned = watch::Watcher::prepare(&started, &mut cmd).and_then(|watcher| {
        let child = start_command(&client, &started, cmd, opts.quiet)?;
        Ok((child, watcher))
    });
    let (code, report, watcher) = match spawned {
        Err(e) => {
            crate::output::errln!("wfcg: cannot run {:?}: {e}", command[0]);
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            (
                code,
                ExitReport {
                    exit_code: Some(code),
                    signal: None,
                },
                None,
            )
        }
        Ok((mut child, mut watcher)) => {
            watcher.start(opts.workspace.as_deref());
            let pid = child.pid();
            let status = loop {
                if let Ok(Some(status)) = child.try_wait() {
                    break status;
                }
                let sig = set.wait();
                // Signals from the terminal reach the command's process group directly;
                // only those sent by a process (kill(2): si_code ≤ 0) are passed on.
                if sig.signo != libc::SIGCHLD
                    && sig.code <= 0
                    && let Some(s) = rustix::process::Signal::from_named_raw(sig.signo)
                {
                    let _ = rustix::process::kill_process(pid, s);
                }
            };
            let (code, report) = match (status.code(), status.signal()) {
                (Some(c), _) => (
                    c,
                    ExitReport {
                        exit_code: Some(c),
                        signal: None,
                    },
                ),
                (None, Some(s)) => (
                    128 + s,
                    ExitReport {
                        exit_code: None,
                        signal: Some(s),
                    },
                ),
                _ => (exit::FAILED, ExitReport::default()),
            };
            (code, report, Some(watcher))
        }
    };
    let ack = record_exit(&client, &started, &report);
    if let Some(watcher) = watcher {
        watcher.finish();
    }
    // What became of a workspace the run was to remove, said even with --quiet:
    // the caller's files are at stake.
    if let Some(ws) = ack.as_ref().and_then(|a| a.workspace.as_deref()) {
        crate::output::errln!(
            "wfcg: run {}: workspace {}",
            started.run_id,
            crate::output::Shown(ws)
        );
    }
    // A killed run says why; one the monitor stopped exits like coreutils' timeout.
    // Whether it was stopped is the agent's answer (the stop-reason file, which
    // the command may have removed or rewritten, gives only the words), or the
    // file's when the agent could not be asked.
    let why = stopped(&started);
    let ending = match &ack {
        Some(a) => a.stopped,
        None => why.as_ref().map(|w| match w {
            Stopped::TimedOut(_) => RunStatus::TimedOut,
            Stopped::Killed(_) => RunStatus::Killed,
        }),
    };
    match (ending, why) {
        (Some(RunStatus::TimedOut), why) => {
            let why = match why {
                Some(Stopped::TimedOut(w)) => w,
                _ => "a deadline passed".into(),
            };
            crate::output::errln!("wfcg: run {} timed out: {why}", started.run_id);
            Ok(TIMED_OUT)
        }
        (Some(_), why) => {
            let why = match why {
                Some(Stopped::Killed(w)) => w,
                _ => "was killed".into(),
            };
            crate::output::errln!("wfcg: run {} {why}", started.run_id);
            Ok(killed_code(code))
        }
        (None, _) => Ok(code),
    }
}

/// Starts the command in the run's payload: cloned straight into it (with a
/// keeper cloned into the supervisor leaf first when this process stays where
/// it is, or from the supervisor leaf where the agent placed it); else forked
/// here, in the payload, after which this process leaves for the supervisor leaf.
/// `cmd` (holding the write ends of the watched pipes) is dropped on return.
fn start_command(
    client: &Client,
    started: &RunStarted,
    mut cmd: Command,
    quiet: bool,
) -> std::io::Result<spawn::Process> {
    let Some(payload) = &started.spawn_into else {
        let child = cmd.spawn()?;
        leave_payload(client, started, quiet);
        return Ok(spawn::Process::Forked(child));
    };
    let payload = Path::new(payload);
    // Started before the command, so the run is never empty while this
    // process lives to report how it ended.
    let keeper = match &started.keeper_into {
        Some(leaf) => match spawn::start_keeper(Path::new(leaf)) {
            Ok(keeper) => Some(keeper),
            Err(e) => return fork_in_payload(client, started, cmd, payload, e, quiet),
        },
        None => None,
    };
    let started_cmd = match spawn::clone_into(&mut cmd, payload) {
        spawn::Cloned::Started(child) => Ok(child),
        spawn::Cloned::ExecFailed(e) => Err(e),
        spawn::Cloned::Refused(e) => fork_in_payload(client, started, cmd, payload, e, quiet),
    };
    if let Some(keeper) = keeper {
        keeper.hold_until_exit();
    }
    started_cmd
}

/// The way without clone3 (e.g. a seccomp filter that refuses it, as container
/// runtimes' may, or a kernel before 5.7): this process enters the payload
/// (root may by itself), forks the command there and leaves for the supervisor
/// leaf through the agent.
fn fork_in_payload(
    client: &Client,
    started: &RunStarted,
    mut cmd: Command,
    payload: &Path,
    clone_err: std::io::Error,
    quiet: bool,
) -> std::io::Result<spawn::Process> {
    spawn::enter(payload).map_err(|e| {
        std::io::Error::other(format!(
            "cannot start it in the run's payload {}: clone3: {clone_err}; moving there: {e}",
            payload.display()
        ))
    })?;
    let child = cmd.spawn()?;
    leave_payload(client, started, quiet);
    Ok(spawn::Process::Forked(child))
}

/// The exit code of a run killed by the monitor (as `timeout(1)`).
pub const TIMED_OUT: i32 = 124;

/// The exit code of a run an operator killed: never success. A command that
/// ended by the kill's signal already says so (128 + the signal); one that
/// caught SIGTERM and exited 0 gets 128 + SIGTERM, the signal it was sent; a
/// failure code it chose itself is kept.
fn killed_code(code: i32) -> i32 {
    if code == 0 { 128 + libc::SIGTERM } else { code }
}

/// The most of `stop-reason` that is read (the agent writes a few hundred bytes).
const STOP_REASON_MAX: usize = 64 * 1024;

/// Reads `name` in the run directory: the user's directory, so never through a
/// symlink, never blocking on a FIFO or device (`O_NONBLOCK | O_NOFOLLOW`,
/// regular files only, size-limited; see `userfs`).
fn read_run_file(run_dir: &str, name: &str) -> std::io::Result<Vec<u8>> {
    let dir = crate::userfs::open_dir(Path::new(run_dir))?;
    crate::userfs::read_at(&dir, name, STOP_REASON_MAX)
}

/// Asks the agent to move this process from the run's payload, where the
/// command was just forked, to the supervisor leaf: a kill then acts on the
/// command's tree only, and this process lives on to say how the run ended.
///
/// Why this way round: the agent moves only the caller of a request (pinned by
/// its pidfd and checked to be the run's supervisor) between the two leaves of
/// its own run. Moving the command instead would mean the agent moving a pid a
/// client names, and letting the command write itself into the payload would
/// mean handing users a cgroup file; either could be turned on other processes.
fn leave_payload(client: &Client, started: &RunStarted, quiet: bool) {
    if let Err(e) = client.enter_supervisor(&started.run_id)
        && !quiet
    {
        crate::output::errln!(
            "wfcg: warning: the supervisor stays in the run's payload (a kill ends it too): {e}"
        );
    }
}

/// Why the agent stopped the run, from its stop-reason file.
enum Stopped {
    /// The monitor: a deadline passed.
    TimedOut(String),
    /// An operator's kill: who, how and why.
    Killed(String),
}

fn stopped(started: &RunStarted) -> Option<Stopped> {
    let text = read_run_file(&started.run_dir, STOP_REASON_FILE).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let reason = v["reason"].as_str();
    if v["status"] == "timed_out" {
        return Some(Stopped::TimedOut(
            reason.unwrap_or("a deadline passed").to_string(),
        ));
    }
    Some(Stopped::Killed(format!(
        "killed by {} ({}){}",
        v["requested_by"].as_str().unwrap_or("?"),
        v["mode"].as_str().unwrap_or("?"),
        reason.map(|r| format!(": {r}")).unwrap_or_default()
    )))
}

/// Leaves the exit in the run directory (read by the agent if the report is lost),
/// then reports it, retrying while the agent is away. The agent's answer, if any.
fn record_exit(client: &Client, started: &RunStarted, report: &ExitReport) -> Option<ExitAck> {
    let line = match (report.exit_code, report.signal) {
        (Some(c), _) => format!("code {c}\n"),
        (None, Some(s)) => format!("signal {s}\n"),
        _ => String::new(),
    };
    // The same care as reading: a FIFO or symlink planted there is refused at once.
    if let Ok(dir) = crate::userfs::open_dir(Path::new(&started.run_dir)) {
        let _ = crate::userfs::write_at(&dir, EXIT_STATUS_FILE, line.as_bytes(), 0o644);
    }
    let deadline = Instant::now() + REPORT_RETRY;
    loop {
        match client.report_exit(&started.run_id, report) {
            Err(client::Error::Unreachable { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(ack) => return Some(ack),
            Err(_) => return None,
        }
    }
}

fn tell_parent(pipe: OwnedFd, msg: &str) {
    let mut f = std::fs::File::from(pipe);
    let _ = writeln!(f, "{msg}");
}

/// A detached run: stdin from /dev/null, stdout and stderr to its log file.
fn redirect_stdio(log: Option<&str>) -> Result<(), String> {
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    rustix::stdio::dup2_stdin(&null).map_err(|e| format!("dup2: {e}"))?;
    let out = match log {
        Some(path) => std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|e| format!("cannot open the run's log {path}: {e}"))?,
        None => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("/dev/null: {e}"))?,
    };
    rustix::stdio::dup2_stdout(&out).map_err(|e| format!("dup2: {e}"))?;
    rustix::stdio::dup2_stderr(&out).map_err(|e| format!("dup2: {e}"))?;
    Ok(())
}
