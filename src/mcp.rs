//! `wfcg mcp`: a Model Context Protocol server over stdio, so an AI agent can find
//! stuck workflow runs and kill them itself.
//!
//! It is built on the official Rust SDK (rmcp) and is a *client* of the agent: every
//! tool is one or two calls on the agent's socket through [`crate::client::Client`],
//! so the permissions of whoever started `wfcg mcp` apply, and the agent's audit
//! trail records them as the actor.
//!
//! Tools (input schemas generated from the parameter types below):
//!
//! | tool | agent route | annotations |
//! |---|---|---|
//! | `list_workflows` (status?, workflow?, stuck?, all?) | `GET /v1/runs?all=&stuck=`, then filtered | read-only |
//! | `get_workflow` (run_id) | `GET /v1/runs/{id}` | read-only |
//! | `kill_workflow` (run_id, mode?, force?, emergency?, grace_ms?, grace_git_ms?, grace_db_ms?, grace_files_ms?, max_wait_ms?, reason?) | `POST /v1/runs/{id}/kill` | destructive |
//! | `list_stuck` () | `GET /v1/runs?stuck=true` | read-only |
//! | `audit_log` (run_id?, limit?) | `GET /v1/audit?run=&limit=` | read-only |
//! | `adopt_workflow` (pid, run_id?, workflow?, reason?, markers?, dry_run?, kill?, and the kill settings as for `kill_workflow`) | `POST /v1/runs/adopt` | destructive |
//!
//! Answers are JSON, both as `structuredContent` (always an object) and as the text
//! content (the text through [`crate::output::escape_lines`]: the same JSON, with
//! no raw control, C1 or bidi character a user wrote). A failure is a tool error (`isError: true`) whose text is the message
//! the CLI prints for the same failure (without the `wfcg: ` prefix), e.g.
//! `no such run: run_0123456789ab`; its structured content adds the error `kind`
//! and the CLI's `exit_code`. A kill that leaves processes alive (the run is
//! `unkillable`) is a tool error too, carrying the kill result.
//!
//! stdout carries nothing but the protocol; logs go to stderr (`WFCG_LOG`, default
//! `warn`). The socket client is blocking (it owns a runtime of its own), so each
//! call runs on tokio's blocking pool, with a client made there.

use std::path::{Path, PathBuf};

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, ServiceExt, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{self, BreakerInfo, KillMode, KillRequest, RunInfo, RunStatus};
use crate::client::{self, Client};
use crate::exit::Failure;

/// What the server tells a client about itself when it connects.
const INSTRUCTIONS: &str = "\
wfcg runs each workflow in its own cgroup v2 and can kill its whole process tree. \
Use list_stuck or list_workflows to find runs, get_workflow to look at one (status, \
processes, open critical sections such as git locks, heartbeats, deadlines), \
kill_workflow to stop one, and audit_log to see who did what. A workflow started \
outside wfcg (known only by a pid) is taken over, or killed, with adopt_workflow. Your \
own permissions on the wfcg agent apply.";

/// A run status to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusFilter {
    /// Started, not yet ready (READY=1).
    Initializing,
    /// Ready, or started when its template does not wait for READY.
    Running,
    /// Shutting down, or a kill is under way.
    Stopping,
    /// Its command ended by itself.
    Exited,
    /// Ended by a kill.
    Killed,
    /// Killed by the agent's monitor: a deadline passed.
    TimedOut,
    /// Processes survived cgroup.kill; its cgroup is kept frozen.
    Unkillable,
    /// Ended by the kernel's OOM killer (over its memory.max).
    #[serde(rename = "oom_killed")]
    OomKilled,
    /// Ended while nobody watched.
    Lost,
    /// Found in the cgroup tree with no record.
    Unknown,
}

impl StatusFilter {
    fn status(self) -> RunStatus {
        match self {
            StatusFilter::Initializing => RunStatus::Initializing,
            StatusFilter::Running => RunStatus::Running,
            StatusFilter::Stopping => RunStatus::Stopping,
            StatusFilter::Exited => RunStatus::Exited,
            StatusFilter::Killed => RunStatus::Killed,
            StatusFilter::TimedOut => RunStatus::TimedOut,
            StatusFilter::Unkillable => RunStatus::Unkillable,
            StatusFilter::OomKilled => RunStatus::OomKilled,
            StatusFilter::Lost => RunStatus::Lost,
            StatusFilter::Unknown => RunStatus::Unknown,
        }
    }
}

/// Parameters of `list_workflows`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only runs with this status. A status of an ended run (exited, killed,
    /// timed_out, oom_killed, lost) also searches runs that have ended.
    pub status: Option<StatusFilter>,
    /// Only runs of this workflow (the name given with `wfcg run --workflow`).
    pub workflow: Option<String>,
    /// Only stuck runs: initializing for 80% of their init timeout, a heartbeat
    /// overdue, or near their total timeout.
    #[serde(default)]
    pub stuck: bool,
    /// Include runs that have ended (by default only live runs are listed).
    #[serde(default)]
    pub all: bool,
}

/// Parameters of `get_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    /// The run id, e.g. `run_5fbae44ab6f0`.
    pub run_id: String,
}

/// Parameters of `kill_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    /// The run id, e.g. `run_5fbae44ab6f0`.
    pub run_id: String,
    /// How to kill: `graceful` (the default: wait for open critical
    /// sections, SIGTERM and its grace, then cgroup.kill), `force` (freeze and
    /// cgroup.kill at once; needs the kill_force permission) or `emergency` (a
    /// force kill resting on the emergency_kill permission). Given with the
    /// flags below, the strongest wins.
    pub mode: Option<KillMode>,
    /// The older flag for `mode: "force"`. Default false.
    #[serde(default)]
    pub force: bool,
    /// The older flag for `mode: "emergency"`. Default false.
    #[serde(default)]
    pub emergency: bool,
    /// Milliseconds processes get after SIGTERM (the run's template's when
    /// absent; a user may only shorten it).
    pub grace_ms: Option<u64>,
    /// Milliseconds to wait for an open git lock to close.
    pub grace_git_ms: Option<u64>,
    /// Milliseconds to wait for an open database transaction to end.
    pub grace_db_ms: Option<u64>,
    /// Milliseconds to wait for a file being written to be closed.
    pub grace_files_ms: Option<u64>,
    /// Milliseconds to wait for all critical sections together, at most.
    pub max_wait_ms: Option<u64>,
    /// Why the run is killed: recorded in the audit trail and written to the
    /// run's $WFCG_RUN_DIR/stop-reason so the workflow can read it.
    pub reason: Option<String>,
}

/// Parameters of `adopt_workflow`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdoptParams {
    /// The root process of the workflow's tree.
    pub pid: i32,
    /// The run id it becomes, e.g. the executor's own (`run_5fbae44ab6f0`).
    pub run_id: Option<String>,
    /// The workflow's name.
    pub workflow: Option<String>,
    /// Why: recorded in the audit trail (and with the kill).
    pub reason: Option<String>,
    /// `VAR=VALUE` environment entries that mark the tree's escapees, even
    /// ones started before the root.
    #[serde(default)]
    pub markers: Vec<String>,
    /// Only list what would be taken, and why; change nothing. Default false.
    #[serde(default)]
    pub dry_run: bool,
    /// Kill the run right after adopting it. Default false. How, with the
    /// settings below.
    #[serde(default)]
    pub kill: bool,
    /// How to kill: `graceful` (the default: wait for open critical
    /// sections, SIGTERM and its grace, then cgroup.kill), `force` (freeze and
    /// cgroup.kill at once; needs the kill_force permission) or `emergency` (a
    /// force kill resting on the emergency_kill permission). Given with the
    /// flags below, the strongest wins.
    pub mode: Option<KillMode>,
    /// The older flag for `mode: "force"`. Default false.
    #[serde(default)]
    pub force: bool,
    /// The older flag for `mode: "emergency"`. Default false.
    #[serde(default)]
    pub emergency: bool,
    /// Milliseconds processes get after SIGTERM (the run's template's when
    /// absent; a user may only shorten it).
    pub grace_ms: Option<u64>,
    /// Milliseconds to wait for an open git lock to close.
    pub grace_git_ms: Option<u64>,
    /// Milliseconds to wait for an open database transaction to end.
    pub grace_db_ms: Option<u64>,
    /// Milliseconds to wait for a file being written to be closed.
    pub grace_files_ms: Option<u64>,
    /// Milliseconds to wait for all critical sections together, at most.
    pub max_wait_ms: Option<u64>,
}

/// The kill settings of a tool's parameters (the fields of
/// [`api::KillSettingsWire`], which MCP's parameter structs hold as their own
/// because flattening would let unknown fields through), checked as the
/// agent's API checks them.
macro_rules! kill_settings {
    ($p:expr) => {
        api::KillSettings::try_from(api::KillSettingsWire {
            mode: $p.mode,
            force: $p.force,
            emergency: $p.emergency,
            grace_ms: $p.grace_ms,
            grace_git_ms: $p.grace_git_ms,
            grace_db_ms: $p.grace_db_ms,
            grace_files_ms: $p.grace_files_ms,
            max_wait_ms: $p.max_wait_ms,
        })
    };
}

impl KillParams {
    /// Its kill settings, or what is wrong with them.
    fn settings(&self) -> Result<api::KillSettings, String> {
        kill_settings!(self)
    }
}

impl AdoptParams {
    /// Its kill settings, or what is wrong with them.
    fn settings(&self) -> Result<api::KillSettings, String> {
        kill_settings!(self)
    }
}

/// Parameters of `audit_log`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only records about this run.
    pub run_id: Option<String>,
    /// At most the newest N records (default 50).
    #[schemars(range(min = 1))]
    pub limit: Option<u32>,
}

/// How many audit records `audit_log` returns when no limit is given.
const DEFAULT_AUDIT_LIMIT: u32 = 50;

/// The MCP server: the agent's socket, and the tools.
#[derive(Clone)]
pub struct WfcgMcp {
    socket: PathBuf,
    /// Each call's deadline (a kill: on top of its course).
    timeout: std::time::Duration,
    tool_router: ToolRouter<WfcgMcp>,
}

#[tool_router]
impl WfcgMcp {
    pub fn new(socket: &Path) -> WfcgMcp {
        WfcgMcp {
            socket: socket.to_path_buf(),
            timeout: client::DEFAULT_TIMEOUT,
            tool_router: Self::tool_router(),
        }
    }

    /// The same server, whose calls on the agent each get `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> WfcgMcp {
        self.timeout = timeout;
        self
    }

    /// List workflow runs. By default the live ones (initializing, running,
    /// stopping, unkillable, unknown); filter by status, workflow name or
    /// stuckness. Each run has its id, workflow, owner, status, supervisor pid,
    /// process count, age, CPU time, command, open critical sections, last
    /// heartbeat, deadlines, and why it counts as stuck (`stuck`). Answers
    /// `{"runs": [...], "count": N}`.
    #[tool(annotations(
        title = "List workflow runs",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn list_workflows(&self, Parameters(p): Parameters<ListParams>) -> CallToolResult {
        let want = p.status.map(StatusFilter::status);
        let all = p.all || want.is_some_and(|s| !s.is_live());
        let query = api::RunsQuery {
            all,
            stuck: p.stuck,
        };
        let runs = match self.call(move |c| c.runs(query)).await {
            Ok(runs) => runs,
            Err(e) => return tool_error(e),
        };
        let runs: Vec<RunInfo> = runs
            .into_iter()
            .filter(|r| want.is_none_or(|s| r.status == s))
            .filter(|r| {
                p.workflow
                    .as_deref()
                    .is_none_or(|w| r.workflow.as_deref() == Some(w))
            })
            .collect();
        runs_result(runs)
    }

    /// Show one workflow run in detail: status (its phase: initializing → running
    /// → stopping → exited/killed/timed_out/unkillable/lost) and the last STATUS=
    /// message it sent (`status_text`), its processes (`processes`, `pid`), CPU
    /// time, the critical sections open right now (`sections`: git locks,
    /// database write transactions, files being written, with the holding pid and
    /// for how long), its last heartbeat, its deadlines (`init_deadline`,
    /// `total_deadline`, `watchdog_deadline`), its lease when it was started with
    /// one (`lease_ms`, `lease_renewed_at`, `lease_expires_at`: killed unless
    /// renewed by then), why it counts as stuck, and for an ended run how it
    /// ended (`end_reason`, exit code or signal, the kill result).
    #[tool(annotations(
        title = "Show a workflow run",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn get_workflow(&self, Parameters(p): Parameters<RunParams>) -> CallToolResult {
        if let Some(problem) = api::run_id_problem(&p.run_id) {
            return usage_error(problem);
        }
        match self.call(move |c| c.run(&p.run_id)).await {
            Ok(run) => object_result(run),
            Err(e) => tool_error(e),
        }
    }

    /// Kill a workflow run: every process of its cgroup, atomically, with nothing
    /// left behind. Graceful by default: wait for open critical sections (git
    /// locks, database transactions, files being written) to close within their
    /// graces, write the reason to the run's stop-reason file, SIGTERM every
    /// process and wait up to the grace, then freeze + cgroup.kill; then clean up
    /// (stale git locks, TMPDIR, cgroup) and check nothing survived. `force`
    /// skips the waiting. Answers the kill result: `success`, `run_id`,
    /// `killed_at`, `cleanup_status` (processes_remaining, cgroup_removed,
    /// tmpdir_removed, stale_locks_removed, ...), `message`, and the phases with
    /// their timings, the critical sections seen, and `processes_killed`. Killing
    /// a run that already ended succeeds with `already_ended: true`. When
    /// processes survive, the run is `unkillable` and this is a tool error with
    /// the kill result; a later kill retries.
    #[tool(annotations(
        title = "Kill a workflow run",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn kill_workflow(&self, Parameters(p): Parameters<KillParams>) -> CallToolResult {
        if let Some(problem) = api::run_id_problem(&p.run_id) {
            return usage_error(problem);
        }
        let settings = match p.settings() {
            Ok(s) => s,
            Err(problem) => return usage_error(problem),
        };
        let run_id = p.run_id;
        let req = KillRequest {
            settings,
            reason: p.reason,
        };
        match self.call(move |c| c.kill(&run_id, &req)).await {
            Ok(result) => {
                let success = result.success;
                let mut answer = object_result(result);
                answer.is_error = Some(!success);
                answer
            }
            Err(e) => tool_error(e),
        }
    }

    /// List the stuck workflow runs: initializing for 80% of their init timeout,
    /// a heartbeat overdue, or near their total timeout. Each run says why in
    /// `stuck` (and `loop_suspected` when it keeps restarting the same command).
    /// Also the workflows whose circuit breaker is open (their last runs all ended
    /// stuck; new runs are refused until the cooldown passes or an operator runs
    /// `wfcg breaker reset`). Answers `{"runs": [...], "count": N,
    /// "breakers_open": [...]}`; kill_workflow stops a run.
    #[tool(annotations(
        title = "List stuck workflow runs",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn list_stuck(&self) -> CallToolResult {
        let got = self
            .call(|c| {
                let runs = c.runs(api::RunsQuery {
                    stuck: true,
                    ..Default::default()
                })?;
                let breakers = c.breakers()?;
                Ok((runs, breakers))
            })
            .await;
        match got {
            Ok((runs, breakers)) => {
                let open: Vec<BreakerInfo> = breakers.into_iter().filter(|b| b.open).collect();
                object_result(json!({"count": runs.len(), "runs": runs, "breakers_open": open}))
            }
            Err(e) => tool_error(e),
        }
    }

    /// Take over a workflow that wfcg did not start, known by its root pid: its
    /// whole tree (children, and escapees that double-forked or called setsid,
    /// found by session, process group or environment markers, including those
    /// inferred from the root's environment: values no process outside the
    /// tree has) is moved, race-free, into a new run, which then has a status,
    /// deadlines, the audit trail and kills like any other. `dry_run` lists the
    /// processes that would be taken and why. `kill` kills the run at once
    /// (graceful, or `force`). Answers `run_id`, `cgroup`, `started_at` (the
    /// root's real start), `members` (pid, reason, command), `inferred_markers`
    /// (their names), `message`, and with `kill` the kill result in `kill`.
    /// Needs kill_any, or owning every process taken.
    #[tool(annotations(
        title = "Adopt (and kill) a workflow started outside wfcg",
        read_only_hint = false,
        destructive_hint = true,
        idempotent_hint = true,
        open_world_hint = false
    ))]
    async fn adopt_workflow(&self, Parameters(p): Parameters<AdoptParams>) -> CallToolResult {
        let settings = match p.settings() {
            Ok(s) => s,
            Err(problem) => return usage_error(problem),
        };
        let req = api::AdoptRequest {
            pid: Some(p.pid),
            run_id: p.run_id,
            workflow: p.workflow,
            reason: p.reason,
            markers: p.markers,
            dry_run: p.dry_run,
            kill: p.kill,
            settings,
            ..Default::default()
        };
        if let Some(problem) = req.problem() {
            return usage_error(problem);
        }
        match self.call(move |c| c.adopt(&req)).await {
            Ok(answer) => {
                let failed = answer.kill.as_ref().is_some_and(|k| !k.success);
                let mut result = object_result(answer);
                result.is_error = Some(failed);
                result
            }
            Err(e) => tool_error(e),
        }
    }

    /// Read the audit trail, newest records last: every kill attempt (allowed,
    /// denied, failed), automatic kills by the monitor, run starts and ends, and
    /// policy loads, each with its time, actor, action, run, reason, mode,
    /// decision and the permission it rested on, outcome, and hash chain links.
    /// Without the view_all permission only your own actions are shown. Answers
    /// `{"records": [...], "count": N}`.
    #[tool(annotations(
        title = "Read the audit trail",
        read_only_hint = true,
        open_world_hint = false
    ))]
    async fn audit_log(&self, Parameters(p): Parameters<AuditParams>) -> CallToolResult {
        let limit = p.limit.unwrap_or(DEFAULT_AUDIT_LIMIT).max(1);
        let query = api::AuditQuery {
            run: p.run_id,
            limit: Some(limit),
            ..Default::default()
        };
        match self.call(move |c| c.audit(&query)).await {
            Ok(records) => object_result(json!({"count": records.len(), "records": records})),
            Err(e) => tool_error(e),
        }
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WfcgMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(
                Implementation::new("wfcg", env!("CARGO_PKG_VERSION"))
                    .with_title("wfcg: workflows you can stop"),
            )
            .with_instructions(INSTRUCTIONS)
    }
}

impl WfcgMcp {
    /// Runs `f` with a socket client on tokio's blocking pool (the client blocks,
    /// on a runtime of its own).
    async fn call<T, F>(&self, f: F) -> client::Result<T>
    where
        F: FnOnce(&Client) -> client::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (socket, timeout) = (self.socket.clone(), self.timeout);
        tokio::task::spawn_blocking(move || f(&Client::new(&socket).with_timeout(timeout)))
            .await
            .unwrap_or_else(|e| {
                Err(client::Error::Protocol(format!(
                    "the call to the agent failed: {e}"
                )))
            })
    }
}

/// A successful answer: `answer` (an object) as structured content and as text.
fn object_result(answer: impl Serialize) -> CallToolResult {
    let value = serde_json::to_value(answer).unwrap_or_default();
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    let text = crate::output::escape_lines(&text).into_owned();
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(value);
    result
}

/// A list of runs, wrapped in an object (structured content must be one).
fn runs_result(runs: Vec<RunInfo>) -> CallToolResult {
    object_result(json!({"count": runs.len(), "runs": runs}))
}

/// A tool error for a failed call on the agent: the CLI's message for it.
fn tool_error(e: client::Error) -> CallToolResult {
    let kind = match &e {
        client::Error::Unreachable { .. } | client::Error::Timeout { .. } => {
            "unreachable".to_string()
        }
        client::Error::Api(a) => serde_json::to_value(a.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "internal".into()),
        client::Error::Protocol(_) => "protocol".to_string(),
    };
    failure_result(Failure::from(e), &kind)
}

/// A tool error for bad input caught before asking the agent (as the CLI does).
fn usage_error(problem: String) -> CallToolResult {
    failure_result(Failure::usage(problem), "bad_input")
}

fn failure_result(f: Failure, kind: &str) -> CallToolResult {
    let text = crate::output::escape(&f.message).into_owned();
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(json!({
        "error": f.message,
        "kind": kind,
        "exit_code": f.code,
    }));
    result
}

/// Serves MCP on stdin/stdout until the client closes the connection.
pub fn serve_stdio(socket: &Path, timeout: std::time::Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let server = WfcgMcp::new(socket).with_timeout(timeout);
    let outcome = rt.block_on(async move {
        let running = server
            .serve(rmcp::transport::stdio_pipes())
            .await
            .map_err(|e| format!("MCP initialization failed: {e}"))?;
        tracing::info!("serving MCP on stdio; agent socket {}", socket.display());
        let reason = running
            .waiting()
            .await
            .map_err(|e| format!("the MCP service failed: {e}"))?;
        tracing::info!("MCP connection ended: {reason:?}");
        Ok(())
    });
    // A blocking read of stdin may still be pending: do not wait for it.
    rt.shutdown_background();
    outcome
}

/// The tools this server offers, one a line (`  NAME  TITLE`, destructive ones
/// marked), sorted by name: the list `wfcg mcp --help` prints, made from the
/// server's own tool router so that it cannot differ from what a client is told.
pub fn tools_help() -> String {
    let mut tools = WfcgMcp::tool_router().list_all();
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    let width = tools.iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut text = String::from("Tools:\n");
    for t in &tools {
        let a = t.annotations.as_ref();
        let title = a.and_then(|a| a.title.as_deref()).unwrap_or_default();
        let mark = if a.and_then(|a| a.destructive_hint) == Some(true) {
            " (destructive)"
        } else {
            ""
        };
        text.push_str(&format!("  {:width$}  {title}{mark}\n", t.name));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names of the properties of `T`'s JSON Schema.
    fn properties<T: JsonSchema>() -> std::collections::BTreeSet<String> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        schema["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties: {schema:#}"))
            .keys()
            .cloned()
            .collect()
    }

    #[test]
    fn the_kill_settings_of_mcp_tools_are_the_apis() {
        let api = properties::<api::KillSettings>();
        assert_eq!(api, properties::<api::KillSettingsWire>());
        assert!(api.contains("mode") && api.contains("grace_ms"), "{api:?}");
        let own = |names: &[&str]| -> std::collections::BTreeSet<String> {
            names.iter().map(|s| s.to_string()).collect()
        };
        let kill: std::collections::BTreeSet<String> = properties::<KillParams>()
            .difference(&own(&["run_id", "reason"]))
            .cloned()
            .collect();
        assert_eq!(kill, api, "kill_workflow");
        let adopt_own = own(&[
            "pid", "run_id", "workflow", "reason", "markers", "dry_run", "kill",
        ]);
        let adopt: std::collections::BTreeSet<String> = properties::<AdoptParams>()
            .difference(&adopt_own)
            .cloned()
            .collect();
        assert_eq!(adopt, api, "adopt_workflow");
        // The mode is described as its three names.
        let schema = serde_json::to_string(&schemars::schema_for!(KillParams)).unwrap();
        for m in KillMode::ALL {
            assert!(schema.contains(&format!("\"{m}\"")), "{m}: {schema}");
        }
    }

    #[test]
    fn mcp_kill_parameters_read_the_mode_and_the_old_flag_and_refuse_unknown_fields() {
        let read = |v: serde_json::Value| serde_json::from_value::<KillParams>(v);
        let p = read(json!({"run_id": "run_5fbae44ab6f0", "mode": "emergency"})).unwrap();
        assert_eq!(p.settings().unwrap().mode, KillMode::Emergency);
        let p = read(json!({"run_id": "run_5fbae44ab6f0", "force": true})).unwrap();
        assert_eq!(p.settings().unwrap().mode, KillMode::Force);
        let p = read(json!({"run_id": "run_5fbae44ab6f0", "grace_ms": 1500})).unwrap();
        let s = p.settings().unwrap();
        assert_eq!((s.mode, s.grace_ms), (KillMode::Graceful, Some(1500)));
        let err = read(json!({"run_id": "run_5fbae44ab6f0", "forse": true})).unwrap_err();
        assert!(err.to_string().contains("unknown field `forse`"), "{err}");
        assert!(read(json!({"run_id": "run_5fbae44ab6f0", "mode": "gentle"})).is_err());
        let a =
            serde_json::from_value::<AdoptParams>(json!({"pid": 7, "kill": true, "mode": "force"}))
                .unwrap();
        assert_eq!(a.settings().unwrap().mode, KillMode::Force);
        assert!(serde_json::from_value::<AdoptParams>(json!({"pid": 7, "moed": "force"})).is_err());
    }

    #[test]
    fn six_tools_kill_and_adopt_are_the_destructive_ones() {
        let server = WfcgMcp::new(Path::new("/nonexistent.sock"));
        let mut tools = server.tool_router.list_all();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "adopt_workflow",
                "audit_log",
                "get_workflow",
                "kill_workflow",
                "list_stuck",
                "list_workflows"
            ]
        );
        for t in &tools {
            let a = t.annotations.as_ref().expect("annotations");
            let kill = t.name == "kill_workflow" || t.name == "adopt_workflow";
            assert_eq!(a.destructive_hint, kill.then_some(true), "{}", t.name);
            assert_eq!(a.read_only_hint, Some(!kill), "{}", t.name);
            assert!(t.description.as_deref().is_some_and(|d| d.len() > 40));
            assert_eq!(t.input_schema["type"], "object", "{}", t.name);
        }
        let kill = tools.iter().find(|t| t.name == "kill_workflow").unwrap();
        assert_eq!(kill.input_schema["required"], json!(["run_id"]));
        let list = tools.iter().find(|t| t.name == "list_workflows").unwrap();
        let statuses = serde_json::to_string(&list.input_schema).unwrap();
        for st in RunStatus::ALL {
            assert!(statuses.contains(&format!("\"{st}\"")), "{st}: {statuses}");
        }
    }

    #[test]
    fn the_help_lists_every_tool_once() {
        let help = tools_help();
        let listed: Vec<&str> = help
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let mut tools: Vec<String> = WfcgMcp::tool_router()
            .list_all()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect();
        tools.sort();
        assert_eq!(listed, tools, "{help}");
        assert!(
            help.lines().any(|l| l.starts_with("  kill_workflow ")
                && l.ends_with(" Kill a workflow run (destructive)")),
            "{help}"
        );
    }

    #[test]
    fn status_filter_names_are_the_api_names() {
        for st in RunStatus::ALL {
            let f: StatusFilter = serde_json::from_value(json!(st.as_str())).unwrap();
            assert_eq!(f.status(), st);
        }
    }

    #[test]
    fn errors_carry_the_cli_message() {
        let e = client::Error::Api(api::ApiError {
            kind: api::ErrorKind::NotFound,
            error: "no such run: run_x".into(),
        });
        let r = tool_error(e);
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.content[0].as_text().unwrap().text, "no such run: run_x");
        let s = r.structured_content.unwrap();
        assert_eq!(s["kind"], "not_found");
        assert_eq!(s["exit_code"], crate::exit::NO_SUCH_RUN);
    }

    #[tokio::test]
    async fn unreachable_agent_is_a_tool_error_naming_the_socket() {
        let server = WfcgMcp::new(Path::new("/nonexistent/agent.sock"));
        let r = server.list_stuck().await;
        assert_eq!(r.is_error, Some(true));
        let text = &r.content[0].as_text().unwrap().text;
        assert!(text.contains("/nonexistent/agent.sock"), "{text}");
        assert!(text.contains("start one with"), "{text}");
    }
}
