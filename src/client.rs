//! A blocking client of the agent's socket API, for the CLI and `wfcg mcp`.
//!
//! Each call opens a connection (HTTP/1.1 over the Unix socket, with hyper on a
//! current-thread runtime), sends one request and reads the JSON answer, all
//! within a deadline: a hung agent is an error ([`Error::Timeout`]), never a hung
//! caller. A kill's deadline is its own course (see [`kill_deadline`]) plus that
//! margin; the course (which the agent states from its templates at
//! `/v1/health?kill_course=true`: the client reads no template) is asked for only
//! when the answer takes longer than the margin.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

use crate::api::{
    AdoptRequest, Adopted, AgentStopping, ApiError, AuditQuery, AuditRecord, AuditVerify,
    BreakerInfo, CreateRun, ExitAck, ExitReport, Health, KillCourse, KillMode, KillRequest,
    KillResult, LeaseRenewed, MayKill, MayKillQuery, RenewLease, RunInfo, RunStarted, RunsQuery,
    route,
};

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error("no wfcg agent answers on {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The agent took the connection but did not answer in time.
    #[error(
        "the wfcg agent on {} did not answer within {}",
        socket.display(),
        crate::duration::format(*after)
    )]
    Timeout { socket: PathBuf, after: Duration },
    /// The agent answered with an error.
    #[error("{}", .0.error)]
    Api(ApiError),
    /// The answer could not be understood.
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How long a request may take, connecting and answering, unless told otherwise
/// (`--agent-timeout`); a kill gets its own course on top.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
    timeout: Duration,
}

impl Client {
    /// A client of the agent on `socket`, with [`DEFAULT_TIMEOUT`].
    pub fn new(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("building a current-thread runtime");
        Client {
            socket: socket.to_path_buf(),
            rt,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same client, each request of which gets `timeout` (a kill: on top of its course).
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/health`: that the agent answers, and how it runs.
    pub fn health(&self) -> Result<Health> {
        self.get(route::HEALTH)
    }

    /// Whether an agent answers on the socket: `Ok` when it does; the error
    /// (nothing listening, or no answer in time) when not. Any answer counts
    /// (an agent of another version too).
    pub fn ping(&self) -> Result<()> {
        self.get::<IgnoredAny>(route::HEALTH).map(drop)
    }

    /// `POST /v1/agent/stop`: root asks the agent to stop (its runs go on).
    pub fn stop_agent(&self) -> Result<AgentStopping> {
        self.post(route::AGENT_STOP, &Empty {})
    }

    /// `POST /v1/runs`: starts a run; the caller is moved into it.
    pub fn create_run(&self, req: &CreateRun) -> Result<RunStarted> {
        self.post(route::RUNS, req)
    }

    /// `GET /v1/runs`: the live runs (or all, or the stuck ones).
    pub fn runs(&self, q: RunsQuery) -> Result<Vec<RunInfo>> {
        self.get(&runs_path(q))
    }

    /// [`Client::runs`] as the agent wrote it (a JSON array), to pass on unread.
    pub fn runs_json(&self, q: RunsQuery) -> Result<Box<RawValue>> {
        self.get(&runs_path(q))
    }

    /// `GET /v1/runs/{id}`: one run, with its open critical sections.
    pub fn run(&self, run_id: &str) -> Result<RunInfo> {
        self.get(&route::fill(route::RUN, run_id))
    }

    /// `POST /v1/runs/{id}/exit`: the supervisor reports its command's end.
    pub fn report_exit(&self, run_id: &str, report: &ExitReport) -> Result<ExitAck> {
        self.post(&route::fill(route::RUN_EXIT, run_id), report)
    }

    /// `POST /v1/runs/{id}/supervisor`: the supervisor moves itself to its leaf.
    pub fn enter_supervisor(&self, run_id: &str) -> Result<()> {
        self.post::<_, IgnoredAny>(&route::fill(route::RUN_SUPERVISOR, run_id), &Empty {})
            .map(drop)
    }

    /// `POST /v1/runs/{id}/kill`: kills run `run_id`. The answer may take the
    /// kill's whole course.
    pub fn kill(&self, run_id: &str, req: &KillRequest) -> Result<KillResult> {
        let within = Within::Kill(req.clone());
        self.post_within(&route::fill(route::RUN_KILL, run_id), req, within)
    }

    /// `GET /v1/runs/{id}/may-kill`: would this kill be allowed? (Changes nothing.)
    pub fn may_kill(&self, run_id: &str, q: &MayKillQuery) -> Result<MayKill> {
        let mut query = Query::default();
        query.push("uid", q.uid);
        // The older flags, which every agent reads.
        query.push("force", Some(q.mode == KillMode::Force));
        query.push("emergency", Some(q.mode == KillMode::Emergency));
        self.get(&query.on(&route::fill(route::RUN_MAY_KILL, run_id)))
    }

    /// `POST /v1/runs/{id}/lease`: renews run `run_id`'s lease.
    pub fn renew_lease(&self, run_id: &str) -> Result<LeaseRenewed> {
        self.post(&route::fill(route::RUN_LEASE, run_id), &RenewLease {})
    }

    /// `POST /v1/runs/adopt`: adopts a tree, and kills it when asked: then
    /// with a kill's deadline.
    pub fn adopt(&self, req: &AdoptRequest) -> Result<Adopted> {
        let within = if req.kill {
            Within::Kill(req.kill_request())
        } else {
            Within::Margin
        };
        self.post_within(route::ADOPT, req, within)
    }

    /// `GET /v1/audit`: audit records, oldest first.
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut query = Query::default();
        query.push("run", q.run.as_deref());
        query.push("actor", q.actor.as_deref());
        query.push("since_secs", q.since_secs);
        query.push("limit", q.limit);
        self.get(&query.on(route::AUDIT))
    }

    /// `GET /v1/audit/verify`: the hash chain, recomputed.
    pub fn audit_verify(&self) -> Result<AuditVerify> {
        self.get(route::AUDIT_VERIFY)
    }

    /// `GET /v1/breakers`: every workflow's circuit breaker.
    pub fn breakers(&self) -> Result<Vec<BreakerInfo>> {
        self.get(route::BREAKERS)
    }

    /// `POST /v1/breakers/{workflow}/reset`: closes the workflow's breakers
    /// (`owner`: a uid or `host`; all of them without); answers those closed.
    pub fn reset_breaker(&self, workflow: &str, owner: Option<&str>) -> Result<Vec<BreakerInfo>> {
        let mut query = Query::default();
        query.push("owner", owner);
        let path = route::fill(route::BREAKER_RESET, &encode(workflow));
        self.post(&query.on(&path), &Empty {})
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("GET", path, None, Within::Margin)
    }

    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.post_within(path, body, Within::Margin)
    }

    fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        within: Within,
    ) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.request("POST", path, Some(json), within)
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        within: Within,
    ) -> Result<T> {
        let (status, bytes) = self.rt.block_on(async {
            let start = tokio::time::Instant::now();
            let answer = self.send(method, path, body);
            tokio::pin!(answer);
            let mut after = self.timeout;
            if let Ok(answer) = tokio::time::timeout_at(start + after, &mut answer).await {
                return answer;
            }
            // A kill may take its whole course: asked of the agent (which reads
            // its templates for it) only now that the answer is taking longer
            // than the margin.
            if let Within::Kill(req) = &within {
                after = kill_deadline(req, &self.kill_course().await, self.timeout);
                if let Ok(answer) = tokio::time::timeout_at(start + after, &mut answer).await {
                    return answer;
                }
            }
            Err(Error::Timeout {
                socket: self.socket.clone(),
                after,
            })
        })?;
        if status.is_success() {
            // The error names the field (`runs[0].started_at: bad time …`).
            let mut de = serde_json::Deserializer::from_slice(&bytes);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| e.to_string())
                .and_then(|v| de.end().map(|()| v).map_err(|e| e.to_string()))
                .map_err(Error::Protocol)
        } else {
            match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => Err(Error::Api(e)),
                Err(_) => Err(Error::Protocol(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ))),
            }
        }
    }

    /// The kill course the agent's templates allow, as it states it (on another
    /// connection, within the margin); the shipped default's
    /// ([`KillCourse::FALLBACK`]) when it does not.
    async fn kill_course(&self) -> KillCourse {
        let path = format!("{}?kill_course=true", route::HEALTH);
        let asked = self.send("GET", &path, None);
        let stated = match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok((status, bytes))) if status.is_success() => {
                serde_json::from_slice::<crate::api::Health>(&bytes)
                    .ok()
                    .and_then(|h| h.kill_course)
            }
            _ => None,
        };
        stated.map_or(KillCourse::FALLBACK, |c| KillCourse::from_ms(&c))
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(hyper::StatusCode, Bytes)> {
        let unreachable = |source| Error::Unreachable {
            socket: self.socket.clone(),
            source,
        };
        let proto = |e: hyper::Error| Error::Protocol(e.to_string());
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(unreachable)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(proto)?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "wfcg")
            .header("connection", "close")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Protocol(e.to_string()))?;
        let resp = sender.send_request(req).await.map_err(proto)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(proto)?.to_bytes();
        // Close the connection now: with no sender left the driver ends and drops
        // the socket. (An aborted task would keep it open until this runtime runs
        // again, and a detached supervisor may not for hours.)
        drop(sender);
        let _ = driver.await;
        Ok((status, bytes))
    }
}

/// The body of a `POST` that carries nothing: `{}`.
#[derive(Serialize)]
struct Empty {}

fn runs_path(q: RunsQuery) -> String {
    format!("{}?all={}&stuck={}", route::RUNS, q.all, q.stuck)
}

/// A query string, built a field at a time (absent fields left out).
#[derive(Default)]
struct Query(Vec<String>);

impl Query {
    fn push(&mut self, key: &str, value: Option<impl std::fmt::Display>) {
        if let Some(v) = value {
            self.0.push(format!("{key}={}", encode(&v.to_string())));
        }
    }

    /// `path` with this query, if it has any field.
    fn on(&self, path: &str) -> String {
        if self.0.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{}", self.0.join("&"))
        }
    }
}

/// Percent-encodes a path segment or query value (RFC 3986's unreserved
/// characters kept).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// How long a request may take.
enum Within {
    /// The client's margin (`--agent-timeout`).
    Margin,
    /// A kill's course ([`kill_deadline`]) plus the margin.
    Kill(KillRequest),
}

/// How long the answer to a kill may take: its course as the agent states it
/// ([`KillCourse::longest`], with the request's own waits), plus `margin` for
/// the rest (scans, cleanup).
pub fn kill_deadline(req: &KillRequest, course: &KillCourse, margin: Duration) -> Duration {
    course.longest(&req.settings).saturating_add(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kill_may_take_its_waits_and_graces_plus_the_margin() {
        let course = KillCourse {
            max_wait: Duration::from_secs(60),
            term_grace: Duration::from_secs(5),
            freeze_timeout: Duration::from_secs(2),
            kill_deadline: Duration::from_secs(10),
        };
        let margin = Duration::from_secs(30);
        let default = KillRequest::default();
        assert_eq!(
            kill_deadline(&default, &course, margin),
            Duration::from_secs(60 + 5 + 4 + 10 + 30)
        );
        let asked = KillRequest {
            settings: crate::api::KillSettings {
                max_wait_ms: Some(600_000),
                grace_ms: Some(1_500),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            kill_deadline(&asked, &course, margin),
            Duration::from_millis(600_000 + 1_500 + 14_000 + 30_000)
        );
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("run_a.b-c~"), "run_a.b-c~");
        assert_eq!(encode("a&b c"), "a%26b%20c");
    }

    #[test]
    fn paths_fill_the_route_and_leave_out_absent_fields() {
        let mut q = Query::default();
        q.push("run", Some("a b"));
        q.push("actor", None::<&str>);
        q.push("limit", Some(5));
        assert_eq!(
            q.on(route::AUDIT),
            format!("{}?run=a%20b&limit=5", route::AUDIT)
        );
        assert_eq!(Query::default().on(route::AUDIT), route::AUDIT);
        assert_eq!(
            route::fill(route::RUN_KILL, "r1"),
            route::RUN_KILL.replace("{id}", "r1")
        );
        assert_eq!(
            route::fill(route::BREAKER_RESET, &encode("my flow")),
            format!("{}/my%20flow/reset", route::BREAKERS)
        );
        let stuck = RunsQuery {
            stuck: true,
            ..Default::default()
        };
        assert_eq!(
            runs_path(stuck),
            format!("{}?all=false&stuck=true", route::RUNS)
        );
    }
}
