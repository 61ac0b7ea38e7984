//! The burst benchmark (`cargo bench --bench burst`, or `scripts/bench-scale`):
//!
//! 1. starts: `wfcg run --detach` of 1000 idle runs in a loop, each start timed
//!    (the first hundred against the last: does a start get slower as runs pile
//!    up?), against spawning `true`;
//! 2. many at once: 100 runs of 100 processes each, killed by one
//!    `wfcg kill --stuck --force` (they are stuck: initializing past 80% of their
//!    init timeout), and another 100 by 100 concurrent `wfcg kill --force RUN`;
//!    both against the kernel's floor, `cgroup.kill` of 100 bare cgroups of 100
//!    processes at once (their common parent), measured in the same run.
//!
//! Not a timed test: it prints figures, ratios and their targets (met or not);
//! its exit status says only whether the benchmark itself ran. 1,000 runs
//! killed at once: `scripts/bench-scale at-once`.
//! Needs root and cgroup2. Environment: `WFCG_BENCH_STARTS` (default 1000),
//! `WFCG_BENCH_BURST_RUNS` (100), `WFCG_BENCH_BURST_PROCS` (100),
//! `WFCG_BENCH_STUCK_INIT` (seconds of init timeout of the stuck runs, default 60:
//! they are stuck from 80% of it on, and all must have started by then).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "common/harness.rs"]
mod harness;
#[path = "common/trees.rs"]
mod trees;
#[path = "../tests/it/util.rs"]
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use trees::{
    BareRoot, MARK_ENV, env_num, fmt_stats, loadavg, marked, med, start_tree_run, tree_script,
    wait_for_tree,
};
use util::TestAgent;
use wfcg::cgroup::{self, Cgroup};

fn main() {
    harness::main(inner);
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn inner() {
    let starts = env_num("WFCG_BENCH_STARTS", 1000);
    let runs = env_num("WFCG_BENCH_BURST_RUNS", 100).max(1);
    let procs = env_num("WFCG_BENCH_BURST_PROCS", 100).max(2);
    let init_secs = env_num("WFCG_BENCH_STUCK_INIT", 60).max(5);
    let load_before = loadavg();
    println!(
        "wfcg burst benchmark: {} CPUs, load average at start {load_before:.2}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    if starts > 0 {
        starts_in_a_loop(starts);
    }
    if runs > 0 {
        many_at_once(runs, procs, init_secs);
    }

    trees::warn_if_busy(load_before);
}

/// `wfcg run --detach` of `n` idle runs one after the other, each timed.
fn starts_in_a_loop(n: usize) {
    let agent = TestAgent::start();
    let time = |mut cmd: Command| {
        let t = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .expect("spawning");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ms_since(t)
    };
    let plain: Vec<f64> = (0..20).map(|_| time(Command::new("true"))).collect();
    eprintln!("starting {n} runs ...");
    let marker = util::marker("bench-starts");
    let t = Instant::now();
    let each: Vec<f64> = (0..n)
        .map(|_| {
            let mut cmd = agent.wfcg();
            cmd.args([
                "run",
                "--detach",
                "-q",
                "--init-timeout",
                "0",
                "--timeout",
                "0",
                "--",
                "sleep",
                "100000",
            ])
            .env(MARK_ENV, &marker);
            time(cmd)
        })
        .collect();
    let total = t.elapsed().as_secs_f64();
    let live = marked(&marker);
    let head = &each[..each.len().min(100)];
    let tail = &each[each.len().saturating_sub(100)..];
    println!("\nStarting {n} runs in a loop (`wfcg run --detach -q -- sleep`), ms");
    println!(
        "  all {n}              {} ; total {total:.1} s ({:.1} runs/s)",
        fmt_stats(&each),
        n as f64 / total
    );
    println!("  first 100            {}", fmt_stats(head));
    println!(
        "  last 100             {}   last/first {:.2}",
        fmt_stats(tail),
        med(tail) / med(head)
    );
    println!(
        "  `true` alone         {}   wfcg/true {:.1}",
        fmt_stats(&plain),
        med(&each) / med(&plain)
    );
    println!("  processes alive      {live} (each run: its supervisor and its `sleep`)");
    // Dropping the agent kills every run below its cgroup root.
}

/// Starts `runs` detached runs of `procs` processes (sh and its sleeps) whose
/// init timeout is `init_secs`; returns their ids once every tree is complete.
fn start_trees(
    agent: &TestAgent,
    runs: usize,
    procs: usize,
    init: &str,
    marker: &str,
) -> Vec<String> {
    let ids: Vec<String> = (0..runs)
        .map(|_| start_tree_run(agent, procs, marker, &["--init-timeout", init]))
        .collect();
    for id in &ids {
        // The tree and the run's supervisor.
        wait_for_tree(&agent.run_cgroup(id), procs + 1, procs);
    }
    ids
}

/// What is left of a burst: processes carrying the marker, and run cgroups.
fn leftovers(agent: &TestAgent, ids: &[String], marker: &str) -> (usize, usize) {
    let cgroups = ids
        .iter()
        .filter(|id| agent.run_cgroup(id).exists())
        .count();
    (marked(marker), cgroups)
}

fn many_at_once(runs: usize, procs: usize, init_secs: usize) {
    let total = runs * procs;
    println!("\n{runs} runs of {procs} processes ({total} processes) killed at once");

    // The floor: the same trees in bare cgroups below one parent, one cgroup.kill.
    let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
    let root = BareRoot::create(&mount);
    let parent = root.0.child("burst");
    parent.create_new().expect("creating a bare cgroup");
    let marker = util::marker("bench-raw");
    let mut children = Vec::new();
    for i in 0..runs {
        let cg: Cgroup = parent.child(&format!("t{i}"));
        cg.create_new().expect("creating a bare cgroup");
        let script = format!(
            "echo $$ > '{}' || exit 111; {}",
            cg.path().join(cgroup::CGROUP_PROCS).display(),
            tree_script(procs)
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .env(MARK_ENV, &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting sh");
        wait_for_tree(&cg, procs, procs);
        children.push(child);
    }
    let t = Instant::now();
    parent.kill().expect("cgroup.kill");
    let emptied = parent
        .wait_unpopulated(Duration::from_secs(60))
        .expect("waiting for populated 0");
    let raw_ms = ms_since(t);
    assert!(emptied, "cgroup.kill did not empty the bare cgroups");
    for mut c in children {
        let _ = c.wait();
    }
    let raw_left = marked(&marker);
    println!(
        "  raw: cgroup.kill of their common parent + wait   {raw_ms:9.1} ms  survivors {raw_left}"
    );
    drop(root);

    // `wfcg kill --stuck --force`.
    let agent = TestAgent::start();
    let init = format!("{init_secs}s");
    let marker = util::marker("bench-stuck");
    let t0 = Instant::now();
    let ids = start_trees(&agent, runs, procs, &init, &marker);
    let started = t0.elapsed();
    let stuck_from = Duration::from_secs(init_secs as u64) * 4 / 5;
    if started >= stuck_from {
        println!(
            "  kill --stuck: starting the runs took {:.1} s, past 80% of their init timeout: \
             raise WFCG_BENCH_STUCK_INIT",
            started.as_secs_f64()
        );
    } else {
        eprintln!(
            "started {runs} runs in {:.1} s; waiting for them to be stuck ...",
            started.as_secs_f64()
        );
        let all_stuck = util::wait_until(Duration::from_secs(init_secs as u64), || {
            let out = agent.cli(&["ps", "--stuck", "--json"]);
            serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
                .is_ok_and(|v| v.len() >= runs)
        });
        assert!(all_stuck, "the runs did not all turn stuck");
        let t = Instant::now();
        let out = agent.cli(&["kill", "--stuck", "--force"]);
        let ms = ms_since(t);
        let (left, cgroups) = leftovers(&agent, &ids, &marker);
        println!(
            "  wfcg kill --stuck --force                       {ms:9.1} ms  survivors {left}, \
             run cgroups left {cgroups}, exit {:?}   wfcg/raw {:.2}",
            out.status.code(),
            ms / raw_ms
        );
        println!(
            "  target: kill --stuck --force within 2x the raw cgroup.kill, 0 survivors: {}",
            if ms <= 2.0 * raw_ms && left == 0 && out.status.success() {
                "met"
            } else {
                "NOT MET"
            }
        );
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
    }
    drop(agent);

    // 100 concurrent `wfcg kill --force RUN`.
    let agent = TestAgent::start();
    let marker = util::marker("bench-concurrent");
    let ids = start_trees(&agent, runs, procs, "0", &marker);
    let t = Instant::now();
    let kills: Vec<_> = ids
        .iter()
        .map(|id| {
            agent
                .wfcg()
                .args(["kill", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning wfcg kill")
        })
        .collect();
    let failed = kills
        .into_iter()
        .map(|c| c.wait_with_output().expect("waiting for wfcg kill"))
        .filter(|o| !o.status.success())
        .inspect(|o| eprintln!("{}", String::from_utf8_lossy(&o.stderr)))
        .count();
    let ms = ms_since(t);
    let (left, cgroups) = leftovers(&agent, &ids, &marker);
    println!(
        "  {runs} concurrent wfcg kill --force                {ms:9.1} ms  survivors {left}, \
         run cgroups left {cgroups}, failed {failed}   wfcg/raw {:.2}",
        ms / raw_ms
    );
    println!(
        "  target: {runs} runs killed at once in < 2 s: {}",
        if ms < 2000.0 { "met" } else { "NOT MET" }
    );
    println!(
        "  target: {runs} runs killed at once within 2x the raw cgroup.kill, 0 survivors: {}",
        if ms <= 2.0 * raw_ms && left == 0 && failed == 0 {
            "met"
        } else {
            "NOT MET"
        }
    );
}
