//! `wfcg adopt`: take a workflow that wfcg did not start into a run.

use crate::api::{AdoptRequest, Adopted};
use crate::exit::{self, Failure};
use crate::output::{Shown, outln};

/// Take over a process tree started outside wfcg (or a whole cgroup) as a run,
/// so it can be watched, given deadlines and killed like any other.
///
/// The tree rooted at PID is moved, race-free, into the run's cgroup: it is
/// created frozen, the root pinned by a pidfd, the tree moved top down and
/// scanned again until nothing new appears; then its escapees are taken too:
/// processes of the same source cgroup, started after the root, that share its
/// session or process group, or carry a marker in their environment: WFCG_RUN_ID,
/// RUNNER_TRACKING_ID, GITHUB_RUN_ID, CI_JOB_ID with the root's values, and the
/// markers inferred from the root's environment (each VAR=VALUE of the root's
/// that no process outside the tree has: a job id, a random token). A --marker
/// takes its carriers in that cgroup whatever their age. The root's ancestors
/// are never taken. The run keeps the root's owner, real start time and command.
/// Needs kill_any, or owning every process taken; --dry-run needs view_all or
/// ownership. `wfcg kill --pid PID` adopts and kills in one step.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The root of the tree.
    #[arg(required_unless_present = "cgroup", conflicts_with = "cgroup")]
    pub pid: Option<i32>,
    /// Take this existing cgroup in place instead (a path under the cgroup2
    /// mount, or relative to it, e.g. /system.slice/runner.service): nothing is
    /// moved, the kill uses its own cgroup.kill.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<String>,
    /// The run's id, e.g. the executor's own (run_5fbae44ab6f0) [default: a new one].
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// The workflow's name (its template gives the kill's graces).
    #[arg(long, value_name = "NAME")]
    pub workflow: Option<String>,
    /// Why; recorded in the audit trail.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// VAR=VALUE in a process's environment marks it as the tree's escapee,
    /// even one started before the root (repeatable).
    #[arg(long = "marker", value_name = "VAR=VALUE")]
    pub markers: Vec<String>,
    /// List what would be taken, and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Kill the run right after adopting it (as `wfcg kill`, graceful unless --force).
    #[arg(long)]
    pub kill: bool,
    /// With --kill: cgroup.kill at once.
    #[arg(long, requires = "kill")]
    pub force: bool,
    /// With --kill: how long processes get after SIGTERM.
    #[arg(long, value_name = "DUR", requires = "kill")]
    pub grace: Option<String>,
    /// Kill the run if it has not become ready this long after its real start
    /// (it never sends READY=1, so this is a deadline from its start).
    #[arg(long, value_name = "DUR")]
    pub init_timeout: Option<String>,
    /// Kill the run when it is older than this (counted from its real start:
    /// a run started two days ago with --timeout 1h is killed at once).
    #[arg(long, value_name = "DUR")]
    pub timeout: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let ms = super::millis_arg;
    // The part of `wfcg kill`'s options that `--kill` offers.
    let kill = super::kill::KillArgs {
        force: args.force,
        grace: args.grace.clone(),
        ..Default::default()
    };
    let req = AdoptRequest {
        pid: args.pid,
        cgroup: args.cgroup.clone(),
        run_id: args.run_id.clone(),
        workflow: args.workflow.clone(),
        reason: args.reason.clone(),
        markers: args.markers.clone(),
        dry_run: args.dry_run,
        kill: args.kill,
        settings: kill.settings()?,
        init_timeout_ms: ms("--init-timeout", &args.init_timeout)?,
        timeout_ms: ms("--timeout", &args.timeout)?,
    };
    let checks = check(&req)?;
    let adopted: Adopted = super::client(cli)?.adopt(checks)?;
    if args.json {
        crate::output::json(&adopted)?;
    } else {
        print(&adopted)?;
    }
    Ok(match &adopted.kill {
        Some(k) if !k.success => exit::FAILED,
        _ => exit::OK,
    })
}

/// Input the CLI can judge before asking the agent.
pub fn check(req: &AdoptRequest) -> Result<&AdoptRequest, Failure> {
    match req.problem() {
        Some(problem) => Err(Failure::usage(problem)),
        None => Ok(req),
    }
}

fn print(a: &Adopted) -> Result<(), Failure> {
    outln!("{}", Shown(&a.message))?;
    if !a.inferred_markers.is_empty() {
        outln!(
            "  inferred markers: {}",
            Shown(&a.inferred_markers.join(", "))
        )?;
    }
    if a.dry_run || a.members.len() <= 20 {
        for m in &a.members {
            outln!(
                "  {:>7}  {:<24}  {}",
                m.pid,
                Shown(&m.reason),
                Shown(&m.command)
            )?;
        }
    }
    for s in &a.skipped {
        outln!(
            "  {:>7}  {:<24}  {}",
            s.pid,
            Shown(&s.reason),
            Shown(&s.command)
        )?;
    }
    Ok(())
}
