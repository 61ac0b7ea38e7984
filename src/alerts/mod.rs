//! Alerts: tell people when a run is stuck, was killed automatically, or could
//! not be killed.
//!
//! An [`Event`] goes to the run's alert channels ([`Alerts`]: its template's
//! `[alerts]`, else the agent's): an `on_event` command, run with `sh -c` and the
//! event as JSON on stdin (and `WFCG_EVENT`, `WFCG_EVENT_RUN_ID` in its
//! environment), and/or a webhook, the JSON POSTed to an `http://` or `https://`
//! URL. Delivery never blocks the caller: [`Alerter::emit`] spawns a tokio task
//! per delivery and returns; at most [`MAX_DELIVERIES`] run at once, the others
//! wait for a slot. Commands (`tokio::process`) get a timeout, after which their
//! process group is killed; webhooks (hyper with rustls) a connect and answer
//! timeout and three retries with backoff. Outcomes are logged (tracing) and
//! counted ([`Alerter::stats`]).
//!
//! `https://` webhooks are checked against the system's CA certificates
//! (rustls-native-certs: the distribution's bundle, or the PEM file in
//! `SSL_CERT_FILE` / the directories in `SSL_CERT_DIR` when the agent's
//! environment sets them), read once, when the first webhook is sent.
//!
//! A leaf module: it knows events and channels, nothing of runs, templates or
//! the agent.

use std::io::{Read, Seek, Write};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// At most this many deliveries run at once; more wait for a slot.
pub const MAX_DELIVERIES: usize = 16;

/// How much of a command's output is logged.
const MAX_LOGGED_OUTPUT: u64 = 4096;

/// Where events about a run go (a template's `[alerts]`). Each one set here
/// replaces the agent-wide one (`wfcg agent --on-event/--webhook`); an empty
/// string turns it off for the run. Only the operator may set these: see
/// `Template::confine`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// A command run with the event as JSON on stdin.
    pub on_event: Option<String>,
    /// An `http://` or `https://` URL the event is POSTed to as JSON.
    pub webhook: Option<String>,
}

/// Something that happened to a run, as sent to the alert channels.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Event {
    /// `stuck`, `lease_expired`, `auto_killed`, `kill_failed`, `unkillable` or
    /// `loop_suspected` (and `oom_killed`, `breaker_open`, `audit_tampered`).
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
    #[cfg(test)]
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
    /// Deliveries waiting for a slot or under way.
    pub pending: u64,
}

/// Timeouts and retries of deliveries.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// How long an `on_event` command may run before its process group is killed.
    pub command_timeout: Duration,
    /// How long connecting to a webhook may take.
    pub connect_timeout: Duration,
    /// How long the TLS handshake, sending the request and reading the answer's
    /// head may take, after connecting.
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

/// Checks a webhook URL: `http://` or `https://`, a host, no user name, a port
/// from 1 to 65535. Returns it parsed.
pub fn check_webhook(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url
        .trim()
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: user names in URLs are not supported"));
    }
    if authority.host().is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    // What follows the host: nothing, or `:PORT`.
    let port = authority.as_str()[authority.host().len()..].trim_start_matches(':');
    if !port.is_empty() && !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(format!("{url:?} has a bad port {port:?}"));
    }
    Ok(uri)
}

/// One delivery to one channel.
#[derive(Debug)]
enum Job {
    Command { command: String, json: String },
    Webhook { url: String, json: String },
}

/// What the logs say a delivery was about.
#[derive(Debug, Clone)]
struct EventId {
    event: String,
    run_id: String,
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

struct Inner {
    on_event: Option<String>,
    webhook: Option<String>,
    delivery: Delivery,
    /// Where the deliveries run: the runtime the alerter was made in.
    runtime: Option<tokio::runtime::Handle>,
    /// Made when the first webhook is sent (it reads the CA certificates).
    client: OnceLock<Result<HttpClient, String>>,
    slots: Arc<Semaphore>,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    pending: Mutex<u64>,
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

/// Counts a delivery as pending while it lives (also when its task is dropped
/// unfinished, as at a runtime's shutdown).
struct Pending(Alerter);

impl Pending {
    fn new(alerter: &Alerter) -> Pending {
        *alerter.inner.pending.lock() += 1;
        Pending(alerter.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = self.0.inner.pending.lock();
        *pending -= 1;
        if *pending == 0 {
            self.0.inner.idle.notify_all();
        }
    }
}

impl Alerter {
    /// An alerter with the agent-wide channels, used for runs whose template sets
    /// none. Its deliveries run on the tokio runtime it is made in.
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
                runtime: tokio::runtime::Handle::try_current().ok(),
                client: OnceLock::new(),
                slots: Arc::new(Semaphore::new(MAX_DELIVERIES)),
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                retried: AtomicU64::new(0),
                pending: Mutex::new(0),
                idle: Condvar::new(),
            }),
        }
    }

    /// Sends `event` to the channels of `alerts` (each unset one: the agent's).
    /// Returns at once: the command and the POST run as tasks.
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
            self.spawn(
                Job::Command {
                    command,
                    json: json.clone(),
                },
                id.clone(),
            );
        }
        if let Some(url) = webhook {
            self.spawn(Job::Webhook { url, json }, id);
        }
    }

    /// The delivery counters.
    pub fn stats(&self) -> AlertStats {
        AlertStats {
            sent: self.inner.sent.load(Ordering::Relaxed),
            failed: self.inner.failed.load(Ordering::Relaxed),
            retried: self.inner.retried.load(Ordering::Relaxed),
            pending: *self.inner.pending.lock(),
        }
    }

    /// Waits until no delivery is waiting or under way, at most `timeout`;
    /// returns whether that happened (for a clean shutdown, and tests). Blocks
    /// the calling thread: not for a runtime's worker.
    #[cfg(test)]
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let mut pending = self.inner.pending.lock();
        self.inner
            .idle
            .wait_while_for(&mut pending, |p| *p > 0, timeout);
        *pending == 0
    }

    /// Starts the delivery as a task; it waits for one of the slots.
    fn spawn(&self, job: Job, id: EventId) {
        let Some(runtime) = &self.inner.runtime else {
            tracing::error!(
                event = id.event,
                run_id = id.run_id,
                "no runtime to deliver the alert on, the alert is lost"
            );
            self.inner.failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let pending = Pending::new(self);
        let me = self.clone();
        runtime.spawn(async move {
            let _pending = pending;
            let Ok(_slot) = me.inner.slots.clone().acquire_owned().await else {
                return; // the semaphore is never closed
            };
            let ok = match &job {
                Job::Command { command, json } => me.run_command(command, json, &id).await,
                Job::Webhook { url, json } => me.post_webhook(url, json, &id).await,
            };
            let counter = if ok { &me.inner.sent } else { &me.inner.failed };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Runs an `on_event` command; true when it exits 0 in time.
    async fn run_command(&self, command: &str, json: &str, id: &EventId) -> bool {
        match run_command(command, json, id, self.inner.delivery.command_timeout).await {
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
    async fn post_webhook(&self, url: &str, json: &str, id: &EventId) -> bool {
        let d = &self.inner.delivery;
        let target = check_webhook(url).and_then(|uri| {
            let client = self.inner.client.get_or_init(|| http_client(d));
            client.clone().map(|c| (uri, c))
        });
        let (uri, client) = match target {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(event = id.event, run_id = id.run_id, url, "webhook: {e}");
                return false;
            }
        };
        let attempts = d.retry_delays.len() + 1;
        for attempt in 1..=attempts {
            let why = match post(&client, &uri, json, d).await {
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
                    tokio::time::sleep(*delay).await;
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

/// The HTTP client for webhooks: HTTP/1.1, `http://` and `https://` (rustls with
/// ring, the system's CA certificates), a new connection per POST.
fn http_client(d: &Delivery) -> Result<HttpClient, String> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::warn!("webhooks: cannot read CA certificates: {e}");
    }
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!("webhooks: {ignored} CA certificates could not be used");
    }
    if added == 0 {
        tracing::warn!(
            "webhooks: no CA certificates found (install ca-certificates, or set \
             SSL_CERT_FILE for the agent): https:// webhooks will fail"
        );
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(d.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .http1_title_case_headers(true)
        .build(connector))
}

/// One POST of `json`; returns the status code, or why there is none.
async fn post(
    client: &HttpClient,
    uri: &hyper::Uri,
    json: &str,
    d: &Delivery,
) -> Result<u16, String> {
    let request = hyper::Request::post(uri.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("wfcg/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(json.to_owned())))
        .map_err(|e| format!("cannot make the request: {e}"))?;
    let limit = d.connect_timeout + d.io_timeout;
    match tokio::time::timeout(limit, client.request(request)).await {
        Ok(Ok(answer)) => Ok(answer.status().as_u16()),
        Ok(Err(e)) => Err(error_chain(&e)),
        Err(_) => Err(format!(
            "did not answer within {}",
            crate::duration::format(limit)
        )),
    }
}

/// An error and its causes, as one line: hyper's own text is only the outermost.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        cause = c.source();
    }
    text
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
async fn run_command(
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
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .env("WFCG_EVENT", &id.event)
        .env("WFCG_EVENT_RUN_ID", &id.run_id)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let group = child
        .id()
        .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    let timed_out = waited.is_err();
    let status = match waited {
        Ok(status) => status,
        Err(_) => {
            // The group is the shell's: its children go too.
            if let Some(pid) = group {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            child.wait().await
        }
    }
    .map_err(|e| format!("cannot wait for it: {e}"))?;
    let mut text = String::new();
    let _ = output.rewind();
    let _ = (&mut output)
        .take(MAX_LOGGED_OUTPUT)
        .read_to_string(&mut text);
    let text = text.trim().to_string();
    if timed_out {
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

#[cfg(test)]
mod tests;
