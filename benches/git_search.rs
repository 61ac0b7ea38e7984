//! The search for an ended run's stale git locks (`gitlocks::git_dirs_in` over
//! its workspace, then `sections::orphan_git_locks` over what it found, as the
//! cleanup does on a thread of its own): its cost with a workspace of N
//! directories (default 1,000,000; `WFCG_BENCH_ENTRIES`), against the same search
//! over a workspace of 1,000 as the baseline, measured in the same run. Each
//! workspace holds one repository with a lock made after the run's start, which
//! the search must find. The trees are made on a tmpfs of the benchmark's own.
//! Run with `cargo bench --bench git_search` (root: it mounts the tmpfs).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::{Mode, OFlags};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A workspace of `n` directories and one repository with a lock, below `base`.
fn workspace(base: &Path, name: &str, n: u64) -> PathBuf {
    let ws = base.join(name);
    std::fs::create_dir(&ws).unwrap();
    let fd = rustix::fs::open(&ws, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for i in 0..n {
        rustix::fs::mkdirat(&fd, format!("d{i}"), Mode::from_raw_mode(0o755)).unwrap();
    }
    let git = ws.join("repo/.git/refs/heads");
    std::fs::create_dir_all(&git).unwrap();
    std::fs::write(git.join("main.lock"), "").unwrap();
    ws
}

/// The median of `rounds` searches of `ws`, and how many locks each found.
fn search(ws: &Path, rounds: usize) -> (Duration, usize) {
    let since = SystemTime::now() - Duration::from_secs(3600);
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let dirs = wfcg::gitlocks::outermost(wfcg::gitlocks::git_dirs_in(ws, Some(0), &[]));
        let locks =
            wfcg::sections::orphan_git_locks(Path::new("/proc"), &dirs, since, Some(0), None);
        times.push(t.elapsed());
        found = locks.len();
    }
    times.sort();
    (times[times.len() / 2], found)
}

fn main() {
    let n = env_or("WFCG_BENCH_ENTRIES", 1_000_000);
    let rounds = env_or("WFCG_BENCH_ROUNDS", 5) as usize;
    let tmp = tempfile::tempdir().unwrap();
    rustix::mount::mount(
        "tmpfs",
        tmp.path(),
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .expect("mounting a tmpfs (run as root)");
    let made = Instant::now();
    let small = workspace(tmp.path(), "small", 1_000);
    let large = workspace(tmp.path(), "large", n);
    println!(
        "made workspaces of 1,000 and {n} directories in {:?}",
        made.elapsed()
    );
    // Root's run: the repository at the top is followed (it is a directory).
    let (base, base_found) = search(&small, rounds);
    let (big, big_found) = search(&large, rounds);
    println!(
        "search, 1,000 directories (baseline): {base:?} (median of {rounds}), {base_found} lock(s)"
    );
    println!("search, {n} directories: {big:?} (median of {rounds}), {big_found} lock(s)");
    println!(
        "ratio: {:.1}x",
        big.as_secs_f64() / base.as_secs_f64().max(1e-9)
    );
    let _ = rustix::mount::unmount(tmp.path(), rustix::mount::UnmountFlags::DETACH);
}
