//! The agent CLI profiles (`--workflow codex`, `claude`, `gemini`) with the real
//! CLIs, installed by `scripts/test` (`$WFCG_CODEX`, `$WFCG_CLAUDE`,
//! `$WFCG_GEMINI`), against
//! local stand-ins for their APIs (tests/fixtures/fake_llm_api.py): a server that
//! never answers, one that answers 529/500 forever and a port where nothing
//! listens are each ended as not ready at the init timeout; a server that answers
//! makes the run ready within seconds and it exits 0. Nothing of a run is left.
//!
//! And a `--ready-when` condition that the first bytes of output met (a banner)
//! is reported by `status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::require_privileges;
use crate::util::{
    Dir, KillOnDrop, TestAgent, TestUser, marker, pids_with_env, test_tool, wait_until,
};

/// What the fake API does (the modes of tests/fixtures/fake_llm_api.py).
#[derive(Clone, Copy)]
enum Api {
    /// Accepts connections, never answers.
    BlackHole,
    /// 529 (Anthropic's overloaded) or 500 to every request.
    Overloaded,
    /// Nothing listens on the port.
    Closed,
    /// Streams a proper answer ("pong").
    Answers,
}

impl Api {
    fn mode(self) -> &'static str {
        match self {
            Api::BlackHole => "blackhole",
            Api::Overloaded => "overloaded",
            Api::Closed => "closed",
            Api::Answers => "answer",
        }
    }
}

/// A fake API server on a free port of 127.0.0.1, stopped when dropped.
struct FakeApi {
    _server: KillOnDrop,
    port: u16,
}

impl FakeApi {
    fn start(api: Api, dir: &Dir) -> FakeApi {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_llm_api.py");
        let port_file = dir.join(format!("{}.port", api.mode()));
        let server = KillOnDrop(
            Command::new("python3")
                .arg(script)
                .arg(api.mode())
                .arg(&port_file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting python3 tests/fixtures/fake_llm_api.py"),
        );
        let mut port = None;
        let up = wait_until(Duration::from_secs(20), || {
            port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse().ok());
            port.is_some()
        });
        assert!(up, "the fake API ({}) wrote no port", api.mode());
        FakeApi {
            _server: server,
            port: port.unwrap(),
        }
    }
}

/// A CLI under test: its profile and how to run it against a fake API.
#[derive(Clone, Copy)]
enum Cli {
    Codex,
    Claude,
    Gemini,
}

impl Cli {
    fn name(self) -> &'static str {
        match self {
            Cli::Codex => "codex",
            Cli::Claude => "claude",
            Cli::Gemini => "gemini",
        }
    }

    /// The installed CLI, or `None` when skipping is allowed.
    fn path(self) -> Option<PathBuf> {
        match self {
            Cli::Codex => test_tool(
                "WFCG_CODEX",
                "the Codex CLI (`npm install @openai/codex` into .npm-tools, as scripts/test \
                 does) and WFCG_CODEX=.npm-tools/node_modules/.bin/codex",
            ),
            Cli::Claude => test_tool(
                "WFCG_CLAUDE",
                "Claude Code (`npm install @anthropic-ai/claude-code` into .npm-tools, as \
                 scripts/test does) and WFCG_CLAUDE=.npm-tools/node_modules/.bin/claude",
            ),
            Cli::Gemini => test_tool(
                "WFCG_GEMINI",
                "the Gemini CLI (`npm install @google/gemini-cli` into .npm-tools, as \
                 scripts/test does) and WFCG_GEMINI=.npm-tools/node_modules/.bin/gemini",
            ),
        }
    }

    /// The command line and environment that point the CLI at `port`, with its
    /// configuration in `home` (nothing of the host's own is read).
    fn command(self, bin: &Path, port: u16, home: &Dir) -> (Vec<String>, Vec<(String, String)>) {
        let bin = bin.display().to_string();
        let env = |pairs: &[(&str, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect::<Vec<_>>()
        };
        match self {
            Cli::Codex => {
                let config = format!(
                    "model = \"fake-model\"\nmodel_provider = \"fake\"\n\
                     [model_providers.fake]\nname = \"fake\"\n\
                     base_url = \"http://127.0.0.1:{port}/v1\"\n\
                     env_key = \"FAKE_API_KEY\"\nwire_api = \"responses\"\n"
                );
                std::fs::write(home.join("config.toml"), config).unwrap();
                let args = ["exec", "--skip-git-repo-check", "say pong"];
                let mut cmd = vec![bin];
                cmd.extend(args.iter().map(|s| s.to_string()));
                let vars = env(&[
                    ("CODEX_HOME", home.str().to_string()),
                    ("HOME", home.str().to_string()),
                    ("FAKE_API_KEY", "sk-fake".to_string()),
                ]);
                (cmd, vars)
            }
            Cli::Claude => {
                let args = [
                    "-p",
                    "say pong",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                ];
                let mut cmd = vec![bin];
                cmd.extend(args.iter().map(|s| s.to_string()));
                let vars = env(&[
                    ("HOME", home.str().to_string()),
                    ("ANTHROPIC_BASE_URL", format!("http://127.0.0.1:{port}")),
                    ("ANTHROPIC_API_KEY", "sk-fake".to_string()),
                    // Only the fake API is talked to (no update checks, no telemetry).
                    ("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1".to_string()),
                ]);
                (cmd, vars)
            }
            Cli::Gemini => {
                // An API key as its authentication, no update checks, no usage
                // statistics: only the fake API is talked to.
                let settings = home.join(".gemini");
                std::fs::create_dir_all(&settings).unwrap();
                std::fs::write(
                    settings.join("settings.json"),
                    r#"{"security":{"auth":{"selectedType":"gemini-api-key"}},
                        "general":{"enableAutoUpdate":false,"enableAutoUpdateNotification":false},
                        "privacy":{"usageStatisticsEnabled":false}}"#,
                )
                .unwrap();
                // A model named: with "auto", gemini first asks a classifier
                // model for a route (a JSON answer the fake does not give).
                let args = [
                    "-m",
                    "gemini-2.5-flash",
                    "-p",
                    "say pong",
                    "--output-format",
                    "stream-json",
                ];
                let mut cmd = vec![bin];
                cmd.extend(args.iter().map(|s| s.to_string()));
                let vars = env(&[
                    ("HOME", home.str().to_string()),
                    ("GOOGLE_GEMINI_BASE_URL", format!("http://127.0.0.1:{port}")),
                    ("GEMINI_API_KEY", "sk-fake".to_string()),
                    // The workspace is trusted (else gemini asks, or refuses).
                    ("GEMINI_CLI_TRUST_WORKSPACE", "true".to_string()),
                ]);
                (cmd, vars)
            }
        }
    }
}

/// How a run of a CLI ended.
struct Ended {
    status: serde_json::Value,
    /// From `wfcg run` to the end seen in `status`.
    took: Duration,
}

/// Runs `cli` detached with `flags` against `api`, waits (up to `limit`) for
/// its end, and checks that nothing of it is left: its cgroup is gone and no
/// process carries its run id, its test marker or its private home.
fn run_cli(cli: Cli, api: Api, flags: &[&str], limit: Duration) -> Option<Ended> {
    let bin = cli.path()?;
    let agent = TestAgent::start();
    let dir = Dir::new("wfcg-agent-cli-");
    let home = Dir::new(&format!("wfcg-{}-home-", cli.name()));
    let server = FakeApi::start(api, &dir);
    let (cmd, vars) = cli.command(&bin, server.port, &home);
    let mark = marker(cli.name());
    let started = Instant::now();
    let out = agent
        .marked(&mark)
        .args(["run", "--detach"])
        .args(flags)
        .arg("--")
        .args(&cmd)
        .envs(vars)
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .expect("running wfcg run");
    assert!(
        out.status.success(),
        "wfcg run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Polled with a deadline, a few times a second (each look is a `wfcg status`).
    let (ended, status) = loop {
        let status = agent.status(&id);
        let live = ["initializing", "running", "stopping"]
            .contains(&status["status"].as_str().unwrap_or(""));
        if !live || started.elapsed() >= limit {
            break (!live, status);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let took = started.elapsed();
    let log = std::fs::read_to_string(status["log_path"].as_str().unwrap_or("/nonexistent"))
        .unwrap_or_default();
    assert!(
        ended,
        "{} against {} still {} after {limit:?}: {status:#}\noutput:\n{log}",
        cli.name(),
        api.mode(),
        status["status"]
    );
    let run = crate::util::Run {
        id: id.clone(),
        marker: mark,
    };
    agent.wait_run_gone(&run);
    let left = pids_with_env("HOME", home.str());
    assert!(left.is_empty(), "{} left processes: {left:?}", cli.name());
    eprintln!(
        "{} against {}: {} after {:.1} s",
        cli.name(),
        api.mode(),
        status["status"],
        took.as_secs_f64()
    );
    Some(Ended { status, took })
}

/// With its profile and `--init-timeout 30s`, a CLI whose API is broken is
/// ended as not ready within 45 s (codex gives up by itself on a server that
/// answers 500 after five retries, about 30 s: then it exits 1, never ready).
fn ended_as_not_ready(cli: Cli, api: Api) {
    let Some(e) = run_cli(
        cli,
        api,
        &["--workflow", cli.name(), "--init-timeout", "30s"],
        Duration::from_secs(45),
    ) else {
        return;
    };
    let s = &e.status;
    assert!(s["ready_at"].is_null(), "ready on a broken API: {s:#}");
    assert!(e.took < Duration::from_secs(45), "took {:?}", e.took);
    let timed_out = s["status"] == "timed_out"
        && s["kill_result"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("initialization timeout 30s exceeded");
    let gave_up = s["status"] == "exited" && s["exit_code"].as_i64().is_some_and(|c| c != 0);
    assert!(timed_out || gave_up, "{s:#}");
    if !matches!((cli, api), (Cli::Codex, Api::Overloaded)) {
        assert!(timed_out, "{s:#}");
    }
}

/// Running from its start with a stall timeout of 60 s, a CLI in its retry loop
/// is ended as stalled within 3 minutes: its repeated lines are not progress,
/// and neither are the files it reads again for each attempt (codex re-reads
/// about 1 MB of certificates and configuration per reconnect).
fn ended_as_stalled(cli: Cli, api: Api) {
    let limit = Duration::from_secs(180);
    let Some(e) = run_cli(
        cli,
        api,
        &["--ready-when", "start", "--stall-timeout", "60s"],
        limit,
    ) else {
        return;
    };
    let s = &e.status;
    assert_eq!(s["status"], "timed_out", "{s:#}");
    let reason = s["end_reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("stalled: no progress"), "{s:#}");
    assert!(e.took < limit, "took {:?}", e.took);
}

#[test]
fn codex_reconnecting_to_a_closed_port_is_ended_as_stalled() {
    require_privileges!();
    ended_as_stalled(Cli::Codex, Api::Closed);
}

#[test]
fn claude_retrying_an_api_answering_529_is_ended_as_stalled() {
    require_privileges!();
    ended_as_stalled(Cli::Claude, Api::Overloaded);
}

#[test]
fn gemini_retrying_a_closed_port_is_ended_as_stalled() {
    require_privileges!();
    ended_as_stalled(Cli::Gemini, Api::Closed);
}

/// With `--ready-when output` (the advice for programs that never send READY=1)
/// codex is ready at its banner though its API never answers, and `status`
/// says that readiness came with its first bytes of output.
#[test]
fn a_run_ready_at_its_banner_is_reported_as_such() {
    require_privileges!();
    let Some(bin) = Cli::Codex.path() else {
        return;
    };
    let agent = TestAgent::start();
    let dir = Dir::new("wfcg-agent-cli-");
    let home = Dir::new("wfcg-codex-home-");
    let server = FakeApi::start(Api::BlackHole, &dir);
    let (cmd, vars) = Cli::Codex.command(&bin, server.port, &home);
    let mark = marker("banner");
    let out = agent
        .marked(&mark)
        .args(["run", "--detach", "--ready-when", "output"])
        .args(["--init-timeout", "20s", "--"])
        .args(&cmd)
        .envs(vars)
        .current_dir(&dir.path)
        .stdin(Stdio::null())
        .output()
        .expect("running wfcg run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(agent.wait_status(&id, "running"), "{:#}", agent.status(&id));
    assert_eq!(agent.status(&id)["ready_on"], "first output");
    let shown = agent.cli_expect(0, &["status", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains(" on first output: a banner?"), "{shown}");
    agent.kill_ok(&id, &["--force"]);
    agent.wait_run_gone(&crate::util::Run { id, marker: mark });
    assert!(pids_with_env("HOME", home.str()).is_empty());
}

/// With its profile, a CLI whose API answers is ready within seconds of its
/// start and exits 0. gemini, a Node.js program of about 90 MB that starts
/// itself twice, takes up to 25 s to start on a loaded 2-core host: it has 60 s.
fn ready_at_the_answer(cli: Cli) {
    let (init, ready_by) = match cli {
        Cli::Gemini => ("90s", 60),
        Cli::Codex | Cli::Claude => ("30s", 20),
    };
    let Some(e) = run_cli(
        cli,
        Api::Answers,
        &["--workflow", cli.name(), "--init-timeout", init],
        Duration::from_secs(ready_by + 30),
    ) else {
        return;
    };
    let s = &e.status;
    assert_eq!(s["status"], "exited", "{s:#}");
    assert_eq!(s["exit_code"], 0, "{s:#}");
    let at = |k: &str| {
        chrono::DateTime::parse_from_rfc3339(
            s[k].as_str().unwrap_or_else(|| panic!("no {k}: {s:#}")),
        )
        .unwrap()
    };
    // Ready at the answer, not at the banner.
    assert!(s["ready_on"].is_null(), "{s:#}");
    let ready_after = at("ready_at") - at("started_at");
    assert!(
        ready_after < chrono::TimeDelta::seconds(ready_by as i64),
        "ready after {ready_after}: {s:#}"
    );
}

#[test]
fn codex_is_ended_as_not_ready_against_an_api_that_never_answers() {
    require_privileges!();
    ended_as_not_ready(Cli::Codex, Api::BlackHole);
}

#[test]
fn codex_is_ended_as_not_ready_against_an_api_answering_errors() {
    require_privileges!();
    ended_as_not_ready(Cli::Codex, Api::Overloaded);
}

#[test]
fn codex_is_ended_as_not_ready_against_a_closed_port() {
    require_privileges!();
    ended_as_not_ready(Cli::Codex, Api::Closed);
}

#[test]
fn codex_is_ready_at_the_answer_and_exits_0() {
    require_privileges!();
    ready_at_the_answer(Cli::Codex);
}

#[test]
fn claude_is_ended_as_not_ready_against_an_api_that_never_answers() {
    require_privileges!();
    ended_as_not_ready(Cli::Claude, Api::BlackHole);
}

#[test]
fn claude_is_ended_as_not_ready_against_an_api_answering_529() {
    require_privileges!();
    ended_as_not_ready(Cli::Claude, Api::Overloaded);
}

#[test]
fn claude_is_ended_as_not_ready_against_a_closed_port() {
    require_privileges!();
    ended_as_not_ready(Cli::Claude, Api::Closed);
}

#[test]
fn claude_is_ready_at_the_answer_and_exits_0() {
    require_privileges!();
    ready_at_the_answer(Cli::Claude);
}

#[test]
fn gemini_is_ended_as_not_ready_against_an_api_that_never_answers() {
    require_privileges!();
    ended_as_not_ready(Cli::Gemini, Api::BlackHole);
}

#[test]
fn gemini_is_ended_as_not_ready_against_an_api_answering_errors() {
    require_privileges!();
    ended_as_not_ready(Cli::Gemini, Api::Overloaded);
}

#[test]
fn gemini_is_ended_as_not_ready_against_a_closed_port() {
    require_privileges!();
    ended_as_not_ready(Cli::Gemini, Api::Closed);
}

#[test]
fn gemini_is_ready_at_the_answer_and_exits_0() {
    require_privileges!();
    ready_at_the_answer(Cli::Gemini);
}

/// The profiles are operator templates: a user may shorten their init and stall
/// timeouts, never lengthen or remove them.
#[test]
fn a_user_may_shorten_the_profiles_timeouts_but_not_lengthen_them() {
    require_privileges!();
    let agent = TestAgent::start();
    agent.open_to_all_users();
    let user = TestUser::get();
    for profile in ["codex", "claude", "gemini"] {
        for (flag, value) in [
            ("--init-timeout", "10m"),
            ("--init-timeout", "0"),
            ("--stall-timeout", "1h"),
            ("--stall-timeout", "0"),
        ] {
            let out = agent
                .wfcg_as(&user)
                .args(["run", "--workflow", profile, flag, value, "--", "true"])
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{profile} {flag} {value}: {err}"
            );
            assert!(err.contains("timeout"), "{profile} {flag} {value}: {err}");
        }
        let out = agent
            .wfcg_as(&user)
            .args(["run", "-q", "--workflow", profile])
            .args(["--init-timeout", "30s", "--stall-timeout", "1m"])
            .args(["--ready-when", "start", "--", "true"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{profile}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
