//! Bounded values (SECURITY.md, "Bounded values"), attacked: every duration a user
//! sends, on every channel (notify datagrams, request bodies, query strings, CLI
//! flags, templates), is clamped or refused with an error naming it, never
//! overflows the agent's time arithmetic, and never lengthens what the operator set.
//! The attacks that need a user run as a real unprivileged user.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

use crate::require_privileges;
use crate::util::{CommandExt, Run, TestAgent, TestUser, WFCG, marker, text, wait_until};

/// A run script that sends each `|`-separated line set of `datagrams` (lines split
/// on `;`) to its notify socket from one process that stays alive (so it is judged
/// inside the run), then sleeps.
fn sender_script(datagrams: &[String]) -> String {
    let joined = datagrams.join("|").replace('\'', "");
    format!(
        "exec /usr/bin/python3 -c 'import os,socket,sys,time\n\
         s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n\
         for d in sys.argv[1].split(\"|\"):\n    s.sendto(d.replace(\";\",\"\\n\").encode(),os.environ[\"NOTIFY_SOCKET\"])\n\
         time.sleep(1000)' '{joined}'"
    )
}

/// A run script that heartbeats every 200 ms.
fn heartbeats() -> String {
    format!("while :; do {WFCG} notify --heartbeat; sleep 0.2; done")
}

/// `wfcg run --detach [extra] -- sh -c SCRIPT` as `user`.
fn start_as(agent: &TestAgent, user: &TestUser, extra: &[&str], script: &str) -> Run {
    let marker = marker("bounds");
    let out = agent
        .wfcg_as(user)
        .env(crate::util::TEST_MARK, &marker)
        .args(["run", "--detach"])
        .args(extra)
        .args(["--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wfcg run as the user: {}",
        text(&out.stderr)
    );
    Run {
        id: text(&out.stdout).trim().to_string(),
        marker,
    }
}

fn time(v: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Asserts each run keeps `want` as its status for all of `window` (watching for
/// something that must not happen: there is no event to wait for).
fn stay(agent: &TestAgent, runs: &[&Run], want: &str, window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        for run in runs {
            let st = agent.status(&run.id);
            assert_eq!(st["status"], want, "{}: {st:#}", run.id);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls a run's status until `status` or the deadline; how long it took.
fn until_status(agent: &TestAgent, run: &Run, status: &str, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    wait_until(within, || agent.status(&run.id)["status"] == status).then(|| t.elapsed())
}

fn force_kill(agent: &TestAgent, runs: &[&Run]) {
    for run in runs {
        let _ = agent.cli(&["kill", "--force", &run.id]);
    }
}

/// The first attack: `WATCHDOG_USEC=18446744073709551615` (and a huge
/// `EXTEND_TIMEOUT_USEC`) from a user's run overflowed the deadline sum and
/// killed the notify thread; from then on no heartbeat was read and healthy runs
/// of root and of other users were killed as stuck. Now the values are clamped,
/// later datagrams of the same run are read, and the healthy runs live on.
#[test]
fn an_overflowing_notify_value_does_not_blind_the_notify_thread() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let flags = ["--watchdog", "1s", "--ready-when", "start"];
    let roots = agent.start_run(&flags, &heartbeats());
    let users = start_as(&agent, &user, &flags, &heartbeats());
    for run in [&roots, &users] {
        assert!(agent.wait_status(&run.id, "running"), "{}", run.id);
    }
    let attack = start_as(
        &agent,
        &user,
        &["--init-timeout", "1m"],
        &sender_script(&[
            "WATCHDOG_USEC=18446744073709551615;STATUS=first".into(),
            "EXTEND_TIMEOUT_USEC=18446744073709551615".into(),
            "WATCHDOG_USEC=9223372036854775807;EXTEND_TIMEOUT_USEC=9223372036854775808".into(),
            "STATUS=after".into(),
        ]),
    );
    // The datagram after the overflowing ones is read: the threads live.
    let read = wait_until(Duration::from_secs(10), || {
        agent.status(&attack.id)["status_text"] == "after"
    });
    assert!(
        read,
        "later datagrams not read: {:#}",
        agent.status(&attack.id)
    );
    // Heartbeats of root's and the other run still count (a 2 s threshold).
    stay(&agent, &[&roots, &users], "running", Duration::from_secs(3));
    assert_eq!(agent.status(&attack.id)["status"], "initializing");
    // The deadline the huge extension moved is within 10 years.
    let st = agent.status(&attack.id);
    let moved = time(&st["init_deadline"]) - time(&st["started_at"]);
    assert!(
        moved <= chrono::Duration::minutes(5) + chrono::Duration::seconds(2),
        "{st:#}"
    );
    assert!(agent.cli(&["ps", "--json"]).status.success());
    force_kill(&agent, &[&roots, &users, &attack]);
}

/// The attack from inside a run: `wfcg notify --extend 30d` pushed the
/// init deadline 30 days out, past the operator's 5 minutes the CLI refuses to
/// lengthen. Now it moves the deadline up to the operator's value, never past it:
/// a user's run (whose own `--init-timeout 2s` is shorter) up to the operator's
/// 5 minutes; a run whose operator's template says 2 s (a template root sent)
/// not at all.
#[test]
fn notify_extend_never_lengthens_the_operators_deadline() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let script = format!("{WFCG} notify --extend 30d; sleep 100");
    let users = start_as(&agent, &user, &["--init-timeout", "2s"], &script);
    let dir = tempfile::tempdir().unwrap();
    let operators = dir.path().join("op.toml");
    std::fs::write(&operators, "[timeouts]\ninit = \"2s\"\n").unwrap();
    let roots = agent.start_run(&["--template", operators.to_str().unwrap()], &script);
    let mut st = serde_json::Value::Null;
    let moved = wait_until(Duration::from_secs(10), || {
        st = agent.status(&users.id);
        st["init_deadline"].is_string()
            && time(&st["init_deadline"]) - time(&st["started_at"]) > chrono::Duration::minutes(4)
    });
    assert!(
        moved,
        "the user's extension within the operator's 5m not applied: {st:#}"
    );
    let span = time(&st["init_deadline"]) - time(&st["started_at"]);
    assert!(
        span <= chrono::Duration::minutes(5) + chrono::Duration::seconds(1),
        "extended past the operator's 5m: {span} {st:#}"
    );
    let took = until_status(&agent, &roots, "timed_out", Duration::from_secs(15));
    assert!(
        took.is_some(),
        "the run outlived its operator's 2 s init timeout: {:#}",
        agent.status(&roots.id)
    );
    force_kill(&agent, &[&users]);
}

/// `WATCHDOG_USEC=86400000000` (a day) from a run whose operator set a 1 s
/// watchdog (a template root sent): the threshold stays the operator's 2 s, so
/// the run that stops heartbeating is killed within seconds, not a day.
#[test]
fn watchdog_usec_never_lengthens_the_operators_watchdog() {
    require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let operators = dir.path().join("op.toml");
    std::fs::write(
        &operators,
        "[run]\nready = \"start\"\n[timeouts]\nwatchdog = \"1s\"\n",
    )
    .unwrap();
    let run = agent.start_run(
        &["--template", operators.to_str().unwrap()],
        &sender_script(&["WATCHDOG_USEC=86400000000;WATCHDOG=1;STATUS=long".into()]),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        agent.status(&run.id)["status_text"] == "long"
    }));
    let took = until_status(&agent, &run, "timed_out", Duration::from_secs(15));
    if took.is_none() {
        eprintln!("LOG: {}", agent.log());
    }
    assert!(
        took.is_some(),
        "WATCHDOG_USEC lengthened the operator's watchdog: {:#}",
        agent.status(&run.id)
    );
    agent.wait_run_gone(&run);
}

/// The cgroup a process is in.
fn cgroup_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// The API attacks, as a real user: `POST /v1/runs/adopt` with `timeout_ms`
/// near u64::MAX panicked with the user's process frozen in a payload, no run and
/// no audit record; `GET /v1/audit?since_secs=9223372036854775807` panicked. Both
/// are refused now with an error naming the field, before anything is touched.
#[test]
fn huge_numbers_in_requests_are_refused_naming_the_field_before_anything_moves() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let mut victim = user.command("/bin/sleep").arg("1000").spawn().unwrap();
    let pid = victim.id();
    let before = cgroup_of(pid);
    for (field, value) in [
        ("timeout_ms", u64::MAX.to_string()),
        ("timeout_ms", (u64::MAX - 1).to_string()),
        ("init_timeout_ms", "9223372036854775807".to_string()),
        ("grace_ms", "18446744073709551615".to_string()),
    ] {
        let body = format!("{{\"pid\":{pid},\"{field}\":{value}}}");
        let (code, answer) = agent.http_as(&user, "POST", "/v1/runs/adopt", &body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer.contains(field) && answer.contains("10 years"),
            "{body}: {answer}"
        );
        assert_eq!(cgroup_of(pid), before, "the process was moved: {body}");
    }
    for q in [
        "since_secs=9223372036854775807",
        "since_secs=18446744073709551615",
    ] {
        let (code, answer) = agent.http_as(&user, "GET", &format!("/v1/audit?{q}"), "");
        assert_eq!(code, 400, "{q}: {answer}");
        assert!(answer.contains("since_secs"), "{q}: {answer}");
    }
    let (code, _) = agent.http_as(&user, "GET", "/v1/audit?since_secs=315360000", "");
    assert_eq!(code, 200);
    let (code, _) = agent.http_as(&user, "GET", "/v1/health", "");
    assert_eq!(code, 200);
    assert!(agent.ps(true).is_empty(), "a run was made");
    let _ = victim.kill();
    let _ = victim.wait();
}

/// A user's template may not change the kill's freeze timeout or kill deadline:
/// a shorter one would make root's kill of the run report a false `unkillable`.
#[test]
fn a_users_template_cannot_shorten_the_kills_own_deadlines() {
    require_privileges!();
    let user = TestUser::get();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    for (text_, key) in [
        ("[kill]\nkill_deadline = \"1ms\"\n", "kill.kill_deadline"),
        ("[kill]\nfreeze_timeout = \"1ms\"\n", "kill.freeze_timeout"),
    ] {
        let path = dir.path().join("t.toml");
        std::fs::write(&path, text_).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        let out = agent
            .wfcg_as(&user)
            .args([
                "run",
                "--detach",
                "--template",
                path.to_str().unwrap(),
                "--",
                "sleep",
                "100",
            ])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{key}: accepted");
        assert!(
            text(&out.stderr).contains(key),
            "{key}: {}",
            text(&out.stderr)
        );
    }
    assert!(agent.ps(true).is_empty());
}

/// Boundary values: numbers and number-like text at and past every edge.
fn boundary() -> impl Strategy<Value = String> {
    let max_ms = wfcg::bounds::MAX_MS;
    prop::sample::select(vec![
        "0".to_string(),
        "1".into(),
        (max_ms - 1).to_string(),
        max_ms.to_string(),
        (max_ms + 1).to_string(),
        (i64::MAX as u64).to_string(),
        (u64::MAX - 1).to_string(),
        u64::MAX.to_string(),
        "18446744073709551616".into(),
        "-1".into(),
        "-9223372036854775808".into(),
        "1e999".into(),
        "1e-999".into(),
        "1.5".into(),
        "NaN".into(),
        "\"NaN\"".into(),
        "\"inf\"".into(),
        "null".into(),
        "99999999999999999999999999999999".into(),
    ])
}

/// Every numeric field of every request body and query string, given boundary
/// values on a live agent: answered (never a 5xx, never a dropped connection), a
/// refusal names the field; the agent keeps answering afterwards.
#[test]
fn every_numeric_field_of_every_channel_is_bounded_on_a_live_agent() {
    require_privileges!();
    let agent = TestAgent::start();
    // A healthy run whose heartbeats must keep counting through the flood.
    let healthy = agent.start_run(&["--watchdog", "1s", "--init-timeout", "0"], &heartbeats());
    let victim = agent.start_run(&[], "exec sleep 1000");
    let body_fields: Vec<(String, &str)> = [
        "init_timeout_ms",
        "timeout_ms",
        "watchdog_ms",
        "stall_timeout_ms",
        "output_timeout_ms",
    ]
    .iter()
    .map(|f| ("/v1/runs".to_string(), *f))
    .chain(
        [
            "grace_ms",
            "grace_git_ms",
            "grace_db_ms",
            "grace_files_ms",
            "max_wait_ms",
        ]
        .iter()
        .map(|f| ("/v1/runs/nosuch/kill".to_string(), *f)),
    )
    .chain(
        [
            "init_timeout_ms",
            "timeout_ms",
            "grace_ms",
            "grace_git_ms",
            "grace_db_ms",
            "grace_files_ms",
            "max_wait_ms",
            "pid",
        ]
        .iter()
        .map(|f| ("/v1/runs/adopt".to_string(), *f)),
    )
    .chain(
        ["exit_code", "signal"]
            .iter()
            .map(|f| ("/v1/runs/nosuch/exit".to_string(), *f)),
    )
    .collect();
    let queries = [
        "/v1/audit?since_secs=",
        "/v1/audit?limit=",
        "/v1/runs/nosuch/may-kill?uid=",
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let fields = prop::sample::select(body_fields);
    let qs = prop::sample::select(queries.to_vec());
    runner
        .run(
            &(fields, qs, boundary(), boundary()),
            |((path, field), q, v, w)| {
                // The adopt's pid is an absent process: nothing can be taken.
                // The adopt's pid is an absent process: nothing can be taken. A start
                // has no command: one that passes the number check is refused for
                // that, so this process is never moved into a run.
                let body = if path.ends_with("adopt") && field != "pid" {
                    format!("{{\"pid\":2147483647,\"{field}\":{v},\"dry_run\":true}}")
                } else {
                    format!("{{\"{field}\":{v}}}")
                };
                let (code, answer) =
                    crate::fuzz::answer(&agent, "POST", &path, body.as_bytes()).expect("no answer");
                prop_assert!(code < 500, "POST {path} {body}: {code} {answer}");
                if code == 400 && answer.contains("more than the most accepted") {
                    prop_assert!(answer.contains(field), "{body}: {answer}");
                }
                let raw = w.trim_matches('"');
                let qpath = format!("{q}{raw}");
                let (code, answer) =
                    crate::fuzz::answer(&agent, "GET", &qpath, b"").expect("no answer");
                prop_assert!(code < 500, "GET {qpath}: {code} {answer}");
                if code == 400 {
                    let name = q.rsplit_once('?').unwrap().1.trim_end_matches('=');
                    prop_assert!(answer.contains(name), "{qpath}: {answer}");
                }
                Ok(())
            },
        )
        .unwrap();
    // The notify channel: boundary values of every variable from inside a run.
    let mut datagrams = Vec::new();
    let mut rng = proptest::test_runner::TestRunner::deterministic();
    for _ in 0..40 {
        let var = prop::sample::select(vec![
            "WATCHDOG_USEC",
            "EXTEND_TIMEOUT_USEC",
            "READY",
            "WATCHDOG",
            "STOPPING",
            "X_WFCG_OUTPUT",
            "MAINPID",
        ])
        .new_tree(&mut rng)
        .unwrap()
        .current();
        let value = boundary().new_tree(&mut rng).unwrap().current();
        if var != "STOPPING" {
            datagrams.push(format!("{var}={}", value.trim_matches('"')));
        }
    }
    datagrams.push("STATUS=flooded".into());
    let flood = agent.start_run(&["--init-timeout", "1m"], &sender_script(&datagrams));
    assert!(
        wait_until(Duration::from_secs(10), || {
            agent.status(&flood.id)["status_text"] == "flooded"
        }),
        "the flood's last datagram not read: {:#}",
        agent.status(&flood.id)
    );
    stay(&agent, &[&healthy], "running", Duration::from_secs(3));
    assert_eq!(agent.status(&victim.id)["status"], "initializing");
    assert!(agent.cli(&["ps", "--json"]).status.success());
    force_kill(&agent, &[&healthy, &victim, &flood]);
}

/// Every CLI duration flag, given boundary text: accepted within 10 years, else a
/// usage error (exit 2) naming the flag; never a crash.
#[test]
fn every_cli_duration_flag_refuses_out_of_range_values_naming_the_flag() {
    require_privileges!();
    let agent = TestAgent::start();
    let bad = [
        "1e999",
        "NaN",
        "-1",
        "3651d",
        "18446744073709551615",
        "99999999999999999999h",
    ];
    let flags: [&[&str]; 8] = [
        &["run", "--init-timeout"],
        &["run", "--timeout"],
        &["run", "--watchdog"],
        &["run", "--stall-timeout"],
        &["run", "--output-timeout"],
        &["kill", "run_nosuch", "--grace"],
        &["audit", "--since"],
        &["notify", "--extend"],
    ];
    for flag in flags {
        for value in bad {
            let (name, verb) = flag.split_last().unwrap();
            let mut cmd: Command = agent.wfcg();
            cmd.args(verb).arg(format!("{name}={value}"));
            if flag[0] == "run" {
                cmd.args(["--", "true"]);
            }
            if flag[0] == "notify" {
                cmd.env("NOTIFY_SOCKET", "/nonexistent");
            }
            let out = cmd.expect_code(2);
            assert!(
                text(&out.stderr).contains(name),
                "{flag:?} {value}: {}",
                text(&out.stderr)
            );
        }
    }
    assert!(agent.ps(true).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Template durations at the edges: refused with the key's line, or at most 10 years.
    #[test]
    fn template_durations_are_bounded(
        key in prop::sample::select(vec![
            "timeouts.init", "timeouts.total", "timeouts.watchdog", "timeouts.stall",
            "timeouts.output", "kill.term_grace", "kill.freeze_timeout", "kill.kill_deadline",
            "critical_sections.git", "critical_sections.max_wait",
        ]),
        value in boundary(),
        unit in "(ms|s|m|h|d)?",
    ) {
        let (section, name) = key.split_once('.').unwrap();
        let text = format!("[{section}]\n{name} = \"{}{unit}\"\n", value.trim_matches('"'));
        if let Ok(t) = wfcg::template::Template::check(&text, "fuzz.toml") {
            for d in [t.timeouts.init, t.timeouts.total, t.timeouts.watchdog, t.timeouts.stall,
                      t.kill.term_grace, t.kill.freeze_timeout, t.kill.kill_deadline] {
                prop_assert!(d <= wfcg::bounds::MAX, "{text}: {d:?}");
            }
        }
        let number = format!("[{section}]\n{name} = {}\n", value.trim_matches('"'));
        let _ = wfcg::template::Template::check(&number, "fuzz.toml");
    }

    /// Durations at the edges: at most 10 years, else an error saying why.
    #[test]
    fn durations_at_the_edges_are_bounded(value in boundary(), unit in "(ms|s|m|h|d)?") {
        let text = format!("{}{unit}", value.trim_matches('"'));
        match wfcg::duration::parse(&text) {
            Ok(d) => prop_assert!(d <= wfcg::bounds::MAX, "{text}: {d:?}"),
            Err(e) => prop_assert!(!e.is_empty()),
        }
    }
}
