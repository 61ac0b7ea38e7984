//! `wfcg kill`: end a run's whole process tree.

use crate::api::{self, KillRequest, KillResult};
use crate::client::Client;
use crate::exit::{self, Failure};

/// Kill a run: every process of its cgroup, atomically, with nothing left.
///
/// Graceful (default): SIGTERM to every process, up to --grace for them to exit,
/// then freeze + cgroup.kill. --force: freeze + cgroup.kill at once. Killing a run
/// that already ended succeeds (exit 0) and says how it ended. Exit 1 when
/// processes survived (the run is then `unkillable`).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to kill.
    pub run_id: String,
    /// Skip SIGTERM and the grace: cgroup.kill at once.
    #[arg(long)]
    pub force: bool,
    /// How long processes get after SIGTERM (e.g. 500ms, 5s, 1m) [default: from the template, 5s].
    #[arg(long, value_name = "DUR")]
    pub grace: Option<String>,
    /// Why; recorded with the kill.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the kill result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    if let Some(problem) = api::run_id_problem(&args.run_id) {
        return Err(Failure::usage(problem));
    }
    let grace_ms = match &args.grace {
        Some(g) => Some(super::duration_arg("--grace", g)?.as_millis() as u64),
        None => None,
    };
    let req = KillRequest {
        force: args.force,
        grace_ms,
        reason: args.reason.clone(),
    };
    let client = Client::new(&cli.socket);
    let result: KillResult = client.post(&format!("/v1/runs/{}/kill", args.run_id), &req)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&result).unwrap_or_default()
        );
    } else {
        let took = if result.already_ended {
            String::new()
        } else {
            format!(" in {:.0} ms", result.duration_ms)
        };
        println!("{}{took}", result.message);
    }
    Ok(if result.success {
        exit::OK
    } else {
        exit::FAILED
    })
}
