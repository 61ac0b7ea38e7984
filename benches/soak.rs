//! The soak (`cargo bench --bench soak -- --cycles N`, or `scripts/soak`): N
//! start/kill cycles (`wfcg run --detach -- sleep`, then `wfcg kill --force`)
//! through one agent, and what the agent holds before, during (ten checkpoints)
//! and after: RSS, open fds, threads, the store's size (and per run), and what
//! is left on disk and in the cgroup tree (run cgroups, TMPDIRs, run dirs,
//! logs). Nothing may grow per cycle but the store's rows (and the runs' logs,
//! kept by design).
//!
//! Not a timed test: it prints figures and says whether anything grew; its exit
//! status says only whether the benchmark itself ran. Needs root and cgroup2.
//! `--cycles N` (default 10000; or `WFCG_SOAK_CYCLES`).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "common/harness.rs"]
mod harness;
#[path = "common/trees.rs"]
mod trees;
#[path = "../tests/it/util.rs"]
mod util;

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use trees::{MARK_ENV, marked};
use util::TestAgent;
use wfcg::cgroup::Cgroup;

fn main() {
    harness::main(inner);
}

/// `--cycles N` among the arguments (cargo adds its own, such as `--bench`).
fn cycles() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--cycles")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .or_else(|| std::env::var("WFCG_SOAK_CYCLES").ok())
        .map(|v| v.parse().expect("--cycles takes a number"))
        .unwrap_or(10_000)
}

fn count_dir(path: &Path) -> usize {
    std::fs::read_dir(path).map_or(0, |d| d.count())
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// What the agent holds at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    cycle: usize,
    rss_kib: u64,
    fds: usize,
    threads: usize,
    store_bytes: u64,
    run_rows: u64,
    run_cgroups: usize,
    tmpdirs: usize,
    run_dirs: usize,
    logs: usize,
    marked: usize,
}

fn sample(agent: &TestAgent, cycle: usize, marker: &str) -> Sample {
    // The write-ahead log moved into the database first, so that the size is the rows'.
    agent.sql("pragma wal_checkpoint(TRUNCATE)");
    let pid = agent.pid().expect("agent pid");
    let db = agent.db();
    let with = |suffix: &str| {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        file_size(Path::new(&p))
    };
    Sample {
        cycle,
        rss_kib: status_kib(pid, "VmRSS:"),
        fds: count_dir(Path::new(&format!("/proc/{pid}/fd"))),
        threads: count_dir(Path::new(&format!("/proc/{pid}/task"))),
        store_bytes: file_size(&db) + with("-wal") + with("-shm"),
        run_rows: agent.sql("select count(*) from runs").parse().unwrap_or(0),
        run_cgroups: Cgroup::new(agent.cgroup_root.join("runs"))
            .children()
            .map_or(0, |c| c.len()),
        tmpdirs: count_dir(&agent.state_dir.join("tmp")),
        run_dirs: count_dir(&agent.dir.path().join("runs")),
        logs: count_dir(&agent.state_dir.join("logs")),
        marked: marked(marker),
    }
}

fn print(s: &Sample) {
    println!(
        "{:>8} {:>9.1} {:>5} {:>8} {:>11.1} {:>9} {:>8} {:>8} {:>9} {:>6} {:>10}",
        s.cycle,
        s.rss_kib as f64 / 1024.0,
        s.fds,
        s.threads,
        s.store_bytes as f64 / 1024.0,
        s.run_rows,
        s.run_cgroups,
        s.tmpdirs,
        s.run_dirs,
        s.logs,
        s.marked
    );
}

fn one_cycle(agent: &TestAgent, marker: &str) -> bool {
    let out = agent
        .wfcg()
        .args(["run", "--detach", "-q", "--init-timeout", "0", "--"])
        .args(["sleep", "100000"])
        .env(MARK_ENV, marker)
        .stdin(Stdio::null())
        .output()
        .expect("running wfcg run");
    if !out.status.success() {
        eprintln!("wfcg run: {}", String::from_utf8_lossy(&out.stderr));
        return false;
    }
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = agent
        .wfcg()
        .args(["kill", "--force", &id])
        .stdin(Stdio::null())
        .output()
        .expect("running wfcg kill");
    if !out.status.success() {
        eprintln!("wfcg kill {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    out.status.success()
}

fn inner() {
    let cycles = cycles();
    let agent = TestAgent::start();
    let marker = util::marker("soak");
    // Warm up (allocator arenas, the store's first pages, thread pools), then the baseline.
    let warm = 20.min(cycles);
    for _ in 0..warm {
        one_cycle(&agent, &marker);
    }
    println!("wfcg soak: {cycles} start/kill cycles through one agent (after {warm} to warm up)");
    println!(
        "{:>8} {:>9} {:>5} {:>8} {:>11} {:>9} {:>8} {:>8} {:>9} {:>6} {:>10}",
        "cycle",
        "RSS MiB",
        "fds",
        "threads",
        "store KiB",
        "run rows",
        "cgroups",
        "tmpdirs",
        "run dirs",
        "logs",
        "survivors"
    );
    let before = sample(&agent, 0, &marker);
    print(&before);
    let t = Instant::now();
    let mut failures = 0;
    let step = (cycles / 10).max(1);
    let mut samples = vec![before];
    for i in 1..=cycles {
        failures += usize::from(!one_cycle(&agent, &marker));
        if i % step == 0 || i == cycles {
            let s = sample(&agent, i, &marker);
            print(&s);
            samples.push(s);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let after = *samples.last().unwrap();
    let mid = samples[samples.len() / 2];
    println!(
        "\n{cycles} cycles in {secs:.1} s ({:.1} ms per cycle), {failures} failed",
        secs * 1e3 / cycles as f64
    );
    let per_run = (after.store_bytes as f64 - before.store_bytes as f64)
        / (after.run_rows as f64 - before.run_rows as f64).max(1.0);
    println!(
        "store: {per_run:.0} bytes per run ({} rows added)",
        after.run_rows - before.run_rows
    );
    // Growth in the second half says more than the first (warm-up, page cache).
    println!(
        "second half: RSS {:+.1} MiB, fds {:+}, threads {:+}",
        (after.rss_kib as f64 - mid.rss_kib as f64) / 1024.0,
        after.fds as i64 - mid.fds as i64,
        after.threads as i64 - mid.threads as i64
    );
    let left = after.run_cgroups + after.tmpdirs + after.run_dirs + after.marked;
    println!(
        "left behind: {} run cgroups, {} TMPDIRs, {} run dirs, {} processes ({})",
        after.run_cgroups,
        after.tmpdirs,
        after.run_dirs,
        after.marked,
        if left == 0 { "none: met" } else { "NOT MET" }
    );
    println!(
        "logs: {} (one per run, kept by design until the retention removes them)",
        after.logs
    );
}
