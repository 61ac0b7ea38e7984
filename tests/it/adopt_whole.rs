//! Adopted trees found whole: markers inferred from the root's environment,
//! and what an adoption never takes. Trees are started by the test, outside
//! wfcg, in a source cgroup of their own (see adopt.rs).

use std::time::Duration;

use crate::adopt::{Source, Sweep, json, running, stderr};
use crate::hard_kills::python3;
use crate::require_privileges;
use crate::util::{self, Dir, TestAgent, wait_until};

/// A root that leaves a daemon of the worst kind: forked twice (its parent is
/// init), in a session of its own, every catchable signal blocked, re-executed
/// under a kernel thread's name (argv and `comm`). It carries only the
/// environment the tree gave it. `argv[1]` gets the daemon's pid.
const ADVERSARY: &str = r#"
import os, signal, sys
DAEMON = '''
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, b"kworker/u8:3", 0, 0, 0)
open(sys.argv[1] + ".tmp", "w").write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    time.sleep(1000)
'''
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        os.execv(sys.executable, ["[kworker/u8:3]", "-c", DAEMON, sys.argv[1]])
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"#;

/// The adversary's tree, started in `source`, and its daemon's pid once it runs.
fn adversary(source: &Source, marker: &str, dir: &Dir) -> (util::KillOnDrop, i32) {
    let ready = dir.join("daemon.pid");
    let tree = source.spawn(
        marker,
        &[
            python3(),
            "-c",
            ADVERSARY,
            dir.join("daemon.pid").to_str().unwrap(),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(20), || ready.exists()),
        "the adversary's daemon did not start"
    );
    let daemon: i32 = std::fs::read_to_string(&ready)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_ne!(
        util::ppid(daemon),
        tree.id(),
        "the daemon did not leave its tree"
    );
    assert!(
        util::cmdline(daemon).starts_with("[kworker/u8:3]"),
        "{}",
        util::cmdline(daemon)
    );
    (tree, daemon)
}

/// A double-forked, setsid, renamed, signal-blocking daemon of a tree is found
/// by the environment the tree gave it (a value no process outside the tree
/// has), named in a dry run, and killed by `kill --pid` with no `--marker`.
#[test]
fn kill_pid_finds_a_renamed_setsid_daemon_by_an_inferred_marker() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("adversary");
    let _sweep = Sweep(&marker);
    let dir = Dir::new("wfcg-adversary");
    let (mut tree, daemon) = adversary(&source, &marker, &dir);

    let out = agent.cli(&[
        "kill",
        "--pid",
        &tree.id().to_string(),
        "--grace",
        "2s",
        "--json",
    ]);

    let survivors = util::pids_with_env(util::TEST_MARK, &marker);
    eprintln!(
        "survivors of kill --pid with no --marker: {} ({})",
        survivors.len(),
        util::describe(&survivors)
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(survivors.is_empty(), "{result:#}");
    assert!(!util::alive(daemon));
    assert_eq!(result["success"], true, "{result:#}");
    assert_eq!(result["cleanup_status"]["processes_remaining"], 0);
}

/// A dry run names each inferred marker (its name, not its value) and each
/// process it pulled in; a later command of the root's own launcher carrying
/// the same value makes that value common: it is not inferred.
#[test]
fn a_dry_run_names_the_inferred_markers_and_what_they_pulled_in() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("named");
    let _sweep = Sweep(&marker);
    let dir = Dir::new("wfcg-adversary-dry");
    let (tree, daemon) = adversary(&source, &marker, &dir);

    let out = agent.cli(&["adopt", &tree.id().to_string(), "--dry-run", "--json"]);

    assert!(out.status.success(), "{}", stderr(&out));
    let answer = json(&out);
    assert_eq!(
        answer["inferred_markers"],
        serde_json::json!([util::TEST_MARK]),
        "{answer:#}"
    );
    let daemon_reason = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["pid"] == daemon)
        .map(|m| m["reason"].clone());
    assert_eq!(
        daemon_reason,
        Some(format!("escapee: inferred marker {}", util::TEST_MARK).into()),
        "{answer:#}"
    );
    let text = String::from_utf8_lossy(
        &agent
            .cli(&["adopt", &tree.id().to_string(), "--dry-run"])
            .stdout,
    )
    .into_owned();
    assert!(
        text.contains(&format!("inferred markers: {}", util::TEST_MARK)),
        "{text}"
    );
    assert!(
        !text.contains(&marker),
        "an inferred value was printed: {text}"
    );

    // The test (the root's launcher) starts another command with the same value:
    // the value is no longer the tree's alone.
    let sibling = source.sh(&marker, "exec sleep 1095");
    assert!(wait_until(Duration::from_secs(10), || !running(
        &marker,
        "sleep 1095"
    )
    .is_empty()));
    let answer = json(&agent.cli(&["adopt", &tree.id().to_string(), "--dry-run", "--json"]));
    assert!(answer.get("inferred_markers").is_none(), "{answer:#}");
    let taken: Vec<i64> = answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["pid"].as_i64().unwrap())
        .collect();
    assert!(!taken.contains(&i64::from(sibling.id())), "{answer:#}");
    agent.assert_nothing_created();
}

/// A graceful `kill --pid` (and `adopt --kill`) thaws what it froze before
/// SIGTERM: the tree's handler runs (its file appears) and the kill ends
/// without SIGKILL.
#[test]
fn a_graceful_kill_pid_lets_the_term_handler_run() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let dir = Dir::new("wfcg-adopt-handler");
    for (i, verb) in [&["kill", "--pid"][..], &["adopt", "--kill"][..]]
        .into_iter()
        .enumerate()
    {
        let marker = util::marker("handler");
        let said = dir.join(format!("said-{i}"));
        let script = format!(
            "trap 'echo bye > {}; exit 0' TERM; touch {}.up; while :; do sleep 0.1; done",
            said.display(),
            said.display()
        );
        let mut tree = source.sh(&marker, &script);
        assert!(wait_until(Duration::from_secs(10), || dir
            .join(format!("said-{i}.up"))
            .exists()));

        let out = agent.cli(
            &[
                verb,
                &[&tree.id().to_string(), "--grace", "10s", "--json"][..],
            ]
            .concat(),
        );

        assert!(out.status.success(), "{verb:?}: {}", stderr(&out));
        let answer = json(&out);
        // `kill --pid` answers the kill's result; `adopt --kill` has it in `kill`.
        let result = if i == 0 { &answer } else { &answer["kill"] };
        assert!(tree.wait_timeout(Duration::from_secs(10)).is_some());
        assert_eq!(
            std::fs::read_to_string(&said).unwrap_or_default(),
            "bye\n",
            "{verb:?}: {result:#}"
        );
        let phases = util::phase_names(result);
        assert!(
            phases.contains(&"term_wait".to_string()),
            "{verb:?}: {result:#}"
        );
        assert!(
            !phases.contains(&"kill".to_string()),
            "{verb:?}: SIGKILL was needed: {result:#}"
        );
    }
}

/// The root's ancestors are never taken, not even when they carry a marker the
/// operator named; other processes carrying it are taken whatever their age.
#[test]
fn a_named_marker_takes_older_carriers_but_never_the_roots_ancestors() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("ancestor");
    let _sweep = Sweep(&marker);
    // The launcher (an ancestor) starts an older neighbour, then the root.
    let launcher = source.sh(
        &marker,
        "sleep 1101 & sleep 0.2; sh -c 'sleep 1102 & wait' & wait; exec sleep 1103",
    );
    assert!(wait_until(Duration::from_secs(10), || !running(
        &marker,
        "sleep 1102"
    )
    .is_empty()));
    let root = running(&marker, "sh -c sleep 1102 & wait")[0];
    let older = running(&marker, "sleep 1101")[0];

    let out = agent.cli(&[
        "kill",
        "--pid",
        &root.to_string(),
        "--marker",
        &format!("{}={marker}", util::TEST_MARK),
        "--json",
    ]);

    assert!(out.status.success(), "{}", stderr(&out));
    let result = json(&out);
    assert_eq!(result["success"], true, "{result:#}");
    assert!(
        util::alive(launcher.id()),
        "the root's parent was taken: {result:#}"
    );
    assert!(
        !util::alive(older),
        "the older carrier of the named marker lives: {result:#}"
    );
    assert!(running(&marker, "sleep 1102").is_empty());
}

/// A process of the tree the adoption must leave alone (here the `wfcg run`
/// it started, which is in a run of its own) and that lives on after the kill:
/// the result says so and does not succeed.
#[test]
fn a_kill_pid_names_what_of_the_tree_lives_on_outside_it() {
    require_privileges!();
    let agent = TestAgent::start();
    let source = Source::new(&agent);
    let marker = util::marker("outside");
    let _sweep = Sweep(&marker);
    let env: Vec<(&str, String)> = agent
        .env()
        .into_iter()
        .map(|(k, v)| (k, v.display().to_string()))
        .collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let script = format!("{} run -q -- sleep 1120 & exec sleep 1121", util::WFCG);
    let tree = source.spawn_with(&marker, &env, &["sh", "-c", &script]);
    assert!(wait_until(Duration::from_secs(20), || {
        !running(&marker, "sleep 1120").is_empty() && util::cmdline(tree.id()) == "sleep 1121"
    }));
    let nested = agent.ps(true);
    let nested_id = nested[0]["run_id"].as_str().unwrap().to_string();

    let out = agent.cli(&["kill", "--pid", &tree.id().to_string(), "--force", "--json"]);

    let result = json(&out);
    assert_eq!(out.status.code(), Some(1), "{result:#}");
    assert_eq!(result["success"], false, "{result:#}");
    let message = result["message"].as_str().unwrap();
    assert!(!message.contains("nothing left"), "{message}");
    let left = result["cleanup_status"]["left_alone"].as_array().unwrap();
    assert!(
        left.len() == 1
            && left[0]
                .as_str()
                .unwrap()
                .contains(&format!("in run {nested_id}")),
        "{result:#}"
    );
    assert!(!running(&marker, "sleep 1120").is_empty());
    agent.kill_ok(&nested_id, &["--force"]);
}
