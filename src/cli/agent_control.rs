//! `wfcg agent status` and `wfcg agent stop`: the agent that runs, seen and
//! stopped through its socket (`GET /v1/health`, `POST /v1/agent/stop`).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::api::time;
use crate::client;
use crate::exit::{self, Failure};
use crate::output::{Shown, outln, shown_or_dash};

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    Status(StatusArgs),
    Stop(StopArgs),
}

/// Show the agent that answers on --socket: pid, uptime, version, socket, state
/// dir, where it logs, how many runs are live, and whether it is a systemd service.
///
/// Exits 0 when an agent answers, 5 when none does (or not within --agent-timeout).
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Print the agent's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Stop the agent (root only; audited as `agent_stop`). Runs go on.
///
/// The agent is asked to stop, and this waits until its process is gone. Runs
/// are not the agent's children: their supervisors (`wfcg run`) keep running
/// their commands, and the next agent (a root `wfcg run` starts one, or `wfcg
/// agent`) takes them over: `ps`, `status` and `kill` work on them again. Their
/// deadlines are not enforced while no agent runs. An agent that runs as a
/// systemd service is not stopped this way (exit 2): use `systemctl stop
/// wfcg.service`.
///
/// Exits 0 when the agent stopped, or when none answered (nothing to stop); 2
/// for a service; 4 when not root; 5 when it did not answer in time; 1 when it
/// was still running after --wait.
#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// How long to wait for the agent's process to end.
    #[arg(long, value_name = "DUR", default_value = "30s")]
    pub wait: String,
}

pub fn run(cli: &super::Cli, action: &Action) -> Result<i32, Failure> {
    match action {
        Action::Status(a) => status(cli, a),
        Action::Stop(a) => stop(cli, a),
    }
}

fn status(cli: &super::Cli, args: &StatusArgs) -> Result<i32, Failure> {
    let health = super::client(cli)?.health()?;
    if args.json {
        crate::output::json(&health)?;
        return Ok(exit::OK);
    }
    let uptime = health
        .uptime_secs
        .map(|s| format!(", up {}", crate::duration::short(s)))
        .unwrap_or_default();
    outln!("agent:      running, pid {}{uptime}", health.pid)?;
    outln!("version:    {}", Shown(&health.version))?;
    outln!("started:    {}", time::format_or(health.started_at, "-"))?;
    outln!("socket:     {}", shown_or_dash(&health.socket))?;
    outln!("state dir:  {}", shown_or_dash(&health.state_dir))?;
    match health.log.as_deref() {
        Some("journal") => {
            let unit = health.service.as_deref().unwrap_or("wfcg.service");
            outln!("log:        the journal (journalctl -u {})", Shown(unit))?
        }
        _ => outln!("log:        {}", shown_or_dash(&health.log))?,
    }
    let runs = health.live_runs.map(|n| n.to_string());
    outln!("live runs:  {}", shown_or_dash(&runs))?;
    match &health.service {
        Some(unit) => outln!(
            "service:    {} (systemd; stop it with `systemctl stop {}`)",
            Shown(unit),
            Shown(unit)
        )?,
        None => outln!("service:    none (stop it with `wfcg agent stop`)")?,
    }
    Ok(exit::OK)
}

fn stop(cli: &super::Cli, args: &StopArgs) -> Result<i32, Failure> {
    let wait = super::duration_arg("--wait", &args.wait)?;
    let client = super::client(cli)?;
    let health = match client.health() {
        Ok(h) => h,
        Err(client::Error::Unreachable { socket, .. }) => {
            crate::output::errln!(
                "wfcg: no agent answers on {}: nothing to stop",
                socket.display()
            );
            return Ok(exit::OK);
        }
        Err(e) => return Err(e.into()),
    };
    // Pinned before the request: the process that answered, not whatever
    // gets its pid later. (None when it is not visible from here.)
    let pidfd = i32::try_from(health.pid)
        .ok()
        .and_then(|pid| crate::procfs::pidfd_open(pid).ok());
    let stopping = client.stop_agent()?;
    let gone = match &pidfd {
        Some(fd) => exited_within(fd, wait),
        None => unreachable_within(&client, wait),
    };
    if !gone {
        return Err(Failure::new(
            exit::FAILED,
            format!(
                "the agent (pid {}) was asked to stop and still runs after {}; see its log ({})",
                stopping.pid,
                crate::duration::format(wait),
                health.log.as_deref().unwrap_or("-")
            ),
        ));
    }
    let runs = match stopping.live_runs {
        0 => "no run was live; new runs need a new agent: a root `wfcg run` starts one, or `wfcg agent`".to_string(),
        1 => "its 1 live run goes on: its supervisor keeps".to_string(),
        n => format!("its {n} live runs go on: their supervisors keep"),
    };
    if stopping.live_runs == 0 {
        outln!("wfcg agent (pid {}) stopped; {runs}", stopping.pid)?;
    } else {
        outln!(
            "wfcg agent (pid {}) stopped; {runs} running, and the next agent takes them over \
             (a root `wfcg run` starts one, or `wfcg agent`)",
            stopping.pid,
        )?;
    }
    Ok(exit::OK)
}

/// Whether the process behind `pidfd` exits within `wait` (a pidfd polls
/// readable when its process has exited).
fn exited_within(pidfd: &OwnedFd, wait: Duration) -> bool {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(left).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            Err(_) => return !crate::procfs::pidfd_alive(pidfd),
        }
    }
}

/// Whether the socket stops answering within `wait` (when the agent's process
/// cannot be seen from here), polled.
fn unreachable_within(client: &client::Client, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if let Err(client::Error::Unreachable { .. }) = client.ping() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
