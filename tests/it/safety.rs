//! The safety suite: kills in the middle of real work (git commits, SQLite
//! transactions, write-temp-and-rename, HTTP requests, deep trees, held git
//! locks) leave nothing broken and nothing behind. Each scenario is repeated
//! inside its test, to catch the kill at different moments.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::require_privileges;
use crate::util::{self, Dir, KillOnDrop, TestAgent, phase_names, wait_until};

/// How many times each scenario is repeated.
const REPS: usize = 5;

/// The environment git gets in these tests: an identity, and no system or user config.
const GIT_ENV: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "t"),
    ("GIT_AUTHOR_EMAIL", "t@t"),
    ("GIT_COMMITTER_NAME", "t"),
    ("GIT_COMMITTER_EMAIL", "t@t"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
];

/// `git ARGS` in `repo`.
fn git(repo: &Path, args: &[&str]) -> Output {
    Command::new("git")
        .current_dir(repo)
        .envs(GIT_ENV)
        .args(args)
        .output()
        .expect("running git")
}

/// `git ARGS` in `repo`, which must succeed; its stdout.
fn git_ok(repo: &Path, args: &[&str]) -> String {
    let out = git(repo, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        repo.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A repository (in `dir`) with `files` files and one commit of them.
fn make_repo(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    git_ok(dir, &["init", "-q", "."]);
    for i in 0..files {
        std::fs::write(dir.join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    git_ok(dir, &["add", "-A"]);
    git_ok(dir, &["commit", "-qm", "init"]);
}

/// Every `*.lock` file under a directory.
fn lock_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p);
            } else if p.extension().is_some_and(|x| x == "lock") {
                found.push(p);
            }
        }
    }
    found
}

/// The sections of a kill result (or of a status) of one kind.
fn sections_of<'a>(result: &'a Value, kind: &str) -> Vec<&'a Value> {
    result["sections"]
        .as_array()
        .expect("sections")
        .iter()
        .filter(|s| s["kind"] == kind)
        .collect()
}

/// One line about a kill: the kinds of section seen, the wait, the phases.
fn summary(result: &Value) -> String {
    let kinds: Vec<&str> = result["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    format!(
        "sections {kinds:?}, waited {:.0} ms, graces expired {}, stale locks removed {}, phases {:?}",
        result["waited_ms"].as_f64().unwrap_or(0.0),
        result["graces_expired"],
        result["cleanup_status"]["stale_locks_removed"],
        phase_names(result)
    )
}

/// The paths of `cleanup_status.stale_locks_removed`.
fn stale_locks_removed(result: &Value) -> Vec<String> {
    result["cleanup_status"]["stale_locks_removed"]
        .as_array()
        .expect("stale_locks_removed")
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Writes a helper script into `dir` and returns its path.
fn script(dir: &Dir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Waits until a file holds a number (a pid a helper wrote when it was ready).
fn wait_for_pid_file(path: &Path) -> i32 {
    let mut pid = None;
    let ok = wait_until(Duration::from_secs(20), || {
        pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok());
        pid.is_some()
    });
    assert!(ok, "{} never got a pid", path.display());
    pid.unwrap()
}

/// Holds files open, as a process in the middle of a git operation does:
/// `hold.py READY RELEASE_AFTER ON_TERM SPEC...` where each SPEC is
/// `create:PATH` (O_CREAT|O_EXCL, like git's lock files) or `open:PATH`
/// (an existing file, read-only). Writes its pid to READY once everything is
/// open. With RELEASE_AFTER ≥ 0 it closes everything (and unlinks what it
/// created) after that many seconds, as git renames its lock into place. With
/// ON_TERM other than `-`, SIGTERM writes there whether the files were still
/// held, and exits; otherwise SIGTERM kills it without any cleanup.
const HOLD_PY: &str = r#"
import os, signal, sys, time
ready, release_after, on_term = sys.argv[1], float(sys.argv[2]), sys.argv[3]
held = []
for spec in sys.argv[4:]:
    how, path = spec.split(':', 1)
    if how == 'create':
        held.append((os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644), path, True))
    else:
        held.append((os.open(path, os.O_RDONLY), path, False))
state = {'held': True}
if on_term != '-':
    def term(*_):
        with open(on_term, 'w') as f:
            f.write('held' if state['held'] else 'released')
        os._exit(0)
    signal.signal(signal.SIGTERM, term)
tmp = ready + '.tmp'
with open(tmp, 'w') as f:
    f.write(str(os.getpid()))
os.rename(tmp, ready)
if release_after >= 0:
    time.sleep(release_after)
    state['held'] = False
    for fd, path, created in held:
        os.close(fd)
        if created:
            os.unlink(path)
while True:
    time.sleep(1000)
"#;

/// Starts a run in `ws` that runs `hold.py READY RELEASE_AFTER ON_TERM SPEC...`
/// and waits until it holds its files. Returns the run and the holder's pid.
fn start_holder(
    agent: &TestAgent,
    hold: &Path,
    ws: &Dir,
    ready: &Path,
    hold_args: &str,
) -> (util::Run, i32) {
    let _ = std::fs::remove_file(ready);
    let run = agent.start_run(
        &["--workspace", ws.str()],
        &format!(
            "exec python3 {} {} {hold_args}",
            hold.display(),
            ready.display()
        ),
    );
    let pid = wait_for_pid_file(ready);
    (run, pid)
}

/// A kill in the middle of a loop of `git add -A && git commit` in a repository
/// of 2000 files leaves the repository sound: fsck is clean, no lock file is
/// left, and git works. A git section in the kill result is named as such.
#[test]
fn kill_during_git_commits_leaves_the_repository_sound() {
    require_privileges!();
    let agent = TestAgent::start();
    let mut git_seen = 0;
    // One repository for all the kills (creating 2000 files takes seconds on a
    // slow disk): each run goes on from where the last kill left it.
    let dir = Dir::new("wfcg-safety-git");
    let repo = dir.join("repo");
    make_repo(&repo, 2000);
    let commits = || {
        String::from_utf8_lossy(&git(&repo, &["rev-list", "--count", "HEAD"]).stdout)
            .trim()
            .parse::<u32>()
            .unwrap_or(0)
    };
    for rep in 0..REPS {
        let before = commits();
        let exports: String = GIT_ENV
            .iter()
            .map(|(k, v)| format!("export {k}={v}; "))
            .collect();
        // dash has no $RANDOM: the file to touch is picked by a multiplicative step.
        let run = agent.start_run(
            &["--workspace", repo.to_str().unwrap()],
            &format!(
                "{exports} cd {} || exit 1; i=0
                 while :; do
                   i=$((i+1)); echo $i >> f$((i*7919%2000))
                   git add -A && git commit -qm x
                 done",
                repo.display()
            ),
        );
        // A few commits, a different number each time, to hit a different moment.
        let want = before + 3 + rep as u32;
        assert!(
            wait_until(Duration::from_secs(30), || commits() > want),
            "the git loop made {} commits",
            commits()
        );

        let result = agent.kill_ok(&run.id, &["--grace-git", "5s", "--grace-files", "2s"]);

        agent.assert_run_gone(&run);
        for s in result["sections"].as_array().unwrap() {
            let path = s["path"].as_str().unwrap();
            if path.contains("/.git/") && path.ends_with(".lock") {
                assert_eq!(s["kind"], "git", "a git lock not named git: {result:#}");
            }
        }
        let git_sections = sections_of(&result, "git");
        for s in &git_sections {
            let path = s["path"].as_str().unwrap();
            assert!(
                path.starts_with(&format!("{}/.git/", repo.display())) && path.ends_with(".lock"),
                "git section {s}"
            );
            assert!(s["pid"].as_i64().unwrap() > 0, "{s}");
            assert!(s["command"].as_str().unwrap().contains("git"), "{s}");
        }
        if !git_sections.is_empty() {
            git_seen += 1;
        }
        eprintln!("git kill {rep}: {}", summary(&result));
        let locks = lock_files(&repo.join(".git"));
        assert!(locks.is_empty(), "locks left: {locks:?}; {result:#}");
        let fsck = git(&repo, &["fsck", "--full", "--no-dangling"]);
        assert!(
            fsck.status.success() && fsck.stdout.is_empty(),
            "git fsck after the kill: {}{}\nkill: {result:#}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );
        git_ok(&repo, &["status", "--porcelain"]);
        git_ok(
            &repo,
            &["commit", "-qam", "after the kill", "--allow-empty"],
        );
    }
    eprintln!("git: a git section was open in {git_seen} of {REPS} kills");
}

/// Commits transactions of 200 rows and appends each committed id, fsynced, to
/// a log outside the workspace: `sqlite_loop.py DB LOG JOURNAL_MODE`.
const SQLITE_LOOP_PY: &str = r#"
import os, sqlite3, sys
db, log, mode = sys.argv[1:4]
c = sqlite3.connect(db, isolation_level=None)
c.execute('PRAGMA journal_mode=' + mode)
c.execute('PRAGMA synchronous=FULL')
c.execute('CREATE TABLE IF NOT EXISTS t(txn INTEGER, i INTEGER, v TEXT)')
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
n = 0
while True:
    n += 1
    c.execute('BEGIN IMMEDIATE')
    for i in range(200):
        c.execute('INSERT INTO t VALUES (?, ?, ?)', (n, i, 'x' * 100))
    c.execute('COMMIT')
    os.write(fd, b'%d\n' % n)
    os.fsync(fd)
"#;

/// One value from a SQLite database through the sqlite3 CLI.
fn sqlite(db: &Path, query: &str) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg(query)
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3 {query}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A kill in the middle of a loop of multi-row transactions, in rollback-journal
/// and in WAL mode, leaves the database intact with every committed transaction
/// whole and no partial one.
#[test]
fn kill_during_sqlite_transactions_keeps_every_commit() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-sqlite-scripts");
    let loop_py = script(&scripts, "sqlite_loop.py", SQLITE_LOOP_PY);
    let mut db_seen = 0;
    for (rep, mode) in ["delete", "wal", "truncate", "wal", "delete"]
        .into_iter()
        .enumerate()
    {
        let ws = Dir::new("wfcg-safety-sqlite");
        let out = Dir::new("wfcg-safety-sqlite-log");
        let db = ws.join("work.db");
        let log = out.join("committed");
        let run = agent.start_run(
            &["--workspace", ws.str()],
            &format!(
                "exec python3 {} {} {} {mode}",
                loop_py.display(),
                db.display(),
                log.display()
            ),
        );
        let logged = || -> Vec<u64> {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect()
        };
        let want = 3 + rep;
        assert!(
            wait_until(Duration::from_secs(30), || logged().len() > want),
            "{mode}: the loop committed {} transactions; log:\n{}",
            logged().len(),
            agent.log()
        );

        let result = agent.kill_ok(&run.id, &["--grace-db", "2s", "--grace-files", "2s"]);

        agent.assert_run_gone(&run);
        let db_sections = sections_of(&result, "database");
        for s in &db_sections {
            assert!(
                s["path"]
                    .as_str()
                    .unwrap()
                    .starts_with(db.to_str().unwrap()),
                "{mode}: {s}"
            );
            assert!(s["command"].as_str().unwrap().contains("python3"), "{s}");
        }
        if !db_sections.is_empty() {
            db_seen += 1;
        }
        eprintln!("sqlite kill {rep} ({mode}): {}", summary(&result));
        assert_eq!(
            sqlite(&db, "PRAGMA integrity_check"),
            "ok",
            "{mode}: {result:#}"
        );
        let committed = logged();
        let partial = sqlite(
            &db,
            "SELECT group_concat(txn) FROM (SELECT txn FROM t GROUP BY txn HAVING count(*) != 200)",
        );
        assert_eq!(partial, "", "{mode}: partial transactions in the db");
        let in_db: Vec<u64> = sqlite(&db, "SELECT txn FROM t GROUP BY txn ORDER BY txn")
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        let missing: Vec<&u64> = committed.iter().filter(|n| !in_db.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{mode}: committed transactions missing from the db: {missing:?}"
        );
        // At most the one committed just before the kill may be unlogged.
        let unlogged: Vec<&u64> = in_db.iter().filter(|n| !committed.contains(n)).collect();
        assert!(
            unlogged.len() <= 1 && unlogged.iter().all(|&&n| n == committed.len() as u64 + 1),
            "{mode}: transactions in the db never logged: {unlogged:?}"
        );
    }
    eprintln!("sqlite: a database section was open in {db_seen} of {REPS} kills");
}

/// A kill in the middle of a loop of write-temp-then-rename leaves the target
/// whole: one generation's content, complete.
#[test]
fn kill_during_write_and_rename_leaves_old_or_new_content() {
    require_privileges!();
    const LINES: usize = 100_000;
    let agent = TestAgent::start();
    let mut files_seen = 0;
    for rep in 0..REPS {
        let ws = Dir::new("wfcg-safety-rename");
        let target = ws.join("target");
        std::fs::write(&target, "0\n".repeat(LINES)).unwrap();
        let run = agent.start_run(
            &["--workspace", ws.str()],
            &format!(
                "cd {} || exit 1; g=0
                 while :; do
                   g=$((g+1)); yes $g | head -n {LINES} > target.tmp && mv target.tmp target
                 done",
                ws.str()
            ),
        );
        // Returns the generation, after checking the content is whole.
        let generation = |when: &str| -> u64 {
            let text = std::fs::read_to_string(&target).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), LINES, "{when}: torn target");
            assert!(
                lines.iter().all(|l| *l == lines[0]),
                "{when}: target mixes generations"
            );
            lines[0].parse().unwrap()
        };
        let want = 2 + rep as u64;
        assert!(
            wait_until(Duration::from_secs(30), || generation("before") > want),
            "the loop did not get past generation {want}"
        );
        let before = generation("before");

        let result = agent.kill_ok(&run.id, &["--grace-files", "2s"]);

        agent.assert_run_gone(&run);
        let after = generation("after the kill");
        assert!(after >= before, "generation went back: {before} → {after}");
        let files = sections_of(&result, "files");
        for s in &files {
            assert!(
                s["path"].as_str().unwrap().starts_with(ws.str()),
                "a files section outside the workspace: {s}"
            );
        }
        if !files.is_empty() {
            files_seen += 1;
        }
        eprintln!("rename kill {rep}: {}", summary(&result));
    }
    eprintln!("rename: a files section was open in {files_seen} of {REPS} kills");
}

/// A local HTTP server: `/slow` streams a byte every 100 ms for two minutes
/// (noticing a vanished client), anything else answers `ACTIVE STARTED` at once.
/// Prints its port when it listens.
const HTTP_SERVER_PY: &str = r#"
import http.server, threading, time
lock = threading.Lock()
stats = {'active': 0, 'started': 0}
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == '/slow':
            with lock:
                stats['active'] += 1
                stats['started'] += 1
            try:
                self.send_response(200)
                self.end_headers()
                for _ in range(1200):
                    self.wfile.write(b'.')
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                with lock:
                    stats['active'] -= 1
        else:
            with lock:
                body = b'%d %d\n' % (stats['active'], stats['started'])
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body)
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
s.daemon_threads = True
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// A kill of a run with HTTP requests in flight to a server outside it leaves the
/// server serving: new requests get 200, and a request from outside the run
/// goes on.
#[test]
fn kill_with_http_requests_in_flight_leaves_the_server_serving() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-http");
    let server_py = script(&scripts, "server.py", HTTP_SERVER_PY);
    let mut server = KillOnDrop(
        Command::new("python3")
            .arg(&server_py)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the HTTP server"),
    );
    let mut port = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let base = format!("http://127.0.0.1:{}", port.trim());
    // `(status, "ACTIVE STARTED")` of a quick request from outside any run.
    let get = || -> (String, Vec<u32>) {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-w", " %{http_code}", &format!("{base}/")])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut words: Vec<&str> = text.split_whitespace().collect();
        let code = words.pop().unwrap_or("").to_string();
        (code, words.iter().filter_map(|w| w.parse().ok()).collect())
    };
    let stats = || get().1;
    assert_eq!(get().0, "200", "the server does not answer");
    let mut outside = KillOnDrop(
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", &format!("{base}/slow")])
            .spawn()
            .expect("curl"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || stats() == [1, 1]),
        "the outside request did not arrive: {:?}",
        stats()
    );

    for rep in 0..REPS {
        let ws = Dir::new("wfcg-safety-http-ws");
        let run = agent.start_run(
            &["--workspace", ws.str()],
            &format!(
                "for i in 1 2 3; do curl -s -o /dev/null {base}/slow & done; wait; sleep 1000"
            ),
        );
        let started = 1 + 3 * (rep as u32 + 1);
        assert!(
            wait_until(Duration::from_secs(10), || stats() == [4, started]),
            "the run's requests did not arrive: {:?}",
            stats()
        );

        agent.kill_ok(&run.id, &[]);

        agent.assert_run_gone(&run);
        let (code, _) = get();
        assert_eq!(code, "200", "the server stopped answering after kill {rep}");
        // The server sees the run's connections end, and only those.
        assert!(
            wait_until(Duration::from_secs(10), || stats() == [1, started]),
            "after kill {rep}, active and started requests: {:?}",
            stats()
        );
        assert!(
            outside.0.try_wait().unwrap().is_none(),
            "the request from outside the run ended"
        );
    }
    assert!(server.0.try_wait().unwrap().is_none(), "the server died");
}

/// Each level starts the next one, two sleeps, and at every tenth level a shell
/// that ignores SIGTERM: `nest.sh DEPTH`.
const NEST_SH: &str = r#"
d=$1
if [ "$d" -gt 0 ]; then sh "$0" $((d - 1)) & fi
sleep 1000 &
sleep 1000 &
if [ $((d % 10)) -eq 0 ]; then sh -c 'trap "" TERM; while :; do sleep 1; done' & fi
wait
"#;

/// A graceful kill of a tree 50 shells deep with 200 more processes side by side,
/// some ignoring SIGTERM, leaves no process of the run anywhere.
#[test]
fn graceful_kill_of_deep_and_wide_trees_leaves_nothing() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-tree");
    let nest = script(&scripts, "nest.sh", NEST_SH);
    // supervisor + top shell + 200 sleeps + 51 levels of (shell + 2 sleeps)
    // + 6 TERM-ignoring shells.
    let expected = 1 + 1 + 200 + 51 * 3 + 6;
    for _ in 0..REPS {
        let run = agent.start_run(
            &["--workspace", scripts.str()],
            &format!(
                "sh {} 50 & for i in $(seq 200); do sleep 1000 & done; wait",
                nest.display()
            ),
        );
        assert!(
            agent.wait_procs(&run.id, expected),
            "the tree did not grow to {expected} processes"
        );

        let result = agent.kill_ok(&run.id, &["--grace", "1s"]);

        agent.assert_run_gone(&run);
        assert!(
            util::pids_with_env("WFCG_RUN_ID", &run.id).is_empty(),
            "marked processes remain"
        );
        let phases = phase_names(&result);
        assert!(
            phases.contains(&"term".into()) && phases.contains(&"kill".into()),
            "the graceful path, then the hard kill for the TERM-ignoring shells: {result:#}"
        );
        // The kill acts on the payload: all but the supervisor.
        assert!(
            result["processes_killed"].as_u64().unwrap() >= expected as u64 - 1,
            "{result:#}"
        );
    }
}

/// A kill of a run that never existed exits 3; of a run that completed, exits 0
/// with `already_ended` and runs no kill sequence.
#[test]
fn kill_of_a_missing_or_completed_run_is_answered_without_a_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    for _ in 0..REPS {
        let missing = util::marker("missing");
        let (out, _) = agent.kill(&missing, &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        let id = util::marker("completed");
        agent.cli_expect(0, &["run", "-q", "--run-id", &id, "--", "true"]);
        let result = agent.kill_ok(&id, &[]);
        assert_eq!(result["already_ended"], true, "{result:#}");
        assert_eq!(agent.kill_count(&id), 0, "a kill sequence ran");
    }
    assert_eq!(agent.sql("select count(*) from kills"), "0");
}

/// Fifty kill requests at once on one run all succeed, and one kill sequence runs.
#[test]
fn fifty_rapid_kills_of_one_run_make_one_kill_sequence() {
    require_privileges!();
    let agent = TestAgent::start();
    for _ in 0..3 {
        // Ignores SIGTERM: the sequence lasts the TERM grace, so requests overlap it.
        let run = agent.start_run(&[], "trap '' TERM; while :; do sleep 0.1; done");
        assert!(agent.wait_procs(&run.id, 3));

        for out in agent.kill_concurrently(&run.id, 50, &["--grace", "1s"]) {
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let result: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(result["success"], true, "{result:#}");
        }

        assert_eq!(agent.kill_count(&run.id), 1, "kill sequences recorded");
        agent.assert_run_gone(&run);
    }
}

/// A force kill of a run holding a git lock is immediate and removes the lock
/// afterwards (found in the repository below the workspace). Locks held by
/// processes outside the run are never removed: neither another repository's,
/// nor one the run had open too. What was open is what the run was last seen
/// holding: after a `status`, both locks with the pid that held them; with no
/// look before, none (the force kill looks at nothing before it kills).
#[test]
fn force_kill_removes_the_stale_git_lock_and_only_that() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-force");
    let hold = script(&scripts, "hold.py", HOLD_PY);
    for rep in 0..REPS {
        let looked = rep % 2 == 0;
        let ws = Dir::new("wfcg-safety-force-ws");
        let (a, b, c) = (ws.join("a"), ws.join("b"), ws.join("c"));
        for repo in [&a, &b, &c] {
            git_ok(ws.path.as_path(), &["init", "-q", repo.to_str().unwrap()]);
        }
        let lock = |repo: &Path| repo.join(".git/index.lock");
        // Outside the run: a holder of b's and c's locks.
        let outside_ready = scripts.join("outside-ready");
        let _ = std::fs::remove_file(&outside_ready);
        let _outside = KillOnDrop(
            Command::new("python3")
                .arg(&hold)
                .arg(&outside_ready)
                .args(["-1", "-"])
                .arg(format!("create:{}", lock(&b).display()))
                .arg(format!("create:{}", lock(&c).display()))
                .spawn()
                .expect("python3"),
        );
        wait_for_pid_file(&outside_ready);
        // The run creates a's lock and opens c's as well.
        let (run, holder) = start_holder(
            &agent,
            &hold,
            &ws,
            &scripts.join("run-ready"),
            &format!(
                "-1 - create:{} open:{}",
                lock(&a).display(),
                lock(&c).display()
            ),
        );

        if looked {
            let status = agent.status(&run.id);
            assert_eq!(
                status["sections"].as_array().unwrap().len(),
                2,
                "{status:#}"
            );
        }
        let result = agent.kill_ok(&run.id, &["--force"]);

        agent.assert_run_gone(&run);
        let phases = phase_names(&result);
        assert!(
            !["scan", "sections_wait", "term"]
                .iter()
                .any(|p| phases.contains(&p.to_string())),
            "a force kill looked or waited before it killed: {result:#}"
        );
        assert_eq!(result["waited_ms"].as_f64(), Some(0.0), "{result:#}");
        let git_paths: Vec<&str> = sections_of(&result, "git")
            .iter()
            .map(|s| {
                assert_eq!(s["pid"], holder, "{s}");
                s["path"].as_str().unwrap()
            })
            .collect();
        if looked {
            for l in [lock(&a), lock(&c)] {
                assert!(
                    git_paths.contains(&l.to_str().unwrap()),
                    "{} not reported: {result:#}",
                    l.display()
                );
            }
        } else {
            assert!(git_paths.is_empty(), "{result:#}");
        }
        assert_eq!(
            stale_locks_removed(&result),
            vec![lock(&a).display().to_string()],
            "{result:#}"
        );
        assert!(!lock(&a).exists(), "the stale lock is still there");
        assert!(
            lock(&b).exists(),
            "another repository's held lock was removed"
        );
        assert!(lock(&c).exists(), "a lock held outside the run was removed");
        git_ok(&a, &["status", "--porcelain"]);
    }
}

/// A graceful kill waits for a git lock that is released within its grace, and
/// SIGTERM comes only after the release.
#[test]
fn graceful_kill_waits_for_a_git_lock_to_be_released() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-wait");
    let hold = script(&scripts, "hold.py", HOLD_PY);
    for rep in 0..3 {
        let ws = Dir::new("wfcg-safety-wait-ws");
        git_ok(&ws.path, &["init", "-q", "."]);
        let lock = ws.join(".git/index.lock");
        let on_term = scripts.join(format!("on-term-{rep}"));
        let (run, _) = start_holder(
            &agent,
            &hold,
            &ws,
            &scripts.join(format!("ready-{rep}")),
            &format!("2.5 {} create:{}", on_term.display(), lock.display()),
        );

        let result = agent.kill_ok(&run.id, &["--grace-git", "10s"]);

        agent.assert_run_gone(&run);
        let waited = result["waited_ms"].as_f64().unwrap();
        // The lock is held for 2.5 s after it is taken; the kill began soon after.
        assert!(
            (1000.0..10_000.0).contains(&waited),
            "waited {waited} ms: {result:#}"
        );
        assert_eq!(
            result["graces_expired"],
            serde_json::json!([]),
            "{result:#}"
        );
        assert!(
            phase_names(&result).contains(&"sections_wait".into()),
            "{result:#}"
        );
        let git = sections_of(&result, "git");
        assert!(
            git.iter().any(|s| s["path"] == lock.to_str().unwrap()),
            "{result:#}"
        );
        assert_eq!(
            std::fs::read_to_string(&on_term).ok().as_deref(),
            Some("released"),
            "SIGTERM came while the lock was held: {result:#}"
        );
        assert!(stale_locks_removed(&result).is_empty(), "{result:#}");
        assert!(!lock.exists());
    }
}

/// A graceful kill of a run that never releases its git lock waits for the git
/// grace, says it ran out, kills, and removes the lock.
#[test]
fn graceful_kill_gives_up_on_a_git_lock_after_its_grace_and_removes_it() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-grace");
    let hold = script(&scripts, "hold.py", HOLD_PY);
    for rep in 0..3 {
        let ws = Dir::new("wfcg-safety-grace-ws");
        git_ok(&ws.path, &["init", "-q", "."]);
        let lock = ws.join(".git/index.lock");
        let (run, _) = start_holder(
            &agent,
            &hold,
            &ws,
            &scripts.join(format!("ready-{rep}")),
            &format!("-1 - create:{}", lock.display()),
        );

        let result = agent.kill_ok(&run.id, &["--grace-git", "1s"]);

        agent.assert_run_gone(&run);
        assert_eq!(
            result["graces_expired"],
            serde_json::json!(["git"]),
            "{result:#}"
        );
        let waited = result["waited_ms"].as_f64().unwrap();
        assert!((1000.0..5000.0).contains(&waited), "waited {waited} ms");
        assert_eq!(
            stale_locks_removed(&result),
            vec![lock.display().to_string()],
            "{result:#}"
        );
        assert!(!lock.exists(), "the stale lock is still there");
        git_ok(&ws.path, &["status", "--porcelain"]);
    }
}

/// Before SIGTERM the run finds why it is stopped in `$WFCG_RUN_DIR/stop-reason`.
#[test]
fn a_sigterm_handler_reads_the_stop_reason() {
    require_privileges!();
    let agent = TestAgent::start();
    let out = Dir::new("wfcg-safety-reason");
    for rep in 0..REPS {
        let copy = out.join(format!("stop-reason-{rep}"));
        let reason = format!("safety suite, kill {rep}");
        let run = agent.start_run(
            &["--workspace", out.str()],
            &format!(
                r#"trap 'cp "$WFCG_RUN_DIR/stop-reason" {}; exit 0' TERM
                   sleep 1000 & wait"#,
                copy.display()
            ),
        );
        assert!(agent.wait_procs(&run.id, 3));
        let began = chrono::Utc::now();

        agent.kill_ok(&run.id, &["--reason", &reason, "--grace", "10s"]);

        agent.assert_run_gone(&run);
        let text = std::fs::read_to_string(&copy).expect("the handler copied no stop-reason");
        let stop: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(stop["reason"], reason.as_str(), "{stop}");
        assert_eq!(stop["mode"], "graceful", "{stop}");
        assert!(
            stop["requested_by"].as_str().unwrap().contains("root"),
            "{stop}"
        );
        let deadline = chrono::DateTime::parse_from_rfc3339(stop["deadline"].as_str().unwrap())
            .expect("deadline is RFC 3339");
        let grace = chrono::Duration::seconds(10);
        assert!(
            deadline > began && deadline <= chrono::Utc::now() + grace,
            "deadline {deadline} for a kill that began at {began}"
        );
    }
}

/// `wfcg status RUN` shows an open git lock, who holds it, and for how long.
#[test]
fn status_shows_an_open_git_section() {
    require_privileges!();
    let agent = TestAgent::start();
    let scripts = Dir::new("wfcg-safety-status");
    let hold = script(&scripts, "hold.py", HOLD_PY);
    let ws = Dir::new("wfcg-safety-status-ws");
    git_ok(&ws.path, &["init", "-q", "."]);
    let lock = ws.join(".git/index.lock");
    let (run, pid) = start_holder(
        &agent,
        &hold,
        &ws,
        &scripts.join("ready"),
        &format!("-1 - create:{}", lock.display()),
    );
    let prefix = format!("git: {} held by pid {pid} (", lock.display());
    // The seconds the section has been open, from `wfcg status`.
    let open_for = || -> Option<f64> {
        let out = agent.cli(&["status", &run.id]);
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("critical:") && l.contains(&prefix) && l.contains("hold.py"))?;
        line.rsplit_once(" for ")?
            .1
            .strip_suffix(" s")?
            .parse()
            .ok()
    };
    let sections = agent.status(&run.id)["sections"].clone();
    assert_eq!(
        sections,
        serde_json::json!([{
            "kind": "git",
            "path": lock.to_str().unwrap(),
            "pid": pid,
            "command": sections[0]["command"],
            "since": sections[0]["since"],
            "open_secs": sections[0]["open_secs"],
        }]),
        "status --json"
    );
    assert!(
        open_for().is_some(),
        "no `critical: {prefix}…` line in:\n{}",
        String::from_utf8_lossy(&agent.cli(&["status", &run.id]).stdout)
    );
    assert!(
        wait_until(Duration::from_secs(10), || open_for()
            .is_some_and(|s| s >= 0.5)),
        "the time the section has been open does not grow"
    );
    let result = agent.kill_ok(&run.id, &["--force"]);
    agent.assert_run_gone(&run);
    assert!(!lock.exists(), "{result:#}");
}
