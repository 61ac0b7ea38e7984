//! The agent's HTTP/JSON API on a Unix socket (axum), with every request tied to
//! the peer's credentials (SO_PEERCRED, and SO_PEERPIDFD where the kernel has it).
//!
//! # The audit rule, enforced here
//!
//! Every state-changing request writes its audit record. Routes are added only
//! through [`Routes`]: [`Routes::read`] serves `GET`, [`Routes::change`] serves
//! `POST` and takes only a handler whose answer is a [`ChangeAnswer`], which
//! only [`changed`] makes, from the operation's [`Audited`] answer; an
//! `Audited` is made only from the auditor's [`Receipt`](super::audit::Receipt)
//! (or, for a change deliberately not recorded, from an
//! [`Unrecorded`](super::audit::Unrecorded) reason). So a new state-changing
//! route that writes no record does not compile. A refusal (`forbidden`) of a
//! state-changing request must carry the auditor's receipt too: in a debug
//! build (the tests) one that does not is answered as an internal error, and
//! logged as a bug in any build. The test `every_route_is_served_as_its_api_doc_says`
//! checks that the routes served are `api::route`'s, with the methods its docs
//! name.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path as UrlPath, Query, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use super::audit::Audited;
use super::fd_dropping_stream::FdDroppingStream;
use super::{Agent, Caller, Config, Failure, StartError};
use crate::api::{ApiError, ErrorKind, route};

/// A pidfd for the peer, pinned when the connection is accepted:
/// `getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD)` (Linux ≥ 6.5: the kernel's own
/// reference to the process that connected), or on older kernels `pidfd_open(2)`
/// of SO_PEERCRED's pid at once. `None` when the peer is already gone: its pid may
/// then name another process, and nothing is ever done to it.
fn peer_pidfd(sock: impl AsFd, pid: i32) -> Option<OwnedFd> {
    match crate::sys::socket::peer_pidfd(sock) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) && pid > 0 => {
            crate::procfs::pidfd_open(pid).ok()
        }
        Err(_) => None,
    }
}

/// The peer of one connection.
#[derive(Clone, Debug)]
struct Peer(Option<Caller>);

impl Peer {
    /// The peer of a connection just accepted: its credentials, and a pidfd that
    /// pins the process that connected.
    fn of(io: &UnixStream) -> Peer {
        let Ok(cred) = io.peer_cred() else {
            return Peer(None);
        };
        let pid = cred.pid().unwrap_or(0);
        Peer(Some(Caller {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            pidfd: peer_pidfd(io, pid).map(Arc::new),
        }))
    }
}

/// An error answer with the status that matches its kind.
struct Answer(Failure);

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = match self.0.kind {
            ErrorKind::BadInput => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::BreakerOpen => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        };
        let body = ApiError {
            kind: self.0.kind,
            error: self.0.message,
        };
        (status, axum::Json(body)).into_response()
    }
}

type Reply = Result<Response, Answer>;

fn caller(peer: Peer) -> Result<Caller, Answer> {
    peer.0.ok_or_else(|| {
        Answer(Failure::new(
            ErrorKind::Forbidden,
            "cannot read the peer credentials of this connection",
        ))
    })
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Answer> {
    let bytes = if bytes.is_empty() { b"{}" } else { bytes };
    // The error names the field (`timeout_ms: …`), as the query reader's does.
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let read = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| e.to_string())
        .and_then(|v| de.end().map(|()| v).map_err(|e| e.to_string()));
    read.map_err(|e| {
        Answer(Failure::new(
            ErrorKind::BadInput,
            format!("bad request body: {e}"),
        ))
    })
}

/// Runs a blocking agent call off the async workers and turns it into JSON.
async fn call<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Reply {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(axum::Json(v).into_response()),
        Ok(Err(e)) => Err(Answer(e)),
        Err(e) => Err(Answer(Failure::internal(format!("request failed: {e}")))),
    }
}

/// The answer of a state-changing route: made only by [`changed`], and the
/// only answer [`Routes::change`] takes.
struct ChangeAnswer(Reply);

impl IntoResponse for ChangeAnswer {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// Runs a state-changing agent call off the async workers and turns its
/// audited answer into JSON. A refusal (`forbidden`) must have been recorded
/// (see the module's doc).
async fn changed<T: serde::Serialize + Send + 'static>(
    f: impl FnOnce() -> Result<Audited<T>, Failure> + Send + 'static,
) -> ChangeAnswer {
    changed_on(tokio::task::spawn_blocking(f)).await
}

/// [`changed`] for a call already started on a blocking thread of some pool.
async fn changed_on<T: serde::Serialize + Send + 'static>(
    call: tokio::task::JoinHandle<Result<Audited<T>, Failure>>,
) -> ChangeAnswer {
    ChangeAnswer(match call.await {
        Ok(Ok(v)) => Ok(axum::Json(v.into_inner()).into_response()),
        Ok(Err(e)) if e.kind == ErrorKind::Forbidden && !e.is_recorded() => {
            tracing::error!(
                "BUG: a refused state-changing request was not audited: {}",
                e.message
            );
            if cfg!(debug_assertions) {
                Err(Answer(Failure::internal(format!(
                    "refused without an audit record (a bug): {}",
                    e.message
                ))))
            } else {
                Err(Answer(e))
            }
        }
        Ok(Err(e)) => Err(Answer(e)),
        Err(e) => Err(Answer(Failure::internal(format!("request failed: {e}")))),
    })
}

#[derive(Deserialize)]
struct HealthQuery {
    /// Also state the kill course the agent's templates allow (reads them).
    #[serde(default)]
    kill_course: bool,
}

/// Anyone may ask: nothing in it is a secret, and it takes no lock a request holds.
async fn health(
    State(agent): State<Arc<Agent>>,
    q: Result<Query<HealthQuery>, QueryRejection>,
) -> Reply {
    let q = query(q)?;
    call(move || Ok(agent.health(q.kill_course))).await
}

/// Root's request to stop the agent: answered first, then the agent stops
/// (the connection is let finish: see [`accept_loop`]).
async fn stop_agent(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> ChangeAnswer {
    let caller = match caller(peer) {
        Ok(c) => c,
        Err(e) => return ChangeAnswer(Err(e)),
    };
    let stopping = agent.clone();
    let answer = changed(move || stopping.request_stop(&caller)).await;
    if answer.0.is_ok() {
        agent.stop();
    }
    answer
}

/// [`changed`] with what the request asks (`asked`: the caller and its
/// request, read from the connection), or its refusal when it could not be
/// read (no peer credentials, a malformed body or query): then nothing was
/// asked of the agent and there is nothing to record.
async fn changed_if<A: Send + 'static, T: serde::Serialize + Send + 'static>(
    asked: Result<A, Answer>,
    f: impl FnOnce(A) -> Result<Audited<T>, Failure> + Send + 'static,
) -> ChangeAnswer {
    match asked {
        Ok(a) => changed(move || f(a)).await,
        Err(e) => ChangeAnswer(Err(e)),
    }
}

async fn create_run(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> ChangeAnswer {
    let asked = caller(peer).and_then(|caller| Ok((caller, body(&bytes)?)));
    changed_if(asked, move |(caller, req)| agent.create_run(&caller, req)).await
}

/// One path segment (a run id, a workflow), percent-decoded; one that is not
/// UTF-8 (`/v1/runs/%FF%FE/kill`) is a `bad_input` answer, as every other bad input.
struct Segment(String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = Answer;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        match UrlPath::<String>::from_request_parts(parts, state).await {
            Ok(UrlPath(s)) => Ok(Segment(s)),
            Err(e) => Err(Answer(Failure::new(
                ErrorKind::BadInput,
                format!("bad path: {}", e.body_text()),
            ))),
        }
    }
}

/// A query string's fields, or a `bad_input` answer naming what was wrong.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Answer> {
    q.map(|Query(q)| q).map_err(|e| {
        Answer(Failure::new(
            ErrorKind::BadInput,
            format!("bad query: {}", e.body_text()),
        ))
    })
}

async fn list_runs(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    q: Result<Query<crate::api::RunsQuery>, QueryRejection>,
) -> Reply {
    let caller = caller(peer)?;
    let q = query(q)?;
    call(move || agent.list(&caller, q.all, q.stuck)).await
}

async fn get_run(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
) -> Reply {
    let caller = caller(peer)?;
    call(move || agent.get(&caller, &id)).await
}

async fn report_exit(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
    bytes: Bytes,
) -> ChangeAnswer {
    let asked = caller(peer).and_then(|caller| Ok((caller, body(&bytes)?)));
    changed_if(asked, move |(caller, report)| {
        agent.report_exit(&caller, &id, report)
    })
    .await
}

async fn enter_supervisor(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
) -> ChangeAnswer {
    changed_if(caller(peer), move |caller| {
        agent.enter_supervisor(&caller, &id)
    })
    .await
}

async fn kill_run(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
    bytes: Bytes,
) -> ChangeAnswer {
    let asked = caller(peer).and_then(|caller| Ok((caller, body(&bytes)?)));
    match asked {
        Ok((caller, req)) => {
            changed_on(KILLS.spawn_blocking(move || agent.kill(&caller, &id, req))).await
        }
        Err(e) => ChangeAnswer(Err(e)),
    }
}

/// The pool of threads kill requests run on, apart from every other request's:
/// a kill waits (for its processes, for its run's supervisor to report its
/// exit, for critical sections), and a thousand kills at once would otherwise
/// hold every thread of the shared pool while the exit reports they wait for
/// queue behind them (each kill then waited out its supervisor's grace).
static KILLS: std::sync::LazyLock<tokio::runtime::Runtime> = std::sync::LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wfcg-kill")
        .enable_all()
        .build()
        .expect("the kill requests' thread pool")
});

async fn renew_lease(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
    bytes: Bytes,
) -> ChangeAnswer {
    let asked = caller(peer).and_then(|caller| {
        let crate::api::RenewLease {} = body(&bytes)?;
        Ok(caller)
    });
    changed_if(asked, move |caller| agent.renew_lease(&caller, &id)).await
}

async fn may_kill(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(id): Segment,
    q: Result<Query<crate::api::MayKillQuery>, QueryRejection>,
) -> Reply {
    let caller = caller(peer)?;
    let q = query(q)?;
    call(move || agent.may_kill(&caller, &id, q)).await
}

async fn adopt(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    bytes: Bytes,
) -> ChangeAnswer {
    let asked = caller(peer).and_then(|caller| Ok((caller, body(&bytes)?)));
    changed_if(asked, move |(caller, req)| agent.adopt(&caller, req)).await
}

async fn audit_list(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    q: Result<Query<crate::api::AuditQuery>, QueryRejection>,
) -> Reply {
    let caller = caller(peer)?;
    let q = query(q)?;
    call(move || agent.audit_list(&caller, &q)).await
}

async fn audit_verify(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Reply {
    let caller = caller(peer)?;
    call(move || agent.audit_verify(&caller)).await
}

async fn list_breakers(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Reply {
    let caller = caller(peer)?;
    call(move || agent.breakers(&caller)).await
}

/// `?owner=UID` or `?owner=host` of a breaker reset (all of the workflow's without).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetQuery {
    owner: Option<String>,
}

async fn reset_breaker(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    Segment(workflow): Segment,
    q: Result<Query<ResetQuery>, QueryRejection>,
) -> ChangeAnswer {
    use super::breaker::ResetScope;
    let asked = caller(peer).and_then(|caller| {
        let scope = match query(q)?.owner.as_deref() {
            None => ResetScope::All,
            Some("host") => ResetScope::Host,
            Some(uid) => ResetScope::Owner(uid.parse().map_err(|_| {
                Answer(Failure::new(
                    ErrorKind::BadInput,
                    format!("owner {uid:?}: a uid or \"host\" expected"),
                ))
            })?),
        };
        Ok((caller, scope))
    });
    changed_if(asked, move |(caller, scope)| {
        agent.reset_breaker(&caller, &workflow, scope)
    })
    .await
}

/// The content type of the Prometheus text format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

async fn metrics(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
) -> Response {
    let caller = match caller(peer) {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    metrics_answer(move || agent.metrics_for(&caller)).await
}

/// `/metrics` on TCP: no caller to judge, so per-run series only with
/// `--metrics-per-run`.
async fn tcp_metrics(State(agent): State<Arc<Agent>>) -> Response {
    let per_run = agent.cfg.metrics_per_run;
    metrics_answer(move || agent.metrics_text(per_run)).await
}

async fn metrics_answer(text: impl FnOnce() -> String + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(text).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, METRICS_TYPE)], text).into_response(),
        Err(e) => Answer(Failure::internal(e)).into_response(),
    }
}

async fn not_found() -> Answer {
    Answer(Failure::new(ErrorKind::NotFound, "no such API route"))
}

/// A route asked with a method it does not take: 405, with the error as JSON
/// like every other answer.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let body = ApiError {
        kind: ErrorKind::BadInput,
        error: format!("{} does not take {method}", uri.path()),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

/// How a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// `GET`: reads (a read may write a record, e.g. `permission_query`).
    Read,
    /// `POST`: changes state, answered only with an audit receipt.
    Change,
}

/// A handler of a state-changing route: an async function whose answer is a
/// [`ChangeAnswer`] (which only [`changed`] makes). `Args` are its arguments.
trait ChangeHandler<Args> {}

macro_rules! change_handler {
    ($($arg:ident),+) => {
        impl<F, Fut, $($arg,)+> ChangeHandler<($($arg,)+)> for F
        where
            F: FnOnce($($arg),+) -> Fut,
            Fut: std::future::Future<Output = ChangeAnswer>,
        {
        }
    };
}

change_handler!(A);
change_handler!(A, B);
change_handler!(A, B, C);
change_handler!(A, B, C, D);
change_handler!(A, B, C, D, E);

/// The socket's routes, and how each is served: the only way a route is added.
struct Routes {
    router: Router<Arc<Agent>>,
    served: Vec<(&'static str, Served)>,
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// `GET path`, answered by `handler`.
    fn read<H: Handler<X, Arc<Agent>>, X: 'static>(
        mut self,
        path: &'static str,
        handler: H,
    ) -> Routes {
        self.router = self.router.route(path, get(handler));
        self.served.push((path, Served::Read));
        self
    }

    /// `POST path`, answered by `handler`, which must answer through
    /// [`changed`]: with the operation's audit receipt.
    fn change<H, X, Args>(mut self, path: &'static str, handler: H) -> Routes
    where
        H: Handler<X, Arc<Agent>> + ChangeHandler<Args>,
        X: 'static,
    {
        self.router = self.router.route(path, post(handler));
        self.served.push((path, Served::Change));
        self
    }
}

/// Every route of the socket.
fn routes() -> Routes {
    Routes::new()
        .read(route::HEALTH, health)
        .change(route::AGENT_STOP, stop_agent)
        .read(route::RUNS, list_runs)
        .change(route::RUNS, create_run)
        .change(route::ADOPT, adopt)
        .read(route::RUN, get_run)
        .change(route::RUN_EXIT, report_exit)
        .change(route::RUN_SUPERVISOR, enter_supervisor)
        .change(route::RUN_KILL, kill_run)
        .read(route::RUN_MAY_KILL, may_kill)
        .change(route::RUN_LEASE, renew_lease)
        .read(route::AUDIT, audit_list)
        .read(route::AUDIT_VERIFY, audit_verify)
        .read(route::BREAKERS, list_breakers)
        .change(route::BREAKER_RESET, reset_breaker)
        .read(route::METRICS, metrics)
}

pub fn router(agent: Arc<Agent>) -> Router {
    routes()
        .router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent)
}

/// Binds the socket (refusing if another agent answers on it), world-connectable:
/// who may do what is decided per request from the peer's credentials.
fn bind(socket: &Path) -> Result<UnixListener, StartError> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(StartError::Socket(format!(
            "an agent already answers on {}",
            socket.display()
        )));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)
        .map_err(|e| StartError::Socket(format!("cannot listen on {}: {e}", socket.display())))?;
    // A descriptor passed with a request would be discarded by the kernel in the
    // tokio worker that reads it, and its final close can block that worker for
    // good (a TCP socket lingering on data its peer never reads; a FUSE flush).
    // Refused here (the accepted connections inherit it) where the kernel can.
    match crate::sys::socket::refuse_passed_fds(&listener) {
        Ok(true) => {}
        Ok(false) => tracing::info!(
            "this kernel cannot refuse descriptors passed on {} (SO_PASSRIGHTS, Linux >= 6.16): \
             they are received and closed off the workers",
            socket.display()
        ),
        Err(e) => {
            return Err(StartError::Socket(format!(
                "cannot refuse passed descriptors on {}: {e}",
                socket.display()
            )));
        }
    }
    // Only now may anyone connect: a connection accepted before the option was
    // set could still pass descriptors.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| StartError::Socket(format!("cannot chmod {}: {e}", socket.display())))?;
    Ok(listener)
}

/// Tells the service manager (systemd's `NOTIFY_SOCKET`, when set) how the agent is.
fn notify_service_manager(text: &str) {
    if let Ok(socket) = std::env::var("NOTIFY_SOCKET")
        && let Err(e) = crate::sdnotify::send(&socket, text)
    {
        tracing::warn!("cannot notify the service manager on {socket}: {e}");
    }
}

/// Runs the agent until SIGTERM, SIGINT or root's stop request. Runs are left
/// running when it stops.
pub async fn serve(cfg: Config) -> Result<(), StartError> {
    if !rustix::process::geteuid().is_root() {
        return Err(StartError::NotRoot);
    }
    // SIGHUP reloads the policy. Its default action ends the process, so it is
    // caught before anything else: one that arrives while the agent starts up is
    // then a reload once it serves, not the end of the agent.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let socket = cfg.socket.clone();
    let metrics_listen = cfg.metrics_listen;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StartError::Socket(format!("cannot create {}: {e}", dir.display())))?;
    }
    // Bound first, so a second agent on the same socket stops before touching anything.
    let listener = bind(&socket)?;
    let agent = tokio::task::spawn_blocking(move || Agent::start(cfg))
        .await
        .map_err(|e| StartError::Socket(e.to_string()))?
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&socket);
        })?;
    tracing::info!(
        socket = %socket.display(),
        runs = agent.watched_runs(),
        "wfcg agent listening"
    );
    let hup_agent = agent.clone();
    tokio::spawn(async move {
        let Ok(mut hup) = hup else {
            return;
        };
        while hup.recv().await.is_some() {
            let agent = hup_agent.clone();
            let _ = tokio::task::spawn_blocking(move || agent.reload_policy("SIGHUP")).await;
        }
    });
    if let Some(addr) = metrics_listen {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| StartError::Socket(format!("--metrics-listen {addr}: {e}")))?;
        let app = Router::new()
            .route(route::METRICS, get(tcp_metrics))
            .with_state(agent.clone());
        tracing::info!(%addr, "serving /metrics on TCP");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(tcp, app).await {
                tracing::error!("metrics listener failed: {e}");
            }
        });
    }
    let app = router(agent.clone());
    // The socket is bound and the agent set up: a connection made from now on is
    // answered, so systemd (Type=notify) may count the service as started.
    notify_service_manager("READY=1\nSTATUS=serving");
    let stop_agent = agent.clone();
    let shutdown = async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let why = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
            () = stop_agent.stop_requested() => "asked by root (wfcg agent stop)",
        };
        tracing::info!("stopping ({why}); runs go on");
        notify_service_manager("STOPPING=1");
    };
    accept_loop(listener, app, agent, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// How long a client may take to send a request's headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connections under way may take to finish once the agent stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest request body read (a template text is the largest there is).
const MAX_BODY: usize = 1 << 20;

/// What each user holds of the agent right now: open connections and requests
/// being worked on. Root is never counted, so no user can queue root's requests
/// behind theirs or take the connections root needs.
#[derive(Default)]
struct Gate {
    connections: parking_lot::Mutex<HashMap<u32, u32>>,
    busy: parking_lot::Mutex<HashMap<u32, Arc<Semaphore>>>,
}

/// One open connection of a user; counted until dropped.
struct Connection {
    gate: Arc<Gate>,
    uid: u32,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let mut conns = self.gate.connections.lock();
        if let Some(n) = conns.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                conns.remove(&self.uid);
            }
        }
    }
}

impl Gate {
    /// Counts a new connection of `uid`, or `None` when the user already holds
    /// `max` of them (the connection is then closed at once).
    fn connect(self: &Arc<Gate>, uid: u32, max: u32) -> Option<Connection> {
        let mut conns = self.connections.lock();
        let n = conns.entry(uid).or_default();
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(Connection {
            gate: self.clone(),
            uid,
        })
    }

    /// The semaphore that lets `uid` have at most `max` requests worked on at once.
    fn busy(&self, uid: u32, max: u32) -> Arc<Semaphore> {
        let mut busy = self.busy.lock();
        busy.entry(uid)
            .or_insert_with(|| Arc::new(Semaphore::new(max.max(1) as usize)))
            .clone()
    }
}

/// The uid a connection counts against (root's and unidentified peers' apart).
fn uid_of(peer: &Peer) -> u32 {
    peer.0.as_ref().map_or(u32::MAX, |c| c.uid)
}

/// Accepts connections until `shutdown`: each user may hold at most
/// `max_connections` (policy `[limits]`; root any number), must send its headers
/// within [`HEADER_TIMEOUT`], and its requests are served through [`limit`].
async fn accept_loop(
    listener: UnixListener,
    app: Router,
    agent: Arc<Agent>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let gate = Arc::new(Gate::default());
    let app = app.layer(axum::middleware::from_fn_with_state(
        (gate.clone(), agent.clone()),
        limit,
    ));
    tokio::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            // Connections that ended are let go of as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            res = listener.accept() => match res {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of fds (EMFILE) or the like: never a busy loop.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Inherited from the listener already; set again in case it was not.
        // Where the kernel cannot refuse them, the connection's reads receive
        // and dispose of them ([`FdDroppingStream`]).
        let _ = crate::sys::socket::refuse_passed_fds(&stream);
        let peer = Peer::of(&stream);
        let uid = uid_of(&peer);
        let held = if uid == 0 {
            None
        } else {
            match gate.connect(uid, agent.access.policy().limits.max_connections) {
                Some(c) => Some(c),
                None => {
                    tracing::debug!(uid, "connection refused: the user holds the most allowed");
                    continue;
                }
            }
        };
        let app = app.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer.clone()));
                tower::ServiceExt::oneshot(app.clone(), req.map(axum::body::Body::new))
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(
                    hyper_util::rt::TokioIo::new(FdDroppingStream::new(stream)),
                    service,
                );
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
            drop(held);
        });
    }
    // No new connections; those under way (the answer to a stop request among
    // them) get a moment to finish, no more: the rest are cut.
    drop(listener);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
        tracing::info!(
            "{} connections still open after {DRAIN_TIMEOUT:?}: closed",
            connections.len()
        );
    }
}

/// Every request: its body read within [`BODY_TIMEOUT`] and at most [`MAX_BODY`]
/// bytes, then, for anyone but root, worked on only while the user has fewer than
/// `max_busy_requests` others under way (policy `[limits]`).
async fn limit(
    State((gate, agent)): State<(Arc<Gate>, Arc<Agent>)>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let uid = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map_or(u32::MAX, |ConnectInfo(p)| uid_of(p));
    let (parts, body) = req.into_parts();
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await
    {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Answer(Failure::new(
                ErrorKind::BadInput,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
            ))
            .into_response();
        }
        Err(_) => {
            return Answer(Failure::new(
                ErrorKind::BadInput,
                format!("the request body did not arrive within {BODY_TIMEOUT:?}"),
            ))
            .into_response();
        }
    };
    let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes));
    if uid == 0 {
        return next.run(req).await;
    }
    let busy = gate.busy(uid, agent.access.policy().limits.max_busy_requests);
    let Ok(_permit) = busy.acquire_owned().await else {
        return Answer(Failure::internal("the agent is stopping")).into_response();
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The methods each route of `api::route` takes, as its doc says (`GET`,
    /// `POST`), read from `src/api.rs`.
    fn documented() -> BTreeSet<(String, &'static str)> {
        let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/api.rs"))
            .expect("src/api.rs");
        let start = src.find("pub mod route {").expect("api::route");
        let mut doc = String::new();
        let mut out = BTreeSet::new();
        for line in src[start..].lines().skip(1) {
            let line = line.trim();
            if line.starts_with("pub fn") || line == "}" {
                break;
            }
            if let Some(text) = line.strip_prefix("///") {
                doc.push_str(text);
            } else if let Some(rest) = line.strip_prefix("pub const ") {
                let path = rest.split('"').nth(1).expect("a route's path").to_owned();
                for method in ["GET", "POST"] {
                    if doc.contains(&format!("`{method}`")) {
                        out.insert((path.clone(), method));
                    }
                }
                doc.clear();
            }
        }
        out
    }

    #[test]
    fn every_route_is_served_as_its_api_doc_says() {
        let served: BTreeSet<(String, &'static str)> = routes()
            .served
            .into_iter()
            .map(|(path, how)| {
                let method = match how {
                    Served::Read => "GET",
                    Served::Change => "POST",
                };
                (path.to_owned(), method)
            })
            .collect();
        let documented = documented();
        assert_eq!(documented.len(), 16, "{documented:?}");
        assert_eq!(served, documented);
        for path in route::ALL {
            assert!(
                served.iter().any(|(p, _)| p == path),
                "{path} is not served"
            );
        }
    }

    #[test]
    fn every_state_changing_route_is_served_through_the_audited_wrapper() {
        // Every route that is not a GET is one of `Routes::change`'s, whose
        // handlers can only answer with an audit receipt (`changed`).
        let routes = routes();
        let changes: Vec<&str> = routes
            .served
            .iter()
            .filter(|(_, how)| *how == Served::Change)
            .map(|(p, _)| *p)
            .collect();
        let not_get: Vec<String> = documented()
            .into_iter()
            .filter(|(_, m)| *m != "GET")
            .map(|(p, _)| p)
            .collect();
        assert_eq!(not_get.len(), 8, "{not_get:?}");
        for path in &not_get {
            assert!(
                changes.contains(&path.as_str()),
                "{path} changes state but is not served through Routes::change"
            );
        }
        assert_eq!(changes.len(), not_get.len());
    }
}
