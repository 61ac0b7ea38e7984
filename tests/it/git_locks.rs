//! Git locks held with no fd open (issue 11 item 3), with real git: `git
//! commit -a` holds `index.lock` with its fd closed while a `pre-commit` hook or
//! the editor runs; the same in a submodule (`.git/modules/*`) and a linked
//! worktree (`.git/worktrees/*`). A graceful kill reports the lock and waits for
//! it; a force kill leaves no lock behind: the next commit works and `git fsck`
//! is clean.
//!
//! A lock is the run's by its creator (issue 23): with an operator's shell and
//! an IDE-like `git status` loop in the repository outside the run, the run's
//! lock is still found, reported and removed; a lock created outside the run
//! (an outside commit stopped in its hook, a process gone) is never touched.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::require_privileges;
use crate::util::{GroupOnDrop, KillOnDrop, TestAgent, marker, wait_until};

const GIT_ENV: [(&str, &str); 7] = [
    ("GIT_AUTHOR_NAME", "t"),
    ("GIT_AUTHOR_EMAIL", "t@t"),
    ("GIT_COMMITTER_NAME", "t"),
    ("GIT_COMMITTER_EMAIL", "t@t"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_TERMINAL_PROMPT", "0"),
];

fn git(dir: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .current_dir(dir)
        .envs(GIT_ENV)
        .args(args)
        .output()
        .expect("running git")
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A repository in `dir` with one committed file.
fn make_repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git_ok(dir, &["init", "-q", "-b", "main", "."]);
    std::fs::write(dir.join("f"), "0\n").unwrap();
    git_ok(dir, &["add", "-A"]);
    git_ok(dir, &["commit", "-qm", "init"]);
}

/// A `pre-commit` hook in `hooks` that says it started (creates `started`, or
/// `$HOOK_STARTED` when set) and sleeps.
fn sleeping_hook(hooks: &Path, started: &Path) {
    std::fs::create_dir_all(hooks).unwrap();
    let hook = hooks.join("pre-commit");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch \"${{HOOK_STARTED:-{}}}\"\nexec sleep 1000\n",
            started.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Starts a detached run in `dir` running `script` with git's test environment
/// (and `extra_env`); returns its id.
fn start_git_run(
    agent: &TestAgent,
    dir: &Path,
    script: &str,
    extra_env: &[(&str, &str)],
) -> String {
    let out = agent
        .marked(&marker("git"))
        .envs(GIT_ENV)
        .envs(extra_env.iter().copied())
        .args(["run", "--detach", "--init-timeout", "0", "--workspace"])
        .arg(dir)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn git_sections(result: &Value) -> Vec<String> {
    let mut paths: Vec<String> = result["sections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["kind"] == "git")
        .map(|s| s["path"].as_str().unwrap().to_string())
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

fn removed(result: &Value) -> Vec<String> {
    result["cleanup_status"]["stale_locks_removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// One case: a commit in `work` (a work tree) stopped while `lock` exists,
/// killed gracefully (`--grace-git 1s`: the lock is reported and waited for) or
/// by force (the lock is reported and removed). Either way, afterwards no lock
/// is left, `git fsck` is clean and the next commit works.
struct Case<'a> {
    name: &'a str,
    work: PathBuf,
    lock: PathBuf,
    started: PathBuf,
    script: String,
    env: Vec<(&'a str, &'a str)>,
}

fn run_case(agent: &TestAgent, case: &Case, force: bool) {
    let _ = std::fs::remove_file(&case.started);
    std::fs::write(case.work.join("f"), format!("{}-{force}\n", case.name)).unwrap();
    let id = start_git_run(agent, &case.work, &case.script, &case.env);
    let holding = wait_until(Duration::from_secs(20), || {
        case.started.exists() && case.lock.exists()
    });
    assert!(
        holding,
        "{}: the commit did not stop holding {}",
        case.name,
        case.lock.display()
    );
    let lock = case.lock.display().to_string();

    let result = if force {
        agent.kill_ok(&id, &["--force"])
    } else {
        agent.kill_ok(&id, &["--grace-git", "1s"])
    };

    // A force kill looks at nothing before it kills: the lock is found after.
    assert_eq!(
        git_sections(&result).contains(&lock),
        !force,
        "{} (force {force}): {lock} reported as a git section or not: {result:#}",
        case.name
    );
    if force {
        assert!(
            removed(&result).contains(&lock),
            "{}: {result:#}",
            case.name
        );
    } else {
        assert!(result["waited_ms"].as_f64().unwrap() >= 900.0, "{result:#}");
        assert!(
            result["graces_expired"]
                .as_array()
                .unwrap()
                .contains(&"git".into()),
            "{result:#}"
        );
    }
    assert!(
        !case.lock.exists(),
        "{}: {lock} left behind: {result:#}",
        case.name
    );
    git_ok(&case.work, &["fsck", "--no-progress"]);
    commit_outside(&case.work);
}

/// The next commit in `work`, by hand: it works. An IDE loop in the repository
/// takes `index.lock` for a moment every 0.2 s, so a refusal is tried again,
/// within a deadline (a lock left behind fails every try).
fn commit_outside(work: &Path) {
    let args = ["-c", "core.hooksPath=/dev/null", "commit", "-qam", "after"];
    let mut last = None;
    let worked = wait_until(Duration::from_secs(5), || {
        let out = git(work, &args);
        let ok = out.status.success();
        last = Some(out);
        ok
    });
    let out = last.unwrap();
    assert!(
        worked,
        "the next commit in {} fails: {}",
        work.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A run's commit where an IDE loop takes `index.lock` for a moment every
/// 0.2 s: tried again until it gets the lock (and stops in its hook).
const RETRIED_COMMIT: &str = "until git commit -qam wip; do sleep 0.1; done";

/// Outside any run, in `repo`: an operator's shell (a process whose cwd is
/// there) and an IDE-like loop (`git status` every 0.2 s, which takes
/// `index.lock` for a moment each time).
struct Outsiders {
    _shell: GroupOnDrop,
    _ide: GroupOnDrop,
}

fn outsiders(repo: &Path) -> Outsiders {
    let shell = GroupOnDrop::spawn(Command::new("sleep").arg("1000").current_dir(repo));
    let ide = GroupOnDrop::spawn(
        Command::new("sh")
            .args([
                "-c",
                "while :; do git status >/dev/null 2>&1; sleep 0.2; done",
            ])
            .envs(GIT_ENV)
            .current_dir(repo),
    );
    Outsiders {
        _shell: shell,
        _ide: ide,
    }
}

/// A commit outside any run in `work`, stopped in its sleeping hook holding
/// `lock` (returns once its hook runs). Tried again while an IDE loop's
/// `git status` has the lock for a moment.
fn outside_commit(work: &Path, lock: &Path) -> GroupOnDrop {
    std::fs::write(work.join("f"), "outside\n").unwrap();
    let started = work.join("..").join(".outside-hook-started");
    let _ = std::fs::remove_file(&started);
    let mut commit = None;
    let holding = wait_until(Duration::from_secs(20), || {
        let running = commit
            .as_mut()
            .is_some_and(|c: &mut GroupOnDrop| c.0.try_wait().unwrap().is_none());
        if !running {
            commit = Some(GroupOnDrop::spawn(
                Command::new("git")
                    .args(["commit", "-qam", "outside"])
                    .envs(GIT_ENV)
                    .env("HOOK_STARTED", &started)
                    .current_dir(work)
                    .stderr(std::process::Stdio::null()),
            ));
        }
        started.exists() && lock.exists()
    });
    assert!(
        holding,
        "the outside commit did not take {}",
        lock.display()
    );
    commit.unwrap()
}

/// The outside commit's lock survived a kill of the run: still there, the
/// outside commit still in its hook, and the kill neither reported nor removed it.
fn assert_untouched(result: &Value, lock: &Path, commit: &mut GroupOnDrop) {
    let path = lock.display().to_string();
    assert!(
        lock.exists(),
        "{path} removed by the run's kill: {result:#}"
    );
    assert!(
        commit.0.try_wait().unwrap().is_none(),
        "the outside commit ended"
    );
    assert!(!git_sections(result).contains(&path), "{result:#}");
    assert!(!removed(result).contains(&path), "{result:#}");
}

#[test]
fn a_commit_stopped_in_its_pre_commit_hook_holds_index_lock_with_no_fd() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().canonicalize().unwrap().join("repo");
    make_repo(&repo);
    let started = repo.join(".git/hook-started");
    sleeping_hook(&repo.join(".git/hooks"), &started);
    let case = Case {
        name: "pre-commit",
        lock: repo.join(".git/index.lock"),
        work: repo,
        started,
        script: "git commit -qam wip".into(),
        env: vec![],
    };
    run_case(&agent, &case, false);
    run_case(&agent, &case, true);
}

#[test]
fn a_commit_waiting_for_its_editor_holds_index_lock_with_no_fd() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().canonicalize().unwrap().join("repo");
    make_repo(&repo);
    let started = repo.join(".git/editor-started");
    let editor = format!("touch {}; sleep 1000 #", started.display());
    let case = Case {
        name: "editor",
        lock: repo.join(".git/index.lock"),
        work: repo,
        started,
        script: "git commit -qa".into(),
        env: vec![("GIT_EDITOR", editor.leak())],
    };
    run_case(&agent, &case, false);
    run_case(&agent, &case, true);
}

#[test]
fn a_submodule_commit_holds_its_index_lock_below_git_modules() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let repo = repo_with_submodule(&base);
    let modules = repo.join(".git/modules/sub");
    let started = base.join("sub-hook-started");
    sleeping_hook(&modules.join("hooks"), &started);
    let case = Case {
        name: "submodule",
        lock: modules.join("index.lock"),
        work: repo.join("sub"),
        started,
        script: "git commit -qam wip".into(),
        env: vec![],
    };
    run_case(&agent, &case, false);
    run_case(&agent, &case, true);
}

#[test]
fn a_linked_worktree_commit_holds_its_index_lock_below_git_worktrees() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let repo = base.join("repo");
    make_repo(&repo);
    let wt = base.join("wt");
    git_ok(
        &repo,
        &["worktree", "add", "-q", "-b", "side", wt.to_str().unwrap()],
    );
    let started = base.join("wt-hook-started");
    sleeping_hook(&repo.join(".git/hooks"), &started);
    let case = Case {
        name: "worktree",
        lock: repo.join(".git/worktrees/wt/index.lock"),
        work: wt,
        started,
        script: "git commit -qam wip".into(),
        env: vec![],
    };
    run_case(&agent, &case, false);
    run_case(&agent, &case, true);
}

/// The case of issue 23: an operator's shell and an IDE loop in the
/// repository, a run's commit stopped in its pre-commit hook. A graceful kill
/// reports `index.lock` as a git section and waits its git grace; a force kill
/// removes it; either way the next commit works and `git fsck` is clean.
#[test]
fn with_an_operator_shell_and_an_ide_loop_in_the_repository_the_runs_index_lock_is_its() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().canonicalize().unwrap().join("repo");
    make_repo(&repo);
    let started = repo.join(".git/hook-started");
    sleeping_hook(&repo.join(".git/hooks"), &started);
    let _outside = outsiders(&repo);
    // The evidence is the creator's, as the agent says.
    let (status, health) = crate::agent::curl(&agent, "GET", "/v1/health", None);
    assert_eq!(status, "200");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["git_lock_creators"], "fanotify", "{health}");
    let case = Case {
        name: "pre-commit with outsiders",
        lock: repo.join(".git/index.lock"),
        work: repo,
        started,
        script: RETRIED_COMMIT.into(),
        env: vec![],
    };
    run_case(&agent, &case, false);
    run_case(&agent, &case, true);
}

/// A lock created outside the run is never the run's: an outside commit
/// stopped in its hook (with the IDE loop running) survives a graceful and a
/// force kill of a run working in the same repository, unreported; and a lock
/// left by an outside process already gone (nobody works in the repository
/// any more) survives a force kill.
#[test]
fn a_lock_created_outside_the_run_is_never_touched_by_its_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().canonicalize().unwrap().join("repo");
    make_repo(&repo);
    sleeping_hook(&repo.join(".git/hooks"), &tmp.path().join("started"));
    let lock = repo.join(".git/index.lock");
    {
        let _outside = outsiders(&repo);
        for force in [false, true] {
            let id = start_git_run(&agent, &repo, "exec sleep 1000", &[]);
            let mut commit = outside_commit(&repo, &lock);
            let result = if force {
                agent.kill_ok(&id, &["--force"])
            } else {
                agent.kill_ok(&id, &["--grace-git", "5s"])
            };
            assert_untouched(&result, &lock, &mut commit);
            if !force {
                assert!(result["waited_ms"].as_f64().unwrap() < 4000.0, "{result:#}");
            }
            drop(commit);
            std::fs::remove_file(&lock).unwrap();
        }
    }
    // Nobody outside works in the repository: a lock an outside process made
    // (from elsewhere) and left is still not the run's. (Its creator lives on, so
    // that the agent finds it when it reads the event: a creator gone before
    // that is unknown, and the working-directory rule decides, see
    // docs/killing.md.)
    let id = start_git_run(&agent, &repo, "exec sleep 1000", &[]);
    let left = repo.join(".git/refs/heads/left.lock");
    let mut maker = Command::new("sh");
    maker
        .args([
            "-c",
            &format!(": > {}; echo made; exec sleep 1000", left.display()),
        ])
        .current_dir("/")
        .stdout(Stdio::piped());
    let mut maker = KillOnDrop(maker.spawn().unwrap());
    let mut said = String::new();
    BufReader::new(maker.0.stdout.take().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "made");
    let result = agent.kill_ok(&id, &["--force"]);
    drop(maker);
    assert!(left.exists(), "{result:#}");
    assert!(!removed(&result).contains(&left.display().to_string()));
}

/// The same in a submodule and a linked worktree: with outsiders in the
/// superproject and an outside commit holding the superproject's `index.lock`,
/// the run's lock below `.git/modules` or `.git/worktrees` is found and
/// removed, and the outside one is not.
#[test]
fn in_submodules_and_linked_worktrees_the_runs_lock_is_found_and_an_outside_one_kept() {
    require_privileges!();
    let agent = TestAgent::start();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let repo = repo_with_submodule(&base);
    let wt = base.join("wt");
    git_ok(
        &repo,
        &["worktree", "add", "-q", "-b", "side", wt.to_str().unwrap()],
    );
    let started = base.join("hook-started");
    let modules = repo.join(".git/modules/sub");
    sleeping_hook(&modules.join("hooks"), &started);
    sleeping_hook(&repo.join(".git/hooks"), &started);
    let _outside = outsiders(&repo);
    let _in_wt = GroupOnDrop::spawn(Command::new("sleep").arg("1000").current_dir(&wt));
    let outside_lock = repo.join(".git/index.lock");
    let mut commit = outside_commit(&repo, &outside_lock);
    let cases = [
        Case {
            name: "submodule with outsiders",
            lock: modules.join("index.lock"),
            work: repo.join("sub"),
            started: started.clone(),
            script: RETRIED_COMMIT.into(),
            env: vec![],
        },
        Case {
            name: "worktree with outsiders",
            lock: repo.join(".git/worktrees/wt/index.lock"),
            work: wt.clone(),
            started: started.clone(),
            script: RETRIED_COMMIT.into(),
            env: vec![],
        },
    ];
    for case in &cases {
        for force in [false, true] {
            run_case(&agent, case, force);
            assert!(
                outside_lock.exists(),
                "{}: the outside lock removed",
                case.name
            );
            assert!(commit.0.try_wait().unwrap().is_none());
        }
    }
}

/// `base/repo`, a repository with `base/upstream` added as its submodule `sub`
/// and committed.
fn repo_with_submodule(base: &Path) -> PathBuf {
    let (repo, upstream) = (base.join("repo"), base.join("upstream"));
    make_repo(&upstream);
    make_repo(&repo);
    git_ok(
        &repo,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            upstream.to_str().unwrap(),
            "sub",
        ],
    );
    git_ok(&repo, &["commit", "-qm", "add sub"]);
    repo
}
