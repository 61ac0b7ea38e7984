//! `wfcg audit`: read, verify and export the audit trail.

use crate::output::outln;
use clap::Subcommand;

use crate::api::{AuditQuery, AuditVerify};
use crate::exit::{self, Failure};
use crate::store::AuditRecord;

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
        let v: AuditVerify = client.get("/v1/audit/verify")?;
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
    let query = query_string(&q);
    let records: Vec<AuditRecord> = client.get(&format!("/v1/audit?{query}"))?;
    if matches!(args.what, Some(What::Export)) {
        for r in &records {
            outln!("{}", serde_json::to_string(r).unwrap_or_default())?;
        }
    } else if args.json {
        crate::output::json(&records)?;
    } else {
        for r in &records {
            let e = &r.entry;
            outln!(
                "{:>6} {} {:<10} {:<11} {:<18} {:<9} {:<8} {}{}{}",
                r.seq,
                e.time,
                e.actor_name,
                e.action,
                e.run_id.as_deref().unwrap_or("-"),
                e.mode.as_deref().unwrap_or("-"),
                e.decision,
                e.outcome,
                e.permission
                    .as_deref()
                    .map(|p| format!(" [{p}]"))
                    .unwrap_or_default(),
                e.reason
                    .as_deref()
                    .map(|p| format!(" reason: {p}"))
                    .unwrap_or_default(),
            )?;
        }
    }
    Ok(exit::OK)
}

/// The query string of an [`AuditQuery`].
fn query_string(q: &AuditQuery) -> String {
    let mut parts = Vec::new();
    let mut push = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            let enc: String = v
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            parts.push(format!("{k}={enc}"));
        }
    };
    push("run", q.run.clone());
    push("actor", q.actor.clone());
    push("since_secs", q.since_secs.map(|v| v.to_string()));
    push("limit", q.limit.map(|v| v.to_string()));
    parts.join("&")
}
