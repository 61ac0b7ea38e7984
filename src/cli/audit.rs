//! `wfcg audit`: read, verify and export the audit trail.

use clap::Subcommand;

use crate::api::{AuditQuery, AuditRecord};
use crate::exit::{self, Failure};
use crate::output::outln;

use super::table::{self, one_line};

/// Read the audit trail: every kill attempt (allowed, denied, failed), every
/// automatic kill, run starts and ends, and policy loads. Records are chained
/// with SHA-256; `wfcg audit verify` proves they were not edited or deleted.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: Option<What>,
    /// Only records about this run.
    #[arg(long, value_name = "RUN_ID", global = true)]
    pub run: Option<String>,
    /// Only records of this actor (a user name, `agent` or `monitor`).
    #[arg(long, value_name = "NAME", global = true)]
    pub actor: Option<String>,
    /// Only records of the last DUR (e.g. 1h, 30m).
    #[arg(long, value_name = "DUR", global = true)]
    pub since: Option<String>,
    /// At most the newest N records.
    #[arg(long, value_name = "N", global = true)]
    pub limit: Option<u32>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum What {
    /// Recompute the hash chain: "N records, chain intact" (exit 0), or the first
    /// record that does not match (exit 1).
    Verify,
    /// Write the records as JSON lines (for log pipelines); takes the same filters.
    Export,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let client = super::client(cli)?;
    if let Some(What::Verify) = args.what {
        let v = client.audit_verify()?;
        if args.json {
            crate::output::json(&v)?;
        } else {
            outln!("{}", v.message)?;
        }
        return Ok(if v.intact { exit::OK } else { exit::FAILED });
    }
    let since_secs = match &args.since {
        Some(s) => Some(super::duration_arg("--since", s)?.as_secs()),
        None => None,
    };
    let q = AuditQuery {
        run: args.run.clone(),
        actor: args.actor.clone(),
        since_secs,
        limit: args.limit,
    };
    let records = client.audit(&q)?;
    if matches!(args.what, Some(What::Export)) {
        for r in &records {
            outln!("{}", serde_json::to_string(r).unwrap_or_default())?;
        }
    } else if args.json {
        crate::output::json(&records)?;
    } else {
        let rows: Vec<Vec<String>> = records.iter().map(row).collect();
        let widths = table::widths(&COLUMNS, &rows);
        outln!("{}", table::header(&COLUMNS, &widths))?;
        for row in &rows {
            outln!("{}", table::line(&COLUMNS, &widths, row))?;
        }
    }
    Ok(exit::OK)
}

/// The columns of `wfcg audit` (their least widths as they always were).
const COLUMNS: [table::Column; 8] = [
    table::right("SEQ", 6),
    table::left("TIME", 0),
    table::left("ACTOR", 10),
    table::left("ACTION", 11),
    table::left("RUN", 18),
    table::left("MODE", 9),
    table::left("DECISION", 8),
    table::left("OUTCOME", 0),
];

/// A record as a row of [`COLUMNS`]; the outcome carries the permission and reason.
fn row(r: &AuditRecord) -> Vec<String> {
    let e = &r.entry;
    let permission = e.permission.as_deref().map(|p| format!(" [{p}]"));
    let reason = e.reason.as_deref().map(|p| format!(" reason: {p}"));
    vec![
        r.seq.to_string(),
        e.time.clone(),
        one_line(&e.actor_name),
        e.action.to_string(),
        e.run_id.clone().unwrap_or_else(|| "-".into()),
        e.mode.clone().unwrap_or_else(|| "-".into()),
        e.decision.to_string(),
        one_line(&format!(
            "{}{}{}",
            e.outcome,
            permission.unwrap_or_default(),
            reason.unwrap_or_default()
        )),
    ]
}
