//! `wfcg ps` and `wfcg status`: what runs there are and how they are doing.

use std::io::IsTerminal;

use crate::api::{self, RunInfo, time};
use crate::exit::{self, Failure};
use crate::output::{Shown, outln, shown_or_dash};
use chrono::{DateTime, Utc};

use super::table::{self, one_line};

/// List runs: live ones, or all with --all.
#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Include runs that have ended.
    #[arg(long, short)]
    pub all: bool,
    /// Only stuck runs: initializing for 80% of their init timeout, a heartbeat
    /// overdue, near their total timeout, restarting one command again and
    /// again while initializing, or retrying (their newest output line repeats
    /// an earlier one with only numbers changed, and nothing else is new).
    #[arg(long)]
    pub stuck: bool,
    /// Print JSON: the agent's answer as it came (one line), or indented on a terminal.
    #[arg(long)]
    pub json: bool,
}

/// Show one run: status, what it waits for, its deadlines and last progress,
/// processes (of its command, not counting `wfcg run`), CPU time, command, how
/// it ended.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    pub run_id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// The columns of `wfcg ps` (their least widths as they always were). PROCS
/// counts the payload (the command and all it started), not the supervisor.
const PS_COLUMNS: [table::Column; 11] = [
    table::left("RUN", 20),
    table::left("WORKFLOW", 12),
    table::left("OWNER", 10),
    table::left("STATUS", 10),
    table::right("PID", 8),
    table::right("PROCS", 6),
    table::right("AGE", 8),
    table::right("CPU", 8),
    table::left("PROGRESS", 12),
    table::left("DEADLINE", 12),
    table::left("COMMAND", 0),
];

/// `output 12s` (the kind of the last progress and how long ago), or `-`.
fn progress_cell(r: &RunInfo, now: chrono::DateTime<chrono::Utc>) -> String {
    r.progress_ago(now)
        .filter(|_| r.status.is_live())
        .map_or("-".into(), |(kind, ago)| {
            format!("{kind} {}", crate::duration::short(ago))
        })
}

/// `stall 48s` (the nearest deadline and the time left; `stall -2s` when
/// past), or `-`.
fn deadline_cell(r: &RunInfo, now: chrono::DateTime<chrono::Utc>) -> String {
    r.next_deadline(now).map_or("-".into(), |(name, left)| {
        let sign = if left < 0.0 { "-" } else { "" };
        format!("{name} {sign}{}", crate::duration::short(left.abs()))
    })
}

fn cpu(usec: Option<u64>) -> String {
    usec.map(|u| format!("{:.2}s", u as f64 / 1e6))
        .unwrap_or_else(|| "-".into())
}

pub fn ps(cli: &super::Cli, args: &PsArgs) -> Result<i32, Failure> {
    let client = super::client(cli)?;
    let query = api::RunsQuery {
        all: args.all,
        stuck: args.stuck,
    };
    if args.json && !std::io::stdout().is_terminal() {
        // For a program: the agent's JSON as it came (checked to be JSON), not
        // parsed into records and written again, which took longer than the
        // agent's answer at a thousand runs. On a terminal it is indented below.
        let runs = client.runs_json(query)?;
        crate::output::line(runs.get())?;
        return Ok(exit::OK);
    }
    let runs = client.runs(query)?;
    if args.json {
        crate::output::json(&runs)?;
        return Ok(exit::OK);
    }
    let runs = nested(runs);
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(depth, r)| {
            vec![
                format!("{}{}", "  ".repeat(*depth), r.run_id),
                one_line(r.workflow.as_deref().unwrap_or("-")),
                one_line(&r.owner_display()),
                r.status.to_string(),
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                r.processes.to_string(),
                crate::duration::short(r.age_secs),
                cpu(r.cpu_usec),
                progress_cell(r, now),
                deadline_cell(r, now),
                one_line(&r.command.join(" ")),
            ]
        })
        .collect();
    let widths = table::widths(&PS_COLUMNS, &rows);
    outln!("{}", table::header(&PS_COLUMNS, &widths))?;
    for ((_, r), row) in runs.iter().zip(&rows) {
        outln!("{}", table::line(&PS_COLUMNS, &widths, row))?;
        for note in notes(r) {
            outln!("{:w$} ! {}", "", Shown(note), w = widths[0])?;
        }
        if r.status == api::RunStatus::Initializing
            && let Some(cond) = &r.ready_when
        {
            outln!("{:w$}   waits for {}", "", Shown(cond), w = widths[0])?;
        }
    }
    // Workflows whose new runs are refused (exit 6), so a missing run is explained.
    let breakers = client.breakers().unwrap_or_default();
    for b in breakers.iter().filter(|b| b.open) {
        outln!("{}", super::breaker::describe(b))?;
    }
    Ok(exit::OK)
}

/// The line under `ready:` of a run whose first bytes of output met its ready
/// condition: `ready at +0.3 s on first output: a banner?`.
fn ready_on_first_output(r: &RunInfo, ready_at: DateTime<Utc>) -> String {
    let after = match r.started_at {
        Some(start) => {
            let ms = (ready_at - start).num_milliseconds().max(0);
            format!(" at +{}.{} s", ms / 1000, ms % 1000 / 100)
        }
        None => String::new(),
    };
    format!("ready{after} on first output: a banner?")
}

/// Why a run is stuck, the loop it is suspected of and the retry loop it is
/// in, each line once (either is often the reason it counts as stuck).
fn notes(r: &RunInfo) -> impl Iterator<Item = &String> {
    let other = |l: &&String| r.stuck.as_ref() != Some(*l);
    let looping = r.loop_suspected.as_ref().filter(other);
    let retrying = r.retrying.as_ref().filter(other);
    r.stuck.iter().chain(looping).chain(retrying)
}

/// Runs in their order, each followed by the runs started inside it (its
/// children, and theirs), with their depth; a child whose parent is not listed
/// stands on its own.
fn nested(runs: Vec<RunInfo>) -> Vec<(usize, RunInfo)> {
    use std::collections::{HashMap, HashSet};
    let ids: HashSet<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    let mut children: HashMap<String, Vec<RunInfo>> = HashMap::new();
    let mut top = Vec::new();
    for r in runs {
        match r.parent_run_id.clone().filter(|p| ids.contains(p)) {
            Some(p) => children.entry(p).or_default().push(r),
            None => top.push(r),
        }
    }
    let mut out = Vec::new();
    let mut stack: Vec<(usize, RunInfo)> = top.into_iter().rev().map(|r| (0, r)).collect();
    while let Some((depth, r)) = stack.pop() {
        for c in children
            .remove(&r.run_id)
            .unwrap_or_default()
            .into_iter()
            .rev()
        {
            stack.push((depth + 1, c));
        }
        out.push((depth, r));
    }
    // A cycle is impossible (a parent is recorded before its child); were one
    // stored by hand, its runs are still listed.
    out.extend(children.into_values().flatten().map(|r| (0, r)));
    out
}

pub fn status(cli: &super::Cli, args: &StatusArgs) -> Result<i32, Failure> {
    if let Some(problem) = api::run_id_problem(&args.run_id) {
        return Err(Failure::usage(problem));
    }
    let client = super::client(cli)?;
    let r = client.run(&args.run_id)?;
    if args.json {
        crate::output::json(&r)?;
        return Ok(exit::OK);
    }
    // Every string of the run is shown escaped (crate::output::Shown).
    let opt = shown_or_dash;
    outln!("run:        {}", Shown(&r.run_id))?;
    outln!("workflow:   {}", opt(&r.workflow))?;
    outln!(
        "owner:      {} (uid {})",
        Shown(&r.owner_display()),
        r.owner_uid
    )?;
    outln!("status:     {}", r.status)?;
    if let Some(t) = &r.template {
        outln!("template:   {}", Shown(t))?;
    }
    if let Some(t) = &r.status_text {
        outln!("says:       {}", Shown(t))?;
    }
    if let Some(t) = r.ready_at {
        outln!("ready:      {}", time::format(&t))?;
        if r.ready_on.as_deref() == Some(crate::api::READY_ON_FIRST_OUTPUT) {
            outln!("            {}", ready_on_first_output(&r, t))?;
        }
    }
    if let Some(t) = &r.last_heartbeat {
        outln!("heartbeat:  {}", time::format(t))?;
    }
    if let Some(cond) = &r.ready_when {
        outln!("ready when: {}", Shown(cond))?;
    }
    let now = chrono::Utc::now();
    if let Some((kind, ago)) = r.progress_ago(now).filter(|_| r.status.is_live()) {
        outln!(
            "progress:   {} ago ({kind}), at {}",
            crate::duration::short(ago),
            time::format_or(r.last_progress, "-")
        )?;
    }
    for (name, d) in [
        ("init by", &r.init_deadline),
        ("stall by", &r.stall_deadline),
        ("end by", &r.total_deadline),
        ("next beat", &r.watchdog_deadline),
    ] {
        if let Some(d) = d.as_ref().filter(|_| r.status.is_live()) {
            outln!("{:<11} {}", format!("{name}:"), time::format(d))?;
        }
    }
    if let Some(ms) = r.lease_ms {
        let every = crate::duration::format(std::time::Duration::from_millis(ms));
        let last = time::format_or(r.lease_renewed_at, "never");
        outln!("lease:      {every}, last renewed {last}")?;
        if let Some(d) = r.lease_expires_at.as_ref().filter(|_| r.status.is_live()) {
            outln!(
                "lease ends: {} unless renewed (wfcg lease)",
                time::format(d)
            )?;
        }
    }
    if let Some(w) = &r.waiting_for {
        outln!("waiting:    {}", Shown(w))?;
    }
    for note in notes(&r) {
        outln!("stuck:      {}", Shown(note))?;
    }
    outln!("command:    {}", Shown(&r.command.join(" ")))?;
    outln!(
        "pid:        {}",
        r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    )?;
    if let Some(parent) = &r.parent_run_id {
        outln!("parent:     {parent} (started inside it; killed with it)")?;
    }
    match r.adopted.as_deref() {
        Some("cgroup") => outln!("adopted:    its cgroup, in place (started outside wfcg)")?,
        Some(_) => outln!("adopted:    pid is its root (started outside wfcg; no supervisor)")?,
        None => {}
    }
    outln!(
        "processes:  {} (its command and all it started)",
        r.processes
    )?;
    outln!("started:    {}", time::format_or(r.started_at, "-"))?;
    outln!("age:        {}", crate::duration::short(r.age_secs))?;
    outln!("cpu:        {}", cpu(r.cpu_usec))?;
    outln!("workspace:  {}", opt(&r.workspace))?;
    if let Some(done) = &r.workspace_cleanup {
        outln!("cleanup:    workspace {}", Shown(done))?;
    }
    outln!("cgroup:     {}", Shown(&r.cgroup))?;
    if let Some(log) = &r.log_path {
        outln!("log:        {}", Shown(log))?;
    }
    if let Some(ended) = &r.ended_at {
        outln!("ended:      {}", time::format(ended))?;
    }
    if let Some(why) = &r.end_reason {
        outln!("end reason: {}", Shown(why))?;
    }
    match (r.exit_code, r.exit_signal) {
        (Some(c), _) => outln!("exit:       status {c}")?,
        (None, Some(s)) => outln!("exit:       signal {s}")?,
        _ => {}
    }
    for sec in &r.sections {
        outln!(
            "critical:   {}: {} held by pid {} ({}) for {:.1} s",
            sec.kind.as_str(),
            Shown(&sec.path),
            sec.pid,
            Shown(&sec.command),
            sec.open_secs
        )?;
    }
    if let Some(k) = &r.kill_result {
        outln!("kill:       {}", Shown(&k.message))?;
        // Why it was killed: for an init timeout, what it was waiting for.
        if let Some(why) = &k.reason {
            outln!("why:        {}", Shown(why))?;
        }
    }
    Ok(exit::OK)
}
