//! `wfcg adopt` and `wfcg kill --pid`: trees started outside wfcg, taken over
//! and killed. Each tree is started directly by the test (not by `wfcg run`), in
//! a source cgroup the test makes under its agent's cgroup root, so the source
//! is known and removed with the agent.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use wfcg::cgroup::Cgroup;

use crate::require_privileges;
use crate::util::{self, CommandExt, KillOnDrop, TestAgent, TestUser, wait_until};

/// Starts `cmd` without the markers executors set, which wfcg takes as the
/// tree's own (with the root's values): a CI job running these tests sets them
/// on every process, neighbours included.
pub(crate) fn unmarked(cmd: &mut Command) -> &mut Command {
    for key in wfcg::adopt::DEFAULT_MARKERS {
        cmd.env_remove(key);
    }
    cmd
}

/// A cgroup outside wfcg's runs, where trees are started "by someone else".
pub(crate) struct Source {
    cg: Cgroup,
}

impl Source {
    pub(crate) fn new(agent: &TestAgent) -> Source {
        static N: AtomicUsize = AtomicUsize::new(0);
        let cg = Cgroup::new(
            agent
                .cgroup_root
                .join(format!("outside-{}", N.fetch_add(1, Ordering::Relaxed))),
        );
        cg.create().unwrap();
        Source { cg }
    }

    pub(crate) fn procs_file(&self) -> PathBuf {
        self.cg.path().join("cgroup.procs")
    }

    /// Starts `argv` in this cgroup (it moves itself in, then execs), its
    /// processes marked with `WFCG_TEST_MARK=marker`.
    pub(crate) fn spawn(&self, marker: &str, argv: &[&str]) -> KillOnDrop {
        self.spawn_with(marker, &[], argv)
    }

    /// [`Source::spawn`] with more environment.
    pub(crate) fn spawn_with(
        &self,
        marker: &str,
        env: &[(&str, &str)],
        argv: &[&str],
    ) -> KillOnDrop {
        let child = unmarked(&mut Command::new("sh"))
            .envs(env.iter().copied())
            .arg("-c")
            .arg(r#"echo $$ > "$0"; exec "$@""#)
            .arg(self.procs_file())
            .args(argv)
            .env(util::TEST_MARK, marker)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning a tree");
        KillOnDrop(child)
    }

    /// `sh -c SCRIPT` in this cgroup.
    pub(crate) fn sh(&self, marker: &str, script: &str) -> KillOnDrop {
        self.spawn(marker, &["sh", "-c", script])
    }

    pub(crate) fn pids(&self) -> Vec<i32> {
        self.cg.procs().unwrap_or_default()
    }
}

/// SIGKILLs every process carrying `WFCG_TEST_MARK=marker` when dropped: for
/// trees started outside any cgroup of the test's agent, should the test fail.
pub(crate) struct Sweep<'a>(pub(crate) &'a str);

impl Drop for Sweep<'_> {
    fn drop(&mut self) {
        for pid in util::pids_with_env(util::TEST_MARK, self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The processes carrying `marker` whose command is `cmd`.
pub(crate) fn running(marker: &str, cmd: &str) -> Vec<i32> {
    util::pids_with_env(util::TEST_MARK, marker)
        .into_iter()
        .filter(|&p| util::cmdline(p) == cmd)
        .collect()
}

pub(crate) fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The escapees of every kind, and a loop that forks every 10 ms throughout.
const UNRULY_TREE: &str = r#"
    setsid sh -c 'sleep 1001 &' &                   # double fork + setsid daemon
    nohup sleep 1003 >/dev/null 2>&1 &              # nohup
    sh -c 'trap "" TERM; exec sleep 1004' &         # ignores SIGTERM
    sh -c 'trap "" TERM
           while :; do (sleep 1005 &); sleep 0.01; done' &  # forks every 10 ms
    wait
"#;

#[test]
fn kill_pid_leaves_nothing_of_a_tree_started_outside_wfcg() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("adopt");
    let mut tree = source.sh(&marker, UNRULY_TREE);
    // Every kind of escapee runs, and the setsid daemon has left the tree.
    let started = wait_until(Duration::from_secs(30), || {
        running(&marker, "sleep 1001")
            .iter()
            .any(|&p| util::ppid(p) != tree.id())
            && ["sleep 1003", "sleep 1004", "sleep 1005"]
                .iter()
                .all(|c| !running(&marker, c).is_empty())
    });
    assert!(
        started,
        "the tree did not start: {}",
        util::describe(&util::pids_with_env(util::TEST_MARK, &marker))
    );

    let out = agent.cli(&[
        "kill",
        "--pid",
        &tree.id().to_string(),
        "--marker",
        &format!("{}={marker}", util::TEST_MARK),
        "--grace",
        "300ms",
        "--json",
    ]);

    assert!(out.status.success(), "kill --pid failed: {}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["success"], true, "{result:#}");
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    let run_id = result["run_id"].as_str().unwrap().to_string();
    // The root is our child: reap it, then nothing of the tree may be left.
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    util::assert_no_marked_processes(&run_id, &marker);
    assert!(
        !source.cg.events().unwrap().populated,
        "{:?}",
        source.pids()
    );
    assert!(!agent.run_cgroup(&run_id).exists());
    let status = agent.status(&run_id);
    assert_eq!(status["status"], "killed");
    assert_eq!(status["adopted"], "pid");
    // The adoption is on the record, with its members and why each was taken.
    let audit = agent.cli(&["audit", "--run", &run_id, "--json"]);
    let records = json(&audit);
    let adopt = records
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "adopt")
        .unwrap_or_else(|| panic!("no adopt record: {records:#}"));
    let outcome = adopt["outcome"].as_str().unwrap();
    assert!(
        outcome.contains(&format!("{} (root)", tree.id()))
            && outcome.contains("(escapee: marker WFCG_TEST_MARK="),
        "{outcome}"
    );
}

#[test]
fn dry_run_lists_the_escapees_with_their_reasons_and_moves_nothing() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("dry");
    // The root leads a session of its own (an executor's job): an orphan of
    // that session is an escapee by session; the setsid daemon only by marker.
    let tree = source.spawn_with(
        &marker,
        &[("RUNNER_TRACKING_ID", &marker)],
        &[
            "setsid",
            "sh",
            "-c",
            "sh -c 'sleep 1011 &'; setsid sh -c 'sleep 1012 &'; exec sleep 1010",
        ],
    );
    let ready = wait_until(Duration::from_secs(20), || {
        ["sleep 1010", "sleep 1011", "sleep 1012"]
            .iter()
            .all(|c| running(&marker, c).len() == 1)
    });
    assert!(ready, "{}", util::describe(&source.pids()));
    let orphan = running(&marker, "sleep 1011")[0];
    let daemon = running(&marker, "sleep 1012")[0];
    assert_ne!(util::ppid(orphan), tree.id(), "not an orphan");
    let before = {
        let mut p = source.pids();
        p.sort_unstable();
        p
    };

    let out = agent.cli(&[
        "adopt",
        &tree.id().to_string(),
        "--dry-run",
        "--marker",
        &format!("{}={marker}", util::TEST_MARK),
        "--json",
    ]);

    assert!(out.status.success(), "{}", stderr(&out));
    let answer = json(&out);
    assert_eq!(answer["dry_run"], true);
    let reason_of = |pid: i32| {
        answer["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["pid"] == pid)
            .map(|m| m["reason"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("pid {pid} not listed: {answer:#}"))
    };
    assert_eq!(reason_of(tree.id()), "root");
    assert_eq!(
        reason_of(orphan),
        format!("escapee: same session {}", tree.id())
    );
    // It carries both markers (the first found is named).
    assert!(
        [util::TEST_MARK, "RUNNER_TRACKING_ID"]
            .iter()
            .any(|k| reason_of(daemon) == format!("escapee: marker {k}={marker}")),
        "{answer:#}"
    );
    assert_eq!(answer["members"].as_array().unwrap().len(), 3, "{answer:#}");
    // Nothing moved, nothing recorded.
    let mut after = source.pids();
    after.sort_unstable();
    assert_eq!(before, after);
    agent.assert_nothing_created();
    // The runner's own marker is looked for without being asked.
    let out = agent.cli(&["adopt", &tree.id().to_string(), "--dry-run", "--json"]);
    let answer = json(&out);
    let daemon_reason = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"] == daemon)
        .map(|m| m["reason"].clone());
    assert_eq!(
        daemon_reason,
        Some(format!("escapee: marker RUNNER_TRACKING_ID={marker}").into()),
        "{answer:#}"
    );
    // The plain output names each pid with its reason.
    let out = agent.cli(&["adopt", &tree.id().to_string(), "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{orphan}  escapee: same session")),
        "{text}"
    );
}

#[test]
fn bad_pids_are_refused_with_a_clear_error_and_nothing_moves() {
    require_privileges!();
    let agent = TestAgent::start();
    let gone = {
        let mut c = Command::new("true").spawn().unwrap();
        c.wait().unwrap();
        c.id().to_string()
    };
    let agent_pid = agent.pid().unwrap().to_string();
    for (pid, says) in [
        (gone.as_str(), format!("no such process: {gone}")),
        ("1", "pid 1 is the init process".to_string()),
        (agent_pid.as_str(), "is the wfcg agent".to_string()),
        ("0", "not a valid process id".to_string()),
    ] {
        let out = agent.cli_expect(2, &["adopt", "--", pid]);
        assert!(stderr(&out).contains(&says), "{pid}: {}", stderr(&out));
        agent.cli_expect(2, &["kill", "--pid", pid]);
    }
    // The caller's own shell, and the caller itself.
    for script in [r#""$0" adopt $$; exit $?"#, r#"exec "$0" adopt $$"#] {
        let out = Command::new("sh")
            .args(["-c", script])
            .arg(util::WFCG)
            .envs(agent.env())
            .expect_code(2);
        assert!(
            stderr(&out).contains("is the caller or one of its ancestors"),
            "{script}: {}",
            stderr(&out)
        );
    }
    // Bad markers and run ids are usage errors before anything is asked.
    agent.cli_expect(2, &["adopt", "1", "--marker", "NOVALUE="]);
    agent.assert_nothing_created();
}

#[test]
fn another_users_process_is_refused_with_exit_4() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let source = Source::new(&agent);
    let marker = util::marker("user");
    let roots = source.sh(&marker, "exec sleep 1020");
    let uid = user.uid.to_string();
    let theirs = source.spawn(
        &marker,
        &[
            "setpriv",
            &format!("--reuid={uid}"),
            &format!("--regid={}", user.gid),
            "--clear-groups",
            "--",
            "sleep",
            "1021",
        ],
    );
    assert!(wait_until(Duration::from_secs(10), || {
        util::cmdline(roots.id()) == "sleep 1020" && util::cmdline(theirs.id()) == "sleep 1021"
    }));

    for extra in [&[][..], &["--dry-run"][..]] {
        let out = agent
            .wfcg_as(&user)
            .args(["adopt", &roots.id().to_string()])
            .args(extra)
            .expect_code(4);
        assert!(stderr(&out).contains("not permitted"), "{}", stderr(&out));
    }
    agent
        .wfcg_as(&user)
        .args(["kill", "--pid", &roots.id().to_string()])
        .expect_code(4);
    assert_eq!(
        util::cmdline(roots.id()),
        "sleep 1020",
        "root's process hit"
    );
    agent.assert_nothing_created();
    // A cgroup path outside cgroupfs is refused, and its files are not touched.
    let fake = tempfile::tempdir().unwrap();
    std::fs::write(fake.path().join("cgroup.freeze"), "0").unwrap();
    agent
        .wfcg_as(&user)
        .args(["adopt", "--cgroup", fake.path().to_str().unwrap()])
        .expect_code(2);
    assert_eq!(
        std::fs::read_to_string(fake.path().join("cgroup.freeze")).unwrap(),
        "0"
    );

    // A marker does not reach root's processes: a root process carrying it,
    // started after theirs in the same cgroup, is not even read (whether it
    // carries the marker must change nothing, see trust_markers.rs). Their own
    // process they may adopt and kill (kill_own); root's stay where they were.
    let later = source.sh(&marker, "exec sleep 1022");
    assert!(wait_until(Duration::from_secs(10), || {
        util::cmdline(later.id()) == "sleep 1022"
    }));
    let out = agent
        .wfcg_as(&user)
        .args(["kill", "--pid", &theirs.id().to_string(), "--json"])
        .args(["--marker", &format!("{}={marker}", util::TEST_MARK)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["success"], true, "{result:#}");
    assert_eq!(
        util::cmdline(later.id()),
        "sleep 1022",
        "root's process hit"
    );
    assert_eq!(source.pids().len(), 2, "root's processes moved");
    let run = agent.status(result["run_id"].as_str().unwrap());
    assert_eq!(run["owner_uid"], user.uid);
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Root's `kill --pid` of a user's process takes by a marker only processes of
/// that user: a value the user chose (`CI_JOB_ID`, an executor's marker) that a
/// later process of root's and one of another user's also carry, in the same
/// cgroup, pulls in neither.
#[test]
fn roots_kill_pid_of_a_users_tree_takes_no_other_owners_process_by_its_marker() {
    require_privileges!();
    let agent = TestAgent::start();
    let (user, other) = (TestUser::get(), TestUser::other());
    let source = Source::new(&agent);
    let marker = util::marker("job");
    let job = [("CI_JOB_ID", marker.as_str())];
    let as_user = |u: &TestUser, secs: &'static str| {
        vec![
            "setpriv".to_string(),
            format!("--reuid={}", u.uid),
            format!("--regid={}", u.gid),
            "--clear-groups".into(),
            "--".into(),
            "sleep".into(),
            secs.into(),
        ]
    };
    let theirs_argv = as_user(&user, "1040");
    let theirs = source.spawn_with(&marker, &job, &strs(&theirs_argv));
    assert!(wait_until(Duration::from_secs(10), || {
        util::cmdline(theirs.id()) == "sleep 1040"
    }));
    let roots = source.spawn_with(&marker, &job, &["sleep", "1041"]);
    let others_argv = as_user(&other, "1042");
    let others = source.spawn_with(&marker, &job, &strs(&others_argv));
    assert!(wait_until(Duration::from_secs(10), || {
        util::cmdline(roots.id()) == "sleep 1041" && util::cmdline(others.id()) == "sleep 1042"
    }));
    let dry = agent
        .wfcg()
        .args(["adopt", "--dry-run", "--json", &theirs.id().to_string()])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{}", stderr(&dry));
    let listed = String::from_utf8_lossy(&dry.stdout).into_owned();
    for pid in [roots.id(), others.id()] {
        assert!(
            !listed.contains(&format!("\"pid\": {pid}"))
                && !listed.contains(&format!("\"pid\":{pid}")),
            "{pid} would be taken: {listed}"
        );
    }
    let out = agent
        .wfcg()
        .args([
            "kill",
            "--pid",
            &theirs.id().to_string(),
            "--force",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(wait_until(Duration::from_secs(10), || !util::alive(
        theirs.id()
    )));
    assert_eq!(
        util::cmdline(roots.id()),
        "sleep 1041",
        "root's process hit"
    );
    assert_eq!(
        util::cmdline(others.id()),
        "sleep 1042",
        "another user's process hit"
    );
}

#[test]
fn an_adopted_run_starts_when_its_root_started_and_its_deadlines_count_from_then() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("age");
    let before = SystemTime::now();
    let old = source.sh(&marker, "exec sleep 1030");
    let after = SystemTime::now();
    // Let it get old: time must pass for an age to show (this is not a wait for an event).
    std::thread::sleep(Duration::from_millis(1500));

    let out = agent.cli(&["adopt", &old.id().to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = json(&out)["run_id"].as_str().unwrap().to_string();
    let status = agent.status(&run_id);
    assert_eq!(status["status"], "running");
    assert!(status["age_secs"].as_f64().unwrap() >= 1.4, "{status:#}");
    let started: SystemTime =
        chrono::DateTime::parse_from_rfc3339(status["started_at"].as_str().unwrap())
            .unwrap()
            .into();
    // Start times are counted in clock ticks (10 ms): allow a few.
    let slack = Duration::from_millis(50);
    assert!(
        started + slack >= before && started <= after + slack,
        "started_at {status:#} not between {before:?} and {after:?}"
    );
    assert_eq!(status["command"][0], "sleep 1030");
    let ps = agent.cli(&["ps"]);
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains(&run_id),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );

    // A deadline counts from the real start: 1 s is over at once.
    let late = source.sh(&marker, "exec sleep 1031");
    std::thread::sleep(Duration::from_millis(1200));
    let out = agent.cli(&["adopt", &late.id().to_string(), "--timeout", "1s", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let late_run = json(&out)["run_id"].as_str().unwrap().to_string();
    assert!(
        agent.wait_status(&late_run, "timed_out"),
        "{:#}",
        agent.status(&late_run)
    );
    assert!(!util::alive(late.id()));
    assert_eq!(agent.status(&run_id)["status"], "running");
}

#[test]
fn twenty_concurrent_adopts_of_one_tree_make_one_run() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("many");
    let tree = source.sh(
        &marker,
        "for i in $(seq 20); do sleep 1040 & done; while :; do sleep 0.01; done",
    );
    assert!(wait_until(Duration::from_secs(20), || {
        running(&marker, "sleep 1040").len() == 20
    }));
    let pid = tree.id().to_string();

    let outs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| s.spawn(|| agent.cli(&["adopt", &pid, "--json"])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let answers: Vec<serde_json::Value> = outs
        .iter()
        .map(|o| {
            assert!(o.status.success(), "{}", stderr(o));
            json(o)
        })
        .collect();
    let ids: std::collections::HashSet<&str> = answers
        .iter()
        .map(|a| a["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let fresh = answers
        .iter()
        .filter(|a| a["already_adopted"] == false)
        .count();
    assert_eq!(fresh, 1, "{answers:#?}");
    assert_eq!(agent.sql("select count(*) from runs"), "1");
    let run_id = ids.into_iter().next().unwrap().to_string();
    // The whole tree is in the run: the root, its 20 sleeps and the loop's sleep.
    let payload = agent.run_cgroup(&run_id).child("payload");
    assert!(payload.procs().unwrap().len() >= 21);
    assert!(source.pids().is_empty(), "{:?}", source.pids());
    let result = agent.kill_ok(&run_id, &["--force"]);
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
    util::assert_no_marked_processes(&run_id, &marker);
}

#[test]
fn an_adopted_run_outlives_an_agent_restart_and_is_killed_after_it() {
    require_privileges!();
    let mut agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("restart");
    let tree = source.sh(&marker, "sleep 1050 & sleep 1051 & wait");
    assert!(wait_until(Duration::from_secs(10), || {
        !running(&marker, "sleep 1051").is_empty()
    }));
    let out = agent.cli(&[
        "adopt",
        &tree.id().to_string(),
        "--run-id",
        "run_5fbae44ab6f0",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json(&out)["run_id"], "run_5fbae44ab6f0");

    agent.kill9();
    agent.spawn();

    let status = agent.status("run_5fbae44ab6f0");
    assert_eq!(status["status"], "running", "{status:#}");
    assert_eq!(status["adopted"], "pid");
    assert_eq!(status["processes"], 3, "{status:#}");
    // The root is no supervisor: a graceful kill signals it too.
    let result = agent.kill_ok("run_5fbae44ab6f0", &["--grace", "2s"]);
    assert_eq!(result["processes_killed"], 3, "{result:#}");
    util::assert_no_marked_processes("run_5fbae44ab6f0", &marker);
}

#[test]
fn a_cgroup_is_adopted_in_place_and_killed_through_its_own_cgroup_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("inplace");
    let _tree = source.sh(&marker, "setsid sleep 1060 & sleep 1061 & wait");
    assert!(wait_until(Duration::from_secs(10), || {
        source.pids().len() == 3
    }));
    let path = source.cg.path().to_str().unwrap().to_string();

    let out = agent.cli(&["adopt", "--cgroup", &path, "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = json(&out);
    assert_eq!(answer["members"].as_array().unwrap().len(), 3);
    assert_eq!(answer["cgroup"], path.as_str());
    let run_id = answer["run_id"].as_str().unwrap().to_string();
    assert_eq!(agent.status(&run_id)["processes"], 3);
    // Nothing was moved: the processes are where they were.
    assert_eq!(source.pids().len(), 3);

    let result = agent.kill_ok(&run_id, &["--force"]);
    assert_eq!(result["processes_killed"], 3, "{result:#}");
    util::assert_no_marked_processes(&run_id, &marker);
    assert!(!source.cg.events().unwrap().populated);

    // A cgroup that holds the caller is refused.
    let other = Source::new(&agent);
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$1"; exec "$0" adopt --cgroup "$2""#)
        .arg(util::WFCG)
        .arg(other.procs_file())
        .arg(other.cg.path())
        .envs(agent.env())
        .expect_code(2);
    assert!(
        stderr(&out).contains("holds the caller"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_tree_in_the_callers_own_cgroup_is_adopted_without_its_neighbours() {
    require_privileges!();
    let agent = TestAgent::start();
    let marker = util::marker("here");
    let _sweep = Sweep(&marker);
    // Started right here, in whatever cgroup this test runs in (the root cgroup
    // on a hybrid host, which holds the agent's root too), beside a neighbour.
    let spawn = |script: &str| {
        KillOnDrop(
            unmarked(&mut Command::new("sh"))
                .args(["-c", script])
                .env(util::TEST_MARK, &marker)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let mut tree = spawn("sleep 1070 & sleep 1071 & wait");
    let neighbour = spawn("exec sleep 1072");
    assert!(wait_until(Duration::from_secs(10), || {
        !running(&marker, "sleep 1071").is_empty() && util::cmdline(neighbour.id()) == "sleep 1072"
    }));

    let out = agent.cli(&["kill", "--pid", &tree.id().to_string(), "--json"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["processes_killed"], 3, "{result:#}");
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(running(&marker, "sleep 1070").is_empty());
    assert!(running(&marker, "sleep 1071").is_empty());
    assert!(util::alive(neighbour.id()), "the neighbour was taken");
}

#[test]
fn an_adopted_tree_that_ends_by_itself_has_exited_not_been_lost() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("ends");
    // It ends when its stdin closes: the test decides when.
    let mut tree = KillOnDrop(
        unmarked(&mut Command::new("sh"))
            .arg("-c")
            .arg(r#"echo $$ > "$0"; exec sh -c 'sleep 1080 & read x; kill $!'"#)
            .arg(source.procs_file())
            .env(util::TEST_MARK, &marker)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        !running(&marker, "sleep 1080").is_empty()
    }));
    let out = agent.cli(&["adopt", &tree.id().to_string(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run_id = json(&out)["run_id"].as_str().unwrap().to_string();

    drop(tree.0.stdin.take());
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());

    assert!(
        agent.wait_status(&run_id, "exited"),
        "{:#}",
        agent.status(&run_id)
    );
    // The status is written first, then the cleanup removes the cgroup.
    assert!(
        wait_until(Duration::from_secs(10), || !agent
            .run_cgroup(&run_id)
            .exists()),
        "cgroup left behind"
    );
}
