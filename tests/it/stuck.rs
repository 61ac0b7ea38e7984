//! Stuck runs. Stuck means one thing everywhere (issue 11 item 7): `ps --stuck`,
//! `kill --stuck`, `/metrics` and top read one predicate, which includes a
//! suspected initialization loop; a fan-out of many processes at once is not a
//! loop; a run with no init timeout is running from the start.
//!
//! And stuck detection for programs that never speak sd_notify (issue 17):
//! readiness from what a run visibly does (its first output, a log line, a file, a
//! TCP listener), the first-output deadline, the no-progress watchdog, and the
//! per-workflow circuit breaker (exit 6, `wfcg breaker reset`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{KillOnDrop, TestAgent, TestUser, marker, text, wait_until};

fn stuck_ids(agent: &TestAgent) -> Vec<String> {
    let out = agent.cli(&["ps", "--stuck", "--json"]);
    assert!(out.status.success());
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    runs.iter()
        .map(|r| r["run_id"].as_str().unwrap().to_string())
        .collect()
}

fn metrics(agent: &TestAgent) -> String {
    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&agent.socket)
        .arg("http://wfcg/metrics")
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn an_init_timeout_of_zero_means_running_from_the_start() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&["--init-timeout", "0"], "sleep 100");
    let st = agent.status(&run.id);
    assert_eq!(st["status"], "running", "{st:#}");
    assert!(!st["ready_at"].is_null(), "{st:#}");
}

/// `for i in $(seq 500); do sleep 3600 & done`: 500 starts of one command line,
/// all at once. None of them exited, so none was restarted: no loop.
#[test]
fn a_fan_out_of_500_processes_is_not_a_loop() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(
        &["--init-timeout", "2m"],
        "for i in $(seq 500); do sleep 3600 & done; wait",
    );
    assert!(agent.wait_procs(&run.id, 502));
    // The loop sampler looks every 2 s: three samples.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) {
        let st = agent.status(&run.id);
        assert!(
            st["loop_suspected"].is_null(),
            "fan-out taken for a loop: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(stuck_ids(&agent).is_empty());
}

/// A command restarted again and again is flagged, and then it is stuck for
/// every reader: `ps --stuck`, `kill --stuck --dry-run` and `wfcg_stuck_runs`.
#[test]
fn a_run_flagged_as_a_loop_is_stuck_for_every_reader() {
    require_privileges!();
    let agent = TestAgent::start();
    let looping = agent.start_run(&["--init-timeout", "2m"], "while :; do sleep 1.5; done");
    let calm = agent.start_run(&["--init-timeout", "2m"], "sleep 100");
    let flagged = wait_until(Duration::from_secs(40), || {
        !agent.status(&looping.id)["loop_suspected"].is_null()
    });
    assert!(flagged, "{:#}", agent.status(&looping.id));

    assert_eq!(stuck_ids(&agent), vec![looping.id.clone()]);
    let out = agent.cli(&["kill", "--stuck", "--dry-run"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains(&format!("would kill {}", looping.id)),
        "{listed}"
    );
    assert!(!listed.contains(&calm.id), "{listed}");
    let text = metrics(&agent);
    assert!(text.contains("\nwfcg_stuck_runs 1\n"), "{text}");
}

/// Asserts that a run keeps status `want` for `window` (polled).
fn stays(agent: &TestAgent, run_id: &str, want: &str, window: Duration) {
    let mut last = serde_json::Value::Null;
    let changed = wait_until(window, || {
        last = agent.status(run_id);
        last["status"] != want
    });
    assert!(!changed, "run {run_id} did not stay {want}: {last:#}");
}

/// Waits for a run to become `want`, saying what it was instead.
fn becomes(agent: &TestAgent, run_id: &str, want: &str) {
    assert!(
        agent.wait_status(run_id, want),
        "run {run_id} did not become {want}: {:#}\nagent log:\n{}",
        agent.status(run_id),
        agent.log_tail(20)
    );
}

/// The reason of a run's `auto_kill` audit record.
fn auto_kill_reason(agent: &TestAgent, run_id: &str) -> String {
    let out = agent.cli(&["audit", "--run", run_id, "--json"]);
    assert!(out.status.success(), "audit: {}", text(&out.stderr));
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let kill = records
        .iter()
        .find(|r| r["action"] == "auto_kill")
        .unwrap_or_else(|| panic!("no auto_kill record: {records:#?}"));
    assert_eq!(kill["actor_name"], "monitor", "{kill:#}");
    kill["reason"].as_str().unwrap_or_default().to_string()
}

/// A directory for a run's workspace and the test's go signals.
fn shared_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("wfcg-stuck")
        .tempdir()
        .unwrap()
}

fn wait_for_file(file: &Path) -> String {
    format!("while [ ! -e '{}' ]; do sleep 0.05; done", file.display())
}

fn touch(file: &Path) {
    std::fs::write(file, b"").unwrap();
}

#[test]
fn ready_when_output_makes_a_run_running_at_its_first_byte_in_the_foreground() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let run_id = format!("out-ready-{}", std::process::id());
    let out_path = dir.path().join("stdout");
    let mut child = KillOnDrop(
        agent
            .marked(&marker("out-ready"))
            .args(["run", "-q", "--run-id", &run_id, "--init-timeout", "1m"])
            .args(["--ready-when", "output", "--"])
            .args(["sh", "-c", "sleep 1; echo hello from the run; sleep 100"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .cli(&["status", &run_id])
            .status
            .success()),
        "the run did not start"
    );
    // Silent for its first second: still initializing.
    let st = agent.status(&run_id);
    assert_eq!(st["status"], "initializing", "{st:#}");
    becomes(&agent, &run_id, "running");
    assert!(agent.status(&run_id)["ready_at"].is_string());
    // The output still goes where it would have gone, through wfcg run.
    let printed = std::fs::read_to_string(&out_path).unwrap();
    assert_eq!(printed, "hello from the run\n");
    agent.kill_ok(&run_id, &["--force"]);
    assert!(child.wait_timeout(Duration::from_secs(10)).is_some());
}

#[test]
fn a_silent_run_waiting_for_output_is_killed_at_its_init_timeout() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(
        &["--ready-when", "output", "--init-timeout", "2s"],
        "sleep 100",
    );
    stays(&agent, &run.id, "initializing", Duration::from_millis(1200));
    becomes(&agent, &run.id, "timed_out");
    let reason = auto_kill_reason(&agent, &run.id);
    assert!(
        reason.contains("initialization timeout 2s exceeded"),
        "{reason}"
    );
    agent.wait_run_gone(&run);
}

#[test]
fn a_log_line_a_file_and_a_port_each_make_a_run_running() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let ws = dir.path().to_str().unwrap();

    // log:REGEX — an earlier line does not match; the log still gets both.
    let go_log = dir.path().join("go-log");
    let log_run = agent.start_run(
        &[
            "--ready-when",
            "log:^listening on [0-9]+$",
            "--init-timeout",
            "1m",
        ],
        &format!(
            "echo starting up; {}; echo listening on 8080; sleep 100",
            wait_for_file(&go_log)
        ),
    );
    // file:PATH — relative to the workspace.
    let go_file = dir.path().join("go-file");
    let file_run = agent.start_run(
        &["--workspace", ws, "--ready-when", "file:state/ready.flag"],
        &format!(
            "mkdir -p state; {}; touch state/ready.flag; sleep 100",
            wait_for_file(&go_file)
        ),
    );
    // port:N — bound at once, listening only after the go signal.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let go_port = dir.path().join("go-port");
    let py = format!(
        "import os, socket, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port}))\n\
         while not os.path.exists('{go}'): time.sleep(0.05)\n\
         s.listen()\n\
         time.sleep(100)\n",
        go = go_port.display()
    );
    let port_run = agent.start_run(
        &["--ready-when", &format!("port:{port}")],
        &format!("exec python3 -c \"{py}\""),
    );

    for run in [&log_run, &file_run, &port_run] {
        stays(&agent, &run.id, "initializing", Duration::from_millis(1500));
    }
    touch(&go_log);
    becomes(&agent, &log_run.id, "running");
    stays(
        &agent,
        &file_run.id,
        "initializing",
        Duration::from_millis(300),
    );
    touch(&go_file);
    becomes(&agent, &file_run.id, "running");
    stays(
        &agent,
        &port_run.id,
        "initializing",
        Duration::from_millis(300),
    );
    touch(&go_port);
    becomes(&agent, &port_run.id, "running");

    let log_path = agent.status(&log_run.id)["log_path"]
        .as_str()
        .unwrap()
        .to_string();
    let log = std::fs::read_to_string(log_path).unwrap();
    assert_eq!(log, "starting up\nlistening on 8080\n");
    for run in [&log_run, &file_run, &port_run] {
        agent.kill_ok(&run.id, &["--force"]);
    }
}

#[test]
fn a_stall_timeout_kills_a_sleeping_run_but_not_a_busy_or_a_chatty_one() {
    require_privileges!();
    let agent = TestAgent::start();
    // Ready only at READY=1 (never, here): each run stays `initializing`, so its
    // status says whether only the stall timeout acted (the default would make
    // the chatty ones `running` at their first output).
    let stall = ["--stall-timeout", "3s", "--ready-when", "notify"];
    let sleeper = agent.start_run(&stall, "sleep 100000");
    let burner = agent.start_run(&stall, "while :; do :; done");
    // A new line every second, nearly no CPU and no new processes: only its
    // output (reported by the supervisor) shows progress.
    let chatty = agent.start_run(
        &stall,
        "exec python3 -u -c 'import random, string, time\nwhile True:\n    \
         print(\"tick\", \"\".join(random.choices(string.ascii_letters, k=8)), flush=True)\n    \
         time.sleep(1)'",
    );
    // A shell loop: a new name every second (the `mktemp`s and `sleep`s it
    // starts repeat one command line: they are not new).
    let ticker = agent.start_run(
        &stall,
        "while :; do echo \"tick $(mktemp -u XXXXXXXX)\"; sleep 1; done",
    );
    let t0 = Instant::now();
    becomes(&agent, &sleeper.id, "timed_out");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "killed after {took:?}, before its 3 s stall timeout"
    );
    let reason = auto_kill_reason(&agent, &sleeper.id);
    assert!(
        reason.contains("stalled: no progress") && reason.contains("for 3s"),
        "{reason}"
    );
    agent.wait_run_gone(&sleeper);
    // The others outlive two stall timeouts.
    let rest = Duration::from_secs(7).saturating_sub(t0.elapsed());
    for run in [&burner, &chatty, &ticker] {
        stays(&agent, &run.id, "initializing", rest / 3);
    }
    for run in [&burner, &chatty, &ticker] {
        let st = agent.status(&run.id);
        assert_eq!(st["status"], "initializing", "{}: {st:#}", run.id);
        agent.kill_ok(&run.id, &["--force"]);
    }
}

/// A run computing on a CPU another program takes most of still makes
/// progress: it gets about a tenth of the CPU (nice 10, and its session's
/// autogroup at nice 10, against a busy loop at nice 0 on the same CPU) but
/// waits for the rest, which the kernel counts as
/// the run's CPU pressure. (Counting only the CPU it got, a quarter of a core,
/// it was ended as stalled at its first stall timeout.)
#[test]
fn a_busy_run_starved_of_cpu_by_another_program_is_not_stalled() {
    require_privileges!();
    struct Hog(std::process::Child);
    impl Drop for Hog {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let agent = TestAgent::start();
    let hog = Hog(std::process::Command::new("taskset")
        .args(["-c", "0", "sh", "-c", "while :; do :; done"])
        .spawn()
        .expect("starting a busy loop"));
    let stall = ["--stall-timeout", "3s", "--ready-when", "notify"];
    let starved = agent.start_run(
        &stall,
        // The run's session is an autogroup of its own, whose weight decides
        // against the other program's (nice alone does not, across sessions).
        "echo 10 >/proc/self/autogroup; exec taskset -c 0 nice -n 10 sh -c 'while :; do :; done'",
    );
    // Two stall timeouts; it got less than a quarter of a core meanwhile.
    let t0 = std::time::Instant::now();
    stays(&agent, &starved.id, "initializing", Duration::from_secs(7));
    let st = agent.status(&starved.id);
    assert_eq!(st["status"], "initializing", "{st:#}");
    let cpu = st["cpu_usec"].as_u64().expect("cpu_usec") as f64 / 1e6;
    assert!(
        cpu < t0.elapsed().as_secs_f64() / 4.0,
        "it got {cpu} s of CPU in {:?}: not starved, the test shows nothing",
        t0.elapsed()
    );
    // A process starved of CPU also needs CPU to die: the competition ends first.
    drop(hog);
    agent.kill_ok(&starved.id, &["--force"]);
}

/// A retry loop (the same line with a growing attempt number and wait, and a
/// new `sleep` each time) is no progress: it is flagged `retrying: …` for every
/// reader (status, `ps`, `ps --stuck`, `/metrics`) and ended as stalled at its
/// stall timeout; so is one that reads a MiB again before each attempt (as
/// codex reads its certificates for each reconnect). Beside them, a loop
/// printing new names and a program printing only a counter while it writes a
/// MiB a second both live on: the first by its new lines, the second by its
/// writes.
#[test]
fn a_retry_loop_is_flagged_and_ended_as_stalled_but_new_lines_and_writes_are_progress() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = shared_dir();
    let flags = ["--ready-when", "start", "--stall-timeout", "8s"];
    let retrying = agent.start_run(
        &flags,
        "i=0; for d in 0.5 1 1.5 2 2.5 3 3.5 4 4.5 5 5.5 6; do i=$((i+1)); \
         echo \"Reconnecting... attempt $i, waiting ${d}s\"; sleep $d; done",
    );
    let t0 = Instant::now();
    let config = dir.path().join("config");
    std::fs::write(&config, vec![b'#'; 1 << 20]).unwrap();
    let rereader = agent.start_run(
        &flags,
        &format!(
            "exec python3 -u -c 'import time\nfor i in range(1, 60):\n    \
             open(\"{}\", \"rb\").read()\n    \
             print(\"Reconnecting... attempt\", i)\n    time.sleep(1)'",
            config.display()
        ),
    );
    let creator = agent.start_run(
        &flags,
        &format!(
            "while :; do f=$(mktemp -p '{}' item.XXXXXXXX); echo \"created $f\"; sleep 1; done",
            dir.path().display()
        ),
    );
    let writer = agent.start_run(
        &flags,
        &format!(
            "exec python3 -u -c 'import time\nn = 0\nf = open(\"{}/data\", \"wb\")\n\
             while True:\n    n += 1\n    f.seek(0)\n    f.write(b\"x\" * (1 << 20))\n    \
             f.flush()\n    print(\"wrote chunk\", n)\n    time.sleep(1)'",
            dir.path().display()
        ),
    );
    // Flagged once it repeated its line 3 times with nothing else new for two
    // samples (4 s here).
    let mut st = serde_json::Value::Null;
    let flagged = wait_until(Duration::from_secs(20), || {
        st = agent.status(&retrying.id);
        !st["retrying"].is_null() || st["status"] != "running"
    });
    assert!(flagged, "{st:#}");
    let flag = st["retrying"]
        .as_str()
        .unwrap_or_else(|| panic!("not flagged: {st:#}"));
    assert!(
        flag.starts_with("retrying: Reconnecting... attempt ") && flag.contains(" times in "),
        "{flag}"
    );
    assert_eq!(st["stuck"], st["retrying"], "{st:#}");
    // The re-reader may be flagged by now too; the others never are.
    let stuck = stuck_ids(&agent);
    assert!(stuck.contains(&retrying.id), "{stuck:?}");
    assert!(
        stuck
            .iter()
            .all(|id| [&retrying.id, &rereader.id].contains(&id)),
        "{stuck:?}"
    );
    let ps = text(&agent.cli(&["ps"]).stdout);
    assert!(ps.contains("! retrying: Reconnecting..."), "{ps}");
    let m = metrics(&agent);
    assert!(
        ["1", "2"]
            .iter()
            .any(|n| m.contains(&format!("\nwfcg_retrying_runs {n}\n"))),
        "{m}"
    );
    // Ended as stalled: after its stall timeout, long before its loop would end.
    becomes(&agent, &retrying.id, "timed_out");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(25),
        "stalled only after {took:?}"
    );
    let reason = auto_kill_reason(&agent, &retrying.id);
    assert!(
        reason.contains("stalled: no progress") && reason.contains("retrying: Reconnecting"),
        "{reason}"
    );
    let st = agent.status(&retrying.id);
    assert_eq!(st["end_reason"].as_str(), Some(reason.as_str()), "{st:#}");
    agent.wait_run_gone(&retrying);
    // Its reads are not progress while its newest line is a repeat.
    becomes(&agent, &rereader.id, "timed_out");
    let reason = auto_kill_reason(&agent, &rereader.id);
    assert!(
        reason.contains("stalled: no progress") && reason.contains("retrying: Reconnecting"),
        "{reason}"
    );
    agent.wait_run_gone(&rereader);
    // The others live on, unflagged, past two stall timeouts from their start.
    let rest = Duration::from_secs(17).saturating_sub(t0.elapsed());
    for run in [&creator, &writer] {
        stays(&agent, &run.id, "running", rest / 2);
    }
    for (run, kind) in [(&creator, "output"), (&writer, "io")] {
        let st = agent.status(&run.id);
        assert_eq!(st["status"], "running", "{}: {st:#}", run.id);
        assert!(st["retrying"].is_null(), "{st:#}");
        assert!(st["stuck"].is_null(), "{st:#}");
        // The writer's counter lines are repeats: its progress is its I/O.
        if kind == "io" {
            assert_eq!(st["last_progress_kind"], kind, "{st:#}");
        }
        agent.kill_ok(&run.id, &["--force"]);
    }
}

/// `status` and `ps` show a live run's readiness condition, its deadlines
/// (init, stall, total) and its last progress with its kind; `status --json`
/// has the end reason at the top once it ended.
#[test]
fn status_and_ps_show_what_a_run_waits_for_its_deadlines_and_its_progress() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(
        &[
            "--ready-when",
            "log:^listening$",
            "--init-timeout",
            "10m",
            "--stall-timeout",
            "10m",
        ],
        "echo starting; exec sleep 1000",
    );
    let mut st = serde_json::Value::Null;
    assert!(wait_until(Duration::from_secs(10), || {
        st = agent.status(&run.id);
        st["last_progress_kind"] == "output"
    }));
    assert_eq!(st["status"], "initializing", "{st:#}");
    assert_eq!(
        st["ready_when"], "READY=1 or a line of output matching \"^listening$\"",
        "{st:#}"
    );
    for field in [
        "init_deadline",
        "stall_deadline",
        "total_deadline",
        "last_progress",
    ] {
        assert!(st[field].is_string(), "{field}: {st:#}");
    }
    // The sleep, not the supervisor (which leaves the payload just after the start).
    assert!(
        wait_until(
            Duration::from_secs(10),
            || agent.status(&run.id)["processes"] == 1
        ),
        "{:#}",
        agent.status(&run.id)
    );
    let status = text(&agent.cli(&["status", &run.id]).stdout);
    for want in [
        "ready when: READY=1 or a line",
        "progress:",
        "(output)",
        "init by:",
        "stall by:",
        "end by:",
    ] {
        assert!(status.contains(want), "{want}: {status}");
    }
    let ps = text(&agent.cli(&["ps"]).stdout);
    for want in [
        "PROGRESS",
        "DEADLINE",
        "output ",
        "init 9m",
        "waits for READY=1 or a line",
    ] {
        assert!(ps.contains(want), "{want}: {ps}");
    }
    let out = agent.cli(&["kill", &run.id, "--force", "--reason", "enough of it"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st = agent.status(&run.id);
    assert_eq!(st["end_reason"], "enough of it", "{st:#}");
    for field in ["ready_when", "stall_deadline", "last_progress"] {
        assert!(st[field].is_null(), "{field} of an ended run: {st:#}");
    }
}

#[test]
fn an_output_timeout_kills_a_run_that_writes_nothing_and_spares_one_that_does() {
    require_privileges!();
    let agent = TestAgent::start();
    // Ready only at READY=1, so it stays `initializing` (see above).
    let talks = agent.start_run(
        &["--output-timeout", "2s", "--ready-when", "notify"],
        "echo hi; sleep 100",
    );
    let dir = shared_dir();
    let stderr_path = dir.path().join("stderr");
    let mut child = KillOnDrop(
        agent
            .marked(&marker("out-timeout"))
            .args(["run", "--output-timeout", "2s", "--", "sleep", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("wfcg run still going 20 s after a 2 s output timeout");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("no output within 2s"), "{stderr}");
    assert_eq!(agent.status(&talks.id)["status"], "initializing");
    agent.kill_ok(&talks.id, &["--force"]);
}

/// `wfcg breaker --json` parsed.
fn breakers(agent: &TestAgent) -> Vec<serde_json::Value> {
    let out = agent.cli(&["breaker", "--json"]);
    assert!(out.status.success(), "breaker: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `wfcg_breakers_open` from `/metrics` on the agent's socket.
fn breakers_open_metric(agent: &TestAgent) -> u64 {
    let socket = agent
        .env()
        .into_iter()
        .find(|(k, _)| *k == "WFCG_SOCKET")
        .unwrap()
        .1;
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .arg("http://wfcg/metrics")
        .output()
        .expect("curl");
    let body = text(&out.stdout);
    body.lines()
        .find_map(|l| l.strip_prefix("wfcg_breakers_open "))
        .unwrap_or_else(|| panic!("no wfcg_breakers_open in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn three_stuck_runs_open_the_breaker_the_next_start_is_refused_and_reset_closes_it() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = shared_dir();
    let template = dir.path().join("breaker.toml");
    std::fs::write(
        &template,
        "[breaker]\nfailures = 3\ncooldown = \"10m\"\n[timeouts]\ninit = \"1s\"\n",
    )
    .unwrap();
    let workflow = format!("flaky-{}", std::process::id());
    let args = [
        "--workflow",
        &workflow,
        "--template",
        template.to_str().unwrap(),
    ];
    let stuck_run = || {
        let run = agent.start_run(&args, "sleep 100");
        becomes(&agent, &run.id, "timed_out");
        agent.wait_run_gone(&run);
        run
    };
    stuck_run();
    stuck_run();
    assert_eq!(breakers(&agent)[0]["failures"], 2);
    // A run that ends otherwise starts the count again.
    let ok = agent.cli(
        &[
            &["run", "-q"][..],
            &args,
            &["--ready-when", "start", "--", "true"],
        ]
        .concat(),
    );
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(
        wait_until(Duration::from_secs(10), || breakers(&agent).is_empty()),
        "{:#?}",
        breakers(&agent)
    );
    stuck_run();
    stuck_run();
    let last = stuck_run();
    let b = breakers(&agent);
    assert_eq!(b.len(), 1, "{b:#?}");
    assert_eq!(b[0]["open"], true, "{b:#?}");
    assert_eq!(b[0]["failures"], 3, "{b:#?}");
    assert_eq!(b[0]["last_run_id"], last.id.as_str(), "{b:#?}");

    // The fourth start is refused, exit 6, saying why and how to reset.
    let refused = agent.cli(&[&["run", "-q"][..], &args, &["--", "true"]].concat());
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(6), "{err}");
    assert!(
        err.contains("circuit breaker open") && err.contains("wfcg breaker reset"),
        "{err}"
    );
    let ps = text(&agent.cli(&["ps"]).stdout);
    assert!(ps.contains(&format!("breaker OPEN   {workflow}")), "{ps}");
    assert_eq!(breakers_open_metric(&agent), 1);

    // Only an operator may reset it; both attempts are audited.
    let user = TestUser::get();
    let denied = agent
        .wfcg_as(&user)
        .args(["breaker", "reset", &workflow])
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(4), "{}", text(&denied.stderr));
    assert_eq!(breakers(&agent)[0]["open"], true);
    // The breaker is root's (its runs' owner's): others neither see it nor are refused.
    let seen = agent
        .wfcg_as(&user)
        .args(["breaker", "--json"])
        .output()
        .unwrap();
    let seen: Vec<serde_json::Value> = serde_json::from_slice(&seen.stdout).unwrap();
    assert!(seen.is_empty(), "{seen:#?}");
    let reset = agent.cli(&["breaker", "reset", &workflow]);
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    assert!(breakers(&agent).is_empty());
    assert_eq!(breakers_open_metric(&agent), 0);
    let out = agent.cli(&["audit", "--json"]);
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let resets: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["action"] == "breaker_reset")
        .collect();
    assert_eq!(resets.len(), 2, "{records:#?}");
    assert_eq!(resets[0]["outcome"], "denied", "{:#}", resets[0]);
    assert_eq!(resets[1]["outcome"], "reset", "{:#}", resets[1]);
    assert!(records.iter().any(|r| r["action"] == "breaker_open"));

    // Closed: the workflow starts again.
    let again = agent.cli(
        &[
            &["run", "-q"][..],
            &args,
            &["--ready-when", "start", "--", "true"],
        ]
        .concat(),
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
}

#[test]
fn a_user_may_tighten_stall_and_output_timeouts_but_not_touch_the_breaker() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let dir = tempfile::Builder::new()
        .prefix("wfcg-stuck-user")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let t = dir.path().join("mine.toml");
    // A breaker is the operator's: a user's template may not set one (it would
    // trip the breaker for everyone's runs of the workflow) nor turn one off.
    std::fs::write(&t, "[breaker]\nfailures = 1\n").unwrap();
    std::fs::set_permissions(&t, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = agent
        .wfcg_as(&user)
        .args([
            "run",
            "--workflow",
            "guardian",
            "--template",
            t.to_str().unwrap(),
        ])
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[breaker] may be set only by the operator"),
        "{err}"
    );
    // guardian's operator stall timeout may be shortened, not lengthened or removed.
    for (flag, value) in [("--stall-timeout", "1h"), ("--stall-timeout", "0")] {
        let out = agent
            .wfcg_as(&user)
            .args(["run", "--workflow", "guardian", flag, value, "--", "true"])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(err.contains("stall timeout"), "{err}");
    }
    let out = agent
        .wfcg_as(&user)
        .args([
            "run",
            "-q",
            "--workflow",
            "guardian",
            "--stall-timeout",
            "1m",
        ])
        .args(["--output-timeout", "1m", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}
