//! What the benchmarks share: trees of processes, a bare cgroup root, and
//! statistics of samples.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use wfcg::cgroup::Cgroup;

/// Every process of every tree carries `WFCG_BENCH_MARK=<marker>`: survivors are
/// counted by scanning /proc for it.
pub const MARK_ENV: &str = "WFCG_BENCH_MARK";

/// Prints the load average at the end beside `load_before`, with a warning when
/// the machine was busier than its CPUs: the wall-clock figures are then inflated.
pub fn warn_if_busy(load_before: f64) {
    let load_after = loadavg();
    println!("\nload average at start {load_before:.2}, at end {load_after:.2}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    if load_before.max(load_after) > cpus {
        println!(
            "WARNING: the machine was busy (load above its {cpus} CPUs): these wall-clock \
             figures are inflated; run again on an idle machine"
        );
    }
}

/// `wfcg run --detach -q [extra...] -- sh -c TREE` of a tree of `n` processes
/// carrying `marker`; its run id.
pub fn start_tree_run(
    agent: &crate::util::TestAgent,
    n: usize,
    marker: &str,
    extra: &[&str],
) -> String {
    let out = agent
        .wfcg()
        .args(["run", "--detach", "-q"])
        .args(extra)
        .args(["--", "sh", "-c", &tree_script(n)])
        .env(MARK_ENV, marker)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running wfcg run --detach");
    assert!(
        out.status.success(),
        "wfcg run --detach failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A number from the environment, or `default`.
pub fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Processes carrying a marker, zombies excepted.
pub fn marked(marker: &str) -> usize {
    crate::util::pids_with_env(MARK_ENV, marker).len()
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Median, min and max of a sample.
pub fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let med = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (med, s[0], s[n - 1])
}

pub fn med(v: &[f64]) -> f64 {
    stats(v).0
}

pub fn fmt_stats(v: &[f64]) -> String {
    let (m, lo, hi) = stats(v);
    format!("{m:.2} [{lo:.2}-{hi:.2}]")
}

/// The shell script of a tree of `n` processes: itself and n-1 `sleep 1000`, about
/// 10% of them started through setsid(1), so they leave the process group and the
/// session as double-forked daemons do. It waits for them, so it stays the root.
pub fn tree_script(n: usize) -> String {
    let n = n.max(1);
    let detached = ((n + 5) / 10).min(n - 1);
    let plain = n - 1 - detached;
    format!(
        "i=0; while [ $i -lt {plain} ]; do sleep 1000 & i=$((i+1)); done; \
         i=0; while [ $i -lt {detached} ]; do setsid sleep 1000 & i=$((i+1)); done; \
         wait"
    )
}

/// Waits until a cgroup holds `total` processes of which `n - 1` (a tree's
/// leaves) already run `sleep`, so every setsid has happened; then gives the
/// kernel a moment to settle.
pub fn wait_for_tree(cg: &Cgroup, total: usize, n: usize) {
    let proc_root = Path::new("/proc");
    let sleeping = |pids: &[i32]| {
        pids.iter()
            .filter(|&&p| {
                std::fs::read_to_string(proc_root.join(p.to_string()).join("comm"))
                    .is_ok_and(|c| c.trim_end() == "sleep")
            })
            .count()
    };
    let full = crate::util::wait_until(Duration::from_secs(60), || {
        cg.procs_recursive()
            .is_ok_and(|p| p.len() >= total && sleeping(&p) + 1 >= n)
    });
    assert!(
        full,
        "the tree in {} did not reach {total} processes (has {:?})",
        cg.path().display(),
        cg.procs_recursive().map(|p| p.len())
    );
    std::thread::sleep(Duration::from_millis(50));
}

/// The benchmark's own cgroup root, `<mount>/wfcg-bench-<pid>`, for bare cgroups.
/// Dropping it kills whatever is below and removes it.
pub struct BareRoot(pub Cgroup);

impl BareRoot {
    pub fn create(mount: &Path) -> BareRoot {
        let cg = Cgroup::new(mount.join(format!("wfcg-bench-{}", std::process::id())));
        cg.create().expect("creating the benchmark's cgroup root");
        BareRoot(cg)
    }
}

impl Drop for BareRoot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait_unpopulated(Duration::from_secs(10));
        let _ = self.0.remove_recursive();
    }
}
