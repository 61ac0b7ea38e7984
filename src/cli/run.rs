//! `wfcg run`: start a workflow in its own cgroup.

use std::path::PathBuf;

use crate::exit::Failure;
use crate::run::{AgentAddr, Options};

/// Run CMD as a workflow in its own cgroup v2, supervised until it ends.
///
/// CMD gets WFCG_RUN_ID, WFCG_RUN_DIR (a directory for this run) and TMPDIR (removed
/// when the run ends). Signals sent to wfcg run (SIGINT, SIGTERM, SIGHUP, SIGQUIT)
/// are passed on to CMD; wfcg run exits with CMD's status (128+N for signal N).
/// Whatever CMD leaves running when it exits is killed. As root, an agent is
/// started in the background if none answers.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run id: letters, digits, '_', '.', '-', at most 64, no '..' [default: run_ + 12 hex digits].
    #[arg(long)]
    pub run_id: Option<String>,
    /// Workflow name (a label shown by ps).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Working directory of the run; CMD starts in it.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// The team the run belongs to (you must be in it) [default: all your teams].
    #[arg(long)]
    pub team: Option<String>,
    /// Remove the workspace when the run ends (needs --workspace).
    #[arg(long, requires = "workspace")]
    pub cleanup_workspace: bool,
    /// Print the run id and return at once; the run goes on (output goes to its log file).
    #[arg(long, short)]
    pub detach: bool,
    /// Say nothing on stderr about the run itself.
    #[arg(long, short)]
    pub quiet: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let addr = AgentAddr {
        socket: cli.socket.clone(),
        state_dir: cli.state_dir.clone(),
        cgroup_root: cli.cgroup_root.clone(),
    };
    crate::run::run(
        &addr,
        Options {
            run_id: args.run_id.clone(),
            workflow: args.workflow.clone(),
            workspace: args.workspace.clone(),
            detach: args.detach,
            cleanup_workspace: args.cleanup_workspace,
            team: args.team.clone(),
            quiet: args.quiet,
            command: args.command.clone(),
        },
    )
}
