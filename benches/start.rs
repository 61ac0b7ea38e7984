//! The start benchmark (`cargo bench --bench start`, or `scripts/bench-start`):
//! what `wfcg run` adds to starting a command, against `true` measured in the
//! same run, interleaved:
//!
//! - `true`, spawned and waited for: the floor;
//! - root's `wfcg run -q -- true`;
//! - a user's `wfcg run -q -- true`, against the same user's `true` (both through
//!   `setpriv`);
//! - with `WFCG_BENCH_BEFORE=/path/to/an/earlier/wfcg`: that build's
//!   `wfcg run -q -- true` against the same agent (before and after in one run);
//! - one write of a pid to a `cgroup.procs` (a cgroup migration, the kernel's
//!   cost that a start without migration avoids), on a bare cgroup.
//!
//! Not a timed test: it prints figures and whether the target (root's start
//! within 5 ms of `true`) is met; its exit status says only whether it ran.
//! Needs root and cgroup2. Environment: `WFCG_BENCH_SPAWN_REPS` (default 50).

#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark prints its figures

#[path = "../tests/it/util.rs"]
mod util;

#[path = "common/harness.rs"]
mod harness;
#[path = "common/trees.rs"]
mod trees;

use std::process::{Command, Stdio};
use std::time::Instant;

use trees::{BareRoot, env_num, fmt_stats, loadavg, med};
use wfcg::cgroup::{self, Cgroup};

fn main() {
    harness::main(inner);
}

/// Spawns `cmd` with null stdio, waits for it; milliseconds from spawn to exit.
fn time(mut cmd: Command) -> f64 {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let t = Instant::now();
    let out = cmd.output().expect("spawning");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

/// One `cgroup.procs` write moving a sleeping process between two bare cgroups.
fn time_migration(from: &Cgroup, to: &Cgroup, pid: i32) -> f64 {
    let t = Instant::now();
    to.add_process(pid).expect("moving a process");
    let ms = t.elapsed().as_secs_f64() * 1e3;
    from.add_process(pid).expect("moving it back");
    ms
}

fn inner() {
    let reps = env_num("WFCG_BENCH_SPAWN_REPS", 50).max(1);
    let before = std::env::var_os("WFCG_BENCH_BEFORE");
    let mount = cgroup::cgroup2_mount().expect("cgroup2 mount");
    let root = BareRoot::create(&mount);
    let agent = util::TestAgent::start();
    agent.open_to_all_users();
    let user = util::TestUser::get();

    println!(
        "wfcg start benchmark: kernel {}, {} CPUs, cgroup2 at {}",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mount.display()
    );
    println!("{reps} of each, interleaved; times in ms as median [min-max]");
    let load_before = loadavg();
    println!("load average at start: {load_before:.2}\n");

    let (a, b) = (root.0.child("a"), root.0.child("b"));
    a.create().expect("a bare cgroup");
    b.create().expect("a bare cgroup");
    let mut sleeper = Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("starting sleep");
    let sleeper_pid = sleeper.id() as i32;
    a.add_process(sleeper_pid).expect("moving sleep");

    let wfcg_true = |program: &std::ffi::OsStr| {
        let mut cmd = Command::new(program);
        cmd.envs(agent.env()).args(["run", "-q", "--", "true"]);
        cmd
    };
    let now = std::ffi::OsString::from(util::WFCG);
    let user_wfcg_true = || {
        let mut cmd = agent.wfcg_as(&user);
        cmd.current_dir("/").args(["run", "-q", "--", "true"]);
        cmd
    };
    let user_true = || user.command("true");

    let mut plain = Vec::new();
    let mut root_run = Vec::new();
    let mut earlier = Vec::new();
    let mut user_plain = Vec::new();
    let mut user_run = Vec::new();
    let mut migration = Vec::new();
    // One untimed round of each warms the agent and the page cache.
    for round in 0..=reps {
        let samples = [
            time(Command::new("true")),
            time(wfcg_true(&now)),
            before.as_deref().map(|b| time(wfcg_true(b))).unwrap_or(0.0),
            time(user_true()),
            time(user_wfcg_true()),
            time_migration(&a, &b, sleeper_pid),
        ];
        if round == 0 {
            continue;
        }
        plain.push(samples[0]);
        root_run.push(samples[1]);
        if before.is_some() {
            earlier.push(samples[2]);
        }
        user_plain.push(samples[3]);
        user_run.push(samples[4]);
        migration.push(samples[5]);
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();

    let overhead = med(&root_run) - med(&plain);
    println!(
        "  true                                   {}",
        fmt_stats(&plain)
    );
    println!(
        "  wfcg run -q -- true (root)             {}   +{overhead:.2} ms, x{:.2}",
        fmt_stats(&root_run),
        med(&root_run) / med(&plain)
    );
    if let Some(b) = &before {
        println!(
            "  {} run -q -- true (root)   {}   +{:.2} ms, x{:.2}",
            b.to_string_lossy(),
            fmt_stats(&earlier),
            med(&earlier) - med(&plain),
            med(&earlier) / med(&plain)
        );
    }
    println!(
        "  true as a user (setpriv)               {}",
        fmt_stats(&user_plain)
    );
    println!(
        "  wfcg run -q -- true as a user          {}   +{:.2} ms, x{:.2}",
        fmt_stats(&user_run),
        med(&user_run) - med(&user_plain),
        med(&user_run) / med(&user_plain)
    );
    println!(
        "  one cgroup.procs write (a migration)   {}",
        fmt_stats(&migration)
    );
    println!(
        "\n  root's start within 5 ms of `true`: {overhead:.2} ms: {}",
        if overhead <= 5.0 { "met" } else { "not met" }
    );
    trees::warn_if_busy(load_before);
}
