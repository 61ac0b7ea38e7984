//! Safe-kill benchmark: the seed's figures for the graceful sequence.
//!
//! For a tree of 1000 processes (default; `WFCG_BENCH_PROCS`) that respects
//! SIGTERM: a graceful `wfcg kill` end to end and its phases (freeze + scan,
//! SIGTERM, the wait, cleanup), a `--force` kill, and the cost of one
//! critical-section scan of the 1000 processes (the library's scan, in this
//! process, median of 20) against reading their `cgroup.procs` alone as the
//! baseline. Run with `cargo bench --bench safe_kill` (root, cgroup2).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "../tests/it/util.rs"]
mod util;

use std::path::Path;
use std::time::Instant;

use util::TestAgent;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn tree(agent: &TestAgent, n: usize) -> String {
    let script = format!("for i in $(seq {}); do sleep 1000 & done; wait", n - 2);
    let run = agent.start_run(&["--init-timeout", "0"], &script);
    assert!(agent.wait_procs(&run.id, n), "tree of {n} did not start");
    run.id
}

fn kill(agent: &TestAgent, id: &str, force: bool) -> serde_json::Value {
    let mut args = vec!["kill", "--json", id];
    if force {
        args.push("--force");
    }
    let t = Instant::now();
    let out = agent.cli(&args);
    let wall = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["wall_ms"] = wall.into();
    v
}

fn phase(v: &serde_json::Value, name: &str) -> f64 {
    v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .map(|p| p["duration_ms"].as_f64().unwrap_or(0.0))
        .sum()
}

fn main() {
    if !util::privileged() {
        return;
    }
    let n: usize = std::env::var("WFCG_BENCH_PROCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let reps = 5;
    let agent = TestAgent::start();

    // The scan alone, on a live tree.
    let id = tree(&agent, n);
    let cg = agent.run_cgroup(&id);
    let pids = cg.procs_recursive().unwrap();
    let proc_root = Path::new("/proc");
    let scope = wfcg::sections::Scope {
        pids: pids.clone(),
        workspace: Some(std::env::temp_dir()),
        exclude: vec![],
        inherited_from: None,
        // As the agent scans: also for git locks held with no fd.
        since: Some(std::time::SystemTime::now()),
        owner: None,
        creators: None,
    };
    let scan_ms = median(
        (0..20)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(wfcg::sections::scan(proc_root, &scope));
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    let procs_ms = median(
        (0..20)
            .map(|_| {
                let t = Instant::now();
                std::hint::black_box(cg.procs_recursive().unwrap());
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    );
    kill(&agent, &id, true);

    let mut graceful = Vec::new();
    for _ in 0..reps {
        let id = tree(&agent, n);
        graceful.push(kill(&agent, &id, false));
    }
    let mut force = Vec::new();
    for _ in 0..reps {
        let id = tree(&agent, n);
        force.push(kill(&agent, &id, true));
    }
    let m = |v: &[serde_json::Value], f: &dyn Fn(&serde_json::Value) -> f64| {
        median(v.iter().map(f).collect())
    };
    let wall = |v: &serde_json::Value| v["wall_ms"].as_f64().unwrap_or(0.0);
    println!(
        "safe kill of a tree of {} processes that respects SIGTERM (median of {reps})",
        pids.len()
    );
    println!(
        "  graceful kill, end to end   {:>8.1} ms   (required < 5 s)",
        m(&graceful, &wall)
    );
    for name in ["scan", "term", "term_wait", "kill", "cleanup"] {
        println!(
            "    phase {name:<10}          {:>8.1} ms",
            m(&graceful, &|v| phase(v, name))
        );
    }
    println!(
        "  force kill, end to end      {:>8.1} ms   (required < 2 s)",
        m(&force, &wall)
    );
    println!(
        "    phase cleanup             {:>8.1} ms   (required < 10 s)",
        m(&force, &|v| phase(v, "cleanup"))
    );
    println!(
        "  one critical-section scan   {scan_ms:>8.2} ms   (reading cgroup.procs alone: {procs_ms:.2} ms, ratio {:.0})  target < 50 ms",
        scan_ms / procs_ms
    );
}
