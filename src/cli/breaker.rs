//! `wfcg breaker`: the workflows' circuit breakers.

use crate::api::BreakerInfo;
use crate::exit::Failure;
use crate::output::{Shown, outln};

/// Circuit breakers: a workflow whose last runs all ended stuck (an init,
/// first-output or stall timeout; template `[breaker] failures`) is refused new
/// runs (exit 6) until its cooldown passes or an operator resets it.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: Option<What>,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// The workflows with stuck runs counted or an open breaker (the default).
    List,
    /// Close a workflow's breaker and clear its count (needs kill_any; audited).
    Reset {
        /// The workflow (as given to `wfcg run --workflow`).
        workflow: String,
    },
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let client = super::client(cli)?;
    match &args.what {
        None | Some(What::List) => {
            let list: Vec<BreakerInfo> = client.get("/v1/breakers")?;
            if args.json {
                crate::output::json(&list)?;
            } else if list.is_empty() {
                outln!("no workflow has stuck runs counted")?;
            } else {
                for b in &list {
                    outln!("{}", describe(b))?;
                }
            }
        }
        Some(What::Reset { workflow }) => {
            let path = format!("/v1/breakers/{}/reset", encode(workflow));
            let b: BreakerInfo = client.post(&path, &serde_json::json!({}))?;
            if args.json {
                crate::output::json(&b)?;
            } else {
                outln!("breaker of workflow {} closed", Shown(&b.workflow))?;
            }
        }
    }
    Ok(crate::exit::OK)
}

/// One line about a breaker, as `wfcg breaker` and `wfcg ps` print it.
pub fn describe(b: &BreakerInfo) -> String {
    if b.open {
        format!(
            "breaker OPEN   {}: {} stuck runs in a row, new runs refused until {} (last {}: {})",
            Shown(&b.workflow),
            b.failures,
            Shown(b.open_until.as_deref().unwrap_or("?")),
            Shown(b.last_run_id.as_deref().unwrap_or("?")),
            Shown(b.last_reason.as_deref().unwrap_or("?")),
        )
    } else {
        format!(
            "breaker closed {}: {} stuck run{} in a row (last {})",
            Shown(&b.workflow),
            b.failures,
            if b.failures == 1 { "" } else { "s" },
            Shown(b.last_run_id.as_deref().unwrap_or("?")),
        )
    }
}

/// Percent-encodes a workflow name for a URL path.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
