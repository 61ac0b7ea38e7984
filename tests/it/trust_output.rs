//! Issue 21, item 7: nothing a user wrote reaches a terminal raw.
//!
//! A real unprivileged user makes a run whose every text field is hostile
//! (workflow name, template path, workspace path, argv and process name, STATUS
//! text, kill reason), and a process outside wfcg with a hostile argv. Root then
//! runs every command an operator would (`ps`, `ps --all`, `status`, `kill`,
//! `adopt`, `kill --pid`, `audit`, `breaker`, `top` in tmux, the MCP tools): no
//! ESC, no C1 CSI/OSC, no bidi override or isolate reaches the output, the
//! hostile text is shown escaped, no line is forged, and `--json` round-trips
//! the exact strings.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{self, CommandExt, KillOnDrop, TestAgent, TestUser, WFCG, wait_until};

/// A title (OSC 0, ended by BEL), a screen clear and a colour (CSI), the same
/// as C1 (CSI 0x9b, OSC 0x9d, ST 0x9c), a right-to-left override and an
/// isolate, a carriage return, a newline that would forge a line, a tab.
const HOSTILE: &str = "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[31m\u{9b}2J\u{9d}0;t\u{9c}\
                       \u{202e}desrever\u{2066}iso\u{2069}\r\nforged: yes\tcol";
/// The escaped form of its start, as the output must show it.
const SHOWN: &str = "\\u001b]0;PWNED\\u0007\\u001b[2J";
/// What a STATUS= datagram can carry (one line: newlines separate fields).
const HOSTILE_LINE: &str =
    "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{9b}2J\u{9d}0;t\u{9c}\u{202e}desrever\u{2066}iso\u{2069}\tcol";

/// Characters that must never reach a terminal from a user's text.
fn forbidden(c: char) -> bool {
    matches!(c,
        '\u{1b}' | '\u{7}' | '\r' | '\u{9b}' | '\u{9c}' | '\u{9d}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Asserts `bytes` (a command's output for a terminal) carries nothing raw.
#[track_caller]
fn assert_clean(what: &str, bytes: &[u8]) -> String {
    let text = String::from_utf8(bytes.to_vec())
        .unwrap_or_else(|e| panic!("{what}: not UTF-8 ({e}): {bytes:?}"));
    let bad: Vec<char> = text.chars().filter(|c| forbidden(*c)).collect();
    assert!(
        bad.is_empty(),
        "{what}: raw {bad:?} reached the output:\n{text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("forged: yes")),
        "{what}: a user's newline forged a line:\n{text}"
    );
    text
}

/// [`assert_clean`], and the hostile text is there, shown escaped.
#[track_caller]
fn assert_shown(what: &str, bytes: &[u8]) -> String {
    let text = assert_clean(what, bytes);
    assert!(
        text.contains(SHOWN),
        "{what}: the hostile text is not shown escaped:\n{text}"
    );
    text
}

/// A hostile path component (no `/`, no NUL).
fn hostile_name(prefix: &str) -> String {
    format!("{prefix}{HOSTILE}")
}

#[test]
fn a_users_hostile_text_reaches_no_terminal_of_root_raw() {
    crate::require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    let base = tempfile::Builder::new()
        .prefix("wfcg-out")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        base.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ws = base.path().join(hostile_name("ws"));
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(user.uid), Some(user.gid)).unwrap();
    let template = base.path().join(hostile_name("tpl") + ".toml");
    std::fs::write(&template, "[timeouts]\ninit = \"5m\"\n").unwrap();

    // The user's run: STATUS= text, then exec with a hostile argv[0] and args.
    let mine = base.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(user.uid), Some(user.gid)).unwrap();
    let started = mine.join("started");
    let script = format!(
        r#"{WFCG} notify --status "$1" --ready && touch {} && exec -a "$0" sleep 1000"#,
        started.display()
    );
    let out = agent
        .wfcg_as(&user)
        .args(["run", "--detach", "--workflow", HOSTILE, "--template"])
        .arg(&template)
        .arg("--workspace")
        .arg(&ws)
        .args(["--", "bash", "-c", &script, HOSTILE, HOSTILE_LINE, HOSTILE])
        .expect_code(0);
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        wait_until(Duration::from_secs(20), || started.exists()),
        "the run did not start: {}",
        agent.log_tail(20)
    );
    // Run ids cannot carry any of it: refused before anything is asked.
    let bad_id = agent
        .wfcg_as(&user)
        .args(["run", "--run-id", "x\u{1b}]0;t\u{7}", "--", "true"])
        .expect_code(2);
    assert_clean("run --run-id (refused)", &bad_id.stderr);

    // A root run the user may not kill: the denied attempt's reason is audited.
    let victim = agent.start_run(&[], "exec sleep 1000");
    let denied = agent
        .wfcg_as(&user)
        .args(["kill", &victim.id, "--reason", HOSTILE])
        .expect_code(4);
    assert_clean("the user's denied kill", &denied.stderr);

    // What root sees.
    let ps = agent.cli_expect(0, &["ps"]);
    let ps = assert_shown("ps", &ps.stdout);
    assert!(ps.contains(&id), "{ps}");
    assert_shown("ps --all", &agent.cli_expect(0, &["ps", "--all"]).stdout);
    let status = agent.cli_expect(0, &["status", &id]);
    let status = assert_shown("status", &status.stdout);
    for field in ["workflow:", "template:", "says:", "command:", "workspace:"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_default();
        assert!(
            line.contains("\\u001b]0;PWNED"),
            "{field} not shown escaped:\n{status}"
        );
    }
    assert!(
        status.contains("\\u202edesrever\\u2066iso\\u2069"),
        "{status}"
    );

    // --json keeps the exact strings (on a pipe: the agent's answer as it came).
    let st: Value = serde_json::from_slice(&agent.cli_expect(0, &["status", "--json", &id]).stdout)
        .expect("status --json is JSON");
    assert_eq!(st["workflow"], HOSTILE, "{st:#}");
    assert_eq!(
        st["template"],
        json!(template.display().to_string()),
        "{st:#}"
    );
    assert_eq!(st["status_text"], HOSTILE_LINE, "{st:#}");
    assert_eq!(st["workspace"], json!(ws.display().to_string()), "{st:#}");
    assert_eq!(
        st["command"],
        json!(["bash", "-c", script, HOSTILE, HOSTILE_LINE, HOSTILE])
    );
    let all: Value =
        serde_json::from_slice(&agent.cli_expect(0, &["ps", "--json", "--all"]).stdout).unwrap();
    let mine = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == id.as_str());
    assert_eq!(mine.unwrap()["workflow"], HOSTILE);

    top_shows_it_escaped(&agent, &id);
    mcp_shows_it_escaped(&agent, &id, &victim.id);

    // Root kills the user's run; then the audit shows the user's reason.
    let kill = agent.cli_expect(0, &["kill", &id, "--reason", HOSTILE]);
    assert_clean("kill", &kill.stdout);
    let audit = agent.cli_expect(0, &["audit"]);
    assert_shown("audit", &audit.stdout);
    let records: Value = serde_json::from_slice(&agent.cli_expect(0, &["audit", "--json"]).stdout)
        .expect("audit --json is JSON");
    let reasons: Vec<&Value> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["reason"])
        .collect();
    assert!(reasons.contains(&&json!(HOSTILE)), "{records:#}");
    for line in agent
        .cli_expect(0, &["audit", "export"])
        .stdout
        .split(|b| *b == b'\n')
    {
        if !line.is_empty() {
            assert_clean("audit export", line);
            serde_json::from_slice::<Value>(line).expect("audit export: JSON lines");
        }
    }
    assert_shown(
        "status of the killed run",
        &agent.cli_expect(0, &["status", &id]).stdout,
    );
    agent.kill_ok(&victim.id, &["--force"]);
}

/// A process of the user's, outside wfcg, with a hostile argv: root adopts it
/// (dry run, then with --kill) and kills another with `kill --pid`.
#[test]
fn adopting_and_killing_a_users_hostile_process_prints_its_argv_escaped() {
    crate::require_privileges!();
    let agent = TestAgent::start();
    let user = TestUser::get();
    let spawn = || {
        let mut cmd = user.command("setsid");
        for key in wfcg::adopt::DEFAULT_MARKERS {
            cmd.env_remove(key);
        }
        let child = cmd
            .args([
                "bash",
                "-c",
                r#"exec -a "$0" sleep 1000"#,
                HOSTILE,
                HOSTILE_LINE,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let p = KillOnDrop(child);
        let pid = p.id();
        assert!(wait_until(Duration::from_secs(10), || util::cmdline(pid)
            .contains("PWNED")));
        p
    };
    let (mut a, mut b) = (spawn(), spawn());

    let dry = agent.cli_expect(0, &["adopt", &a.id().to_string(), "--dry-run"]);
    assert_shown("adopt --dry-run", &dry.stdout);
    let adopted = agent.cli_expect(0, &["adopt", &a.id().to_string(), "--kill", "--force"]);
    assert_shown("adopt --kill", &adopted.stdout);
    assert_clean("adopt --kill (stderr)", &adopted.stderr);
    let killed = agent.cli_expect(0, &["kill", "--pid", &b.id().to_string(), "--force"]);
    assert_clean("kill --pid", &killed.stdout);
    assert_clean("kill --pid (stderr)", &killed.stderr);
    assert!(a.wait_timeout(Duration::from_secs(10)).is_some());
    assert!(b.wait_timeout(Duration::from_secs(10)).is_some());
    let json: Value =
        serde_json::from_slice(&agent.cli_expect(0, &["ps", "--all", "--json"]).stdout).unwrap();
    let commands: Vec<&Value> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["command"])
        .collect();
    assert!(
        commands.contains(&&json!([format!("{HOSTILE} 1000")])),
        "the exact argv is not in ps --json: {commands:?}"
    );
}

/// A breaker named after a hostile workflow (a root template may set
/// `[breaker]`): `wfcg breaker` and `wfcg ps` show its name escaped.
#[test]
fn breaker_shows_a_hostile_workflow_name_escaped() {
    crate::require_privileges!();
    let agent = TestAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("breaker.toml");
    std::fs::write(&template, "[breaker]\nfailures = 1\ncooldown = \"10m\"\n").unwrap();
    let run = agent
        .wfcg()
        .args(["run", "--detach", "--workflow", HOSTILE, "--template"])
        .arg(&template)
        .args(["--init-timeout", "300ms", "--", "sleep", "1000"])
        .expect_code(0);
    let id = String::from_utf8(run.stdout).unwrap().trim().to_string();
    assert!(
        agent.wait_status(&id, "timed_out"),
        "{:#}",
        agent.status(&id)
    );
    let mut listed = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            listed = util::text(&agent.cli_expect(0, &["breaker"]).stdout);
            listed.contains("OPEN")
        }),
        "no open breaker: {listed}"
    );
    assert_shown("breaker", listed.as_bytes());
    assert_shown("ps (open breakers)", &agent.cli_expect(0, &["ps"]).stdout);
    let list: Value =
        serde_json::from_slice(&agent.cli_expect(0, &["breaker", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["workflow"], HOSTILE, "{list:#}");
    let refused = agent
        .wfcg()
        .args(["run", "--workflow", HOSTILE, "--template"])
        .arg(&template)
        .args(["--", "true"])
        .expect_code(6);
    assert_clean("run refused by the breaker", &refused.stderr);
    let reset = agent
        .wfcg()
        .args(["breaker", "reset", HOSTILE])
        .expect_code(0);
    assert_shown("breaker reset", &reset.stdout);
}

/// `wfcg top --all` in tmux: every byte it writes is recorded (`pipe-pane`); no
/// OSC, no C1, no bidi character, no title set; the screen shows the escapes.
fn top_shows_it_escaped(agent: &TestAgent, id: &str) {
    static N: AtomicUsize = AtomicUsize::new(0);
    /// The tmux server and the pane's process (`wfcg top` once it execs):
    /// asked to quit, then killed, so a failing test leaves neither behind.
    struct Server(String, i32);
    impl Drop for Server {
        fn drop(&mut self) {
            let quit = tmux(&self.0).args(["send-keys", "-t", "top", "q"]).status();
            let gone = || !util::alive(self.1);
            if quit.is_err() || !wait_until(Duration::from_secs(5), gone) {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(self.1).expect("a pid"),
                    rustix::process::Signal::KILL,
                );
            }
            let _ = tmux(&self.0)
                .arg("kill-server")
                .stderr(Stdio::null())
                .status();
        }
    }
    fn tmux(name: &str) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", name])
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null());
        cmd
    }
    let name = format!(
        "wfcg-out-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );

    let raw = agent.dir.path().join("top.raw");
    let env: Vec<String> = agent
        .env()
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.display()))
        .collect();
    // top starts once the pane's output is being recorded (a line typed below).
    let command = format!("read go; exec env {} '{WFCG}' top --all", env.join(" "));
    let ok = tmux(&name)
        .args([
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "250",
            "-y",
            "40",
            &command,
        ])
        .status()
        .expect("tmux (is it installed?)");
    assert!(ok.success());
    let pane = tmux(&name)
        .args(["display-message", "-p", "-t", "top", "#{pane_pid}"])
        .output()
        .unwrap();
    let pid = util::text(&pane.stdout).trim().parse().expect("pane pid");
    let server = Server(name.clone(), pid);
    let piped = tmux(&name)
        .args([
            "pipe-pane",
            "-o",
            "-t",
            "top",
            &format!("cat >> '{}'", raw.display()),
        ])
        .status()
        .unwrap();
    assert!(piped.success());
    tmux(&name)
        .args(["send-keys", "-t", "top", "Enter"])
        .status()
        .unwrap();
    let capture = || {
        util::text(
            &tmux(&name)
                .args(["capture-pane", "-p", "-t", "top"])
                .output()
                .unwrap()
                .stdout,
        )
    };
    let mut screen = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            screen = capture();
            screen.contains(id)
        }),
        "top did not list the run:\n{screen}"
    );
    // Select it: filter on its id.
    for keys in [&["/"][..], &["-l", id], &["Enter"]] {
        tmux(&name)
            .args(["send-keys", "-t", "top"])
            .args(keys)
            .status()
            .unwrap();
    }
    let shown = wait_until(Duration::from_secs(20), || {
        screen = capture();
        screen.contains("workflow \\u001b]0;PWNED")
            && screen.contains("template /")
            && screen.contains("denied  \\u001b]0;PWNED")
    });
    assert!(
        shown,
        "top did not show the run's workflow, template and the reason escaped:\n{screen}"
    );
    tmux(&name)
        .args(["send-keys", "-t", "top", "q"])
        .status()
        .unwrap();
    let title = util::text(
        &tmux(&name)
            .args(["display-message", "-p", "-t", "top", "#{pane_title}"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        !title.contains("PWNED"),
        "top let the run set the title: {title}"
    );
    drop(server);
    let bytes = std::fs::read(&raw).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("PWNED"),
        "nothing recorded from top: {text:?}"
    );
    assert!(!text.contains("\u{1b}]"), "top wrote an OSC: {text:?}");
    assert!(
        !text.contains("PWNED\u{7}"),
        "top wrote the user's title: {text:?}"
    );
    let bad: Vec<char> = text
        .chars()
        .filter(|c| forbidden(*c) && *c != '\u{1b}' && *c != '\r')
        .collect();
    assert!(bad.is_empty(), "top wrote raw {bad:?}: {text:?}");
}

/// The MCP tools' text content: no raw character, the same JSON as the
/// structured content, which keeps the exact strings.
fn mcp_shows_it_escaped(agent: &TestAgent, id: &str, victim: &str) {
    let rt = crate::mcp::runtime();
    rt.block_on(async {
        let client = crate::mcp::connect(agent).await;
        for (tool, args) in [
            ("get_workflow", json!({"run_id": id})),
            ("list_workflows", json!({"all": true})),
            ("audit_log", json!({"run_id": victim})),
        ] {
            let r = crate::mcp::call(&client, tool, args).await;
            let text = crate::mcp::text(&r);
            assert_clean(tool, text.as_bytes());
            assert!(text.contains("\\u001b]0;PWNED"), "{tool}: {text}");
            let structured = r.structured_content.clone().expect("structured content");
            let from_text: Value = serde_json::from_str(&text).expect("text content is JSON");
            assert_eq!(
                from_text, structured,
                "{tool}: text and structured content differ"
            );
            assert!(structured.to_string().contains("\\u001b]0;PWNED"));
            if tool == "get_workflow" {
                assert_eq!(structured["workflow"], HOSTILE);
                assert_eq!(structured["status_text"], HOSTILE_LINE);
            }
        }
        client.cancel().await.ok();
    });
}
