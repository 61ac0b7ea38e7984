//! `wfcg run`: start a workflow in its own cgroup.

use std::path::PathBuf;

use crate::api::CreateRun;
use crate::exit::Failure;
use crate::run::{AgentAddr, Options};

/// Run CMD as a workflow in its own cgroup v2, supervised until it ends.
///
/// CMD gets WFCG_RUN_ID, WFCG_RUN_DIR (a directory for this run), TMPDIR (removed
/// when the run ends) and NOTIFY_SOCKET (sd_notify: READY=1 ends initialization,
/// WATCHDOG=1 is a heartbeat; `systemd-notify` and `wfcg notify` speak it). Signals
/// sent to wfcg run (SIGINT, SIGTERM, SIGHUP, SIGQUIT) are passed on to CMD; wfcg
/// run exits with CMD's status (128+N for signal N), or 124 if the run timed out.
/// Whatever CMD leaves running when it exits is killed. As root, an agent is
/// started in the background if none answers.
///
/// Timeouts come from the template (the one named like --workflow, else
/// `default`: 5m to initialize, 1h in all): a run that is not ready within
/// --init-timeout, runs longer than --timeout, or misses heartbeats for two
/// --watchdog intervals is killed. Ready, by default: READY=1 or its first
/// output, whichever comes first (CMD's stdout and stderr then pass through
/// wfcg run); see --ready-when. Durations: 30s, 5m, 1h30m, plain seconds; 0 = none.
/// See also --stall-timeout and --output-timeout. A workflow whose circuit breaker is open (its last runs all
/// ended stuck) is refused with exit 6.
#[derive(clap::Args, Debug)]
#[command(override_usage = "wfcg run [OPTIONS] -- <CMD>...")]
pub struct Args {
    /// Run id: letters, digits, '_', '.', '-', at most 64, no '..' [default: run_ + 12 hex digits].
    #[arg(long)]
    pub run_id: Option<String>,
    /// Workflow name (shown by ps, counted by its breaker); picks the template of
    /// that name, which must exist unless --template gives the run's template.
    #[arg(long)]
    pub workflow: Option<String>,
    /// A template file for this run (instead of the one named like the workflow).
    #[arg(long, value_name = "FILE")]
    pub template: Option<PathBuf>,
    /// How long the run may take to be ready (see --ready-when) [default: from the template].
    #[arg(long, value_name = "DUR")]
    pub init_timeout: Option<String>,
    /// How long the run may take in all; 0 is no limit [default: from the template].
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    /// Heartbeat interval: the run must send WATCHDOG=1 at least every two [default: off].
    #[arg(long, value_name = "DUR")]
    pub watchdog: Option<String>,
    /// When the run counts as initialized, instead of the template's `[run] ready`:
    /// notify (READY=1), start, output (its first byte on stdout/stderr),
    /// log:REGEX (a line of output matches), file:PATH (a file appears, relative
    /// to the workspace), port:N (a process of the run listens on TCP port N).
    /// Repeat it: the first that holds ends initialization. READY=1 always does.
    /// [default: the template's; every shipped one says output]
    /// With output or log:, and with --output-timeout, CMD's stdout and stderr are
    /// pipes read by wfcg run (not the terminal).
    #[arg(long, value_name = "COND")]
    pub ready_when: Vec<String>,
    /// Kill the run as stalled when it makes no progress (CPU time, processes
    /// started or ended, output) for this long; 0 is off [default: from the template].
    #[arg(long, value_name = "DUR")]
    pub stall_timeout: Option<String>,
    /// Kill the run if it writes nothing to stdout or stderr for this long after
    /// it starts; 0 is off [default: from the template].
    #[arg(long, value_name = "DUR")]
    pub output_timeout: Option<String>,
    /// Working directory of the run; CMD starts in it. It is kept when the run
    /// ends, unless --cleanup-workspace (or an operator's template with
    /// `[cleanup] workspace = "remove"`) asks for its removal.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// The team the run belongs to (you must be in it) [default: all your teams].
    #[arg(long)]
    pub team: Option<String>,
    /// Remove the workspace when the run ends (needs --workspace); said when the
    /// run starts and when it ends. It is kept, and why is said, if it holds
    /// anything older than the run (a file, link or directory not made by it) or
    /// a git repository with uncommitted changes or untracked files.
    #[arg(long, requires = "workspace")]
    pub cleanup_workspace: bool,
    /// Kill the run (gracefully, then by force) when nobody renews its lease
    /// (`wfcg lease RUN`, or `POST /v1/runs/{id}/lease`) for this long: for an
    /// executor that renews it while it lives, so the run dies with it. At least
    /// 1s, at most 30 days [default: no lease].
    #[arg(long, value_name = "DUR")]
    pub lease: Option<String>,
    /// Print the run id and return at once; the run goes on (output goes to its log file).
    #[arg(long, short)]
    pub detach: bool,
    /// Say nothing on stderr about the run itself.
    #[arg(long, short)]
    pub quiet: bool,
    /// A command given without `--` before it: refused with the line to write.
    #[arg(hide = true, value_name = "CMD")]
    pub without_dashes: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(
        last = true,
        required_unless_present = "without_dashes",
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// `wfcg run sleep 1`: the command must follow `--`, so that its own options
/// are never taken for wfcg's; the error shows the line to write.
fn missing_dashes(args: &Args) -> Result<(), Failure> {
    if args.without_dashes.is_empty() {
        return Ok(());
    }
    let cmd: Vec<&str> = args
        .without_dashes
        .iter()
        .chain(&args.command)
        .map(String::as_str)
        .collect();
    Err(Failure::usage(format!(
        "the command goes after `--`: wfcg run [OPTIONS] -- {}",
        cmd.join(" ")
    )))
}

/// `--lease` in milliseconds, at least 1s and at most 30 days.
fn lease_ms(text: &Option<String>) -> Result<Option<u64>, Failure> {
    let ms = super::millis_arg("--lease", text)?;
    match ms.and_then(crate::api::lease_problem) {
        Some(problem) => Err(Failure::usage(format!(
            "--lease {}: {problem}",
            text.as_deref().unwrap_or_default()
        ))),
        None => Ok(ms),
    }
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    missing_dashes(args)?;
    let addr = AgentAddr {
        socket: cli.socket.clone(),
        state_dir: cli.state_dir.clone(),
        cgroup_root: cli.cgroup_root.clone(),
        timeout: super::agent_timeout(cli)?,
    };
    let ms = super::millis_arg;
    let (template, template_text) = match &args.template {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::usage(format!("--template {}: {e}", path.display())))?;
            (Some(path.display().to_string()), Some(text))
        }
        None => (None, None),
    };
    let request = CreateRun {
        run_id: args.run_id.clone(),
        workflow: args.workflow.clone(),
        command: args.command.clone(),
        detach: args.detach,
        cleanup_workspace: args.cleanup_workspace,
        team: args.team.clone(),
        template,
        template_text,
        init_timeout_ms: ms("--init-timeout", &args.init_timeout)?,
        timeout_ms: ms("--timeout", &args.timeout)?,
        watchdog_ms: ms("--watchdog", &args.watchdog)?,
        stall_timeout_ms: ms("--stall-timeout", &args.stall_timeout)?,
        output_timeout_ms: ms("--output-timeout", &args.output_timeout)?,
        ready_when: if args.ready_when.is_empty() {
            None
        } else {
            for cond in &args.ready_when {
                crate::template::Ready::parse(cond)
                    .map_err(|e| Failure::usage(format!("--ready-when: {e}")))?;
            }
            Some(args.ready_when.clone())
        },
        workspace: None,
        // Asked for by the supervisor when it can (crate::run).
        spawn_into_payload: false,
        stay_outside: false,
        // `--workflow NAME` alone picks the template NAME: one the agent does
        // not have is a usage error (a typo would otherwise run under `default`).
        workflow_needs_template: args.workflow.is_some() && args.template.is_none(),
        lease_ms: lease_ms(&args.lease)?,
    };
    crate::run::run(
        &addr,
        Options {
            request,
            workspace: args.workspace.clone(),
            quiet: args.quiet,
        },
    )
}
