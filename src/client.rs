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
use serde::de::DeserializeOwned;

use crate::api::{AdoptRequest, ApiError, KillCourse, KillRequest};

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

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("GET", path, None, Within::Margin)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        self.post_within(path, body, Within::Margin)
    }

    /// Kills run `run_id` (a [`crate::api::KillResult`]): the answer may take
    /// the kill's whole course.
    pub fn kill<T: DeserializeOwned>(&self, run_id: &str, req: &KillRequest) -> Result<T> {
        let within = Within::Kill(req.clone());
        self.post_within(&format!("/v1/runs/{run_id}/kill"), req, within)
    }

    /// Adopts a tree (an [`crate::api::Adopted`]), and kills it when asked: then
    /// with a kill's deadline.
    pub fn adopt<T: DeserializeOwned>(&self, req: &AdoptRequest) -> Result<T> {
        let within = if req.kill {
            Within::Kill(req.kill_request())
        } else {
            Within::Margin
        };
        self.post_within("/v1/runs/adopt", req, within)
    }

    /// Whether an agent answers on the socket: `Ok` when it does; the error
    /// (nothing listening, or no answer in time) when not.
    pub fn ping(&self) -> Result<()> {
        self.get::<serde_json::Value>("/v1/health").map(drop)
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
            serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(e.to_string()))
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
        let asked = self.send("GET", "/v1/health?kill_course=true", None);
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
}
