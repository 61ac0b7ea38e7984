//! `wfcg agent`: starts the root daemon, and `wfcg hold`, which the agent starts.
//! The one part of the command line that uses the agent's code; every other
//! command is its client, through `api` and `client` (so are `wfcg agent status`
//! and `wfcg agent stop`, in `agent_control.rs`).

use crate::agent::{Config, server};
use crate::exit::{self, Failure};

/// Run the wfcg agent (as root), or see or stop the one that runs.
///
/// `wfcg agent` serves the API on --socket, owns the cgroup tree under
/// --cgroup-root and the store in --state-dir, and logs to stderr (in the
/// foreground; Ctrl-C stops it). A root `wfcg run` that finds no agent starts one
/// in the background, logging to <state dir>/agent.log; on a systemd host the
/// agent is wfcg.service (`wfcg install-service`). Runs keep going while it is
/// stopped or restarted; it takes them over again when it comes back.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub action: Option<super::agent_control::Action>,
    /// The policy file (roles, users, groups, teams); reloaded on SIGHUP and when
    /// it changes. Without it, root is admin and every user owns their runs.
    #[arg(long, env = "WFCG_POLICY", default_value = "/etc/wfcg/policy.toml")]
    pub policy: std::path::PathBuf,
    /// A command run for each alert (stuck, lease_expired, auto_killed, kill_failed,
    /// unkillable, loop_suspected; audit_tampered) with the event as JSON on stdin, for runs
    /// whose template names none.
    #[arg(long, value_name = "CMD")]
    pub on_event: Option<String>,
    /// An http:// or https:// URL each alert is POSTed to as JSON, for runs whose
    /// template names none. https is verified against the system's CA certificates,
    /// or those in SSL_CERT_FILE / SSL_CERT_DIR when set.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Also serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464);
    /// they are always at /metrics on the socket.
    #[arg(long, value_name = "ADDR", env = "WFCG_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Also label the TCP metrics with run ids and workflows
    /// (`wfcg_run_age_seconds`). Anyone who can connect to the address reads them,
    /// so they are off by default; on the socket they go to root and `view_all`.
    #[arg(long)]
    pub metrics_per_run: bool,
    /// The operator's run templates (NAME.toml, for `--workflow NAME` and
    /// `--template NAME`; default.toml replaces the shipped default). Clients
    /// never read them: the agent does, and states the kill course they allow
    /// at /v1/health.
    #[arg(long, value_name = "DIR", env = "WFCG_TEMPLATES_DIR", default_value = crate::template::SYSTEM_DIR)]
    pub templates_dir: std::path::PathBuf,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    if let Some(action) = &args.action {
        return super::agent_control::run(cli, action);
    }
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours on a terminal only: agent.log and the journal get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WFCG_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    if let Some(url) = &args.webhook {
        crate::alerts::check_webhook(url)
            .map_err(|e| Failure::usage(format!("--webhook {url}: {e}")))?;
    }
    let cfg = Config {
        socket: cli.socket.clone(),
        state_dir: cli.state_dir.clone(),
        cgroup_root: cli.cgroup_root.clone(),
        proc_root: "/proc".into(),
        policy: args.policy.clone(),
        on_event: args.on_event.clone(),
        webhook: args.webhook.clone(),
        metrics_listen: args.metrics_listen,
        metrics_per_run: args.metrics_per_run,
        templates_dir: args.templates_dir.clone(),
    };
    // Each run holds a notify socket: allow as many open files as the host permits.
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    if let Some(max) = getrlimit(Resource::Nofile).maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
    // Few malloc arenas: the agent's threads do little allocation each, and every
    // arena costs resident memory.
    crate::sys::process::limit_malloc_arenas(2);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    // The threads requests are worked on (tokio's default, 512), fewer for
    // tests that fill them.
    if let Some(n) = std::env::var("WFCG_REQUEST_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
    {
        rt.max_blocking_threads(n);
    }
    let rt = rt
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot start the runtime: {e}")))?;
    rt.block_on(server::serve(cfg))
        .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    Ok(exit::OK)
}

/// `wfcg hold`: keeps the runs' scope open (see `agent::placement::hold`).
pub fn hold() -> Result<i32, Failure> {
    crate::agent::placement::hold()
        .map(|()| exit::OK)
        .map_err(|e| Failure::new(exit::FAILED, e))
}
