//! Alerts: tell people when a run is stuck, was killed automatically, or could
//! not be killed.
//!
//! An [`Event`] goes to the run's alert channels (its template's `[alerts]`, else
//! the agent's): an `on_event` command, run with `sh -c` and the event as JSON on
//! stdin (and `WFCG_EVENT`, `WFCG_EVENT_RUN_ID` in its environment), and/or a
//! webhook, the JSON POSTed to an `http://` URL. Delivery never
//! blocks the caller: [`Alerter::emit`] hands the work to a small pool of threads
//! and returns. Commands get a timeout; webhooks a connect and read timeout and
//! three retries with backoff. Outcomes are logged (tracing) and counted
//! ([`Alerter::stats`]).
//!
//! A leaf module: it knows events and channels, nothing of runs or the agent.

use std::collections::VecDeque;
use std::io::{Read, Seek, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::template::Alerts;

/// At most this many deliveries run at once; more wait in a queue.
const MAX_WORKERS: usize = 16;

/// How much of a command's output is logged.
const MAX_LOGGED_OUTPUT: u64 = 4096;

/// Something that happened to a run, as sent to the alert channels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// `stuck`, `auto_killed`, `kill_failed`, `unkillable` or `loop_suspected`.
    pub event: String,
    pub run_id: String,
    /// The run's workflow kind, when it has one.
    pub workflow: Option<String>,
    /// One line for humans: what happened and why.
    pub message: String,
    /// When, RFC 3339.
    pub time: String,
    /// Anything more (status, owner, timings); `null` when nothing.
    pub details: serde_json::Value,
}

impl Event {
    /// An event happening now, without workflow or details.
    pub fn new(event: &str, run_id: &str, message: &str) -> Event {
        Event {
            event: event.into(),
            run_id: run_id.into(),
            workflow: None,
            message: message.into(),
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            details: serde_json::Value::Null,
        }
    }

    /// The JSON the channels get: the event's fields plus `host` (this host's name).
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(flatten)]
            event: &'a Event,
            host: String,
        }
        let host = rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned();
        serde_json::to_string(&Wire { event: self, host }).unwrap_or_default()
    }
}

/// Delivery counters, since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AlertStats {
    /// Deliveries that succeeded (a command exiting 0, a webhook answering 2xx).
    pub sent: u64,
    /// Deliveries that failed for good (after the retries, for webhooks).
    pub failed: u64,
    /// Webhook attempts that were retried.
    pub retried: u64,
    /// Deliveries queued or under way.
    pub pending: u64,
}

/// Timeouts and retries of deliveries.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// How long an `on_event` command may run before its process group is killed.
    pub command_timeout: Duration,
    /// How long connecting to a webhook may take.
    pub connect_timeout: Duration,
    /// How long sending the request and reading the answer may take.
    pub io_timeout: Duration,
    /// The waits before each retry of a failed webhook POST (3 retries).
    pub retry_delays: Vec<Duration>,
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            command_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(5),
            retry_delays: vec![
                Duration::from_millis(500),
                Duration::from_secs(1),
                Duration::from_secs(2),
            ],
        }
    }
}

/// One delivery to one channel.
#[derive(Debug)]
enum Job {
    Command { command: String, json: String },
    Webhook { url: String, json: String },
}

#[derive(Default)]
struct Pool {
    workers: usize,
    queue: VecDeque<(Job, EventId)>,
    pending: u64,
}

/// What the logs say a delivery was about.
#[derive(Debug, Clone)]
struct EventId {
    event: String,
    run_id: String,
}

struct Inner {
    on_event: Option<String>,
    webhook: Option<String>,
    delivery: Delivery,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    pool: Mutex<Pool>,
    idle: Condvar,
}

/// Sends events to alert channels, off the caller's thread. Cheap to clone.
#[derive(Clone)]
pub struct Alerter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("on_event", &self.inner.on_event)
            .field("webhook", &self.inner.webhook)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A template's setting if it has one ("" turns the channel off), else the agent's.
fn choose(template: &Option<String>, agent: &Option<String>) -> Option<String> {
    match template {
        Some(s) if s.trim().is_empty() => None,
        Some(s) => Some(s.clone()),
        None => agent.clone().filter(|s| !s.trim().is_empty()),
    }
}

impl Alerter {
    /// An alerter with the agent-wide channels, used for runs whose template sets none.
    pub fn new(default_on_event: Option<String>, default_webhook: Option<String>) -> Alerter {
        Alerter::with_delivery(default_on_event, default_webhook, Delivery::default())
    }

    /// [`Alerter::new`] with other timeouts and retry delays.
    pub fn with_delivery(
        default_on_event: Option<String>,
        default_webhook: Option<String>,
        delivery: Delivery,
    ) -> Alerter {
        Alerter {
            inner: Arc::new(Inner {
                on_event: default_on_event,
                webhook: default_webhook,
                delivery,
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                retried: AtomicU64::new(0),
                pool: Mutex::new(Pool::default()),
                idle: Condvar::new(),
            }),
        }
    }

    /// Sends `event` to the channels of `alerts` (each unset one: the agent's).
    /// Returns at once: the command and the POST run on worker threads.
    pub fn emit(&self, alerts: &Alerts, event: Event) {
        let on_event = choose(&alerts.on_event, &self.inner.on_event);
        let webhook = choose(&alerts.webhook, &self.inner.webhook);
        let id = EventId {
            event: event.event.clone(),
            run_id: event.run_id.clone(),
        };
        if on_event.is_none() && webhook.is_none() {
            tracing::debug!(event = id.event, run_id = id.run_id, "no alert channel");
            return;
        }
        let json = event.to_json();
        if let Some(command) = on_event {
            self.submit(
                Job::Command {
                    command,
                    json: json.clone(),
                },
                id.clone(),
            );
        }
        if let Some(url) = webhook {
            self.submit(Job::Webhook { url, json }, id);
        }
    }

    /// The delivery counters.
    pub fn stats(&self) -> AlertStats {
        let pending = self.lock().pending;
        AlertStats {
            sent: self.inner.sent.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            retried: self.inner.retried.load(Ordering::Relaxed),
            pending,
        }
    }

    /// Waits until no delivery is queued or under way, at most `timeout`;
    /// returns whether that happened (for a clean shutdown, and tests).
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let pool = self.lock();
        let (pool, _) = self
            .inner
            .idle
            .wait_timeout_while(pool, timeout, |p| p.pending > 0)
            .unwrap_or_else(|e| e.into_inner());
        pool.pending == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.inner.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a worker for the job, or queues it when enough are busy.
    fn submit(&self, job: Job, id: EventId) {
        {
            let mut pool = self.lock();
            pool.pending += 1;
            if pool.workers >= MAX_WORKERS {
                pool.queue.push_back((job, id));
                return;
            }
            pool.workers += 1;
        }
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("wfcg-alert".into())
            .spawn(move || me.work(job, id));
        if let Err(e) = spawned {
            tracing::error!("cannot start an alert thread, the alert is lost: {e}");
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
            let mut pool = self.lock();
            pool.workers -= 1;
            pool.pending -= 1;
            if pool.pending == 0 {
                self.inner.idle.notify_all();
            }
        }
    }

    /// A worker: delivers its job, then queued ones, then ends.
    fn work(&self, mut job: Job, mut id: EventId) {
        loop {
            let ok = match &job {
                Job::Command { command, json } => self.run_command(command, json, &id),
                Job::Webhook { url, json } => self.post_webhook(url, json, &id),
            };
            let counter = if ok {
                &self.inner.sent
            } else {
                &self.inner.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut pool = self.lock();
            pool.pending -= 1;
            if pool.pending == 0 {
                self.inner.idle.notify_all();
            }
            match pool.queue.pop_front() {
                Some((next, next_id)) => (job, id) = (next, next_id),
                None => {
                    pool.workers -= 1;
                    return;
                }
            }
        }
    }

    /// Runs an `on_event` command; true when it exits 0 in time.
    fn run_command(&self, command: &str, json: &str, id: &EventId) -> bool {
        match run_command(command, json, id, self.inner.delivery.command_timeout) {
            Ok(output) => {
                tracing::info!(
                    event = id.event,
                    run_id = id.run_id,
                    command,
                    output,
                    "alert command done"
                );
                true
            }
            Err(e) => {
                tracing::error!(
                    event = id.event,
                    run_id = id.run_id,
                    command,
                    "alert command failed: {e}"
                );
                false
            }
        }
    }

    /// POSTs to a webhook, retrying; true when it answered 2xx.
    fn post_webhook(&self, url: &str, json: &str, id: &EventId) -> bool {
        let d = &self.inner.delivery;
        let target = match HttpUrl::parse(url) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(event = id.event, run_id = id.run_id, url, "webhook: {e}");
                return false;
            }
        };
        let attempts = d.retry_delays.len() + 1;
        for attempt in 1..=attempts {
            let why = match post(&target, json, d.connect_timeout, d.io_timeout) {
                Ok(code) if (200..300).contains(&code) => {
                    tracing::info!(
                        event = id.event,
                        run_id = id.run_id,
                        url,
                        attempt,
                        "webhook answered {code}"
                    );
                    return true;
                }
                Ok(code) if (400..500).contains(&code) && code != 408 && code != 429 => {
                    tracing::error!(
                        event = id.event,
                        run_id = id.run_id,
                        url,
                        "webhook refused the event with {code}; not retried"
                    );
                    return false;
                }
                Ok(code) => format!("answered {code}"),
                Err(e) => e,
            };
            match d.retry_delays.get(attempt - 1) {
                Some(delay) => {
                    tracing::warn!(
                        event = id.event,
                        run_id = id.run_id,
                        url,
                        attempt,
                        "webhook {why}; retrying in {}",
                        crate::duration::format(*delay)
                    );
                    self.inner.retried.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(*delay);
                }
                None => tracing::error!(
                    event = id.event,
                    run_id = id.run_id,
                    url,
                    attempt,
                    "webhook {why}; giving up after {attempts} attempts"
                ),
            }
        }
        false
    }
}

/// A memfd holding `data`, read from its start (a command's stdin), or empty (its output).
fn memfd(name: &str, data: &[u8]) -> std::io::Result<std::fs::File> {
    let fd = rustix::fs::memfd_create(name, rustix::fs::MemfdFlags::CLOEXEC)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    file.rewind()?;
    Ok(file)
}

/// Runs `sh -c command` in a process group of its own, with `json` on stdin and
/// stdout and stderr captured; kills the group after `timeout`. Returns the output
/// (its start), or why it failed.
fn run_command(
    command: &str,
    json: &str,
    id: &EventId,
    timeout: Duration,
) -> Result<String, String> {
    let io = |e: std::io::Error| format!("cannot set up the command: {e}");
    let stdin = memfd("wfcg-alert-event", json.as_bytes()).map_err(io)?;
    let mut output = memfd("wfcg-alert-output", b"").map_err(io)?;
    let stderr = output.try_clone().map_err(io)?;
    let stdout = output.try_clone().map_err(io)?;
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .env("WFCG_EVENT", &id.event)
        .env("WFCG_EVENT_RUN_ID", &id.run_id)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let exited = wait_exit(&child, timeout);
    if !exited {
        // The group is the shell's: its children go too.
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("cannot wait for it: {e}"))?;
    let mut text = String::new();
    let _ = output.rewind();
    let _ = (&mut output)
        .take(MAX_LOGGED_OUTPUT)
        .read_to_string(&mut text);
    let text = text.trim().to_string();
    if !exited {
        Err(format!(
            "timed out after {}, killed; output: {text:?}",
            crate::duration::format(timeout)
        ))
    } else if !status.success() {
        Err(format!("{status}; output: {text:?}"))
    } else {
        Ok(text)
    }
}

/// Waits for a child to exit, at most `timeout`, without reaping it: poll(2) on
/// a pidfd (`pidfd_open(2)`), or try_wait steps where pidfds are missing.
fn wait_exit(child: &std::process::Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let pid = rustix::process::Pid::from_raw(child.id() as i32);
    let pidfd =
        pid.and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match &pidfd {
            Some(fd) => {
                let ts = rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                };
                let mut fds = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
                match rustix::event::poll(&mut fds, Some(&ts)) {
                    Ok(n) if n > 0 => return true,
                    Ok(_) => return false,
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => {}
                }
            }
            None => {
                // Without pidfds: look every 20 ms.
                let mut probe = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .unwrap_or_default();
                probe = probe.rsplit(')').next().unwrap_or("").trim().to_string();
                if probe.starts_with('Z') || probe.is_empty() {
                    return true;
                }
            }
        }
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

/// An `http://` URL, the only kind of webhook wfcg POSTs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub host: String,
    pub port: u16,
    /// The path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PATH]`; HOST may be `[IPv6]`.
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        let url = url.trim();
        let lower = url.to_ascii_lowercase();
        if lower.starts_with("https://") {
            return Err(format!(
                "{url:?}: https is not supported, only http:// (point it at a local relay)"
            ));
        }
        if !lower.starts_with("http://") {
            return Err(format!("{url:?} is not an http:// URL"));
        }
        let rest = &url["http://".len()..];
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        if authority.contains('@') {
            return Err(format!("{url:?}: user names in URLs are not supported"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?} has a bad port {p:?}"))?,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{url:?}: spaces in the path must be %-encoded"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// The Host header's value.
    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == 80 {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// One HTTP/1.1 POST of `json`; returns the status code, or why there is none.
fn post(url: &HttpUrl, json: &str, connect: Duration, io: Duration) -> Result<u16, String> {
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let mut last = format!("{} resolves to no address", url.host);
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, connect) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let deadline = Instant::now() + io;
    let _ = stream.set_write_timeout(Some(io));
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: wfcg/{}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
        json.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    // The status line is all we need.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.contains(&b'\n') && answer.len() < 8192 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "did not answer within {}",
                crate::duration::format(io)
            ));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "did not answer within {}",
                    crate::duration::format(io)
                ));
            }
            Err(e) => return Err(format!("cannot read the answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&answer);
    let line = line.lines().next().unwrap_or("");
    let mut words = line.split_whitespace();
    match (
        words.next(),
        words.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!("answered something that is not HTTP: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::mpsc;

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
        let alerter = Alerter::with_delivery(None, None, quick());
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
        let alerter = Alerter::with_delivery(None, None, quick());
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
        let alerter =
            Alerter::with_delivery(None, Some(format!("http://127.0.0.1:{port}/")), quick());
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
        let alerter = Alerter::with_delivery(None, None, quick());
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
        let alerter = Alerter::with_delivery(Some(command), None, quick());
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
        let alerter = Alerter::with_delivery(Some("exit 3".into()), None, d);
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
        let alerter = Alerter::with_delivery(None, None, quick());
        alerter.emit(&Alerts::default(), event());
        assert_eq!(alerter.stats(), AlertStats::default());
    }

    #[test]
    fn webhook_urls_are_http_only() {
        let u = HttpUrl::parse("http://127.0.0.1:9000/wfcg").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 9000, "/wfcg")
        );
        let u = HttpUrl::parse("HTTP://hooks.example").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example", 80, "/")
        );
        assert_eq!(u.host_header(), "hooks.example");
        let u = HttpUrl::parse("http://[::1]:8080?a=b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/?a=b")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        for bad in [
            "https://x/",
            "ftp://x/",
            "http://",
            "http://x:0/",
            "http://x:99999/",
            "http://u@x/",
            "http://x/a b",
            "x/y",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(HttpUrl::parse("https://x").unwrap_err().contains("https"));
    }
}
