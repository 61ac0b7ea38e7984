//! `wfcg lease`: renew a run's lease once.

use crate::api;
use crate::exit::{self, Failure};
use crate::output::outln;

/// Renew the lease of a run started with `wfcg run --lease DUR`: it now runs out
/// DUR from now. The run's owner, or a user with kill_any, may. An executor runs
/// this (or POSTs to /v1/runs/RUN/lease) more often than DUR while it lives; when
/// it stops, the run is killed once DUR passes. Exit 2 if the run has no lease or
/// has ended, 3 if there is no such run, 4 if not permitted.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run whose lease to renew.
    pub run_id: String,
    /// Print the agent's answer as JSON (run_id, lease_ms, renewed_at, expires_at).
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    if let Some(problem) = api::run_id_problem(&args.run_id) {
        return Err(Failure::usage(problem));
    }
    let client = super::client(cli)?;
    let renewed = client.renew_lease(&args.run_id)?;
    if args.json {
        crate::output::json(&renewed)?;
    } else {
        outln!(
            "lease of {} renewed: expires at {} (in {})",
            renewed.run_id,
            renewed.expires_at,
            crate::duration::format(std::time::Duration::from_millis(renewed.lease_ms))
        )?;
    }
    Ok(exit::OK)
}
