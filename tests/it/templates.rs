//! Templates, limits and alerts (issue 5 items 7–8): the shipped templates parse,
//! a bad one gives line-numbered errors, limits are skipped with a warning on the
//! real hybrid cgroup2 mount, the webhook reaches a test HTTP server without
//! holding up the kill, an https webhook is verified against the CA in
//! `SSL_CERT_FILE`, and the example alert script builds its ticket.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use wfcg::cgroup::{self, Cgroup};

use crate::require_privileges;
use crate::util::{CommandExt, DEFAULT_TEMPLATE, KillOnDrop, TestAgent, WFCG, marker, text};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn templates_each_shipped_template_parses() {
    let files: Vec<PathBuf> = ["default", "builder", "lina", "guardian"]
        .iter()
        .map(|n| repo_file(&format!("cgroup-templates/{n}.toml")))
        .collect();
    let out = Command::new(WFCG)
        .args(["template", "check"])
        .args(&files)
        .expect_code(0);
    let stdout = text(&out.stdout);
    for (file, init) in files.iter().zip(["5m", "30m", "30m", "5m"]) {
        let line = format!("{}: ok (init {init}, total 1h,", file.display());
        assert!(stdout.contains(&line), "{line:?} not in:\n{stdout}");
    }
}

#[test]
fn templates_are_listed_with_their_timeouts() {
    let out = Command::new(WFCG)
        .args(["templates", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(&names[..4], ["default", "builder", "lina", "guardian"]);
    for (row, init) in rows.iter().zip(["5m", "30m", "30m", "5m"]) {
        // A host file in /etc/wfcg/templates may replace a shipped one.
        if row["source"] == "built-in" {
            assert_eq!(row["template"]["timeouts"]["init"], init, "{row}");
        }
    }
    let out = Command::new(WFCG).arg("templates").output().unwrap();
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("builder ")), "{table}");
}

#[test]
fn templates_a_bad_template_gives_line_numbered_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "# a partial template\n\
         [timeouts]\n\
         init = \"half an hour\"\n\
         retries = 3\n\
         \n\
         [limits]\n\
         \"memory.max\" = \"lots\"\n",
    )
    .unwrap();
    let out = Command::new(WFCG)
        .args(["template", "check"])
        .arg(&file)
        .expect_code(2);
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let f = file.display();
    assert_eq!(lines.len(), 3, "{stderr}");
    assert!(lines[0].starts_with(&format!("{f}:3: ")), "{stderr}");
    assert!(lines[0].contains("half an hour"), "{stderr}");
    assert!(
        lines[1].starts_with(&format!("{f}:4: unknown field `retries`")),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with(&format!("{f}:7: limits: memory.max")),
        "{stderr}"
    );

    // A good partial template passes, the rest coming from the default.
    std::fs::write(&file, "[timeouts]\ninit = \"45m\"\n").unwrap();
    let out = Command::new(WFCG)
        .args(["template", "check"])
        .arg(&file)
        .expect_code(0);
    assert!(text(&out.stdout).contains("ok (init 45m, total 1h"));
}

/// A private cgroup tree `<mount>/wfcg-limits-test-*/runs/r1` on the real
/// cgroup2 mount, removed when dropped.
struct PrivateTree {
    root: Cgroup,
    run: Cgroup,
}

impl PrivateTree {
    fn new() -> PrivateTree {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mount = cgroup::cgroup2_mount().unwrap();
        let root = Cgroup::new(mount.join(format!(
            "wfcg-limits-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )));
        let runs = root.child("runs");
        let run = runs.child("r1");
        for cg in [&root, &runs, &run] {
            cg.create_new().unwrap();
        }
        PrivateTree { root, run }
    }
}

impl Drop for PrivateTree {
    fn drop(&mut self) {
        let _ = self.root.remove_recursive();
    }
}

#[test]
fn templates_limits_are_skipped_with_a_warning_on_the_real_mount_where_not_enabled() {
    require_privileges!();
    let tree = PrivateTree::new();
    let runs = tree.run.parent().unwrap();
    let limits: BTreeMap<String, String> = [("memory.max", "64M"), ("pids.max", "64")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // wfcg touches its own root and below, never the cgroups above it: a
    // controller is there for the runs when the private root has it.
    let available = |c: &str| tree.root.controllers().unwrap().contains(&c.to_string());
    let warnings = tree.run.apply_limits(&limits);
    for (file, controller, value) in [
        ("memory.max", "memory", "67108864"),
        ("pids.max", "pids", "64"),
    ] {
        let warning = warnings.iter().find(|w| w.starts_with(&format!("{file}=")));
        if available(controller) {
            // A pure cgroup v2 host: enabled down the private tree and written.
            assert_eq!(warning, None, "{warnings:?}");
            let written = std::fs::read_to_string(tree.run.path().join(file)).unwrap();
            assert_eq!(written.trim(), value);
        } else {
            // A hybrid host (CI), whose cgroup2 mount has no such controller
            // (it lives in cgroup v1): skipped, with the reason.
            let hint = if tree.root.controllers().unwrap().is_empty() {
                " (hybrid host?)"
            } else {
                ""
            };
            let want = format!(
                "{file}={} skipped: the {controller} controller is not enabled for {}{hint}",
                limits[file],
                runs.path().display()
            );
            assert!(
                warning.is_some_and(|w| w.contains(&want)),
                "{want:?} not in {warnings:?}"
            );
            assert!(!tree.run.path().join(file).exists());
        }
    }
}

/// A webhook receiver on 127.0.0.1 that hands each request's JSON body to the
/// test, and holds the requests unanswered until [`Hook::release`].
struct Hook {
    url: String,
    bodies: mpsc::Receiver<serde_json::Value>,
    /// Whether released, and the requests held until then.
    held: Arc<Mutex<(bool, Vec<TcpStream>)>>,
}

impl Hook {
    fn start() -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/wfcg-hook", listener.local_addr().unwrap());
        let (body_tx, bodies) = mpsc::channel();
        let held: Arc<Mutex<(bool, Vec<TcpStream>)>> = Default::default();
        let state = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                if body_tx.send(read_request(&stream).1).is_err() {
                    return;
                }
                let mut state = state.lock().unwrap();
                if state.0 {
                    answer_ok(stream);
                } else {
                    state.1.push(stream);
                }
            }
        });
        Hook { url, bodies, held }
    }

    /// Answers the held requests with 200, and every later one at once.
    fn release(&self) {
        let mut state = self.held.lock().unwrap();
        state.0 = true;
        for stream in state.1.drain(..) {
            answer_ok(stream);
        }
    }

    fn next(&self) -> serde_json::Value {
        self.bodies
            .recv_timeout(Duration::from_secs(60))
            .expect("no webhook request within 60 s")
    }
}

/// Reads one HTTP request: its head lines (request line and headers) and its
/// JSON body (Content-Length bytes).
fn read_request(stream: impl Read) -> (Vec<String>, serde_json::Value) {
    let mut reader = BufReader::new(stream);
    let mut head = Vec::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push(line.trim_end().to_string());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (head, serde_json::from_slice(&body).unwrap())
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

fn answer_ok(mut stream: TcpStream) {
    let _ = stream.write_all(OK);
}

/// A CA of a test's own: its certificate in a PEM file (for `SSL_CERT_FILE`)
/// and its key, to sign servers' certificates.
struct TestCa {
    pem_file: PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).unwrap();
        let pem_file = dir.join(format!("{name}.pem"));
        std::fs::write(&pem_file, issuer.pem()).unwrap();
        TestCa { pem_file, issuer }
    }
}

/// An https webhook receiver on 127.0.0.1, its certificate (for `localhost`)
/// signed by a [`TestCa`]. Each connection's outcome goes to the test: the
/// request's JSON body (answered 200), or why the TLS handshake failed.
struct TlsHook {
    url: String,
    outcomes: mpsc::Receiver<Result<serde_json::Value, String>>,
}

impl TlsHook {
    fn start(ca: &TestCa) -> TlsHook {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca.issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, outcomes) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let outcome = match tls.conn.complete_io(&mut tls.sock) {
                    Ok(_) => {
                        let (_, body) = read_request(&mut tls);
                        let _ = tls.write_all(OK);
                        tls.conn.send_close_notify();
                        let _ = tls.conn.complete_io(&mut tls.sock);
                        Ok(body)
                    }
                    Err(e) => Err(e.to_string()),
                };
                if tx.send(outcome).is_err() {
                    return;
                }
            }
        });
        TlsHook {
            url: format!("https://localhost:{port}/wfcg-hook"),
            outcomes,
        }
    }

    fn next(&self) -> Result<serde_json::Value, String> {
        self.outcomes
            .recv_timeout(Duration::from_secs(60))
            .expect("no connection to the https webhook within 60 s")
    }
}

/// `wfcg run` of `sleep 600` whose template misses its 1 s init deadline and
/// POSTs its alerts to `webhook`.
fn stuck_run(agent: &TestAgent, dir: &Path, name: &str, webhook: &str) -> KillOnDrop {
    let template = dir.join(format!("{name}.toml"));
    std::fs::write(
        &template,
        format!(
            "[timeouts]\ninit = \"1s\"\n\n[kill]\nterm_grace = \"1s\"\n\n[alerts]\nwebhook = \"{webhook}\"\n"
        ),
    )
    .unwrap();
    KillOnDrop(
        agent
            .marked(&marker(name))
            .args(["run", "--workflow", name, "--template"])
            .arg(&template)
            .args(["--", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn an_https_webhook_is_posted_to_when_its_ca_is_in_ssl_cert_file_and_only_then() {
    require_privileges!();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(dir.path(), "wfcg-test-ca");
    let stranger_ca = TestCa::new(dir.path(), "stranger-ca");
    let trusted = TlsHook::start(&ca);
    let stranger = TlsHook::start(&stranger_ca);
    let mut agent = TestAgent::unstarted();
    agent.agent_env.push(("SSL_CERT_FILE", ca.pem_file.clone()));
    agent.spawn();

    let mut runs = [
        stuck_run(&agent, dir.path(), "tls-trusted", &trusted.url),
        stuck_run(&agent, dir.path(), "tls-stranger", &stranger.url),
    ];
    // The agent trusts the CA in SSL_CERT_FILE: the events arrive over TLS
    // (`stuck`, then `auto_killed`, each a delivery of its own, in either order).
    let first = trusted
        .next()
        .expect("the TLS handshake with the trusted server failed");
    assert!(
        first["event"] == "stuck" || first["event"] == "auto_killed",
        "{first:#}"
    );
    assert_eq!(first["workflow"], "tls-trusted", "{first:#}");
    // A certificate from another CA is refused before anything is sent.
    let refused = stranger.next();
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("UnknownCA")),
        "the agent sent its event to a server it cannot trust: {refused:?}"
    );
    for run in &mut runs {
        let status = run
            .wait_timeout(Duration::from_secs(30))
            .expect("the stuck run was not killed");
        assert_eq!(status.code(), Some(124));
    }
    let second = trusted.next().expect("the second TLS handshake failed");
    let mut events = [&first["event"], &second["event"]];
    events.sort_by_key(|e| e.to_string());
    assert_eq!(events, ["auto_killed", "stuck"], "{first:#} {second:#}");
}

#[test]
fn the_webhook_is_received_and_a_held_webhook_does_not_delay_the_kill() {
    require_privileges!();
    let agent = TestAgent::start();
    let hook = Hook::start();
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("hooked.toml");
    std::fs::write(
        &template,
        format!(
            "[timeouts]\ninit = \"2s\"\n\n[kill]\nterm_grace = \"1s\"\n\n[alerts]\nwebhook = \"{}\"\n",
            hook.url
        ),
    )
    .unwrap();
    let mark = marker("hook");
    let mut run = KillOnDrop(
        agent
            .marked(&mark)
            .args(["run", "--workflow", "hooked", "--template"])
            .arg(&template)
            .args(["--", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );

    // The deadline passes: the agent POSTs `stuck`, then `auto_killed`, each as a
    // delivery of its own (which reaches the webhook first is not fixed), and the
    // webhook holds every request until released.
    let mut events = vec![hook.next()];
    let held_since = Instant::now();

    // The kill goes on regardless: `wfcg run` ends with 124 while the first
    // request is still held, well before the alerter's 5 s read timeout.
    let status = run
        .wait_timeout(Duration::from_secs(30))
        .expect("the run was not killed");
    let ended_after = held_since.elapsed();
    let mut stderr = String::new();
    run.0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(
        ended_after < Duration::from_secs(5),
        "the run ended {ended_after:?} after the webhook took the request: the kill waited for it"
    );
    hook.release();

    // Both events are delivered: the deadline, and the auto kill.
    events.push(hook.next());
    let event = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .unwrap_or_else(|| panic!("no {name} event among {events:#?}"))
    };
    let stuck = event("stuck");
    let run_id = stuck["run_id"].as_str().unwrap().to_string();
    assert!(!run_id.is_empty());
    assert_eq!(stuck["workflow"], "hooked", "{stuck:#}");
    assert!(
        stuck["message"].as_str().unwrap().contains("2s"),
        "{stuck:#}"
    );
    assert!(stuck["time"].is_string(), "{stuck:#}");
    assert_eq!(event("auto_killed")["run_id"], run_id.as_str());
}

/// Runs scripts/alert-to-ticket with `env` and `event` on stdin.
fn alert_to_ticket(env: &[(&str, &str)], event: &serde_json::Value) -> std::process::Output {
    let mut child = Command::new(repo_file("scripts/alert-to-ticket"))
        .env_remove("TRACKER_URL")
        .env_remove("TRACKER_REPO")
        .env_remove("TRACKER_TOKEN")
        .env_remove("DRY_RUN")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.to_string().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn sample_event() -> serde_json::Value {
    serde_json::json!({
        "event": "auto_killed",
        "run_id": "r-20240101-abcd",
        "workflow": "builder",
        "message": "initialization timeout 30m exceeded: still initializing, last status \"cloning\"",
        "time": "2024-01-01T12:00:00.000Z",
        "details": {"status": "timed_out"},
        "host": "ci-7"
    })
}

#[test]
fn the_alert_script_prints_its_ticket_request_in_dry_run() {
    let tools: Vec<&str> = ["jq", "python3"]
        .into_iter()
        .filter(|t| {
            Command::new(t)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    assert!(!tools.is_empty(), "neither jq nor python3 is installed");
    for tool in tools {
        let out = alert_to_ticket(
            &[
                ("DRY_RUN", "1"),
                ("JSON_TOOL", tool),
                ("TRACKER_REPO", "acme/ops"),
                ("TRACKER_TOKEN", "s3cret-token"),
            ],
            &sample_event(),
        );
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{tool}: {}", text(&out.stderr));
        assert!(
            stdout.starts_with("POST https://api.github.com/repos/acme/ops/issues\n"),
            "{tool}: {stdout}"
        );
        assert!(stdout.contains("r-20240101-abcd"), "{tool}: {stdout}");
        assert!(
            !stdout.contains("s3cret"),
            "{tool}: the token leaked: {stdout}"
        );
        let payload: serde_json::Value =
            serde_json::from_str(stdout.split("\n\n").nth(1).unwrap().trim()).unwrap();
        assert_eq!(
            payload["title"], "wfcg: auto_killed - run r-20240101-abcd (builder) on ci-7",
            "{tool}"
        );
        assert!(
            payload["body"]
                .as_str()
                .unwrap()
                .contains("last status \\\"cloning\\\""),
            "{tool}: {payload:#}"
        );
        assert_eq!(payload["labels"], serde_json::json!(["wfcg", "alert"]));
    }
}

#[test]
fn the_alert_script_opens_a_ticket_through_the_trackers_api() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let request = read_request(&stream);
        let answer = r#"{"number": 7, "html_url": "http://tracker.example/acme/ops/issues/7"}"#;
        write!(
            stream,
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
            answer.len()
        )
        .unwrap();
        request
    });
    let out = alert_to_ticket(
        &[
            ("TRACKER_URL", base.as_str()),
            ("TRACKER_REPO", "acme/ops"),
            ("TRACKER_TOKEN", "tok-123"),
        ],
        &sample_event(),
    );
    let (head, payload) = server.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(head[0], "POST /repos/acme/ops/issues HTTP/1.1");
    assert!(
        head.iter().any(|h| h == "Authorization: Bearer tok-123"),
        "{head:?}"
    );
    assert!(
        payload["title"]
            .as_str()
            .unwrap()
            .contains("r-20240101-abcd")
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "opened http://tracker.example/acme/ops/issues/7 for auto_killed of run r-20240101-abcd"
    );
}

/// `--workflow NAME` picks the template NAME: a name no template has is a usage
/// error (exit 2, nothing started) unless `--template` gives the run's template.
#[test]
fn a_workflow_named_like_no_template_needs_a_template_file() {
    require_privileges!();
    let agent = TestAgent::start();
    let out = agent.cli_expect(
        2,
        &["run", "--workflow", "no-such-template-here", "--", "true"],
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("--workflow no-such-template-here: no template of that name")
            && err.contains("--template FILE"),
        "{err}"
    );
    agent.assert_nothing_created();
    agent.cli_expect(
        0,
        &[
            "run",
            "-q",
            "--workflow",
            "no-such-template-here",
            "--template",
            DEFAULT_TEMPLATE,
            "--",
            "true",
        ],
    );
    agent.cli_expect(0, &["run", "-q", "--workflow", "default", "--", "true"]);
}

/// `wfcg agent --templates-dir DIR`: the agent reads the operator's templates
/// from DIR (a hermetic agent carries its own), and the client reads none: a
/// run's `--workflow NAME` is checked by the agent, which names what it has, and
/// the kill course a client waits for is the agent's, at `/v1/health`.
#[test]
fn an_agent_reads_the_templates_of_its_own_templates_dir() {
    require_privileges!();
    let mut agent = TestAgent::unstarted();
    let dir = agent.dir.path().join("templates");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("nightly-test.toml"),
        "[run]\nready = \"start\"\n[timeouts]\ntotal = \"42m\"\n[kill]\nkill_deadline = \"77s\"\n",
    )
    .unwrap();
    agent.spawn_with(&["--templates-dir", dir.to_str().unwrap()]);

    let run = agent.start_run(&["--workflow", "nightly-test"], "sleep 1000");
    let st = agent.status(&run.id);
    assert_eq!(st["template"], "nightly-test", "{st:#}");
    assert_eq!(st["status"], "running", "ready at its start: {st:#}");
    let total = chrono::DateTime::parse_from_rfc3339(st["total_deadline"].as_str().unwrap())
        .unwrap()
        - chrono::DateTime::parse_from_rfc3339(st["started_at"].as_str().unwrap()).unwrap();
    assert_eq!(total.num_minutes(), 42, "{st:#}");
    agent.kill_ok(&run.id, &["--force"]);

    let out = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&agent.socket)
        .arg("http://wfcg/v1/health?kill_course=true")
        .output()
        .unwrap();
    assert!(out.status.success());
    let health: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["templates_dir"], dir.to_str().unwrap(), "{health:#}");
    assert_eq!(
        health["kill_course"]["kill_deadline_ms"], 77_000,
        "{health:#}"
    );

    // A name it has not: a usage error from the agent, naming what it has.
    let out = agent.cli_expect(2, &["run", "--workflow", "nightly-tset", "--", "true"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("--workflow nightly-tset: no template of that name")
            && err.contains("nightly-test")
            && err.contains(dir.to_str().unwrap()),
        "{err}"
    );
}
