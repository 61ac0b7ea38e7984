//! A newcomer's first runs (issue 22, items 1 and 2): no workspace is removed
//! unless that command line (or an operator's template) asks, never one holding
//! what the run did not make or a git repository with changes, and what became
//! of it is said in the run's output, `wfcg status` and the audit trail; the
//! default template does not kill a plain command that prints for not sending
//! READY=1, and what an initializing run waits for is named with the flags that
//! change it.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::require_privileges;
use crate::util::{TestAgent, TestUser, described, marker, text, wait_until};

/// A directory of the user's (for workspaces), removed by the test.
fn user_dir(user: &TestUser) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wfcg-newcomer")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(dir.path(), Some(user.uid), Some(user.gid)).unwrap();
    dir
}

/// A directory `name` in `parent`, the user's.
fn user_ws(user: &TestUser, parent: &Path, name: &str) -> std::path::PathBuf {
    let ws = parent.join(name);
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(user.uid), Some(user.gid)).unwrap();
    ws
}

/// `wfcg run --run-id ID --workspace WS --cleanup-workspace -- sh -c SCRIPT` as
/// the user, with HOME in `home` (git reads its config there).
fn run_as(
    agent: &TestAgent,
    user: &TestUser,
    home: &Path,
    id: &str,
    ws: &Path,
    script: &str,
) -> Output {
    agent
        .wfcg_as(user)
        .current_dir(home)
        .env("HOME", home)
        .args(["run", "--run-id", id, "--workspace"])
        .arg(ws)
        .args(["--cleanup-workspace", "--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The reasons of the run's `workspace` audit records.
fn audited(agent: &TestAgent, id: &str) -> Vec<(String, String)> {
    let out = agent.cli(&["audit", "--run", id, "--json"]);
    assert!(out.status.success(), "{}", described(&out));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    records
        .iter()
        .filter(|r| r["action"] == "workspace")
        .map(|r| {
            (
                r["outcome"].as_str().unwrap_or("").to_string(),
                r["reason"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// `wfcg status RUN` as text.
fn status_text(agent: &TestAgent, id: &str) -> String {
    let out = agent.cli(&["status", id]);
    assert!(out.status.success(), "{}", described(&out));
    text(&out.stdout)
}

/// The README's case: `--workflow builder` on a workspace with notes and a git
/// repository leaves all of it in place (builder.toml used to remove it).
#[test]
fn newcomer_the_builder_workflow_leaves_the_workspace_and_its_git_repository() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws-test");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("notes.txt"), "mine\n").unwrap();
    let init = Command::new("git")
        .args(["init", "-q"])
        .current_dir(&ws)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", described(&init));
    let id = marker("builder").replace('-', "_");
    let out = agent
        .wfcg()
        .args([
            "run",
            "--run-id",
            &id,
            "--workflow",
            "builder",
            "--workspace",
        ])
        .arg(&ws)
        .args(["--", "sh", "-c", "echo building"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    assert!(
        text(&out.stdout).contains("building"),
        "{}",
        described(&out)
    );
    // The run's end is fully dealt with once its cgroup is gone (the workspace
    // was removed after it, when the template said so).
    let cg = agent.run_cgroup(&id);
    assert!(
        wait_until(Duration::from_secs(15), || !cg.path().exists()),
        "the run's cgroup stays"
    );
    assert!(
        !wait_until(Duration::from_secs(2), || !ws.join("notes.txt").exists()),
        "the workspace was removed: {:?}",
        ws.exists()
    );
    assert_eq!(
        std::fs::read_to_string(ws.join("notes.txt")).unwrap(),
        "mine\n"
    );
    assert!(ws.join(".git/HEAD").is_file());
    let status = status_text(&agent, &id);
    assert!(!status.contains("cleanup:"), "{status}");
}

/// `--cleanup-workspace` on a workspace with a git repository holding untracked
/// files or uncommitted changes, or with a file older than the run: kept, and
/// why is said at the run's end, in `status` and in the audit trail.
#[test]
fn newcomer_cleanup_keeps_a_dirty_repository_or_older_files_and_says_why() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let home = user_dir(&user);
    let commit = "git -c user.name=t -c user.email=t@t commit -qm one";
    let cases = [
        (
            "untracked",
            "git init -q . && echo x > made.txt".to_string(),
            "untracked",
        ),
        (
            "changed",
            format!("git init -q . && echo x > f && git add f && {commit} && echo y >> f"),
            "uncommitted changes",
        ),
        (
            "older",
            "echo new > new.txt".to_string(),
            "old.txt is older than the run",
        ),
    ];
    for (name, script, why) in cases {
        let ws = user_ws(&user, home.path(), name);
        if name == "older" {
            // Made before the run (and dated an hour back): not the run's.
            let old = ws.join("old.txt");
            std::fs::write(&old, "mine\n").unwrap();
            std::os::unix::fs::chown(&old, Some(user.uid), Some(user.gid)).unwrap();
            let touch = Command::new("touch")
                .args(["-d", "1 hour ago"])
                .arg(&old)
                .output()
                .unwrap();
            assert!(touch.status.success());
        }
        let id = marker(name).replace('-', "_");
        let out = run_as(&agent, &user, home.path(), &id, &ws, &script);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", described(&out));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("will be removed when the run ends (--cleanup-workspace)"),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains("workspace kept: ") && stderr.contains(why),
            "{name}: {stderr}"
        );
        assert!(ws.is_dir(), "{name}: the workspace was removed");
        let status = status_text(&agent, &id);
        assert!(
            status.contains("cleanup:    workspace kept: ") && status.contains(why),
            "{name}: {status}"
        );
        let audit = audited(&agent, &id);
        assert_eq!(audit.len(), 1, "{name}: {audit:?}");
        assert_eq!(audit[0].0, "kept", "{name}: {audit:?}");
        assert!(audit[0].1.contains(why), "{name}: {audit:?}");
        // Still kept once the run's end is dealt with by the reaper too.
        let cg = agent.run_cgroup(&id);
        assert!(wait_until(Duration::from_secs(15), || !cg.path().exists()));
        assert!(ws.is_dir(), "{name}: the workspace was removed at the end");
        assert_eq!(audited(&agent, &id).len(), 1, "{name}: audited twice");
    }
    assert!(home.path().join("untracked/made.txt").is_file());
    assert!(home.path().join("older/old.txt").is_file());
}

/// A workspace whose every entry the run made, with a clean git repository, is
/// removed, and that is said everywhere. A repository config that names a
/// command for git to run (core.fsmonitor) is not obeyed.
#[test]
fn newcomer_cleanup_removes_a_clean_workspace_the_run_made_and_says_so() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let home = user_dir(&user);
    let ws = user_ws(&user, home.path(), "ws");
    let ran = home.path().join("fsmonitor-ran");
    let script = format!(
        "mkdir -p out/deep && echo x > out/deep/a && git init -q . && echo '/out/' > .gitignore \
         && git add .gitignore && git -c user.name=t -c user.email=t@t commit -qm one \
         && git config core.fsmonitor 'touch {}'",
        ran.display()
    );
    let id = marker("clean").replace('-', "_");
    let out = run_as(&agent, &user, home.path(), &id, &ws, &script);
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    let said = format!("workspace removed {}", ws.display());
    assert!(text(&out.stderr).contains(&said), "{}", described(&out));
    assert!(!ws.exists(), "the workspace is still there");
    assert!(!ran.exists(), "git ran the repository's fsmonitor command");
    assert!(
        status_text(&agent, &id).contains(&format!("cleanup:    {said}")),
        "{}",
        status_text(&agent, &id)
    );
    let audit = audited(&agent, &id);
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0].0, "removed", "{audit:?}");
}

/// A plain command that prints and then runs past the init timeout is not
/// killed under the default template: its output makes it ready.
#[test]
fn newcomer_a_command_that_prints_is_not_killed_for_not_sending_ready() {
    require_privileges!();
    let agent = TestAgent::start();
    let out = agent
        .wfcg()
        .args(["run", "--init-timeout", "1s", "--"])
        .args(["sh", "-c", "echo hello; sleep 3; echo done"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", described(&out));
    assert_eq!(text(&out.stdout), "hello\ndone\n", "{}", described(&out));
}

/// A silent command past the init timeout is killed, and the message names
/// what it was waiting for and the flags that change it.
#[test]
fn newcomer_a_silent_command_is_killed_naming_the_condition_and_the_flags() {
    require_privileges!();
    let agent = TestAgent::start();
    let id = marker("silent").replace('-', "_");
    let out = agent
        .wfcg()
        .args(["run", "--run-id", &id, "--init-timeout", "1s", "--"])
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{}", described(&out));
    let stderr = text(&out.stderr);
    for needle in [
        "waiting for READY=1 or its first output",
        "--ready-when",
        "--init-timeout",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in: {stderr}");
    }
    // The kill result, in `status` once the kill is over.
    assert!(
        agent.wait_status(&id, "timed_out"),
        "{}",
        status_text(&agent, &id)
    );
    let status = status_text(&agent, &id);
    assert!(
        status.contains("waiting for READY=1 or its first output"),
        "{status}"
    );
}

/// `wfcg status` (and `ps --stuck`) of an initializing run names what it waits for.
#[test]
fn newcomer_status_of_an_initializing_run_names_its_condition() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&["--init-timeout", "10s"], "exec sleep 100");
    let status = status_text(&agent, &run.id);
    assert!(
        status.contains(
            "waiting:    READY=1 or its first output on stdout or stderr (--ready-when COND \
             changes the condition, --init-timeout DUR the time allowed)"
        ),
        "{status}"
    );
    let json = agent.status(&run.id);
    assert!(
        json["waiting_for"]
            .as_str()
            .unwrap_or("")
            .starts_with("READY=1 or its first output"),
        "{json:#}"
    );
    // With its own condition, that one.
    let port = agent.start_run(
        &["--init-timeout", "10s", "--ready-when", "port:1"],
        "exec sleep 100",
    );
    let status = status_text(&agent, &port.id);
    assert!(
        status.contains("waiting:    READY=1 or a listener on TCP port 1 (--ready-when"),
        "{status}"
    );
    agent.kill_ok(&run.id, &["--force"]);
    agent.kill_ok(&port.id, &["--force"]);
}

/// A killed run's workspace: the kill result says what became of it (removed,
/// or kept and why), and so does `status`.
#[test]
fn newcomer_the_kill_result_says_what_became_of_the_workspace() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    for (name, keep) in [("fresh", false), ("mine", true)] {
        let ws = dir.path().join(name);
        std::fs::create_dir(&ws).unwrap();
        if keep {
            std::fs::write(ws.join("old.txt"), "mine\n").unwrap();
            let touch = Command::new("touch")
                .args(["-d", "1 hour ago"])
                .arg(ws.join("old.txt"))
                .output()
                .unwrap();
            assert!(touch.status.success());
        }
        let run = agent.start_run(
            &["--workspace", ws.to_str().unwrap(), "--cleanup-workspace"],
            "echo x > made && exec sleep 100",
        );
        assert!(wait_until(Duration::from_secs(10), || ws
            .join("made")
            .exists()));
        let result = agent.kill_ok(&run.id, &[]);
        let said = result["cleanup_status"]["workspace"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if keep {
            assert!(
                said.starts_with("kept: ") && said.contains("old.txt is older than the run"),
                "{result:#}"
            );
            assert!(ws.join("old.txt").is_file() && ws.join("made").is_file());
        } else {
            assert_eq!(said, format!("removed {}", ws.display()), "{result:#}");
            assert!(!ws.exists());
        }
        let status = status_text(&agent, &run.id);
        assert!(
            status.contains(&format!("cleanup:    workspace {said}")),
            "{status}"
        );
        assert_eq!(audited(&agent, &run.id).len(), 1);
    }
}
