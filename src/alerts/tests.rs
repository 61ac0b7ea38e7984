use super::*;
use std::io::BufRead;
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;

/// An alerter whose deliveries run on a runtime of its own, kept with it.
fn alerter(
    on_event: Option<String>,
    webhook: Option<String>,
    d: Delivery,
) -> (tokio::runtime::Runtime, Alerter) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let alerter = {
        let _in = rt.enter();
        Alerter::with_delivery(on_event, webhook, d)
    };
    (rt, alerter)
}

/// Short retries, so failing deliveries end quickly.
fn quick() -> Delivery {
    Delivery {
        command_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        io_timeout: Duration::from_secs(2),
        retry_delays: vec![Duration::from_millis(10); 3],
    }
}

fn event() -> Event {
    let mut e = Event::new("stuck", "r-42", "initialization timeout 2s exceeded");
    e.workflow = Some("builder".into());
    e.details = serde_json::json!({"status": "initializing"});
    e
}

fn webhook(url: &str) -> Alerts {
    Alerts {
        on_event: None,
        webhook: Some(url.into()),
    }
}

/// Reads one HTTP request: the request line, headers and the body
/// (Content-Length bytes).
fn read_request(stream: &TcpStream) -> (String, String) {
    let mut reader = std::io::BufReader::new(stream);
    let mut head = String::new();
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
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn answer(mut stream: &TcpStream, status: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn the_webhook_gets_the_event_as_json() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/wfcg?x=1", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let request = read_request(&stream);
        answer(&stream, "204 No Content");
        request
    });
    let (_rt, alerter) = alerter(None, None, quick());
    alerter.emit(&webhook(&url), event());
    let (head, body) = server.join().unwrap();
    assert!(
        head.starts_with("POST /hooks/wfcg?x=1 HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("Content-Type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["event"], "stuck");
    assert_eq!(json["run_id"], "r-42");
    assert_eq!(json["workflow"], "builder");
    assert_eq!(json["message"], "initialization timeout 2s exceeded");
    assert_eq!(json["details"]["status"], "initializing");
    assert!(json["time"].as_str().unwrap().ends_with('Z'), "{json}");
    assert!(json["host"].is_string(), "{json}");
    assert!(alerter.wait_idle(Duration::from_secs(10)));
    let stats = alerter.stats();
    assert_eq!((stats.sent, stats.failed, stats.pending), (1, 0, 0));
}

#[test]
fn a_failing_webhook_is_retried_three_times_without_holding_up_emit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let mut bodies = Vec::new();
        for attempt in 0..4 {
            let (stream, _) = listener.accept().unwrap();
            bodies.push(read_request(&stream).1);
            if attempt == 0 {
                // Hold the first request until the test, whose emit must
                // have returned by then, lets it go.
                held_tx.send(()).unwrap();
                let released = release_rx.recv_timeout(Duration::from_secs(30)).is_ok();
                assert!(
                    released,
                    "emit did not return while the webhook held the request"
                );
            }
            answer(&stream, "500 Internal Server Error");
        }
        bodies
    });
    let (_rt, alerter) = alerter(None, None, quick());
    alerter.emit(&webhook(&url), event());
    // emit has returned; the server still holds the request.
    held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(alerter.stats().pending, 1);
    release_tx.send(()).unwrap();
    let bodies = server.join().unwrap();
    assert_eq!(bodies.len(), 4);
    assert!(bodies.iter().all(|b| b.contains("\"run_id\":\"r-42\"")));
    assert!(alerter.wait_idle(Duration::from_secs(10)));
    let stats = alerter.stats();
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 3));
}

#[test]
fn a_refused_connection_is_retried_then_counted_as_failed() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_rt, alerter) = alerter(None, Some(format!("http://127.0.0.1:{port}/")), quick());
    alerter.emit(&Alerts::default(), event());
    assert!(alerter.wait_idle(Duration::from_secs(10)));
    let stats = alerter.stats();
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 3));
}

#[test]
fn a_client_error_is_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        read_request(&stream);
        answer(&stream, "404 Not Found");
    });
    let (_rt, alerter) = alerter(None, None, quick());
    alerter.emit(&webhook(&url), event());
    server.join().unwrap();
    assert!(alerter.wait_idle(Duration::from_secs(10)));
    let stats = alerter.stats();
    assert_eq!((stats.sent, stats.failed, stats.retried), (0, 1, 0));
}

#[test]
fn on_event_gets_the_json_on_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("event.json");
    let env = dir.path().join("env");
    let command = format!(
        "cat > '{}'; echo \"$WFCG_EVENT $WFCG_EVENT_RUN_ID\" > '{}'; echo logged",
        out.display(),
        env.display()
    );
    let (_rt, alerter) = alerter(Some(command), None, quick());
    alerter.emit(&Alerts::default(), event());
    assert!(alerter.wait_idle(Duration::from_secs(10)));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["event"], "stuck");
    assert_eq!(json["run_id"], "r-42");
    assert_eq!(std::fs::read_to_string(&env).unwrap(), "stuck r-42\n");
    assert_eq!(alerter.stats().sent, 1);
}

#[test]
fn a_failing_or_hanging_command_is_counted_and_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let mut d = quick();
    d.command_timeout = Duration::from_secs(2);
    let (_rt, alerter) = alerter(Some("exit 3".into()), None, d);
    alerter.emit(&Alerts::default(), event());
    // A command that outlives its timeout, with a child in its group.
    let hang = format!("sleep 600 & echo $! > '{}'; wait", pidfile.display());
    alerter.emit(
        &Alerts {
            on_event: Some(hang),
            webhook: None,
        },
        event(),
    );
    assert!(alerter.wait_idle(Duration::from_secs(30)));
    let stats = alerter.stats();
    assert_eq!((stats.sent, stats.failed), (0, 2));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The sleep was killed with its group: its pidfd turns readable when it
    // has exited (or it is gone already).
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    if let Ok(fd) = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        let ts = rustix::event::Timespec {
            tv_sec: 10,
            tv_nsec: 0,
        };
        let mut fds = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        assert_eq!(
            rustix::event::poll(&mut fds, Some(&ts)).unwrap(),
            1,
            "sleep survived"
        );
    }
}

#[test]
fn template_channels_replace_the_agents_and_empty_turns_them_off() {
    let agent = (
        Some("agent-cmd".to_string()),
        Some("http://agent/".to_string()),
    );
    let set = |on: Option<&str>, hook: Option<&str>| Alerts {
        on_event: on.map(str::to_string),
        webhook: hook.map(str::to_string),
    };
    let pick = |a: &Alerts| (choose(&a.on_event, &agent.0), choose(&a.webhook, &agent.1));
    assert_eq!(pick(&set(None, None)), agent.clone());
    assert_eq!(
        pick(&set(Some("mine"), None)),
        (Some("mine".into()), agent.1.clone())
    );
    assert_eq!(pick(&set(Some(""), Some(" "))), (None, None));

    // Nothing to deliver: nothing is counted or pending.
    let (_rt, alerter) = alerter(None, None, quick());
    alerter.emit(&Alerts::default(), event());
    assert_eq!(alerter.stats(), AlertStats::default());
}

#[test]
fn webhook_urls_are_http_or_https() {
    let u = check_webhook("http://127.0.0.1:9000/wfcg").unwrap();
    assert_eq!(
        (u.host(), u.port_u16(), u.path()),
        (Some("127.0.0.1"), Some(9000), "/wfcg")
    );
    let u = check_webhook("HTTP://hooks.example").unwrap();
    assert_eq!((u.host(), u.port_u16()), (Some("hooks.example"), None));
    let u = check_webhook("https://hooks.example/wfcg?a=b").unwrap();
    assert_eq!(
        (u.scheme_str(), u.path(), u.query()),
        (Some("https"), "/wfcg", Some("a=b"))
    );
    let u = check_webhook("http://[::1]:8080/?a=b").unwrap();
    assert_eq!((u.host(), u.port_u16()), (Some("[::1]"), Some(8080)));
    for bad in [
        "ftp://x/",
        "http://",
        "http://x:0/",
        "http://x:99999/",
        "http://u@x/",
        "http://x/a b",
        "x/y",
        "",
    ] {
        assert!(check_webhook(bad).is_err(), "{bad}");
    }
    assert!(check_webhook("ftp://x").unwrap_err().contains("https://"));
}
