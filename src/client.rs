//! A blocking client of the agent's socket API, for the CLI and `wfcg mcp`.
//!
//! Each call opens a connection (HTTP/1.1 over the Unix socket, with hyper on a
//! current-thread runtime), sends one request and reads the JSON answer.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ApiError;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers on the socket.
    #[error("no wfcg agent answers on {socket}: {source}")]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The agent answered with an error.
    #[error("{}", .0.error)]
    Api(ApiError),
    /// The answer could not be understood.
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .expect("building a current-thread runtime");
        Client {
            socket: socket.to_path_buf(),
            rt,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.request("GET", path, None)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let json = serde_json::to_vec(body).map_err(|e| Error::Protocol(e.to_string()))?;
        self.request("POST", path, Some(json))
    }

    /// Whether an agent answers on the socket.
    pub fn ping(&self) -> bool {
        self.get::<serde_json::Value>("/v1/health").is_ok()
    }

    fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let (status, bytes) = self.rt.block_on(self.send(method, path, body))?;
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
