use super::*;

#[test]
fn the_tmpdir_size_is_checked_and_defaults_to_1g() {
    assert_eq!(Template::parse("", "x.toml").unwrap().tmpdir.size, "1G");
    assert_eq!(
        Template::parse("[tmpdir]\nsize = \"64M\"\n", "x.toml")
            .unwrap()
            .tmpdir
            .size,
        "64M"
    );
    for bad in ["lots", "0", "1G,uid=0"] {
        let err = Template::parse(&format!("[tmpdir]\nsize = {bad:?}\n"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x.toml:2: tmpdir.size"), "{bad}: {err}");
    }
}

#[test]
fn the_shipped_default_parses_with_the_documented_values() {
    let t = Template::builtin().unwrap();
    assert_eq!(t.kill.term_grace, Duration::from_secs(5));
    assert_eq!(t.kill.kill_deadline, Duration::from_secs(10));
    assert_eq!(t.timeouts.init, Duration::from_secs(300));
    assert_eq!(t.timeouts.total, Duration::from_secs(3600));
    assert_eq!(t.critical_sections.git, Duration::from_secs(30));
    assert_eq!(t.critical_sections.database, Duration::from_secs(15));
    assert_eq!(t.critical_sections.files, Duration::from_secs(10));
}

#[test]
fn every_shipped_template_parses_with_its_init_timeout() {
    let dir = tempfile::tempdir().unwrap();
    for (name, init) in [
        ("default", 5),
        ("builder", 30),
        ("lina", 30),
        ("guardian", 5),
    ] {
        let t = Template::lookup_in(dir.path(), name).unwrap();
        assert_eq!(t.timeouts.init, Duration::from_secs(init * 60), "{name}");
        assert_eq!(t.timeouts.total, Duration::from_secs(3600), "{name}");
        // Every template: ready at READY=1 or the first output (a plain
        // command that prints is never killed for not sending READY=1), and
        // the workspace kept. The agent-CLI templates add a stall timeout and
        // a breaker; the default has neither.
        let agent_cli = name != "default";
        assert_eq!(t.run.ready, [Ready::Output], "{name}");
        assert_eq!(t.cleanup.workspace, WorkspacePolicy::Keep, "{name}");
        assert_eq!(!t.timeouts.stall.is_zero(), agent_cli, "{name}");
        assert_eq!(t.breaker.failures, if agent_cli { 3 } else { 0 }, "{name}");
    }
}

#[test]
fn the_agent_cli_profiles_are_ready_only_at_an_answer_of_the_model() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["codex", "claude", "gemini"] {
        let t = Template::lookup_in(dir.path(), name).unwrap();
        assert_eq!(t.timeouts.init, Duration::from_secs(120), "{name}");
        assert_eq!(t.timeouts.stall, Duration::from_secs(600), "{name}");
        assert_eq!(t.breaker.failures, 3, "{name}");
    }
    let pattern = |name: &str| {
        let t = Template::lookup_in(dir.path(), name).unwrap();
        match &t.run.ready[..] {
            [Ready::Log(p)] => regex::Regex::new(p).unwrap(),
            other => panic!("{name}: {other:?}"),
        }
    };
    // Lines each CLI prints (codex-cli 0.171 on stderr, Claude Code 2.1 stream-json).
    let codex = pattern("codex");
    for banner in [
        "OpenAI Codex v0.171.0",
        "model: gpt-5-codex",
        "user",
        "ERROR: Reconnecting... waiting for network",
        "ERROR: Reconnecting... 2/5",
        "warning: Model metadata for `m` not found.",
    ] {
        assert!(!codex.is_match(banner), "codex ready at {banner:?}");
    }
    for answer in ["codex", "thinking", "exec"] {
        assert!(codex.is_match(answer), "codex not ready at {answer:?}");
    }
    let claude = pattern("claude");
    for event in [
        r#"{"type":"system","subtype":"init","cwd":"/w","session_id":"s","tools":[]}"#,
        r#"{"type":"system","subtype":"api_retry","attempt":1,"max_retries":10,"error_status":529}"#,
        r#"{"type":"assistant","message":{"diagnostics":null,"id":"0dd1b893-8755","container":null,"model":"<synthetic>","role":"assistant","stop_details":null,"type":"message","usage":{"input_tokens":0},"content":[{"type":"text","text":"API Error: 529 Overloaded."}]}}"#,
        r#"{"type":"assistant","message":{"id":"7f0c2a1e-uuid","model":"<synthetic>","role":"assistant","content":[{"type":"text","text":"API Error: 529","model":"x"}]}}"#,
        r#"{"type":"assistant","message":{"model":"<synthetic>","id":"x"}}"#,
        r#"{"type":"user","message":{"role":"user","content":"{\"type\":\"assistant\",\"message\":{\"id\":\"msg_"}}"#,
    ] {
        assert!(!claude.is_match(event), "claude ready at {event}");
    }
    let answer = r#"{"type":"assistant","message":{"id":"msg_01X","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"pong"}]}}"#;
    assert!(claude.is_match(answer));
    let answer = r#"{"type":"assistant","message":{"model":"claude-opus-4-1","id":"msg_01X","type":"message","content":[]}}"#;
    assert!(claude.is_match(answer));
    // gemini-cli 0.61, --output-format stream-json.
    let gemini = pattern("gemini");
    for event in [
        r#"{"type":"init","timestamp":"2026-12-07T14:53:30.368Z","session_id":"e83d","model":"gemini-2.5-flash"}"#,
        r#"{"type":"message","timestamp":"2026-12-07T14:53:30.402Z","role":"user","content":"say pong"}"#,
        r#"{"type":"message","timestamp":"2026-12-07T14:53:30.402Z","role":"user","content":"\",\"role\":\"assistant\""}"#,
        "Attempt 2 failed with status 500. Retrying with backoff... _ApiError: {}",
        r#"{"type":"result","timestamp":"2026-12-07T14:50:26.626Z","status":"error","error":{"type":"unknown"}}"#,
    ] {
        assert!(!gemini.is_match(event), "gemini ready at {event}");
    }
    for answer in [
        r#"{"type":"message","timestamp":"2026-12-07T14:51:40.238Z","role":"assistant","content":"pong","delta":true}"#,
        r#"{"type":"tool_use","timestamp":"2026-12-07T14:51:40.238Z","tool_name":"run_shell_command"}"#,
    ] {
        assert!(gemini.is_match(answer), "gemini not ready at {answer}");
    }
    assert_eq!(BUILTIN.len(), 7);
}

#[test]
fn errors_name_the_line() {
    let bad = DEFAULT_TOML.replace("term_grace = \"5s\"", "term_grace = \"5 parsecs\"");
    let err = Template::parse(&bad, "x.toml").unwrap_err().to_string();
    let line = DEFAULT_TOML
        .lines()
        .position(|l| l.starts_with("term_grace"))
        .unwrap()
        + 1;
    assert!(err.starts_with(&format!("x.toml:{line}:")), "{err}");
    let unknown = DEFAULT_TOML.replace("[kill]", "[kill]\nbogus = 1");
    assert!(
        Template::parse(&unknown, "y.toml")
            .unwrap_err()
            .to_string()
            .contains("bogus")
    );
}

#[test]
fn a_partial_template_is_merged_over_the_default() {
    let t = Template::parse("[timeouts]\ninit = \"30m\"\n", "p.toml").unwrap();
    let d = Template::builtin().unwrap();
    assert_eq!(t.timeouts.init, Duration::from_secs(1800));
    assert_eq!(t.timeouts.total, d.timeouts.total);
    assert_eq!(t.kill, d.kill);
    assert_eq!(t.critical_sections, d.critical_sections);
    assert_eq!(Template::parse("", "empty.toml").unwrap(), d);
}

#[test]
fn check_reports_every_problem_with_its_own_line() {
    let text = "\
[timeouts]
init = \"soon\"
bogus = 1

[kill]
term_grace = \"10s\"

[cleanup]
workspace = \"shred\"

[limits]
\"memory.max\" = \"lots\"
\"io.max\" = \"1\"
";
    let problems = Template::check(text, "t.toml").unwrap_err().lines();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    let lines: Vec<&str> = problems
        .iter()
        .map(|p| p.split(':').nth(1).unwrap())
        .collect();
    assert_eq!(lines, ["2", "3", "9", "12", "13"], "{problems:#?}");
    assert!(
        problems[1].contains("unknown field `bogus`"),
        "{problems:#?}"
    );
    assert!(problems[2].contains("shred"), "{problems:#?}");
    assert!(problems[3].contains("memory.max"), "{problems:#?}");
    assert!(
        problems[4].contains("unknown limit \"io.max\""),
        "{problems:#?}"
    );
    let one = Template::parse(text, "t.toml").unwrap_err().to_string();
    assert!(
        one.starts_with("t.toml:2:") && one.contains("and 4 more problems"),
        "{one}"
    );
}

#[test]
fn syntax_errors_and_bad_webhooks_have_lines_too() {
    let err = Template::parse("[timeouts\ninit = \"1m\"\n", "s.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("s.toml:1:"), "{err}");
    let err = Template::parse("\n[alerts]\nwebhook = \"ftp://x/y\"\n", "w.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("w.toml:3:") && err.contains("http://"),
        "{err}"
    );
    let t = Template::parse("[alerts]\nwebhook = \"https://x/y\"\n", "w.toml").unwrap();
    assert_eq!(t.alerts.webhook.as_deref(), Some("https://x/y"));
    let err = Template::parse("[limits]\nmemory.max = \"1G\"\n", "d.toml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("d.toml:2:") && err.contains("quote"),
        "{err}"
    );
}

#[test]
fn limits_take_strings_and_integers() {
    let t = Template::parse(
        "[limits]\n\"pids.max\" = 512\n\"memory.max\" = \"2G\"\n\"cpu.max\" = \"max 100000\"\n",
        "l.toml",
    )
    .unwrap();
    assert_eq!(t.limits["pids.max"], "512");
    assert_eq!(t.limits["memory.max"], "2G");
    assert_eq!(t.limits["cpu.max"], "max 100000");
}

#[test]
fn a_json_round_trip_gives_the_same_template() {
    for (name, text) in BUILTIN {
        let mut t = Template::parse(text, name).unwrap();
        t.timeouts.init = Duration::from_millis(1234);
        t.kill.term_grace = Duration::from_nanos(1_500_000_007);
        t.limits.insert("pids.max".into(), "64".into());
        t.alerts.webhook = Some("http://127.0.0.1:9/x".into());
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"total\":\"1h\""), "{json}");
        let back: Template = serde_json::from_str(&json).unwrap();
        assert_eq!(back, t, "{json}");
    }
}

#[test]
fn lookup_prefers_the_host_file_and_lists_both() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("builder.toml"),
        "[timeouts]\ninit = \"45m\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("nightly.toml"),
        "[timeouts]\ntotal = \"6h\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.toml"), "[timeouts]\nnope = 1\n").unwrap();
    std::fs::write(dir.path().join("README"), "not a template").unwrap();
    let t = Template::lookup_in(dir.path(), "builder").unwrap();
    assert_eq!(t.timeouts.init, Duration::from_secs(45 * 60));
    let t = Template::lookup_in(dir.path(), "nightly").unwrap();
    assert_eq!(t.timeouts.total, Duration::from_secs(6 * 3600));
    assert_eq!(t.timeouts.init, Duration::from_secs(300));
    let err = Template::lookup_in(dir.path(), "broken")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("broken.toml:2:") && err.contains("nope"),
        "{err}"
    );

    let list = Template::list_in(dir.path());
    let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "default", "builder", "lina", "guardian", "codex", "claude", "gemini", "broken",
            "nightly"
        ]
    );
    assert_eq!(list[0].1, BUILTIN_SOURCE);
    assert!(list[1].1.ends_with("builder.toml"), "{list:?}");

    let err = Template::lookup_in(dir.path(), "nosuch")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("default, builder, lina, guardian, codex, claude, gemini, broken, nightly"),
        "{err}"
    );
}

#[test]
fn find_tells_a_missing_template_from_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), "[timeouts\n").unwrap();
    assert_eq!(Template::find_in(dir.path(), "nosuch"), Ok(None));
    assert_eq!(Template::find_in(dir.path(), "team/a"), Ok(None));
    assert!(Template::find_in(dir.path(), "lina").unwrap().is_some());
    let err = Template::find_in(dir.path(), "broken")
        .unwrap_err()
        .to_string();
    assert!(err.contains("broken.toml:1:"), "{err}");
}

#[test]
fn durations_may_be_plain_numbers_of_seconds() {
    let t = Template::parse("[timeouts]\ninit = 90\ntotal = 1.5\n", "n.toml").unwrap();
    assert_eq!(t.timeouts.init, Duration::from_secs(90));
    assert_eq!(t.timeouts.total, Duration::from_millis(1500));
    let err = Template::parse("[timeouts]\ninit = -1\n", "n.toml")
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("n.toml:2:"), "{err}");
}

#[test]
fn names_are_plain_file_stems() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["", "../etc/passwd", "a/b", "..", ".hidden", "x..y", "a b"] {
        let err = Template::lookup_in(dir.path(), bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad template name"), "{bad:?}: {err}");
    }
    assert!(check_name("builder-2.nightly_x").is_ok());
}

#[test]
fn durations_are_written_so_they_read_back_exactly() {
    for d in [
        Duration::ZERO,
        Duration::from_millis(1234),
        Duration::from_secs(5400),
        Duration::from_millis(90_250),
        Duration::from_nanos(1_000_000_001),
    ] {
        assert_eq!(crate::duration::parse(&duration_text(d)), Ok(d), "{d:?}");
    }
    assert_eq!(duration_text(Duration::from_secs(300)), "5m");
}

#[test]
fn ready_takes_one_condition_or_a_list_and_checks_each() {
    let t = Template::parse("[run]\nready = \"output\"\n", "r.toml").unwrap();
    assert_eq!(t.run.ready, [Ready::Output]);
    let t = Template::parse(
        "[run]\nready = [\"log:^up$\", \"port:8080\", \"file:run/ready\"]\n",
        "r.toml",
    )
    .unwrap();
    assert_eq!(
        t.run.ready,
        [
            Ready::Log("^up$".into()),
            Ready::Port(8080),
            Ready::File("run/ready".into())
        ]
    );
    assert!(t.run.waits());
    assert_eq!(t.run.port(), Some(8080));
    let back: Template = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
    assert_eq!(back, t);
    for (bad, why) in [
        ("port:0", "TCP port"),
        ("port:http", "TCP port"),
        ("log:(", "regular expression"),
        ("file:", "path"),
        ("soon", "unknown"),
    ] {
        let err = Template::parse(&format!("\n[run]\nready = \"{bad}\"\n"), "b.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("b.toml:3:") && err.contains(why),
            "{bad}: {err}"
        );
    }
    assert!(
        !Template::parse("[run]\nready = \"start\"\n", "s")
            .unwrap()
            .run
            .waits()
    );
}

#[test]
fn a_users_template_may_shorten_stall_and_output_but_not_set_the_breaker() {
    let base = Template::parse(
        "[timeouts]\nstall = \"10m\"\n[breaker]\nfailures = 3\n",
        "op.toml",
    )
    .unwrap();
    // A timeout the operator left off may be turned on: that only tightens.
    let t = Template::confine("[timeouts]\nstall = \"1m\"\noutput = \"5m\"\n", "u", &base).unwrap();
    assert_eq!(t.timeouts.output, Duration::from_secs(300));
    let t = Template::confine("[timeouts]\nstall = \"1m\"\n", "u", &base).unwrap();
    assert_eq!(t.timeouts.stall, Duration::from_secs(60));
    for (text, key) in [
        ("[timeouts]\nstall = \"1h\"\n", "timeouts.stall"),
        ("[timeouts]\nstall = \"0\"\n", "timeouts.stall"),
        ("[breaker]\nfailures = 0\n", "[breaker]"),
        ("[breaker]\nfailures = 1\n", "[breaker]"),
    ] {
        let err = Template::confine(text, "u", &base).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

#[test]
fn errors_are_typed_and_name_the_file_and_line() {
    let base = Template::builtin().unwrap();
    let err = Template::confine("[alerts]\non_event = \"id\"\n", "u.toml", &base).unwrap_err();
    assert_eq!(
        err,
        TemplateError::OperatorOnly {
            file: "u.toml".into(),
            section: "alerts"
        }
    );
    let err = Template::confine("[timeouts]\ninit = \"0\"\n", "u.toml", &base).unwrap_err();
    assert!(
        matches!(&err, TemplateError::Longer { file, too_long }
            if file == "u.toml" && too_long.key == "timeouts.init" && too_long.value.is_zero()),
        "{err:?}"
    );
    let err = Template::parse("\n[kill]\nbogus = 1\n", "k.toml").unwrap_err();
    let TemplateError::Invalid { file, problems } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((file.as_str(), problems[0].line), ("k.toml", Some(3)));
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Template::lookup_in(dir.path(), "nosuch"),
        Err(TemplateError::NotFound { name, .. }) if name == "nosuch"
    ));
    assert_eq!(
        Template::lookup_in(dir.path(), "a/b"),
        Err(TemplateError::BadName("a/b".into()))
    );
}

/// (Was `client::tests::the_fallback_course_is_the_shipped_defaults`: the
/// client reads no template now, and its fallback is a constant.)
#[test]
fn the_fallback_course_is_the_shipped_defaults() {
    let c = crate::api::KillCourse::FALLBACK;
    let t = Template::builtin().unwrap();
    assert_eq!(c.max_wait, t.critical_sections.max_wait);
    assert_eq!(c.term_grace, t.kill.term_grace);
    assert_eq!(c.kill_deadline, t.kill.kill_deadline);
    assert_eq!(c, t.kill_course());
}
