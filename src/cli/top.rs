//! `wfcg top`: the live dashboard (see [`crate::top`]).

use std::io::IsTerminal;
use std::time::Duration;

use crate::exit::{self, Failure};

/// A live dashboard: runs with status, phase, age, heartbeat, processes, CPU,
/// memory and critical sections, stuck runs in red, the latest kills and the
/// agent's own CPU and memory. Keys: ↑/↓ select, k kill, K force kill (each
/// asks y/n), / filter (Enter applies, Esc cancels), q quit.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Time between refreshes (at least 100ms).
    #[arg(long, value_name = "DUR", default_value = "1s")]
    pub interval: String,
    /// Show every run the agent knows, not only live ones and those that just ended.
    #[arg(long, short)]
    pub all: bool,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let interval = super::duration_arg("--interval", &args.interval)?;
    if interval < Duration::from_millis(100) {
        return Err(Failure::usage("--interval: at least 100ms"));
    }
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Failure::usage(
            "wfcg top needs a terminal; in scripts use `wfcg ps` or `wfcg ps --json`",
        ));
    }
    // Fail before taking over the screen when no agent answers (exit 5).
    super::client(cli)?.ping()?;
    let opts = crate::top::Options {
        socket: cli.socket.clone(),
        agent_timeout: super::agent_timeout(cli)?,
        interval,
        all: args.all,
        kills: 10,
    };
    crate::top::run(&opts).map_err(|e| Failure::new(exit::FAILED, format!("top: {e}")))
}
