//! `wfcg ps --json` and `GET /v1/runs`: each run's processes and CPU time as the
//! kernel counts them at the time of the listing, and the JSON as the agent sent it.

use std::process::Command;

use crate::require_privileges;
use crate::util::{self, CommandExt, KillOnDrop, Run, TEST_MARK, TestAgent, WFCG};

/// What the kernel says of a run now: the processes of its payload (of a flat
/// run, its own; `PROCS` does not count the supervisor) and its CPU time
/// (`usage_usec` of its cgroup's `cpu.stat`).
fn kernel(agent: &TestAgent, run_id: &str) -> (usize, u64) {
    let cg = agent.run_cgroup(run_id);
    let payload = cg.child("payload");
    let procs = if payload.exists() { &payload } else { &cg };
    (procs.procs().unwrap().len(), cg.cpu_usage_usec().unwrap())
}

fn listed<'a>(runs: &'a [serde_json::Value], run_id: &str) -> &'a serde_json::Value {
    runs.iter()
        .find(|r| r["run_id"] == run_id)
        .unwrap_or_else(|| panic!("{run_id} not listed: {runs:#?}"))
}

/// The cgroup files of run `run_id` the agent has open.
fn open_files_of(agent: &TestAgent, run_id: &str) -> Vec<String> {
    let pid = agent.pid().unwrap();
    let dir = agent.run_cgroup(run_id);
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(dir.path()))
        .map(|target| target.display().to_string())
        .collect()
}

/// An agent that may open many files keeps the files a listing reads open from
/// one listing to the next (and closes them when the run ends): the figures
/// must be those of the time of each listing all the same.
#[test]
fn the_listing_counts_the_payloads_processes_and_cpu_time_and_a_flat_runs() {
    // As many as the test may give (raising the hard limit needs CAP_SYS_RESOURCE).
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .maximum
        .unwrap_or(u64::MAX);
    // The agent keeps files open from 4096 on (run_files::MIN_LIMIT).
    assert!(
        hard >= 4096,
        "the tests need an open-file hard limit of 4096 at least, not {hard}"
    );
    listing_counts(hard.min(65536));
}

/// With few files (1024), the agent reads each file by its path: the same figures.
#[test]
fn the_listing_counts_the_same_when_the_agent_may_open_few_files() {
    listing_counts(1024);
}

/// A run with both leaves (the supervisor in one, the command and what it
/// started in the other) and a flat run (a cgroup made by hand, its processes in
/// the run's own cgroup): each listed with the processes of its payload (the
/// flat run's own) and the CPU time of its cgroups, read at the time of the listing, before and after a change.
fn listing_counts(fd_limit: u64) {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    agent.fd_limit = Some(fd_limit);
    agent.spawn();
    // Some CPU time first (a shell loop), then two sleeps (and the supervisor).
    let run = agent.start_run(
        &["--init-timeout", "0"],
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 1000 & exec sleep 1000",
    );
    assert!(agent.wait_procs(&run.id, 3));
    let flat = Run {
        id: util::marker("flat"),
        marker: util::marker("flat"),
    };
    let cg = agent.run_cgroup(&flat.id);
    cg.create_new().unwrap();
    let mut strays: Vec<KillOnDrop> = (0..2)
        .map(|_| {
            let child = Command::new("sleep")
                .arg("1000")
                .env(TEST_MARK, &flat.marker)
                .spawn()
                .unwrap();
            cg.add_process(child.id() as i32).unwrap();
            KillOnDrop(child)
        })
        .collect();
    // The agent adopts the flat cgroup when it starts (as "unknown").
    agent.kill9();
    agent.spawn();

    let check =
        |runs: &[serde_json::Value], id: &str, before: (usize, u64), after: (usize, u64)| {
            let r = listed(runs, id);
            assert_eq!(before.0, after.0, "{id}: processes changed while listing");
            assert_eq!(r["processes"], before.0, "{id}: {r:#}");
            let cpu = r["cpu_usec"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
            assert!(
                (before.1..=after.1).contains(&cpu),
                "{id}: cpu_usec {cpu}, the kernel said {} then {}",
                before.1,
                after.1
            );
        };
    let (run0, flat0) = (kernel(&agent, &run.id), kernel(&agent, &flat.id));
    let runs = agent.ps(false);
    let (run1, flat1) = (kernel(&agent, &run.id), kernel(&agent, &flat.id));
    assert_eq!(run0.0, 2, "two sleeps (the supervisor is not counted)");
    assert_eq!(flat0.0, 2);
    assert!(run0.1 > 0, "the loop used no CPU time?");
    check(&runs, &run.id, run0, run1);
    check(&runs, &flat.id, flat0, flat1);
    // One process fewer in each: the next listing says so at once.
    drop(strays.pop());
    // The background sleep: the one whose parent is the other (the shell that
    // became `sleep`), not the supervisor.
    let payload = agent.run_cgroup(&run.id).child("payload").procs().unwrap();
    let ppid = |pid: i32| -> i32 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        wfcg::procfs::stat_field(&stat, 4).unwrap().parse().unwrap()
    };
    let background = *payload
        .iter()
        .find(|&&p| payload.contains(&ppid(p)))
        .unwrap_or_else(|| panic!("no background sleep in {payload:?}"));
    Command::new("kill")
        .args(["-KILL", &background.to_string()])
        .expect_code(0);
    assert!(util::wait_until(std::time::Duration::from_secs(10), || {
        kernel(&agent, &run.id).0 == 1 && kernel(&agent, &flat.id).0 == 1
    }));
    let runs = agent.ps(false);
    assert_eq!(listed(&runs, &run.id)["processes"], 1);
    assert_eq!(listed(&runs, &flat.id)["processes"], 1);
    // The files of the run with leaves (its payload's cgroup.procs, its
    // cpu.stat) are kept open only when the agent may open many; a flat run's never.
    let kept = open_files_of(&agent, &run.id);
    assert_eq!(kept.len(), if fd_limit > 4096 { 2 } else { 0 }, "{kept:?}");
    assert_eq!(open_files_of(&agent, &flat.id), Vec::<String>::new());
    for id in [&run.id, &flat.id] {
        agent.kill_ok(id, &[]);
    }
    agent.assert_run_gone(&run);
    agent.assert_run_gone(&flat);
    // Closed when the run ended, before its cgroup was removed.
    assert_eq!(open_files_of(&agent, &run.id), Vec::<String>::new());
}

/// For a program, `ps --json` writes the agent's answer as it came, on one
/// line; on a terminal the same runs, indented.
#[test]
fn ps_json_is_the_agents_answer_for_a_program_and_indented_on_a_terminal() {
    require_privileges!();
    let agent = TestAgent::start();
    let runs: Vec<Run> = (0..2)
        .map(|_| agent.start_run(&[], "exec sleep 1000"))
        .collect();
    for run in &runs {
        assert!(agent.wait_procs(&run.id, 2));
    }
    let piped = agent.cli_expect(0, &["ps", "--json"]).stdout;
    let text = String::from_utf8(piped).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    // On a terminal (`script` gives the command a pty).
    let shown = Command::new("script")
        .args(["-qec", &format!("{WFCG} ps --json"), "/dev/null"])
        .envs(agent.env())
        .expect_code(0)
        .stdout;
    let shown = String::from_utf8(shown).unwrap().replace("\r\n", "\n");
    assert!(shown.lines().count() > 2 * 20, "not indented:\n{shown}");
    assert!(shown.contains("\n    \"run_id\": "), "{shown}");
    // The same runs and fields (but for their age and CPU time, which moved on).
    let parse = |t: &str| -> Vec<serde_json::Value> {
        let mut v: Vec<serde_json::Value> = serde_json::from_str(t).unwrap();
        for r in &mut v {
            let r = r.as_object_mut().unwrap();
            r.remove("age_secs").unwrap();
            r.remove("cpu_usec").unwrap();
        }
        v
    };
    assert_eq!(parse(&text), parse(&shown));
    assert_eq!(parse(&text).len(), 2);
    for run in &runs {
        agent.kill_ok(&run.id, &[]);
    }
}
