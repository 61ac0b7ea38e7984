//! `wfcg mcp`: serve the Model Context Protocol on stdio (see [`crate::mcp`]).

use crate::exit::{self, Failure};

/// Serve MCP (Model Context Protocol) on stdin/stdout, so an AI agent can list
/// workflow runs, find stuck ones, look at one, kill it, take over (and kill) a
/// tree wfcg did not start, and read the audit trail.
/// Register it with an MCP client as the command `wfcg mcp`. It talks to the agent
/// on --socket with your own permissions (its kills are audited under your
/// name). stdout carries only the protocol; logs go to stderr (level from
/// WFCG_LOG, default warn). The tools are listed below.
#[derive(clap::Args, Debug)]
pub struct Args {}

pub fn run(cli: &super::Cli, _args: &Args) -> Result<i32, Failure> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WFCG_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .init();
    crate::mcp::serve_stdio(&cli.socket, super::agent_timeout(cli)?)
        .map_err(|e| Failure::new(exit::FAILED, e))?;
    Ok(exit::OK)
}
