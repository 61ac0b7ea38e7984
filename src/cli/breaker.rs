//! `wfcg breaker`: the workflows' circuit breakers.

use crate::api::{BreakerInfo, time};
use crate::exit::Failure;
use crate::output::{Shown, outln};

/// Circuit breakers: a workflow whose last runs of one owner all ended stuck (an
/// init, first-output or stall timeout; template `[breaker] failures`) is refused
/// new runs of that owner (exit 6) until its cooldown passes or an operator
/// resets it. An operator's template may make a breaker host-wide (`scope = "host"`).
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
    /// Close a workflow's breakers and clear their counts (needs kill_any; audited).
    Reset {
        /// The workflow (as given to `wfcg run --workflow`).
        workflow: String,
        /// Only this user's breaker (a name or uid), or `host` for the host-wide
        /// one; without it, every breaker of the workflow.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
    },
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let client = super::client(cli)?;
    match &args.what {
        None | Some(What::List) => {
            let list = client.breakers()?;
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
        Some(What::Reset { workflow, user }) => {
            let scope = user.as_deref().map(owner_of).transpose()?;
            let closed = client.reset_breaker(workflow, scope.as_deref())?;
            if args.json {
                crate::output::json(&closed)?;
            } else {
                for b in &closed {
                    outln!(
                        "breaker of workflow {} for {} closed",
                        Shown(&b.workflow),
                        Shown(&owner(b))
                    )?;
                }
            }
        }
    }
    Ok(crate::exit::OK)
}

/// The `owner=` of a reset: `host`, or the uid of a user name or number.
fn owner_of(user: &str) -> Result<String, Failure> {
    if user == "host" || user.parse::<u32>().is_ok() {
        return Ok(user.to_owned());
    }
    match crate::users::uid_of_name(user) {
        Some(uid) => Ok(uid.to_string()),
        None => Err(Failure::usage(format!(
            "--user {user:?}: no such user (a name, a uid, or \"host\")"
        ))),
    }
}

/// Whose a breaker is: `alice (uid 1001)`, `uid 1001`, or `everybody (host-wide)`.
pub fn owner(b: &BreakerInfo) -> String {
    match (b.owner_uid, &b.owner) {
        (None, _) => "everybody (host-wide)".into(),
        (Some(uid), Some(name)) => format!("{name} (uid {uid})"),
        (Some(uid), None) => format!("uid {uid}"),
    }
}

/// One line about a breaker, as `wfcg breaker` and `wfcg ps` print it.
pub fn describe(b: &BreakerInfo) -> String {
    if b.open {
        format!(
            "breaker OPEN   {} for {}: {} stuck runs in a row, new runs refused until {} (last {}: {})",
            Shown(&b.workflow),
            Shown(&owner(b)),
            b.failures,
            time::format_or(b.open_until, "?"),
            Shown(b.last_run_id.as_deref().unwrap_or("?")),
            Shown(b.last_reason.as_deref().unwrap_or("?")),
        )
    } else {
        format!(
            "breaker closed {} for {}: {} stuck run{} in a row (last {})",
            Shown(&b.workflow),
            Shown(&owner(b)),
            b.failures,
            if b.failures == 1 { "" } else { "s" },
            Shown(b.last_run_id.as_deref().unwrap_or("?")),
        )
    }
}
