//! Scale benchmark: the agent with many idle runs, and how its costs grow.
//!
//! Starts idle runs on one agent in steps (default 100, then 1,000, then 10,000;
//! `WFCG_BENCH_RUNS=100,1000,10000`), a tenth of them sending a heartbeat every
//! `WFCG_BENCH_BEAT` seconds (default 10: at 10,000 runs, 100 heartbeats a
//! second). At each step, over a window (default 60 s; `WFCG_BENCH_SECS`): the
//! agent's CPU use as a percentage of one core, its RSS, open fds and threads;
//! then the cost of one `/metrics` scrape, one `wfcg ps --json` and one
//! `GET /v1/runs` (median of 20 each). Baselines measured in the same run: the
//! same with no runs; procps `ps -e` of every process on the host (the runs'
//! among them); reading the same cgroup files as a listing (each run's payload
//! `cgroup.procs` and `cpu.stat`) raw, from this process.
//! Run with `cargo bench --bench scale` (root, cgroup2); `scripts/bench-scale
//! scale`. A run is at least two processes (`wfcg run` and `sleep`): it checks
//! `kernel.pid_max` and `kernel.threads-max` first and says what it needs.
//! `WFCG_BENCH_CSV=PATH` also writes the figures as CSV (`scripts/plot-scale`
//! draws them).
//! `WFCG_BENCH_STALL=2m` gives every run that stall timeout (each then has its
//! cgroup sampled on the deadline queue every 30 s): compare the CPU with a run
//! without it.
//! `WFCG_BENCH_AGENT=PATH` runs the agent from the executable at PATH (an
//! earlier build; the CLI stays this build's): a before/after, one run each.
//! `WFCG_BENCH_BASELINE=PATH` runs a second agent, the executable at PATH (an
//! older build), with the same runs in the same window, and prints its CPU and
//! RSS and the ratio: an A/B in the same conditions (twice the processes).

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

/// What the host must give: `runs` runs of `sleep`, a tenth of them a shell
/// loop around `sleep` (each run also has its `wfcg run` supervisor).
fn processes_needed(runs: usize) -> usize {
    runs * 2 + runs.div_ceil(10) * 2
}

fn read_u64(path: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(u64::MAX)
}

/// Tasks (threads included) alive on the host now.
fn tasks_now() -> u64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            let field = s.split_whitespace().nth(3)?;
            field.split_once('/')?.1.parse().ok()
        })
        .unwrap_or(0)
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn threads(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The raw cost of what a listing reads of the kernel: the two cgroup files of
/// every live run (its payload's `cgroup.procs`, its `cpu.stat`), opened, read
/// and closed one after the other by this process.
fn raw_cgroup_read(agent: &TestAgent) -> f64 {
    let runs = agent.cgroup_root.join("runs");
    median_ms(5, || {
        for run in std::fs::read_dir(&runs).unwrap().flatten() {
            let p = run.path();
            let _ = std::fs::read_to_string(p.join("payload/cgroup.procs"));
            let _ = std::fs::read_to_string(p.join("cpu.stat"));
        }
    })
}

/// procps `ps` of every process on the host (the runs' among them): what a
/// listing of the same processes costs without wfcg.
fn procps(n: usize) -> f64 {
    median_ms(n, || {
        let out = Command::new("ps")
            .args(["-e", "-o", "pid,ppid,stat,etime,time,args"])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(out.status.success());
    })
}

/// The figures at one number of live runs.
struct Step {
    runs: usize,
    start_ms: f64,
    cpu: Vec<f64>,
    rss: Vec<f64>,
    fds: usize,
    threads: usize,
    threads_cpu: Vec<(String, f64)>,
    scrape: f64,
    ps: f64,
    list: f64,
    raw: f64,
    procps: f64,
}

/// The figures with no runs: the baselines.
struct Empty {
    cpu: f64,
    rss: f64,
    fds: usize,
    threads: usize,
    scrape: f64,
    ps: f64,
    true_spawn: f64,
}

fn print_step(s: &Step, e: &Empty) {
    let (idle_empty, rss_empty, fds_empty, threads_empty) = (e.cpu, e.rss, e.fds, e.threads);
    let (scrape_empty, ps_empty, true_spawn) = (e.scrape, e.ps, e.true_spawn);
    println!("{} live runs:", s.runs);
    println!(
        "  agent CPU          {:>8.3} % of one core   (no runs: {idle_empty:.3} %)  target ≤ 0.5 %",
        s.cpu[0]
    );
    println!(
        "  agent RSS          {:>8.1} MiB (no runs: {rss_empty:.1})               target ≤ 100 MiB",
        s.rss[0]
    );
    println!(
        "  agent fds/threads  {:>8} / {} (no runs: {fds_empty} / {threads_empty})",
        s.fds, s.threads
    );
    if let (Some(b_cpu), Some(b_rss)) = (s.cpu.get(1), s.rss.get(1)) {
        println!(
            "  baseline agent ({}, same runs, same window): CPU {b_cpu:.3} % of one core, RSS {b_rss:.1} MiB; this build / baseline: CPU {:.2}, RSS {:.2}",
            std::env::var("WFCG_BENCH_BASELINE").unwrap_or_default(),
            s.cpu[0] / b_cpu,
            s.rss[0] / b_rss
        );
    }
    println!(
        "  /metrics scrape    {:>8.2} ms (no runs: {scrape_empty:.2} ms, ratio {:.1})  target ≤ 50 ms",
        s.scrape,
        s.scrape / scrape_empty
    );
    println!(
        "  wfcg ps --json     {:>8.2} ms (no runs: {ps_empty:.2} ms, ratio {:.1}; procps ps -e of the host {:.2} ms, ratio {:.2})  target ≤ 100 ms",
        s.ps,
        s.ps / ps_empty,
        s.procps,
        s.ps / s.procps
    );
    println!(
        "  GET /v1/runs       {:>8.2} ms (the agent's part of ps --json; reading the same cgroup files raw: {:.2} ms, ratio {:.1})",
        s.list,
        s.raw,
        s.list / s.raw
    );
    for (name, pct) in &s.threads_cpu {
        println!("    thread {name:<20} {pct:>6.3} % of one core");
    }
    println!(
        "  starting the runs  {:>8.1} ms each (starting `true`: {true_spawn:.2} ms)",
        s.start_ms
    );
}

/// The figures so far as CSV (rewritten after each step).
fn write_csv(path: &std::path::Path, steps: &[Step], e: &Empty) {
    let (idle_empty, scrape_empty, ps_empty) = (e.cpu, e.scrape, e.ps);
    let mut csv = String::from(
        "runs,cpu_pct,cpu_empty_pct,rss_mib,fds,threads,scrape_ms,scrape_empty_ms,ps_ms,ps_empty_ms,procps_ms,list_ms,raw_cgroup_ms,start_ms\n",
    );
    for s in steps {
        csv.push_str(&format!(
                "{},{:.3},{idle_empty:.3},{:.1},{},{},{:.2},{scrape_empty:.2},{:.2},{ps_empty:.2},{:.2},{:.2},{:.2},{:.2}\n",
                s.runs, s.cpu[0], s.rss[0], s.fds, s.threads, s.scrape, s.ps, s.procps, s.list, s.raw, s.start_ms
            ));
    }
    std::fs::write(path, csv).expect("writing WFCG_BENCH_CSV");
}

fn main() {
    if !util::privileged() {
        return;
    }
    let sizes: Vec<usize> = std::env::var("WFCG_BENCH_RUNS")
        .unwrap_or_else(|_| "100,1000,10000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("WFCG_BENCH_RUNS: numbers, comma-separated")
        })
        .collect();
    let secs = env_or("WFCG_BENCH_SECS", 60);
    let beat = env_or("WFCG_BENCH_BEAT", 10).max(1);
    let stall = std::env::var("WFCG_BENCH_STALL").ok();
    let largest = sizes.iter().copied().max().unwrap_or(0);

    // The host's limits: every run is at least two processes.
    let pid_max = read_u64("/proc/sys/kernel/pid_max");
    let threads_max = read_u64("/proc/sys/kernel/threads-max");
    let agents_n = 1 + usize::from(std::env::var_os("WFCG_BENCH_BASELINE").is_some());
    let need = (processes_needed(largest) * agents_n) as u64;
    let in_use = tasks_now();
    eprintln!(
        "host: pid_max {pid_max}, threads-max {threads_max}, {in_use} tasks now; \
         {largest} runs need about {need} more processes"
    );
    if in_use + need + 1000 > pid_max.min(threads_max) {
        eprintln!(
            "scale: not enough room for {largest} runs: raise kernel.pid_max (and \
             kernel.threads-max) above {} or give fewer WFCG_BENCH_RUNS",
            in_use + need + 1000
        );
        std::process::exit(2);
    }

    let mut agent = TestAgent::unstarted();
    agent.agent_bin = std::env::var_os("WFCG_BENCH_AGENT").map(Into::into);
    agent.spawn();
    let pid = agent.pid().expect("agent pid");
    let baseline = std::env::var_os("WFCG_BENCH_BASELINE").map(|bin| {
        let mut b = TestAgent::unstarted();
        b.agent_bin = Some(bin.into());
        b.spawn();
        b
    });
    let agents: Vec<&TestAgent> = std::iter::once(&agent).chain(baseline.as_ref()).collect();
    let nofile = std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_default();

    // Baselines with no runs.
    let scrape_empty = scrape(&agent);
    let ps_empty = ps_json(&agent);
    let true_spawn = median_ms(20, || {
        assert!(Command::new("true").status().unwrap().success());
    });
    let t0 = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(5));
    let idle_empty = (cpu_seconds(pid) - t0) / 5.0 * 100.0;
    let (fds_empty, threads_empty, rss_empty) = (fds(pid), threads(pid), rss_mib(pid));

    let beat_script = format!("while :; do {WFCG} notify --heartbeat; sleep {beat}; done");
    let watchdog = format!("{}s", beat * 5);
    println!(
        "wfcg agent with idle runs, a tenth of them heartbeating every {beat} s (watchdog {watchdog}), \
         {secs} s window a size, stall timeout {}; agent {}, open-file limit {nofile}",
        stall.as_deref().unwrap_or("off"),
        agent
            .agent_bin
            .as_deref()
            .unwrap_or(std::path::Path::new(WFCG))
            .display()
    );
    println!(
        "  no runs: agent CPU {idle_empty:.3} % of one core, RSS {rss_empty:.1} MiB, {fds_empty} fds, \
         {threads_empty} threads; /metrics {scrape_empty:.2} ms, ps --json {ps_empty:.2} ms, \
         starting `true` {true_spawn:.2} ms"
    );
    let mut started = 0;
    let mut steps = Vec::new();
    for &size in &sizes {
        eprintln!("starting runs {started}..{size} ...");
        let t = Instant::now();
        for (i, agent) in (started..size).flat_map(|i| agents.iter().map(move |a| (i, a))) {
            let script = if i % 10 == 0 {
                beat_script.as_str()
            } else {
                "exec sleep 100000"
            };
            let mut args = vec!["run", "--detach", "--init-timeout", "0", "--timeout", "0"];
            if i % 10 == 0 {
                args.extend(["--watchdog", watchdog.as_str()]);
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
        let start_ms = t.elapsed().as_secs_f64() * 1e3 / ((size - started) * agents.len()) as f64;
        started = size;
        eprintln!("{size} runs; measuring {secs} s ...");
        std::thread::sleep(Duration::from_secs(3));

        let pids: Vec<i32> = agents.iter().map(|a| a.pid().expect("agent pid")).collect();
        let c0: Vec<f64> = pids.iter().map(|&p| cpu_seconds(p)).collect();
        let threads0 = thread_cpu(pid);
        std::thread::sleep(Duration::from_secs(secs));
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&c0)
            .map(|(&p, c0)| (cpu_seconds(p) - c0) / secs as f64 * 100.0)
            .collect();
        let threads_cpu = thread_cpu(pid)
            .into_iter()
            .map(|(name, t1)| {
                let used = t1 - threads0.get(&name).copied().unwrap_or(0.0);
                (name, used / secs as f64 * 100.0)
            })
            .filter(|(_, pct)| *pct > 0.0)
            .collect();
        let rss = pids.iter().map(|&p| rss_mib(p)).collect();
        steps.push(Step {
            runs: size,
            start_ms,
            cpu,
            rss,
            fds: fds(pid),
            threads: threads(pid),
            threads_cpu,
            scrape: scrape(&agent),
            ps: ps_json(&agent),
            list: get(&agent, "/v1/runs"),
            raw: raw_cgroup_read(&agent),
            procps: procps(5),
        });
        let empty = Empty {
            cpu: idle_empty,
            rss: rss_empty,
            fds: fds_empty,
            threads: threads_empty,
            scrape: scrape_empty,
            ps: ps_empty,
            true_spawn,
        };
        print_step(steps.last().unwrap(), &empty);
        if let Some(path) = std::env::var_os("WFCG_BENCH_CSV") {
            write_csv(std::path::Path::new(&path), &steps, &empty);
        }
    }

    // Dropping the agent kills every run under its cgroup root.
}
