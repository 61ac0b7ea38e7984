//! `wfcg kill`: end a run's whole process tree.

use crate::api::{self, KillMode, KillRequest, KillResult, KillSettings, RunInfo};
use crate::client::Client;
use crate::exit::{self, Failure};
use crate::output::{Shown, outln};

/// Kill a run: every process of its cgroup, atomically, with nothing left.
///
/// Graceful (default): freeze the run and look for critical sections (open git
/// locks, SQLite write transactions, files being written in the workspace); wait
/// for them to close, up to each kind's grace; write the reason to
/// $WFCG_RUN_DIR/stop-reason; SIGTERM every process and wait up to --grace; then
/// freeze + cgroup.kill. --force: cgroup.kill at once, nothing looked at first
/// (the sections reported are those `wfcg status` last saw). Afterwards stale git locks of the dead tree, the run's TMPDIR and
/// cgroup are removed and the host is checked for survivors. Killing a run that
/// already ended succeeds (exit 0) and says how it ended. Exit 1 when processes
/// survived (the run is then `unkillable`; a later kill retries).
///
/// --pid PID kills a workflow that wfcg did not start: its tree is adopted
/// (see `wfcg adopt`: escapees by session, process group and markers, inferred
/// ones included) and killed while still frozen, in one step. Processes of the
/// tree the adoption left alone (one in another run, another user's) and still
/// alive make the kill fail (exit 1), named in its result.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run to kill.
    #[arg(required_unless_present_any = ["stuck", "pid"])]
    pub run_id: Option<String>,
    /// Kill every stuck run (see `wfcg ps --stuck`) instead of one.
    #[arg(long, conflicts_with_all = ["run_id", "pid"])]
    pub stuck: bool,
    /// Kill the tree rooted at PID, started outside wfcg: adopt it (with its
    /// escapees) into a run, then kill that run.
    #[arg(long, value_name = "PID", conflicts_with = "run_id")]
    pub pid: Option<i32>,
    /// With --pid: VAR=VALUE in a process's environment marks it as one of the
    /// tree's escapees, even one started before the root (repeatable).
    #[arg(long = "marker", value_name = "VAR=VALUE", requires = "pid")]
    pub markers: Vec<String>,
    /// With --pid: the id of the run it becomes (e.g. the executor's own).
    #[arg(long = "as", value_name = "ID", requires = "pid")]
    pub as_run_id: Option<String>,
    /// With --stuck: only runs older than DUR.
    #[arg(long, value_name = "DUR", requires = "stuck")]
    pub older_than: Option<String>,
    /// With --stuck: list what would be killed, kill nothing.
    #[arg(long, requires = "stuck")]
    pub dry_run: bool,
    #[command(flatten)]
    pub kill: KillArgs,
    /// Why; recorded with the kill and written to $WFCG_RUN_DIR/stop-reason.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the kill result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A kill's settings as options ([`KillSettings`]): `wfcg kill`'s, and the
/// part of them `wfcg adopt --kill` offers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KillArgs {
    /// Skip SIGTERM and the grace: cgroup.kill at once.
    #[arg(long)]
    pub force: bool,
    /// A force kill resting on the emergency_kill permission: any run, also
    /// unkillable or frozen ones, no waiting for critical sections.
    #[arg(long)]
    pub emergency: bool,
    /// How long processes get after SIGTERM (e.g. 500ms, 5s, 1m) [default: from the template, 5s].
    #[arg(long, value_name = "DUR")]
    pub grace: Option<String>,
    /// How long to wait for an open git lock to close [default: 30s].
    #[arg(long, value_name = "DUR")]
    pub grace_git: Option<String>,
    /// How long to wait for a database write transaction to end [default: 15s].
    #[arg(long, value_name = "DUR")]
    pub grace_db: Option<String>,
    /// How long to wait for files being written in the workspace [default: 10s].
    #[arg(long, value_name = "DUR")]
    pub grace_files: Option<String>,
    /// The most to wait for critical sections in all [default: 60s].
    #[arg(long, value_name = "DUR")]
    pub max_wait: Option<String>,
}

impl KillArgs {
    /// The settings these options ask for; a bad duration names its option.
    pub fn settings(&self) -> Result<KillSettings, Failure> {
        let ms = super::millis_arg;
        Ok(KillSettings {
            mode: KillMode::from_flags(self.force, self.emergency),
            grace_ms: ms("--grace", &self.grace)?,
            grace_git_ms: ms("--grace-git", &self.grace_git)?,
            grace_db_ms: ms("--grace-db", &self.grace_db)?,
            grace_files_ms: ms("--grace-files", &self.grace_files)?,
            max_wait_ms: ms("--max-wait", &self.max_wait)?,
        })
    }
}

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    if let Some(problem) = args.run_id.as_deref().and_then(api::run_id_problem) {
        return Err(Failure::usage(problem));
    }
    let req = KillRequest {
        settings: args.kill.settings()?,
        reason: args.reason.clone(),
    };
    let client = super::client(cli)?;
    let result: KillResult = match (&args.run_id, args.pid) {
        (Some(run_id), _) => client.kill(run_id, &req)?,
        (None, Some(pid)) => kill_pid(&client, args, pid, &req)?,
        (None, None) => return kill_stuck(&client, args, &req),
    };
    if args.json {
        crate::output::json(&result)?;
    } else {
        let took = if result.already_ended {
            String::new()
        } else {
            format!(" in {:.0} ms", result.duration_ms)
        };
        outln!("{}{took}", Shown(&result.message))?;
    }
    Ok(if result.success {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// `wfcg kill --pid`: adopt the tree and kill it (one request); the kill result.
fn kill_pid(
    client: &Client,
    args: &Args,
    pid: i32,
    req: &KillRequest,
) -> Result<KillResult, Failure> {
    let adopt = api::AdoptRequest {
        pid: Some(pid),
        run_id: args.as_run_id.clone(),
        reason: req.reason.clone(),
        markers: args.markers.clone(),
        kill: true,
        settings: req.settings.clone(),
        ..Default::default()
    };
    let adopted = client.adopt(super::adopt::check(&adopt)?)?;
    if !args.json && !adopted.already_adopted {
        let inferred = if adopted.inferred_markers.is_empty() {
            String::new()
        } else {
            format!(
                " (inferred markers: {})",
                adopted.inferred_markers.join(", ")
            )
        };
        crate::output::errln!(
            "adopted {} processes of pid {pid} as run {}{}",
            adopted.members.len(),
            Shown(&adopted.run_id),
            Shown(&inferred)
        );
    }
    match adopted.kill {
        Some(result) => Ok(result),
        // Found in a run already: kill that run.
        None => Ok(client.kill(&adopted.run_id, req)?),
    }
}

/// `wfcg kill --stuck`: every stuck run (older than --older-than), each killed at
/// once in its own thread. Exit 0 when all ended (or none was stuck), 1 otherwise.
fn kill_stuck(client: &Client, args: &Args, req: &KillRequest) -> Result<i32, Failure> {
    let older = match &args.older_than {
        Some(d) => super::duration_arg("--older-than", d)?.as_secs_f64(),
        None => 0.0,
    };
    let runs = client.runs(api::RunsQuery {
        stuck: true,
        ..Default::default()
    })?;
    let runs: Vec<RunInfo> = runs.into_iter().filter(|r| r.age_secs >= older).collect();
    if args.dry_run || runs.is_empty() {
        if args.json {
            crate::output::json(&runs)?;
        } else if runs.is_empty() {
            outln!("no stuck runs")?;
        }
        for r in runs.iter().filter(|_| !args.json) {
            outln!(
                "would kill {}: {}",
                Shown(&r.run_id),
                Shown(r.stuck.as_deref().unwrap_or("stuck"))
            )?;
        }
        return Ok(exit::OK);
    }
    let socket = client.socket().to_path_buf();
    let timeout = client.timeout();
    let results: Vec<Result<KillResult, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = runs
            .iter()
            .map(|r| {
                let socket = socket.clone();
                let mut req = req.clone();
                req.reason.get_or_insert_with(|| {
                    format!("stuck: {}", r.stuck.as_deref().unwrap_or("past a deadline"))
                });
                s.spawn(move || {
                    Client::new(&socket)
                        .with_timeout(timeout)
                        .kill(&r.run_id, &req)
                        .map_err(|e| format!("{}: {e}", r.run_id))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("kill thread panicked".into()))
            })
            .collect()
    });
    let mut failed = 0;
    for res in &results {
        match res {
            Ok(r) => {
                failed += usize::from(!r.success);
                if !args.json {
                    outln!("{}", Shown(&r.message))?;
                }
            }
            Err(e) => {
                failed += 1;
                crate::output::errln!("wfcg: {}", Shown(e));
            }
        }
    }
    if args.json {
        let ok: Vec<&KillResult> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        crate::output::json(&ok)?;
    }
    Ok(if failed == 0 { exit::OK } else { exit::FAILED })
}
