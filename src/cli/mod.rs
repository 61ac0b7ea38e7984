//! The command line: clap definitions, one file per verb, and dispatch.
//!
//! Every verb finds the agent through `--socket` (or `WFCG_SOCKET`) and returns
//! an exit code from [`crate::exit`].

mod adopt;
mod agent;
mod agent_control;
mod audit;
pub mod breaker;
mod install;
mod kill;
mod lease;
mod logs;
mod mcp;
mod notify;
mod ps;
mod run;
mod table;
mod template;
mod top;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::exit::Failure;

/// wfcg makes every workflow run killable: each run lives in its own cgroup v2,
/// and `wfcg kill` ends the whole tree, with nothing left behind.
#[derive(Parser, Debug)]
#[command(name = "wfcg", version, after_help = crate::exit::help())]
pub struct Cli {
    /// The agent's socket.
    #[arg(
        long,
        global = true,
        env = "WFCG_SOCKET",
        default_value = "/run/wfcg/agent.sock"
    )]
    pub socket: PathBuf,

    /// The agent's state directory (database, logs, run temp dirs).
    #[arg(
        long,
        global = true,
        env = "WFCG_STATE_DIR",
        default_value = "/var/lib/wfcg"
    )]
    pub state_dir: PathBuf,

    /// The cgroup the agent owns [default: under systemd (PID 1) the agent's own
    /// delegated cgroup (wfcg.service), else <cgroup2 mount>/wfcg].
    #[arg(long, global = true, env = "WFCG_CGROUP_ROOT")]
    pub cgroup_root: Option<PathBuf>,

    /// How long a request to the agent may take, connecting and answering (a kill:
    /// on top of its --max-wait, --grace and the hard kill's deadline); an agent
    /// that does not answer in time is an error (exit 5).
    #[arg(
        long,
        global = true,
        value_name = "DUR",
        env = "WFCG_AGENT_TIMEOUT",
        default_value = "30s"
    )]
    pub agent_timeout: String,

    #[command(subcommand)]
    pub command: Verb,
}

#[derive(Subcommand, Debug)]
pub enum Verb {
    Agent(agent::Args),
    Run(run::Args),
    Kill(kill::Args),
    Lease(lease::Args),
    Adopt(adopt::Args),
    Ps(ps::PsArgs),
    Status(ps::StatusArgs),
    Logs(logs::Args),
    Audit(audit::Args),
    Notify(notify::Args),
    Templates(template::ListArgs),
    Template(template::Args),
    Top(top::Args),
    Mcp(mcp::Args),
    InstallService(install::InstallArgs),
    #[command(hide = true)]
    Generate(install::GenerateArgs),
    /// Keep the runs' scope open (started by the agent under systemd < 254).
    #[command(hide = true)]
    Hold,
    Breaker(breaker::Args),
}

/// The command line as clap sees it: [`Cli`], with what derive cannot say.
/// `wfcg mcp --help` lists the MCP server's own tools and hides the global
/// options only the agent (and `wfcg run`, which may start it) reads. The
/// binary parses with it and the man pages are made from it.
pub fn command() -> clap::Command {
    command_with(true)
}

/// [`command`], with `wfcg mcp --help`'s list of tools when `mcp_tools` (its
/// making builds every tool's JSON Schema: most of a parse's time, which no
/// other command line needs).
fn command_with(mcp_tools: bool) -> clap::Command {
    let cmd = Cli::command();
    // A global option is copied into each subcommand that has none of its id
    // when the command is built: give `mcp` hidden copies first.
    let agent_only: Vec<clap::Arg> = cmd
        .get_arguments()
        .filter(|a| AGENT_ONLY.contains(&a.get_id().as_str()))
        .map(|a| a.clone().hide(true))
        .collect();
    cmd.mut_subcommand("mcp", |mcp| {
        let mcp = mcp.args(agent_only);
        if mcp_tools {
            mcp.after_help(crate::mcp::tools_help())
        } else {
            mcp
        }
    })
}

/// Whether a command line may show `wfcg mcp`'s help (`wfcg mcp --help`,
/// `wfcg help mcp`): only one that names `mcp` can.
fn may_show_mcp_help(args: &[std::ffi::OsString]) -> bool {
    args.iter().skip(1).any(|a| a == "mcp")
}

/// The global options only the agent (and `wfcg run`, which may start one) reads.
const AGENT_ONLY: [&str; 2] = ["state_dir", "cgroup_root"];

/// Parses this process's command line with [`command`]; on an error (or
/// `--help`, `--version`) prints clap's message and exits as clap does (2).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let mut cmd = command_with(may_show_mcp_help(&args));
    let matches = cmd
        .try_get_matches_from_mut(args)
        .unwrap_or_else(|e| e.exit());
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Runs the parsed command line; returns the exit code.
pub fn dispatch(cli: Cli) -> Result<i32, Failure> {
    match cli.command {
        Verb::Agent(ref a) => agent::run(&cli, a),
        Verb::Run(ref a) => run::run(&cli, a),
        Verb::Kill(ref a) => kill::run(&cli, a),
        Verb::Lease(ref a) => lease::run(&cli, a),
        Verb::Adopt(ref a) => adopt::run(&cli, a),
        Verb::Ps(ref a) => ps::ps(&cli, a),
        Verb::Status(ref a) => ps::status(&cli, a),
        Verb::Logs(ref a) => logs::run(&cli, a),
        Verb::Audit(ref a) => audit::run(&cli, a),
        Verb::Notify(ref a) => notify::run(&cli, a),
        Verb::Templates(ref a) => template::list(&cli, a),
        Verb::Template(ref a) => template::run(&cli, a),
        Verb::Top(ref a) => top::run(&cli, a),
        Verb::Mcp(ref a) => mcp::run(&cli, a),
        Verb::InstallService(ref a) => install::install_service(a),
        Verb::Generate(ref a) => install::generate(a),
        Verb::Hold => agent::hold(),
        Verb::Breaker(ref a) => breaker::run(&cli, a),
    }
}

/// `--agent-timeout` (at least 1 ms).
fn agent_timeout(cli: &Cli) -> Result<std::time::Duration, Failure> {
    let d = duration_arg("--agent-timeout", &cli.agent_timeout)?;
    if d.is_zero() {
        return Err(Failure::usage("--agent-timeout: at least 1ms"));
    }
    Ok(d)
}

/// A client of the agent on `--socket`, with `--agent-timeout`.
fn client(cli: &Cli) -> Result<crate::client::Client, Failure> {
    Ok(crate::client::Client::new(&cli.socket).with_timeout(agent_timeout(cli)?))
}

/// Parses a duration flag; the error names the flag.
fn duration_arg(flag: &str, text: &str) -> Result<std::time::Duration, Failure> {
    crate::duration::parse(text).map_err(|e| Failure::usage(format!("{flag}: {e}")))
}

/// An optional duration flag in milliseconds, as the API takes it.
fn millis_arg(flag: &str, text: &Option<String>) -> Result<Option<u64>, Failure> {
    text.as_deref()
        .map(|t| duration_arg(flag, t).map(|d| d.as_millis() as u64))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mcp_help(args: &[&str]) -> Option<String> {
        let args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        let cmd = command_with(may_show_mcp_help(&args));
        let mcp = cmd.find_subcommand("mcp").expect("the mcp subcommand");
        mcp.get_after_help().map(|h| h.to_string())
    }

    /// A start (`wfcg run`) does not build the MCP tools' schemas; every
    /// command line that can print `wfcg mcp`'s help does.
    #[test]
    fn only_a_command_line_naming_mcp_lists_its_tools() {
        assert_eq!(mcp_help(&["wfcg", "run", "-q", "--", "true"]), None);
        assert_eq!(mcp_help(&["wfcg", "--version"]), None);
        for args in [
            &["wfcg", "mcp", "--help"][..],
            &["wfcg", "help", "mcp"],
            &["wfcg", "--socket", "/s", "mcp", "-h"],
        ] {
            let help = mcp_help(args).unwrap_or_default();
            assert!(help.starts_with("Tools:"), "{args:?}: {help:?}");
        }
        assert!(
            command()
                .find_subcommand("mcp")
                .unwrap()
                .get_after_help()
                .is_some()
        );
    }
}
