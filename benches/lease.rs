//! The lease benchmark (`cargo bench --bench lease`): how long after a run's
//! lease runs out its whole tree is dead, against the same tree ended by its
//! total timeout (the same automatic kill, set off by another deadline) in the
//! same run.
//!
//! Each sample: a tree of 20 processes (10% `setsid`) that respects SIGTERM,
//! started with `--lease 1s` and renewed once (`wfcg lease --json`, whose answer
//! names the expiry), or with `--timeout 2s` (`wfcg status --json` names the
//! deadline); the time from that instant, as the agent wrote it, to `populated 0`
//! of the run's payload cgroup (inotify on `cgroup.events`). Survivors are
//! counted by a marker scan after each kill.
//!
//! Not a timed test: it prints figures; its exit status says only whether the
//! benchmark itself ran. Needs root and cgroup2, like the integration tests.
//! Environment: `WFCG_BENCH_REPS` (samples per figure, default 10),
//! `WFCG_BENCH_PROCS` (processes per tree, default 20).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "../tests/it/util.rs"]
mod util;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/trees.rs"]
mod trees;

use std::time::Duration;

use chrono::{DateTime, Utc};
use trees::{env_num, fmt_stats, loadavg, marked, med, start_tree_run, wait_for_tree};

fn main() {
    harness::main(inner);
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a time"))
        .expect("an RFC 3339 time")
        .into()
}

/// One sample: milliseconds from the deadline (`lease`: the lease's expiry after
/// one renewal; else the total timeout) to the tree dead, and the survivors.
fn sample(agent: &util::TestAgent, n: usize, lease: bool, i: usize) -> (f64, usize) {
    let marker = util::marker(if lease {
        "bench-lease"
    } else {
        "bench-timeout"
    });
    let flags: &[&str] = if lease {
        &["--init-timeout", "0", "--lease", "1s"]
    } else {
        &["--init-timeout", "0", "--timeout", "10s"]
    };
    let id = start_tree_run(agent, n, &marker, flags);
    let payload = agent.run_cgroup(&id).child("payload");
    wait_for_tree(&payload, n, n);
    let deadline = if lease {
        let out = agent.cli(&["lease", "--json", &id]);
        assert!(out.status.success(), "wfcg lease {id} failed (sample {i})");
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        time(&answer["expires_at"])
    } else {
        time(&agent.status(&id)["total_deadline"])
    };
    assert!(
        deadline > Utc::now(),
        "run {id}: its deadline passed before the tree had started (a loaded machine?)"
    );
    // The agent removes the cgroup right after `populated 0`: a read that finds
    // it gone (ENODEV, ENOENT) sees it dead, a few milliseconds late at most.
    let dead = payload.wait_unpopulated(Duration::from_secs(30));
    let at = Utc::now();
    assert!(
        matches!(dead, Ok(true)) || payload.empty().unwrap_or(false) || !payload.exists(),
        "run {id} not seen dead 30 s after its deadline: {dead:?}"
    );
    // The kill's record is written after its cleanup: survivors are counted then.
    util::wait_until(Duration::from_secs(30), || {
        agent.status(&id)["status"] == "timed_out"
    });
    let survivors = marked(&marker);
    let status = agent.status(&id);
    let want = if lease {
        "lease expired: its executor stopped renewing it"
    } else {
        "total timeout"
    };
    assert!(
        status["end_reason"]
            .as_str()
            .is_some_and(|r| r.starts_with(want)),
        "sample {i}, lease {lease}: {status:#}"
    );
    (
        (at - deadline).num_microseconds().unwrap_or(0) as f64 / 1e3,
        survivors,
    )
}

fn inner() {
    let reps = env_num("WFCG_BENCH_REPS", 10).max(1);
    let n = env_num("WFCG_BENCH_PROCS", 20).max(2);
    let load = loadavg();
    let agent = util::TestAgent::start();
    println!(
        "lease lapse -> tree dead, {reps} samples of a {n}-process tree ({} build)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let mut lease = Vec::new();
    let mut timeout = Vec::new();
    let mut survivors = 0;
    // Interleaved, so a change in the machine's load falls on both alike.
    for i in 0..reps {
        let (ms, left) = sample(&agent, n, true, i);
        lease.push(ms);
        survivors += left;
        let (ms, left) = sample(&agent, n, false, i);
        timeout.push(ms);
        survivors += left;
    }
    println!(
        "  lease expiry -> dead        {} ms (median [min-max])",
        fmt_stats(&lease)
    );
    println!(
        "  total timeout -> dead       {} ms (baseline)",
        fmt_stats(&timeout)
    );
    println!(
        "  ratio of the medians        x{:.2}",
        med(&lease) / med(&timeout)
    );
    println!("  survivors                   {survivors}");
    trees::warn_if_busy(load);
}
