//! The kill benchmark (`cargo bench --bench kill`, or `scripts/bench-kill`): how
//! long `wfcg kill --force` takes to end a process tree, against the kernel's
//! floor (`cgroup.kill` on a bare cgroup) and the classic `kill(-pgid)` (with the
//! processes it misses), and what `wfcg run` adds to starting a command; and how
//! long `wfcg kill --pid --force` takes to adopt and end the same tree when it was
//! started outside wfcg, against `wfcg kill --force` of it under `wfcg run`.
//!
//! Not a timed test: it prints figures and marks the targets of issue 2 as met
//! or not; its exit status says only whether the benchmark itself ran.
//!
//! Two processes (benches/common/harness.rs): an outer subreaper that reaps and
//! cleans up whatever the inner one, which measures, leaves.
//!
//! Needs root and cgroup2, like the integration tests, whose harness it reuses.
//! Environment: `WFCG_BENCH_SIZES` (default `10,100,1000`), `WFCG_BENCH_REPS`
//! (kills per figure, default 5), `WFCG_BENCH_SPAWN_REPS` (default 20).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "../tests/it/util.rs"]
mod util;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/trees.rs"]
mod trees;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use trees::{
    BareRoot, MARK_ENV, env_num, fmt_stats, loadavg, marked, med, start_tree_run, stats,
    tree_script, wait_for_tree,
};
use wfcg::cgroup::{self, Cgroup};

/// How long a kill may take before the benchmark calls it failed.
const KILL_DEADLINE: Duration = Duration::from_secs(30);
/// After `kill(-pgid)` and reaping the direct child: time for stragglers to die
/// before survivors are counted.
const SETTLE: Duration = Duration::from_millis(200);

fn main() {
    harness::main(inner);
}

// ---------------------------------------------------------------------------
// The inner process: the measurements.

fn inner() {
    let sizes: Vec<usize> = std::env::var("WFCG_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10, 100, 1000]);
    let reps = env_num("WFCG_BENCH_REPS", 5).max(1);
    let spawn_reps = env_num("WFCG_BENCH_SPAWN_REPS", 20).max(1);

    let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
    let root = BareRoot::create(&mount);
    let agent = util::TestAgent::start();

    println!(
        "wfcg kill benchmark: kernel {}, {} CPUs, cgroup2 at {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mount.display()
    );
    println!(
        "trees: sh + N-1 `sleep 1000 &`, ~10% of them via setsid; {reps} kills per figure, \
         {spawn_reps} spawns per figure; times in ms as median [min-max]"
    );
    let load_before = loadavg();
    println!("load average at start: {load_before:.2}\n");

    // Warm the agent and the page cache: one untimed round of each kind.
    let _ = measure_wfcg(&agent, 10);
    let _ = measure_raw(&root, 10, false);
    let _ = measure_pgid(&root, 10);

    let mut rows = Vec::new();
    for &n in &sizes {
        let mut row = Row {
            n,
            ..Default::default()
        };
        for rep in 0..reps {
            // Interleaved, so a drift of the machine hits every method alike.
            let w = measure_wfcg(&agent, n);
            let r = measure_raw(&root, n, false);
            let f = measure_raw(&root, n, true);
            let p = measure_pgid(&root, n);
            let a = measure_adopt(&agent, &root, n);
            eprintln!(
                "N={n:<5} rep {}: wfcg kill --pid --force {:8.2} ms (adopt {:7.2} ms, {} taken, \
                 kill {:7.2} ms, survivors {})",
                rep + 1,
                a.e2e_ms,
                a.adopt_ms,
                a.taken,
                a.kill_ms,
                a.survivors
            );
            row.adopt.push(a.e2e_ms);
            row.adopt_part.push(a.adopt_ms);
            row.adopt_kill.push(a.kill_ms);
            row.adopt_survivors = row.adopt_survivors.max(a.survivors);
            row.adopt_failures += usize::from(!a.success);
            eprintln!(
                "N={n:<5} rep {}: wfcg {:8.2} ms (agent {:7.2}, survivors {}) | raw {:7.2} ms \
                 | freeze+kill {:7.2} ms | kill(-pgid) {:7.2} ms, survivors {}",
                rep + 1,
                w.e2e_ms,
                w.agent_ms,
                w.survivors,
                r.ms,
                f.ms,
                p.ms,
                p.survivors
            );
            row.wfcg.push(w.e2e_ms);
            row.wfcg_agent.push(w.agent_ms);
            row.wfcg_survivors = row.wfcg_survivors.max(w.survivors);
            row.wfcg_failures += usize::from(!w.success);
            for (name, ms) in w.phases {
                match row.phases.iter_mut().find(|(p, _)| *p == name) {
                    Some((_, v)) => v.push(ms),
                    None => row.phases.push((name, vec![ms])),
                }
            }
            row.outside.push(w.e2e_ms - w.agent_ms);
            row.raw.push(r.ms);
            row.raw_survivors = row.raw_survivors.max(r.survivors);
            row.freeze_kill.push(f.ms);
            row.pgid.push(p.ms);
            row.pgid_survivors.push(p.survivors as f64);
        }
        rows.push(row);
    }

    eprintln!("spawn: {spawn_reps} x `wfcg run -q -- true` and `true`, interleaved");
    let spawn = measure_spawn(&agent, spawn_reps);

    report(&rows, &spawn, reps);
    trees::warn_if_busy(load_before);
    drop(agent);
    drop(root);
}

fn mark(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

#[derive(Default)]
struct Row {
    n: usize,
    wfcg: Vec<f64>,
    wfcg_agent: Vec<f64>,
    outside: Vec<f64>,
    phases: Vec<(String, Vec<f64>)>,
    wfcg_survivors: usize,
    wfcg_failures: usize,
    raw: Vec<f64>,
    raw_survivors: usize,
    freeze_kill: Vec<f64>,
    pgid: Vec<f64>,
    pgid_survivors: Vec<f64>,
    adopt: Vec<f64>,
    adopt_part: Vec<f64>,
    adopt_kill: Vec<f64>,
    adopt_survivors: usize,
    adopt_failures: usize,
}

fn report(rows: &[Row], spawn: &Spawn, reps: usize) {
    println!("\nKill times, ms, median [min-max] of {reps}");
    println!(
        "{:>5}  {:<24} {:<24} {:<24} {:<24} {:<24} {:>9} {:>9}",
        "N",
        "wfcg kill --force",
        "raw cgroup.kill",
        "raw freeze+kill",
        "kill(-pgid)",
        "wfcg agent-side",
        "wfcg/raw",
        "(of mins)"
    );
    for r in rows {
        println!(
            "{:>5}  {:<24} {:<24} {:<24} {:<24} {:<24} {:>9.2} {:>9.2}",
            r.n,
            fmt_stats(&r.wfcg),
            fmt_stats(&r.raw),
            fmt_stats(&r.freeze_kill),
            fmt_stats(&r.pgid),
            fmt_stats(&r.wfcg_agent),
            med(&r.wfcg) / med(&r.raw),
            stats(&r.wfcg).1 / stats(&r.raw).1
        );
    }
    println!(
        "wfcg: from spawning `wfcg kill --force --json` to its exit; agent-side: its duration_ms. \
         raw: cgroup.kill + wait for populated 0 on a bare cgroup; freeze+kill: the same after \
         cgroup.freeze. kill(-pgid): SIGKILL to the group until its leader is reaped. \
         wfcg/raw: of the medians (of the minimums)."
    );

    println!(
        "\nSurvivors (processes alive after the kill; wfcg and raw: max of {reps}, pgid: median)"
    );
    println!(
        "{:>5}  {:>8} {:>8} {:>12} {:>14}",
        "N", "wfcg", "raw", "kill(-pgid)", "wfcg failures"
    );
    for r in rows {
        println!(
            "{:>5}  {:>8} {:>8} {:>12} {:>14}",
            r.n,
            r.wfcg_survivors,
            r.raw_survivors,
            med(&r.pgid_survivors),
            r.wfcg_failures
        );
    }

    println!(
        "\nWhere wfcg kill's time goes, ms (median of {reps}); from `wfcg kill --json` phases"
    );
    for r in rows {
        let mut parts: Vec<String> = r
            .phases
            .iter()
            .map(|(name, v)| format!("{name} {:.2}", med(v)))
            .collect();
        parts.push(format!("agent total {:.2}", med(&r.wfcg_agent)));
        parts.push(format!(
            "outside the sequence (CLI start, HTTP, store) {:.2}",
            med(&r.outside)
        ));
        println!("{:>5}  {}", r.n, parts.join(" | "));
    }

    println!(
        "\nA tree started outside wfcg: `wfcg kill --pid --force` (adopt + kill, one request) \
         against `wfcg kill --force` of the same tree under `wfcg run`; ms, median [min-max] of {reps}"
    );
    println!(
        "{:>5}  {:<24} {:<24} {:<24} {:<24} {:>9} {:>10} {:>9}",
        "N",
        "kill --pid --force",
        "of which adopting",
        "of which the kill",
        "kill --force (run)",
        "pid/run",
        "survivors",
        "failures"
    );
    for r in rows {
        println!(
            "{:>5}  {:<24} {:<24} {:<24} {:<24} {:>9.2} {:>10} {:>9}",
            r.n,
            fmt_stats(&r.adopt),
            fmt_stats(&r.adopt_part),
            fmt_stats(&r.adopt_kill),
            fmt_stats(&r.wfcg),
            med(&r.adopt) / med(&r.wfcg),
            r.adopt_survivors,
            r.adopt_failures
        );
    }
    println!(
        "kill --pid: from spawning `wfcg kill --pid ROOT --force --json` to its exit; the kill: \
         its duration_ms; adopting: the rest of the agent's work (pin, freeze, move, escapee \
         scan, record) and the CLI."
    );

    println!(
        "\nStart a command (median of {} each, warm agent)",
        spawn.reps
    );
    println!("  true (spawned directly)  {}", fmt_stats(&spawn.plain));
    println!("  wfcg run -q -- true      {}", fmt_stats(&spawn.wfcg));
    let overhead = med(&spawn.wfcg) - med(&spawn.plain);
    println!("  overhead                 {overhead:.2} ms");

    println!("\nTargets (issue 2)");
    let at = |n: usize| rows.iter().find(|r| r.n == n);
    match at(1000) {
        Some(r) => {
            let ratio = med(&r.wfcg) / med(&r.raw);
            println!(
                "  wfcg/raw at N=1000 <= 1.2          {ratio:6.2}          {}",
                mark(ratio <= 1.2)
            );
        }
        None => println!("  wfcg/raw at N=1000 <= 1.2          (N=1000 not measured)"),
    }
    match at(10) {
        Some(r) => {
            let extra = med(&r.wfcg) - med(&r.raw);
            println!(
                "  wfcg <= raw + 5 ms at N=10         raw +{extra:.2} ms  {}",
                mark(extra <= 5.0)
            );
        }
        None => println!("  wfcg <= raw + 5 ms at N=10         (N=10 not measured)"),
    }
    let survivors: usize = rows.iter().map(|r| r.wfcg_survivors).sum();
    let failures: usize = rows.iter().map(|r| r.wfcg_failures).sum();
    println!(
        "  0 survivors after wfcg kill        {survivors} survivors, {failures} failed kills  {}",
        mark(survivors == 0 && failures == 0)
    );
    println!(
        "  spawn overhead <= 5 ms             {overhead:.2} ms       {}",
        mark(overhead <= 5.0)
    );
}

// ---------------------------------------------------------------------------
// Trees.

/// A tree of ours in a bare cgroup. Dropping it kills the tree and removes the cgroup.
struct BareTree {
    cg: Cgroup,
    child: Child,
    marker: String,
}

impl BareTree {
    /// Starts `tree_script(n)` in a new cgroup `name` below `root` (the shell moves
    /// itself in before it forks), in a process group of its own if `own_pgrp`.
    fn start(root: &BareRoot, name: &str, n: usize, own_pgrp: bool) -> BareTree {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let cg = root
            .0
            .child(&format!("{name}-{}", SEQ.fetch_add(1, Ordering::Relaxed)));
        cg.create_new().expect("creating a bare cgroup");
        let marker = util::marker("bench");
        let script = format!(
            "echo $$ > '{}' || exit 111; {}",
            cg.path().join(cgroup::CGROUP_PROCS).display(),
            tree_script(n)
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &script])
            .env(MARK_ENV, &marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if own_pgrp {
            cmd.process_group(0);
        }
        let child = cmd.spawn().expect("starting sh");
        let tree = BareTree { cg, child, marker };
        wait_for_tree(&tree.cg, n, n);
        tree
    }
}

impl Drop for BareTree {
    fn drop(&mut self) {
        let _ = self.cg.kill();
        let _ = self.cg.wait_unpopulated(Duration::from_secs(10));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Err(e) = self.cg.remove() {
            eprintln!("bench: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Measurements.

struct WfcgKill {
    e2e_ms: f64,
    agent_ms: f64,
    phases: Vec<(String, f64)>,
    survivors: usize,
    success: bool,
}

/// `wfcg kill --force --json RUN` of a detached run of `n` processes (plus its
/// supervisor), timed from spawning the CLI to its exit.
fn measure_wfcg(agent: &util::TestAgent, n: usize) -> WfcgKill {
    let marker = util::marker("bench-wfcg");
    let run_id = start_tree_run(agent, n, &marker, &[]);
    let cg = agent.run_cgroup(&run_id);
    wait_for_tree(&cg, n + 1, n);

    let mut cmd = agent.wfcg();
    cmd.args(["kill", "--force", "--json", &run_id])
        .stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().expect("running wfcg kill");
    let e2e_ms = t.elapsed().as_secs_f64() * 1e3;

    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let success = out.status.success() && result["success"] == true;
    if !success {
        eprintln!(
            "bench: wfcg kill {run_id} failed (exit {:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let phases = result["phases"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("?").to_string(),
                        p["duration_ms"].as_f64().unwrap_or(f64::NAN),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // Survivors: anything still carrying the marker, or still in the cgroup.
    let in_cgroup = if cg.exists() {
        cg.procs_recursive().map(|p| p.len()).unwrap_or(0)
    } else {
        0
    };
    let survivors = marked(&marker).max(in_cgroup);
    if cg.exists() {
        // Whatever went wrong, leave nothing running.
        let _ = cg.kill();
        let _ = cg.wait_unpopulated(KILL_DEADLINE);
    }
    WfcgKill {
        e2e_ms,
        agent_ms: result["duration_ms"].as_f64().unwrap_or(f64::NAN),
        phases,
        survivors,
        success,
    }
}

struct Timed {
    ms: f64,
    survivors: usize,
}

/// The floor: `cgroup.kill` on a bare cgroup (after `cgroup.freeze` if `freeze`),
/// then wait for `populated 0`, through the library's own calls.
fn measure_raw(root: &BareRoot, n: usize, freeze: bool) -> Timed {
    let kind = if freeze { "freeze" } else { "raw" };
    let mut tree = BareTree::start(root, &format!("{kind}-{n}"), n, false);
    let t = Instant::now();
    if freeze {
        assert!(
            tree.cg.freeze(KILL_DEADLINE).expect("cgroup.freeze"),
            "freeze timed out"
        );
    }
    tree.cg.kill().expect("cgroup.kill");
    let emptied = tree
        .cg
        .wait_unpopulated(KILL_DEADLINE)
        .expect("waiting for populated 0");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        emptied,
        "cgroup.kill did not empty {}",
        tree.cg.path().display()
    );
    let _ = tree.child.wait();
    Timed {
        ms,
        survivors: marked(&tree.marker),
    }
}

/// `kill(-pgid, SIGKILL)` of a tree in its own process group, timed until the
/// direct child (the group leader) is reaped, as an executor that kills by
/// process group would see it. Survivors are counted after a short settle.
fn measure_pgid(root: &BareRoot, n: usize) -> Timed {
    let mut tree = BareTree::start(root, &format!("pgid-{n}"), n, true);
    let pgid = rustix::process::Pid::from_child(&tree.child);
    let t = Instant::now();
    rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).expect("kill(-pgid)");
    let _ = tree.child.wait();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    std::thread::sleep(SETTLE);
    Timed {
        ms,
        survivors: marked(&tree.marker),
    }
}

struct AdoptKill {
    e2e_ms: f64,
    adopt_ms: f64,
    kill_ms: f64,
    taken: usize,
    survivors: usize,
    success: bool,
}

/// `wfcg kill --pid ROOT --force --json` of a tree of `n` processes started
/// outside wfcg (in a bare cgroup), timed from spawning the CLI to its exit.
fn measure_adopt(agent: &util::TestAgent, root: &BareRoot, n: usize) -> AdoptKill {
    let mut tree = BareTree::start(root, &format!("outside-{n}"), n, false);
    let mut cmd = agent.wfcg();
    cmd.args(["kill", "--force", "--json", "--pid"])
        .arg(tree.child.id().to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().expect("running wfcg kill --pid");
    let e2e_ms = t.elapsed().as_secs_f64() * 1e3;
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let success = out.status.success() && result["success"] == true;
    if !success {
        eprintln!(
            "bench: wfcg kill --pid failed (exit {:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = tree.child.wait();
    let kill_ms = result["duration_ms"].as_f64().unwrap_or(f64::NAN);
    let in_source = tree.cg.procs().map(|p| p.len()).unwrap_or(0);
    AdoptKill {
        e2e_ms,
        adopt_ms: e2e_ms - kill_ms,
        kill_ms,
        taken: result["processes_killed"].as_u64().unwrap_or(0) as usize,
        survivors: marked(&tree.marker).max(in_source),
        success,
    }
}

struct Spawn {
    reps: usize,
    plain: Vec<f64>,
    wfcg: Vec<f64>,
}

/// `wfcg run -q -- true` against `true`, each spawned and waited for, interleaved.
fn measure_spawn(agent: &util::TestAgent, reps: usize) -> Spawn {
    let time = |mut cmd: Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t = Instant::now();
        let status = cmd.status().expect("spawning");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(status.success(), "{cmd:?} failed: {status}");
        ms
    };
    let wfcg_true = || {
        let mut cmd = agent.wfcg();
        cmd.args(["run", "-q", "--", "true"]);
        cmd
    };
    for _ in 0..3 {
        time(wfcg_true());
        time(Command::new("true"));
    }
    let mut spawn = Spawn {
        reps,
        plain: Vec::new(),
        wfcg: Vec::new(),
    };
    for _ in 0..reps {
        spawn.plain.push(time(Command::new("true")));
        spawn.wfcg.push(time(wfcg_true()));
    }
    // Let the agent finish cleaning up after the last runs before it is stopped.
    std::thread::sleep(Duration::from_millis(200));
    spawn
}
