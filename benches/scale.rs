//! Scale benchmark: the agent with many idle runs.
//!
//! Starts N idle runs (default 1000; `WFCG_BENCH_RUNS`), a tenth of them sending a
//! heartbeat every second, then measures over a window (default 60 s;
//! `WFCG_BENCH_SECS`): the agent's CPU use as a percentage of one core and its RSS
//! (the monitor's overhead), and the cost of one `/metrics` scrape and one
//! `wfcg ps --json` (median of 20 each), against the same with no runs as the
//! baseline. Run with `cargo bench --bench scale` (root, cgroup2).
//! `WFCG_BENCH_STALL=2m` gives every run that stall timeout (each then has its
//! cgroup sampled on the deadline queue every 30 s): compare the CPU with a run
//! without it.
//! `WFCG_BENCH_BASELINE=PATH` runs a second agent, the executable at PATH (an
//! older build), with the same runs in the same window, and prints its CPU and
//! RSS and the ratio: an A/B in the same conditions.

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "../tests/it/util.rs"]
mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{TestAgent, WFCG};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// utime + stime of a process (or thread) from its `stat` file, in seconds.
fn cpu_seconds_of(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).unwrap_or_default();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    wfcg::procfs::parse_stat_cpu_ticks(&stat).unwrap_or(0) as f64 / ticks
}

fn cpu_seconds(pid: i32) -> f64 {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of each thread of a process, by thread name.
fn thread_cpu(pid: i32) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let secs = cpu_seconds_of(&t.path().join("stat").to_string_lossy());
        *out.entry(comm.trim().to_string()).or_insert(0.0) += secs;
    }
    out
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn median_ms(n: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[n / 2]
}

/// One `GET path` over the socket, in this process (no client to start).
fn get(agent: &TestAgent, path: &str) -> f64 {
    use std::io::{Read, Write};
    median_ms(20, || {
        let mut sock = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
        write!(
            sock,
            "GET {path} HTTP/1.1\r\nHost: wfcg\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        sock.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    })
}

fn scrape(agent: &TestAgent) -> f64 {
    get(agent, "/metrics")
}

fn ps_json(agent: &TestAgent) -> f64 {
    median_ms(20, || {
        let out = agent.cli(&["ps", "--json"]);
        assert!(out.status.success());
    })
}

fn main() {
    if !util::privileged() {
        return;
    }
    let runs = env_or("WFCG_BENCH_RUNS", 1000) as usize;
    let secs = env_or("WFCG_BENCH_SECS", 60);
    let stall = std::env::var("WFCG_BENCH_STALL").ok();
    let agent = TestAgent::start();
    let pid = agent.pid().expect("agent pid");
    let baseline = std::env::var_os("WFCG_BENCH_BASELINE").map(|bin| {
        let mut b = TestAgent::unstarted();
        b.agent_bin = Some(bin.into());
        b.spawn();
        b
    });
    let agents: Vec<&TestAgent> = std::iter::once(&agent).chain(baseline.as_ref()).collect();

    // Baselines with no runs.
    let scrape_empty = scrape(&agent);
    let ps_empty = ps_json(&agent);
    let true_spawn = median_ms(20, || {
        assert!(Command::new("true").status().unwrap().success());
    });
    let t0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let idle_empty = (cpu_seconds(pid) - t0) / 5.0 * 100.0;

    eprintln!("starting {runs} idle runs ...");
    let t = Instant::now();
    let beat = format!("while :; do {WFCG} notify --heartbeat; sleep 1; done");
    for (i, agent) in (0..runs).flat_map(|i| agents.iter().map(move |a| (i, a))) {
        let script = if i % 10 == 0 {
            beat.as_str()
        } else {
            "exec sleep 100000"
        };
        let mut args = vec!["run", "--detach", "--init-timeout", "0", "--timeout", "0"];
        if i % 10 == 0 {
            args.extend(["--watchdog", "5s"]);
        }
        if let Some(stall) = &stall {
            args.extend(["--stall-timeout", stall.as_str()]);
        }
        args.extend(["--", "sh", "-c", script]);
        let out = agent
            .wfcg()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "run {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let start_secs = t.elapsed().as_secs_f64();
    eprintln!("started in {start_secs:.1} s; measuring {secs} s ...");
    std::thread::sleep(Duration::from_secs(3));

    let pids: Vec<i32> = agents.iter().map(|a| a.pid().expect("agent pid")).collect();
    let c0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
    let threads0: Vec<_> = pids.iter().map(|&p| thread_cpu(p)).collect();
    std::thread::sleep(Duration::from_secs(secs));
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&c0)
        .map(|(&p, c0)| (cpu_seconds(p) - c0) / secs as f64 * 100.0)
        .collect();
    let threads1: Vec<_> = pids.iter().map(|&p| thread_cpu(p)).collect();
    let rss: Vec<f64> = pids.iter().map(|&p| rss_mib(p)).collect();
    let (cpu_pct, rss_a) = (cpu[0], rss[0]);
    let scrape_full = scrape(&agent);
    let ps_full = ps_json(&agent);
    let list_full = get(&agent, "/v1/runs");

    println!(
        "wfcg agent with {runs} idle runs ({} heartbeating every 1 s), {secs} s window, stall timeout {}",
        runs.div_ceil(10),
        stall.as_deref().unwrap_or("off")
    );
    println!(
        "  agent CPU          {cpu_pct:>8.3} % of one core   (no runs: {idle_empty:.3} %)  target < 0.5 %"
    );
    println!(
        "  agent RSS          {rss_a:>8.1} MiB                                   target < 30 MiB"
    );
    if let (Some(b_cpu), Some(b_rss)) = (cpu.get(1), rss.get(1)) {
        println!(
            "  baseline agent ({}, same runs, same window): CPU {b_cpu:.3} % of one core, RSS {b_rss:.1} MiB; this build / baseline: CPU {:.2}, RSS {:.2}",
            std::env::var("WFCG_BENCH_BASELINE").unwrap_or_default(),
            cpu_pct / b_cpu,
            rss_a / b_rss
        );
    }
    println!(
        "  /metrics scrape    {scrape_full:>8.2} ms (no runs: {scrape_empty:.2} ms, ratio {:.1})  target < 20 ms",
        scrape_full / scrape_empty
    );
    println!(
        "  wfcg ps --json     {ps_full:>8.2} ms (no runs: {ps_empty:.2} ms, ratio {:.1}; starting `true` alone: {true_spawn:.2} ms)  target < 20 ms",
        ps_full / ps_empty
    );
    println!("  GET /v1/runs        {list_full:>8.2} ms (the agent's part of ps --json)");
    for (which, (t0, t1)) in threads0.iter().zip(&threads1).enumerate() {
        let who = if which == 0 { "" } else { "baseline " };
        for (name, t1) in t1 {
            let used = t1 - t0.get(name).copied().unwrap_or(0.0);
            if used > 0.0 {
                println!(
                    "    {who}thread {name:<20} {:>6.3} % of one core",
                    used / secs as f64 * 100.0
                );
            }
        }
    }
    println!(
        "  starting the runs  {start_secs:>8.1} s ({:.1} ms each)",
        start_secs * 1e3 / (runs * agents.len()) as f64
    );
    // Dropping the agent kills every run under its cgroup root.
}
