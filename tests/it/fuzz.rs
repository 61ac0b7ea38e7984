//! Every parser of user input, fed generated input (proptest, a bounded number of
//! cases per run): the API's JSON bodies, the sd_notify datagram parser,
//! durations, run ids, template and policy TOML. None may panic or hang; what one
//! accepts must hold its documented shape. Then the same kinds of input go to a
//! live agent, which must keep answering with its state intact.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use proptest::prelude::*;

use crate::require_privileges;
use crate::util::TestAgent;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// TOML-looking text: sections, keys and values of the kinds templates and
/// policies use, shuffled, with some noise.
fn tomlish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        prop::sample::select(vec![
            "[run]",
            "[kill]",
            "[timeouts]",
            "[critical_sections]",
            "[cleanup]",
            "[alerts]",
            "[limits]",
            "[roles]",
            "[users]",
            "[groups]",
            "[teams.build]",
            "[[x]]",
            "[",
        ])
        .prop_map(str::to_string),
        (
            prop::sample::select(vec![
                "ready",
                "init",
                "total",
                "watchdog",
                "term_grace",
                "git",
                "files",
                "max_wait",
                "workspace",
                "on_event",
                "\"pids.max\"",
                "default_role",
                "alice",
                "members",
                "leads",
                "admin",
                "x",
            ]),
            prop_oneof![
                "\"[0-9]{0,6}(ms|s|m|h|d|x)?\"",
                "-?[0-9]{1,20}",
                "[0-9]\\.[0-9]{1,3}e[0-9]{1,3}",
                "\"(notify|start|keep|remove|owner|admin|@g)\"",
                "\\[\"[a-z@]{0,5}\"(, \"[a-z]{0,5}\"){0,3}\\]",
                "\\{[a-z]{0,3} = [0-9]{0,3}\\}",
                "true|false",
                ".{0,10}",
            ],
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
        ".{0,20}",
    ];
    prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn notify_datagrams_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let m = wfcg::agent::notify::parse(&bytes);
        if let Some(status) = &m.status {
            prop_assert!(status.chars().count() <= 1024);
        }
    }

    #[test]
    fn notify_lines_are_read_as_sd_notify_says(
        lines in prop::collection::vec("(READY|WATCHDOG|STOPPING|STATUS|EXTEND_TIMEOUT_USEC|X)=[0-9a-z ]{0,8}", 0..6)
    ) {
        let m = wfcg::agent::notify::parse(lines.join("\n").as_bytes());
        prop_assert_eq!(m.ready, lines.iter().any(|l| l == "READY=1"));
        prop_assert_eq!(m.watchdog, lines.iter().any(|l| l == "WATCHDOG=1"));
    }

    #[test]
    fn durations_never_panic_and_round_trip(text in ".{0,24}") {
        if let Ok(d) = wfcg::duration::parse(&text) {
            prop_assert_eq!(wfcg::duration::parse(&wfcg::template::duration_text(d)), Ok(d));
        }
    }

    #[test]
    fn numeric_durations_never_overflow(n in any::<u64>(), unit in "(ms|s|m|h|d)?") {
        let _ = wfcg::duration::parse(&format!("{n}{unit}"));
    }

    #[test]
    fn run_ids_accepted_are_plain_names(id in "\\PC{0,80}") {
        if wfcg::api::run_id_problem(&id).is_none() {
            prop_assert!(!id.is_empty() && id.len() <= 64);
            prop_assert!(!id.contains(".."));
            prop_assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
            prop_assert!(id.chars().next().unwrap().is_ascii_alphanumeric());
        }
    }

    #[test]
    fn templates_never_panic(text in tomlish()) {
        let _ = wfcg::template::Template::check(&text, "fuzz.toml");
        if let Ok(base) = wfcg::template::Template::builtin() {
            let _ = wfcg::template::Template::confine(&text, "fuzz.toml", &base);
        }
    }

    #[test]
    fn policies_never_panic(text in tomlish()) {
        let _ = wfcg::policy::Policy::parse(&text, "fuzz.toml");
    }

    #[test]
    fn api_bodies_never_panic(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "\\{(\"(command|run_id|grace_ms|force|reason|timeout_ms|template_text|pid)\": ?(\"[^\"]{0,10}\"|-?[0-9]{1,22}|true|null|\\[\\]|\\[\"x\"\\]|\\{\\}),? ?){0,5}\\}".prop_map(String::into_bytes),
    ]) {
        let _ = serde_json::from_slice::<wfcg::api::CreateRun>(&body);
        let _ = serde_json::from_slice::<wfcg::api::KillRequest>(&body);
        let _ = serde_json::from_slice::<wfcg::api::ExitReport>(&body);
    }
}

/// One raw HTTP request to the agent's socket; the status code, or None if the
/// agent closed the connection without an answer.
fn request(agent: &TestAgent, method: &str, path: &str, body: &[u8]) -> Option<u16> {
    answer(agent, method, path, body).map(|(code, _)| code)
}

/// [`request`]: the status code and the answer's body.
pub(crate) fn answer(
    agent: &TestAgent,
    method: &str,
    path: &str,
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(&agent.socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: wfcg\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    // The agent may answer (and close) before reading a body it has no use for.
    let _ = s.write_all(body);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let code = answer.split(' ').nth(1)?.parse().ok()?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((code, body.to_string()))
}

/// A bad query string and a method a route does not take are answered like every
/// other error: `{"kind", "error"}` JSON (they were plain text, and an empty 405).
#[test]
fn bad_queries_and_methods_are_answered_with_json_errors() {
    require_privileges!();
    let agent = TestAgent::start();
    for (method, path, want) in [
        ("GET", "/v1/runs?all=maybe", 400),
        ("GET", "/v1/audit?limit=-1", 400),
        ("GET", "/v1/audit?since_secs=soon", 400),
        ("GET", "/v1/runs/run_x/may-kill?force=perhaps", 400),
        ("DELETE", "/v1/runs", 405),
        ("GET", "/v1/runs/run_x/kill", 405),
        ("PUT", "/v1/health", 405),
        // A run id that is not UTF-8 once percent-decoded.
        ("POST", "/v1/runs/%FF%FE/kill", 400),
        ("GET", "/v1/runs/%FF%FE", 400),
    ] {
        let (code, body) = answer(&agent, method, path, b"").expect("no answer");
        assert_eq!(code, want, "{method} {path}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body:?}"));
        assert_eq!(v["kind"], "bad_input", "{method} {path}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(!error.is_empty(), "{method} {path}: {v}");
    }
}

/// Generated bodies and query strings on every route of a live agent: each gets an
/// answer (never a 5xx for bad input), and a run started before is still there,
/// killable, afterwards.
#[test]
fn a_live_agent_answers_generated_requests_and_keeps_its_state() {
    require_privileges!();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "exec sleep 1000");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 150,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let live = run.id.clone();
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "\\{(\"(command|run_id|grace_ms|force|emergency|reason|timeout_ms|template_text|workspace)\": ?(\"[^\"]{0,12}\"|-?[0-9]{1,22}|true|null|\\[\\]|\\[\"x\"\\]|\\{\\}),? ?){0,5}\\}".prop_map(String::into_bytes),
    ];
    let paths = prop_oneof![
        Just("/v1/runs".to_string()),
        Just(format!("/v1/runs/{}/kill", run.id)),
        Just("/v1/runs/nosuch/exit".to_string()),
        "/v1/runs\\?(all|stuck)=[a-z0-9%]{0,6}",
        "/v1/audit\\?(since_secs|limit|run|actor)=[-a-z0-9%]{0,12}",
        "/v1/runs/[^ /?#]{0,70}",
        "(uid|force|emergency)=[-a-z0-9%]{0,12}(&(uid|force|emergency)=[-a-z0-9%]{0,12})?"
            .prop_map(move |q| format!("/v1/runs/{live}/may-kill?{q}")),
    ];
    runner
        .run(&(paths, bodies), |(path, body)| {
            // A kill of the live run is not what this is about: only bad bodies go
            // there (an empty body is a kill with the defaults).
            if path.ends_with("/kill")
                && (body.is_empty() || serde_json::from_slice::<serde_json::Value>(&body).is_ok())
            {
                return Ok(());
            }
            // A valid start would move this test process into a run: only bad ones.
            if path == "/v1/runs" && serde_json::from_slice::<wfcg::api::CreateRun>(&body).is_ok() {
                return Ok(());
            }
            let get = path.contains('?')
                || (path.starts_with("/v1/runs/")
                    && !path.ends_with("kill")
                    && !path.ends_with("exit"));
            let (method, body) = if get {
                ("GET", &[][..])
            } else {
                ("POST", &body[..])
            };
            let code = request(&agent, method, &path, body);
            prop_assert!(code.is_some(), "no answer to {method} {path}");
            prop_assert!(
                code.unwrap() < 500,
                "{method} {path} {:?}: {code:?}",
                String::from_utf8_lossy(body)
            );
            Ok(())
        })
        .unwrap();
    assert_eq!(request(&agent, "GET", "/v1/health", b""), Some(200));
    let listed = agent.ps(false);
    assert!(
        listed.iter().any(|r| r["run_id"] == run.id.as_str()),
        "{listed:?}"
    );
    let result = agent.kill_ok(&run.id, &["--force"]);
    assert_eq!(result["success"], true);
}
