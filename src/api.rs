//! Wire types of the agent's HTTP/JSON API, shared by the agent, the CLI and MCP.
//!
//! Routes (all under the agent's Unix socket):
//! - `POST /v1/runs` ([`CreateRun`] → [`RunStarted`]): start a run; the caller is moved into it.
//! - `GET /v1/runs[?all=true]` (→ `Vec<RunInfo>`), `GET /v1/runs/{id}` (→ [`RunInfo`]).
//! - `POST /v1/runs/{id}/exit` ([`ExitReport`] → [`ExitAck`]): the supervisor reports its command's end.
//! - `POST /v1/runs/{id}/supervisor` (no body → `null`): the supervisor, having
//!   started its command in the run's payload leaf, moves itself to the supervisor leaf.
//! - `POST /v1/runs/{id}/kill` ([`KillRequest`] → [`KillResult`]).
//! - `POST /v1/runs/adopt` ([`AdoptRequest`] → [`Adopted`]): take a tree started
//!   outside wfcg into a new run (and kill it, with `kill`).
//! - `GET /v1/runs/{id}/may-kill` ([`MayKillQuery`] → [`MayKill`]): a permission question.
//! - `POST /v1/runs/{id}/lease` ([`RenewLease`] → [`LeaseRenewed`]): renew a run's
//!   lease (`CreateRun::lease_ms`).
//! - `GET /v1/health` (→ [`Health`]): that the agent answers, and how it runs.
//! - `POST /v1/agent/stop` (no body → [`AgentStopping`]): root asks the agent to stop;
//!   runs go on.
//!
//! Errors come back as [`ApiError`] with a matching HTTP status. This module has
//! no dependencies inside the crate but the leaf [`crate::bounds`]: every numeric
//! field of a request is bounded when it is read (at most 10 years), so a value
//! out of range is a `bad_input` answer naming the field. It is one file on purpose, over 600 lines:
//! the whole contract between the agent and its clients, read in one place.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The agent's routes: the server's router and the client both take their paths
/// from here, so no other file spells a `/v1/…` path (checked by a test).
/// `{id}` is a run id, `{workflow}` a workflow name ([`route::fill`]).
pub mod route {
    /// `GET` → [`super::Health`].
    pub const HEALTH: &str = "/v1/health";
    /// `POST` → [`super::AgentStopping`].
    pub const AGENT_STOP: &str = "/v1/agent/stop";
    /// `GET` ([`super::RunsQuery`]) → `Vec<RunInfo>`; `POST` ([`super::CreateRun`]) → [`super::RunStarted`].
    pub const RUNS: &str = "/v1/runs";
    /// `POST` ([`super::AdoptRequest`]) → [`super::Adopted`].
    pub const ADOPT: &str = "/v1/runs/adopt";
    /// `GET` → [`super::RunInfo`].
    pub const RUN: &str = "/v1/runs/{id}";
    /// `POST` ([`super::ExitReport`]) → [`super::ExitAck`].
    pub const RUN_EXIT: &str = "/v1/runs/{id}/exit";
    /// `POST` (no body) → `null`.
    pub const RUN_SUPERVISOR: &str = "/v1/runs/{id}/supervisor";
    /// `POST` ([`super::KillRequest`]) → [`super::KillResult`].
    pub const RUN_KILL: &str = "/v1/runs/{id}/kill";
    /// `GET` ([`super::MayKillQuery`]) → [`super::MayKill`].
    pub const RUN_MAY_KILL: &str = "/v1/runs/{id}/may-kill";
    /// `POST` ([`super::RenewLease`]) → [`super::LeaseRenewed`].
    pub const RUN_LEASE: &str = "/v1/runs/{id}/lease";
    /// `GET` ([`super::AuditQuery`]) → `Vec<AuditRecord>`.
    pub const AUDIT: &str = "/v1/audit";
    /// `GET` → [`super::AuditVerify`].
    pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
    /// `GET` → `Vec<BreakerInfo>`.
    pub const BREAKERS: &str = "/v1/breakers";
    /// `POST` (`?owner=UID|host`) → `Vec<BreakerInfo>`: the breakers closed.
    pub const BREAKER_RESET: &str = "/v1/breakers/{workflow}/reset";
    /// `GET`: the Prometheus text format (on the socket, and on `--metrics-addr`).
    pub const METRICS: &str = "/metrics";

    /// `route` with its one `{…}` parameter replaced by `value`, as given: the
    /// caller encodes it when it may hold a character a path cannot.
    pub fn fill(route: &str, value: &str) -> String {
        match (route.find('{'), route.find('}')) {
            (Some(open), Some(close)) if open < close => {
                format!("{}{value}{}", &route[..open], &route[close + 1..])
            }
            _ => route.to_string(),
        }
    }

    /// Every route, for the test that no other file spells one.
    pub const ALL: [&str; 15] = [
        HEALTH,
        AGENT_STOP,
        RUNS,
        ADOPT,
        RUN,
        RUN_EXIT,
        RUN_SUPERVISOR,
        RUN_KILL,
        RUN_MAY_KILL,
        RUN_LEASE,
        AUDIT,
        AUDIT_VERIFY,
        BREAKERS,
        BREAKER_RESET,
        METRICS,
    ];
}

/// Times on the wire: `DateTime<Utc>` in the types, RFC 3339 text in UTC with
/// milliseconds and `Z` in the JSON (`2026-01-01T00:00:00.250Z`), byte for byte
/// what every wfcg has written (the store's format too). Any RFC 3339 time is
/// read (another offset, more or fewer digits), so what an older agent or a hand-
/// written request sent still reads; a text that is not one is a serde error
/// that says what it got (with the field's path where the reader tracks it, as the
/// agent's request reader does). Used as `#[serde(with = "time")]`, or
/// `time::option` for an `Option`; the schema says `string`, format `date-time`
/// (`#[schemars(with = "time::Rfc3339")]`).
pub mod time {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// A time as the API writes it: RFC 3339, UTC, milliseconds, `Z`.
    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// [`format`] of a time, or `absent` (for a line of text: `-`, `never`).
    pub fn format_or(t: Option<DateTime<Utc>>, absent: &str) -> String {
        t.as_ref().map_or_else(|| absent.to_owned(), format)
    }

    /// Any RFC 3339 time, in UTC; the error says what was given and what is wanted.
    pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                format!("bad time {text:?}: {e} (want RFC 3339, e.g. 2026-01-01T00:00:00.000Z)")
            })
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    /// The same for an `Option` (`null` is `None`).
    pub mod option {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<std::borrow::Cow<str>>::deserialize(d)?
                .map(|text| super::parse(&text).map_err(D::Error::custom))
                .transpose()
        }
    }

    /// The schema of a time: `{"type": "string", "format": "date-time"}`.
    pub struct Rfc3339;

    impl schemars::JsonSchema for Rfc3339 {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "Rfc3339".into()
        }
        fn inline_schema() -> bool {
            true
        }
        fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({ "type": "string", "format": "date-time" })
        }
    }
}

/// The JSON Schema (draft 2020-12) of the API, generated from the types of this
/// module: each request and answer under `$defs` by its name here. The Python
/// client's records are checked against it (tests/it/schema.rs).
pub fn schema() -> serde_json::Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    macro_rules! define {
        ($($t:ty),* $(,)?) => {
            $( generator.subschema_for::<$t>(); )*
        };
    }
    define!(
        CreateRun,
        RunStarted,
        RunsQuery,
        RunInfo,
        ExitReport,
        ExitAck,
        KillRequest,
        KillResult,
        MayKillQuery,
        MayKill,
        RenewLease,
        LeaseRenewed,
        AdoptRequest,
        Adopted,
        AuditQuery,
        AuditRecord,
        AuditVerify,
        BreakerInfo,
        Health,
        AgentStopping,
        ApiError,
    );
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "wfcg agent API",
        "$defs": generator.take_definitions(true),
    })
}

/// `GET /v1/runs` query: every run the agent knows (`all`, not only live
/// ones), and only the stuck ones (`stuck`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunsQuery {
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub stuck: bool,
}

/// The environment variable that marks every process of a run.
pub const RUN_ID_ENV: &str = "WFCG_RUN_ID";
/// The file in a run directory where the supervisor leaves its command's exit.
pub const EXIT_STATUS_FILE: &str = "exit-status";
/// The file in a run directory that says why the run is being stopped (JSON).
pub const STOP_REASON_FILE: &str = "stop-reason";
/// The longest kill reason accepted, in bytes.
pub const MAX_REASON: usize = 1024;
/// The shortest lease accepted ([`CreateRun::lease_ms`]), in milliseconds: 1 s.
pub const MIN_LEASE_MS: u64 = 1_000;
/// The longest lease accepted, in milliseconds: 30 days.
pub const MAX_LEASE_MS: u64 = 30 * 86_400_000;
/// The kill reason (and `end_reason`) of a run whose lease ran out.
pub const LEASE_EXPIRED: &str = "lease expired: its executor stopped renewing it";

/// What is wrong with a lease of `ms` milliseconds (outside
/// [`MIN_LEASE_MS`]..=[`MAX_LEASE_MS`]), naming the value and the bound.
pub fn lease_problem(ms: u64) -> Option<String> {
    if ms < MIN_LEASE_MS {
        Some(format!(
            "{ms} ms is shorter than the shortest lease accepted, {MIN_LEASE_MS} ms (1s)"
        ))
    } else if ms > MAX_LEASE_MS {
        Some(format!(
            "{ms} ms is longer than the longest lease accepted, {MAX_LEASE_MS} ms (30 days)"
        ))
    } else {
        None
    }
}

/// An optional lease in milliseconds, refused outside the bounds ([`lease_problem`]).
fn opt_lease_ms<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let v = Option::<u64>::deserialize(d)?;
    match v.and_then(lease_problem) {
        Some(problem) => Err(serde::de::Error::custom(problem)),
        None => Ok(v),
    }
}

/// Where a run is in its life. Stored as the lowercase name.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started, not yet READY=1 (when its template waits for READY).
    Initializing,
    /// Initialized (READY=1), or started when its template does not wait for READY.
    Running,
    /// Shutting down: it said STOPPING=1, or a kill sequence is under way.
    Stopping,
    /// The command ended by itself; `exit_code` / `exit_signal` say how.
    Exited,
    /// Ended by `wfcg kill`.
    Killed,
    /// Killed by the monitor: a deadline (initialization, total, heartbeat) passed.
    #[serde(rename = "timed_out")]
    TimedOut,
    /// Processes survived `cgroup.kill`; the cgroup is kept frozen.
    Unkillable,
    /// Ended by the kernel's OOM killer (over its `memory.max`; `oom_kill` in
    /// `memory.events`), the whole run at once (`memory.oom.group`).
    #[serde(rename = "oom_killed")]
    OomKilled,
    /// Ended while nobody watched (no exit was reported).
    Lost,
    /// Found in the cgroup tree with no record (adopted after a restart); the
    /// default of a record that says nothing else.
    #[default]
    Unknown,
}

impl RunStatus {
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Initializing,
        RunStatus::Running,
        RunStatus::Stopping,
        RunStatus::Exited,
        RunStatus::Killed,
        RunStatus::TimedOut,
        RunStatus::Unkillable,
        RunStatus::OomKilled,
        RunStatus::Lost,
        RunStatus::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Initializing => "initializing",
            RunStatus::Running => "running",
            RunStatus::Stopping => "stopping",
            RunStatus::Exited => "exited",
            RunStatus::Killed => "killed",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Unkillable => "unkillable",
            RunStatus::OomKilled => "oom_killed",
            RunStatus::Lost => "lost",
            RunStatus::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// The live statuses, for store queries.
    pub fn live() -> Vec<RunStatus> {
        RunStatus::ALL.into_iter().filter(|s| s.is_live()).collect()
    }

    /// Whether the run may still have processes.
    pub fn is_live(self) -> bool {
        matches!(
            self,
            RunStatus::Initializing
                | RunStatus::Running
                | RunStatus::Stopping
                | RunStatus::Unkillable
                | RunStatus::Unknown
        )
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `POST /v1/runs`: start a run. The caller (found by its socket credentials) is moved into it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct CreateRun {
    /// Wanted run id; the agent makes one (`run_` + 12 hex digits) when absent.
    pub run_id: Option<String>,
    pub workflow: Option<String>,
    pub workspace: Option<String>,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Ask for a log file for a detached run's output.
    #[serde(default)]
    pub detach: bool,
    /// Remove the workspace when the run ends (it is kept by default).
    #[serde(default)]
    pub cleanup_workspace: bool,
    /// The team the run belongs to (the caller must be in it); by default all
    /// the caller's teams.
    pub team: Option<String>,
    /// A template by name (`/etc/wfcg/templates/NAME.toml` or a shipped one); by
    /// default the one named like the workflow, else `default`.
    pub template: Option<String>,
    /// A template's text (`wfcg run --template FILE`, read by the client).
    pub template_text: Option<String>,
    /// Overrides of the template's timeouts, in milliseconds (0 = none).
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub init_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub watchdog_ms: Option<u64>,
    /// No-progress and first-output timeouts, in milliseconds (0 = none).
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub stall_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub output_timeout_ms: Option<u64>,
    /// Readiness conditions (`notify`, `start`, `output`, `log:REGEX`, `file:PATH`,
    /// `port:N`) in place of the template's `[run] ready`.
    #[serde(default)]
    pub ready_when: Option<Vec<String>>,
    /// The caller will start its command straight into the run's payload
    /// (`clone3(CLONE_INTO_CGROUP)`): place it in the supervisor leaf at once.
    /// Honoured for a root caller in the agent's cgroup and mount namespaces
    /// only (the kernel checks the caller's own write access to the payload's
    /// and the run's `cgroup.procs`); anyone else is placed in the payload, as
    /// without it. See [`RunStarted::spawn_into`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spawn_into_payload: bool,
    /// With `spawn_into_payload`: the caller stays in its own cgroup and
    /// starts, besides its command in the payload, a keeper in the supervisor
    /// leaf (both with `clone3(CLONE_INTO_CGROUP)`), so that no process is moved
    /// between cgroups at all. Honoured where `spawn_into_payload` is (an
    /// agent that does not know it places the caller in the supervisor leaf,
    /// and answers without [`RunStarted::keeper_into`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stay_outside: bool,
    /// `workflow` must name a template (in the agent's templates directory or
    /// shipped): `wfcg run --workflow NAME` without `--template`, where a typo
    /// would otherwise run under `default`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub workflow_needs_template: bool,
    /// A lease, in milliseconds (at least 1 s, at most 30 days): the run is
    /// killed (reason [`LEASE_EXPIRED`]) when nobody renews it
    /// (`POST /v1/runs/{id}/lease`) for this long. Absent: no lease.
    #[serde(
        default,
        deserialize_with = "opt_lease_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_ms: Option<u64>,
}

/// `POST /v1/runs/{id}/lease`: renew the run's lease for its full duration. The
/// body is `{}` (or empty); the run's owner or a caller with `kill_any` may.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewLease {}

/// The answer to [`RenewLease`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LeaseRenewed {
    pub run_id: String,
    /// The lease's duration.
    pub lease_ms: u64,
    /// When it was renewed, and when it now runs out unless renewed again (RFC 3339).
    #[serde(with = "time")]
    #[schemars(with = "time::Rfc3339")]
    pub renewed_at: DateTime<Utc>,
    #[serde(with = "time")]
    #[schemars(with = "time::Rfc3339")]
    pub expires_at: DateTime<Utc>,
}

/// [`Health::kill_course`], in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KillCourseMs {
    pub max_wait_ms: u64,
    pub term_grace_ms: u64,
    pub freeze_timeout_ms: u64,
    pub kill_deadline_ms: u64,
}

/// The waits of a kill where its request leaves them to a template: a run's
/// template's (the agent's own limit on a kill under way), or the longest of
/// the agent's templates (what it states at `/v1/health?kill_course=true` for
/// its clients' deadlines). [`KillCourse::longest`] is the one place that
/// says how long a kill's course is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KillCourse {
    pub max_wait: Duration,
    pub term_grace: Duration,
    pub freeze_timeout: Duration,
    pub kill_deadline: Duration,
}

impl KillCourse {
    /// The shipped default template's course, for a client whose agent does not
    /// state its own (a test keeps it equal to `cgroup-templates/default.toml`).
    pub const FALLBACK: KillCourse = KillCourse {
        max_wait: Duration::from_secs(60),
        term_grace: Duration::from_secs(5),
        freeze_timeout: Duration::from_secs(2),
        kill_deadline: Duration::from_secs(10),
    };

    /// As the agent states it.
    pub fn from_ms(c: &KillCourseMs) -> KillCourse {
        let ms = Duration::from_millis;
        KillCourse {
            max_wait: ms(c.max_wait_ms),
            term_grace: ms(c.term_grace_ms),
            freeze_timeout: ms(c.freeze_timeout_ms),
            kill_deadline: ms(c.kill_deadline_ms),
        }
    }

    /// As the agent states it, in milliseconds.
    pub fn to_ms(&self) -> KillCourseMs {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        KillCourseMs {
            max_wait_ms: ms(self.max_wait),
            term_grace_ms: ms(self.term_grace),
            freeze_timeout_ms: ms(self.freeze_timeout),
            kill_deadline_ms: ms(self.kill_deadline),
        }
    }

    /// Each wait the longer of the two.
    pub fn wider(self, other: KillCourse) -> KillCourse {
        KillCourse {
            max_wait: self.max_wait.max(other.max_wait),
            term_grace: self.term_grace.max(other.term_grace),
            freeze_timeout: self.freeze_timeout.max(other.freeze_timeout),
            kill_deadline: self.kill_deadline.max(other.kill_deadline),
        }
    }

    /// The hard kill: two freezes and the wait for `populated 0`.
    pub fn hard(&self) -> Duration {
        self.freeze_timeout
            .saturating_mul(2)
            .saturating_add(self.kill_deadline)
    }

    /// The longest a kill with these settings takes: the wait for critical
    /// sections (its `max_wait`), SIGTERM's grace (each as asked, else this
    /// course's) and the hard kill.
    pub fn longest(&self, asked: &KillSettings) -> Duration {
        let or = |ms: Option<u64>, default: Duration| ms.map_or(default, Duration::from_millis);
        or(asked.max_wait_ms, self.max_wait)
            .saturating_add(or(asked.grace_ms, self.term_grace))
            .saturating_add(self.hard())
    }
}

/// What the supervisor watches in its command's output and workspace, and tells
/// the agent about through the notify socket (see [`OUTPUT_NOTIFY`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Watch {
    /// Report output (first byte, then at most once a second) to the agent.
    #[serde(default)]
    pub output: bool,
    /// Send READY=1 at the first byte of output.
    #[serde(default)]
    pub ready_on_output: bool,
    /// Send READY=1 when a line of output matches this regular expression.
    #[serde(default)]
    pub ready_on_log: Option<String>,
    /// Send READY=1 when this file (relative to the workspace) exists.
    #[serde(default)]
    pub ready_on_file: Option<String>,
}

impl Watch {
    /// Whether the command's output must pass through the supervisor.
    pub fn needs_output(&self) -> bool {
        self.output || self.ready_on_output || self.ready_on_log.is_some()
    }
}

/// The notify line a run's supervisor sends when its command wrote output.
pub const OUTPUT_NOTIFY: &str = "X_WFCG_OUTPUT=1";
/// The notify line a run's supervisor sends when its command wrote a line
/// unlike its recent ones (progress; see `novelty.rs`).
pub const NEW_LINE_NOTIFY: &str = "X_WFCG_NEW_LINE=1";
/// The notify key a run's supervisor sends when the newest line repeats an
/// earlier one with only numbers changed: `X_WFCG_REPEAT=COUNT SECS LINE`, the
/// times it was seen, the seconds since the first, and the line (cut to
/// [`REPEAT_LINE_MAX`] characters).
pub const REPEAT_NOTIFY: &str = "X_WFCG_REPEAT";
/// The longest repeated line sent to the agent, in characters.
pub const REPEAT_LINE_MAX: usize = 160;

/// [`RunInfo::ready_on`] of a run whose ready condition the first bytes of its
/// output (the first read from its pipes) already met: readiness then says
/// little (a banner, a warning, an init event would have made it ready too).
pub const READY_ON_FIRST_OUTPUT: &str = "first output";

/// What a run's supervisor sends when its ready condition was met by the first
/// read of its command's output (see [`READY_ON_FIRST_OUTPUT`]).
pub const READY_ON_FIRST_OUTPUT_NOTIFY: &str = "READY=1\nX_WFCG_READY_ON_FIRST_OUTPUT=1";

/// The answer to [`CreateRun`]: the caller is now inside the run's cgroup (its
/// payload, or its supervisor leaf: see [`RunStarted::spawn_into`]), or stays
/// where it was and starts its processes into it ([`RunStarted::keeper_into`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunStarted {
    pub run_id: String,
    /// `WFCG_RUN_DIR`: a directory the agent made for this run, owned by the caller.
    pub run_dir: String,
    /// `TMPDIR` for the run, removed when the run ends.
    pub tmpdir: String,
    pub cgroup: String,
    /// Where a detached run's stdout and stderr go.
    pub log_path: Option<String>,
    /// `NOTIFY_SOCKET` for the run (sd_notify).
    pub notify_socket: Option<String>,
    /// The template the run got.
    pub template: String,
    /// Things that did not apply, one line each (e.g. limits skipped on this host).
    pub warnings: Vec<String>,
    /// What the supervisor watches for the agent.
    #[serde(default)]
    pub watch: Watch,
    /// Set when the caller was placed in the run's supervisor leaf (it asked
    /// with [`CreateRun::spawn_into_payload`] and may): the payload cgroup its
    /// command must be started in with `clone3(CLONE_INTO_CGROUP)`. Absent, the
    /// caller is in the payload: it forks its command there, then moves itself
    /// to the supervisor leaf (`POST /v1/runs/{id}/supervisor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spawn_into: Option<String>,
    /// Set when the caller was left where it is (it asked with
    /// [`CreateRun::stay_outside`] and may): the supervisor leaf, where it must
    /// start its keeper, a process that lives as long as the caller and keeps
    /// the run's cgroup populated until the caller has reported the exit and
    /// exited (as the caller itself does when it lives in the leaf).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keeper_into: Option<String>,
}

/// What `GET /v1/health` answers (to anyone): the agent is up, and how it runs.
/// Fields other than `ok`, `pid` and `version` are absent from older agents.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    pub ok: bool,
    pub pid: u32,
    pub version: String,
    /// When the agent started (RFC 3339), and how long ago.
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub uptime_secs: Option<f64>,
    #[serde(default)]
    pub socket: Option<String>,
    #[serde(default)]
    pub state_dir: Option<String>,
    /// Where the agent logs: a file's path, `journal` (the service's stderr goes
    /// to the journal), or what its stderr is (a terminal, a pipe).
    #[serde(default)]
    pub log: Option<String>,
    /// Runs whose cgroups the agent watches now.
    #[serde(default)]
    pub live_runs: Option<u64>,
    /// The systemd unit the agent runs as (`wfcg.service`), when it is one.
    #[serde(default)]
    pub service: Option<String>,
    /// The directory it reads operator templates from (`--templates-dir`).
    #[serde(default)]
    pub templates_dir: Option<String>,
    /// The longest a kill may take where the request leaves a value to the
    /// run's template: each the longest of the agent's templates (only when
    /// asked: `?kill_course=true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_course: Option<KillCourseMs>,
    /// How the agent knows who created a git lock: `fanotify`, or why it cannot.
    #[serde(default)]
    pub git_lock_creators: Option<String>,
}

/// The answer to `POST /v1/agent/stop`: the agent stops once it has answered.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AgentStopping {
    pub pid: u32,
    /// Runs that go on without an agent (the next one takes them over).
    pub live_runs: u64,
}

/// A workflow's circuit breaker (`GET /v1/breakers`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BreakerInfo {
    pub workflow: String,
    /// Whose runs it counts: a run owner's uid, or none for a host-wide breaker
    /// (an operator template's `[breaker] scope = "host"`).
    #[serde(default)]
    pub owner_uid: Option<u32>,
    /// The owner's user name, when it has one.
    #[serde(default)]
    pub owner: Option<String>,
    /// Runs in a row that ended stuck (init, first-output or stall timeout).
    pub failures: u32,
    /// Whether new runs of the workflow are refused now.
    pub open: bool,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub opened_at: Option<DateTime<Utc>>,
    /// When the cooldown ends (the next run is let through).
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub open_until: Option<DateTime<Utc>>,
    pub last_run_id: Option<String>,
    pub last_reason: Option<String>,
}

/// `POST /v1/runs/{id}/exit`: the supervisor's report of how the command ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExitReport {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

/// The answer to [`ExitReport`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct ExitAck {
    /// Processes the command left behind in the run, killed by the agent.
    pub leftovers_killed: u32,
    /// What became of a workspace the run was to remove (`removed PATH`,
    /// `kept: WHY`, `removal failed: WHY`); absent when none was to be removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// The run was stopped by wfcg, and how it ends: `killed` (an operator's
    /// kill) or `timed_out` (a deadline); absent when its command ended by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<RunStatus>,
}

/// How a kill proceeds: the one type for what the wire (and the audit trail)
/// says as `graceful`, `force` or `emergency`.
///
/// Ordered by strength: a request that names more than one (the `mode` field
/// beside the older `force`/`emergency` flags) gets the strongest.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum KillMode {
    /// Freeze, wait for critical sections, SIGTERM and its grace, then `cgroup.kill`.
    #[default]
    Graceful,
    /// Skip SIGTERM and its grace: freeze and `cgroup.kill` at once.
    Force,
    /// A force kill that rests on `emergency_kill` rather than the right to the
    /// run; the supervisor is not waited for either.
    Emergency,
}

impl KillMode {
    pub const ALL: [KillMode; 3] = [KillMode::Graceful, KillMode::Force, KillMode::Emergency];

    pub fn as_str(self) -> &'static str {
        match self {
            KillMode::Graceful => "graceful",
            KillMode::Force => "force",
            KillMode::Emergency => "emergency",
        }
    }

    pub fn parse(s: &str) -> Option<KillMode> {
        KillMode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// The mode the older request flags (`force`, `emergency`) ask for.
    pub fn from_flags(force: bool, emergency: bool) -> KillMode {
        if emergency {
            KillMode::Emergency
        } else if force {
            KillMode::Force
        } else {
            KillMode::Graceful
        }
    }

    /// Whether the kill goes straight to the hard kill (force or emergency).
    pub fn is_forced(self) -> bool {
        self != KillMode::Graceful
    }

    pub fn is_emergency(self) -> bool {
        self == KillMode::Emergency
    }

    /// A kill result's mode as the wire says it: `none` for a kill that did
    /// not run.
    pub fn or_none(mode: Option<KillMode>) -> &'static str {
        mode.map_or(mode_or_none::NONE, KillMode::as_str)
    }
}

impl std::fmt::Display for KillMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KillMode {
    type Err = String;

    fn from_str(s: &str) -> Result<KillMode, String> {
        KillMode::parse(s)
            .ok_or_else(|| format!("{s:?} is not a kill mode (graceful, force, emergency)"))
    }
}

/// [`KillResult::mode`] on the wire: the mode, or `none` for a kill that did
/// not run (the run had ended); an empty string (older answers) reads as none.
mod mode_or_none {
    use super::KillMode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) const NONE: &str = "none";

    pub fn serialize<S: Serializer>(m: &Option<KillMode>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(KillMode::or_none(*m))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KillMode>, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "" | NONE => Ok(None),
            other => other.parse().map(Some).map_err(D::Error::custom),
        }
    }
}

/// The settings of a kill, shared (flattened, the same fields at the top of
/// the body) by [`KillRequest`] and [`AdoptRequest`]: its mode and the graces
/// that override the run's template. Each grace is in milliseconds, at most 10
/// years, the template's when absent.
///
/// On the wire the mode is `mode` (`graceful`, `force`, `emergency`) or the
/// older flags `force` and `emergency` (what clients send, so that an older
/// agent understands them); given both, the strongest wins. It is written as
/// the flags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "KillSettingsWire", into = "KillSettingsWire")]
pub struct KillSettings {
    pub mode: KillMode,
    /// How long processes get after SIGTERM.
    pub grace_ms: Option<u64>,
    /// How long to wait for open critical sections of each kind, and in all.
    pub grace_git_ms: Option<u64>,
    pub grace_db_ms: Option<u64>,
    pub grace_files_ms: Option<u64>,
    pub max_wait_ms: Option<u64>,
}

impl KillSettings {
    /// Settings of `mode` with the template's graces.
    pub fn of_mode(mode: KillMode) -> KillSettings {
        KillSettings {
            mode,
            ..Default::default()
        }
    }
}

/// [`KillSettings`] as they are written and read. The bounds are checked after
/// the fields are read (a flattened struct's errors carry no field path): the
/// error names the field itself. A parameter struct that cannot flatten the
/// settings (MCP's, which refuse unknown fields) holds these same fields and
/// converts through this (`KillSettings::try_from`); a test in `mcp.rs` keeps
/// its fields and these in step.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct KillSettingsWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<KillMode>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub emergency: bool,
    #[serde(default)]
    pub grace_ms: Option<u64>,
    #[serde(default)]
    pub grace_git_ms: Option<u64>,
    #[serde(default)]
    pub grace_db_ms: Option<u64>,
    #[serde(default)]
    pub grace_files_ms: Option<u64>,
    #[serde(default)]
    pub max_wait_ms: Option<u64>,
}

impl TryFrom<KillSettingsWire> for KillSettings {
    type Error = String;

    fn try_from(w: KillSettingsWire) -> Result<KillSettings, String> {
        let bounded = |name: &str, v: Option<u64>| match v {
            Some(ms) if ms > crate::bounds::MAX_MS => Err(format!(
                "{name}: {ms} ms is more than the most accepted, {} ms (10 years)",
                crate::bounds::MAX_MS
            )),
            v => Ok(v),
        };
        Ok(KillSettings {
            mode: w
                .mode
                .unwrap_or_default()
                .max(KillMode::from_flags(w.force, w.emergency)),
            grace_ms: bounded("grace_ms", w.grace_ms)?,
            grace_git_ms: bounded("grace_git_ms", w.grace_git_ms)?,
            grace_db_ms: bounded("grace_db_ms", w.grace_db_ms)?,
            grace_files_ms: bounded("grace_files_ms", w.grace_files_ms)?,
            max_wait_ms: bounded("max_wait_ms", w.max_wait_ms)?,
        })
    }
}

impl From<KillSettings> for KillSettingsWire {
    fn from(s: KillSettings) -> KillSettingsWire {
        KillSettingsWire {
            mode: None,
            force: s.mode == KillMode::Force,
            emergency: s.mode == KillMode::Emergency,
            grace_ms: s.grace_ms,
            grace_git_ms: s.grace_git_ms,
            grace_db_ms: s.grace_db_ms,
            grace_files_ms: s.grace_files_ms,
            max_wait_ms: s.max_wait_ms,
        }
    }
}

/// `POST /v1/runs/{id}/kill`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KillRequest {
    /// Its mode and graces ([`KillSettings`]).
    #[serde(flatten)]
    pub settings: KillSettings,
    pub reason: Option<String>,
}

impl KillRequest {
    /// A kill of `mode` with the template's graces, for `reason`.
    pub fn new(mode: KillMode, reason: Option<String>) -> KillRequest {
        KillRequest {
            settings: KillSettings::of_mode(mode),
            reason,
        }
    }

    pub fn mode(&self) -> KillMode {
        self.settings.mode
    }
}

/// `GET /v1/runs/{id}/may-kill?uid=U&force=B&emergency=B`: would a kill by
/// `uid` (the caller when absent) be allowed? Asking about another user needs
/// view_all. Nothing is done to the run; the question is audited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(from = "MayKillQueryWire", into = "MayKillQueryWire")]
pub struct MayKillQuery {
    pub uid: Option<u32>,
    /// The kill asked about: `mode=M`, or the older `force=B&emergency=B`.
    pub mode: KillMode,
}

/// [`MayKillQuery`] as a query string holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
struct MayKillQueryWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<KillMode>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    emergency: bool,
}

impl From<MayKillQueryWire> for MayKillQuery {
    fn from(w: MayKillQueryWire) -> MayKillQuery {
        MayKillQuery {
            uid: w.uid,
            mode: w
                .mode
                .unwrap_or_default()
                .max(KillMode::from_flags(w.force, w.emergency)),
        }
    }
}

impl From<MayKillQuery> for MayKillQueryWire {
    fn from(q: MayKillQuery) -> MayKillQueryWire {
        MayKillQueryWire {
            uid: q.uid,
            mode: None,
            force: q.mode == KillMode::Force,
            emergency: q.mode == KillMode::Emergency,
        }
    }
}

/// The answer to [`MayKillQuery`]: what the policy says, as a kill would be decided.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct MayKill {
    pub allowed: bool,
    /// The permission the answer rests on (or the one missing).
    pub permission: Option<String>,
    pub message: String,
    pub run_id: String,
    pub uid: u32,
    pub user: Option<String>,
    pub mode: KillMode,
}

/// `POST /v1/runs/adopt`: take a process tree (or a whole cgroup) started
/// outside wfcg into a new run; with `kill`, kill it at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct AdoptRequest {
    /// The root of the tree. Either this or `cgroup`.
    pub pid: Option<i32>,
    /// The run's id, e.g. the executor's own; the agent makes one when absent.
    pub run_id: Option<String>,
    pub workflow: Option<String>,
    /// Why; recorded in the audit trail (and with the kill).
    pub reason: Option<String>,
    /// `VAR=VALUE` entries that mark the tree's escapees, on top of the markers
    /// executors set (`WFCG_RUN_ID`, `RUNNER_TRACKING_ID`, `GITHUB_RUN_ID`,
    /// `CI_JOB_ID`, with the root's values).
    #[serde(default)]
    pub markers: Vec<String>,
    /// List what would be taken and why; change nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Kill the run right after adopting it, before it is thawed.
    #[serde(default)]
    pub kill: bool,
    /// Take this existing cgroup in place (a path under the cgroup2 mount, or
    /// relative to it) instead of a tree. Either this or `pid`.
    pub cgroup: Option<String>,
    /// Deadlines, in milliseconds, counted from the root's real start.
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub init_timeout_ms: Option<u64>,
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_ms")]
    pub timeout_ms: Option<u64>,
    /// The kill's settings, as in [`KillRequest`] (with `kill`).
    #[serde(flatten)]
    pub settings: KillSettings,
}

impl AdoptRequest {
    /// What is wrong with the request's run id or markers, if anything.
    pub fn problem(&self) -> Option<String> {
        self.run_id
            .as_deref()
            .and_then(run_id_problem)
            .or_else(|| self.markers.iter().find_map(|m| marker_problem(m)))
    }

    /// The kill this request asks for (with `kill`).
    pub fn kill_request(&self) -> KillRequest {
        KillRequest {
            settings: self.settings.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A process of an adopted tree, and why it was taken.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct AdoptMember {
    pub pid: i32,
    /// `root`, `child of N`, `escapee: same session S`, `escapee: same process
    /// group G`, `escapee: marker VAR=VALUE`, `in cgroup PATH`.
    pub reason: String,
    pub command: String,
}

/// The answer to [`AdoptRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Adopted {
    pub run_id: String,
    pub dry_run: bool,
    /// The run's cgroup.
    pub cgroup: String,
    /// The root process's real start (RFC 3339).
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub started_at: Option<DateTime<Utc>>,
    /// What was taken (or, in a dry run, would be).
    pub members: Vec<AdoptMember>,
    pub message: String,
    /// The kill's result, with `kill`.
    pub kill: Option<KillResult>,
    /// Processes of the tree left alone (PID 1, the agent, the caller, another
    /// user's process, a process of another run), each with why.
    #[serde(default)]
    pub skipped: Vec<AdoptMember>,
    /// The tree held still: a last pass found nothing new. When false the tree
    /// kept growing; what was moved is left frozen.
    #[serde(default)]
    pub complete: bool,
    /// The root was adopted already (by an earlier or concurrent request): this
    /// is that run.
    #[serde(default)]
    pub already_adopted: bool,
    /// The names of the markers inferred from the root's environment (a
    /// `VAR=VALUE` of the root's that no process outside the tree has); the
    /// processes each pulled in say `escapee: inferred marker VAR`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inferred_markers: Vec<String>,
}

/// One step of a kill sequence and how long it took.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Phase {
    pub name: String,
    pub duration_ms: f64,
    pub detail: String,
}

/// What was cleaned up after a run ended.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct CleanupStatus {
    /// Processes of the run still alive anywhere on the host (by cgroup and by marker).
    pub processes_remaining: u32,
    pub cgroup_removed: bool,
    pub tmpdir_removed: bool,
    pub run_dir_removed: bool,
    /// Git lock files the dead tree left behind, removed.
    pub stale_locks_removed: Vec<String>,
    /// Processes of an adopted tree that its adoption left alone (the caller's
    /// own shell, another user's process, …) and that are alive after the
    /// kill, each described: counted in `processes_remaining`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_alone: Vec<String>,
    /// Processes that carried the run's marker outside its cgroup (a root
    /// workflow can move itself out), killed through a pidfd.
    #[serde(default)]
    pub escapees_killed: Vec<i32>,
    /// Those still alive, each described (`pid N (CMD) state S wchan W …`).
    #[serde(default)]
    pub survivors: Vec<String>,
    /// Processes of the run's owner, started after it, whose environment the
    /// search for escapees did not read (its budget was spent, or they were in
    /// uninterruptible sleep) or read only in part (larger than its limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub escapees_unread: u32,
    /// `none` (the run had no explicit workspace), `kept` (nobody asked for
    /// its removal), `removed PATH`, `kept: WHY` (it held what the run did not
    /// make, or a git repository with changes), or `removal failed: WHY`.
    pub workspace: String,
    /// What of the run's trees (TMPDIR, run directory, workspace) was left, and
    /// why (over the walk's budget, a mount point, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_removed: Vec<String>,
}

impl CleanupStatus {
    /// In words, for the `cleanup` phase of a kill: what is left running, what
    /// was removed or kept, which stale locks and escapees were dealt with.
    pub fn summary(&self) -> String {
        let mut parts = vec![match self.processes_remaining {
            0 => "nothing left running".to_string(),
            1 => "1 process still alive".to_string(),
            n => format!("{n} processes still alive"),
        }];
        let items = [
            ("cgroup", self.cgroup_removed),
            ("TMPDIR", self.tmpdir_removed),
            ("run directory", self.run_dir_removed),
        ];
        for (word, removed) in [("removed", true), ("kept", false)] {
            let named: Vec<&str> = items
                .iter()
                .filter(|(_, r)| *r == removed)
                .map(|(name, _)| *name)
                .collect();
            if !named.is_empty() {
                parts.push(format!("{word}: {}", named.join(", ")));
            }
        }
        if !self.stale_locks_removed.is_empty() {
            parts.push(format!(
                "stale git locks removed: {}",
                self.stale_locks_removed.join(", ")
            ));
        }
        if !self.escapees_killed.is_empty() {
            let pids: Vec<String> = self.escapees_killed.iter().map(i32::to_string).collect();
            parts.push(format!(
                "escapees outside the cgroup killed: pid {}",
                pids.join(", ")
            ));
        }
        if self.escapees_unread > 0 {
            parts.push(format!(
                "the search for escapees left {} process(es) of the owner unread or read in \
                 part (its budget)",
                self.escapees_unread
            ));
        }
        if self.workspace != "none" && !self.workspace.is_empty() {
            parts.push(format!("workspace {}", self.workspace));
        }
        if !self.not_removed.is_empty() {
            parts.push(format!("left: {}", self.not_removed.join("; ")));
        }
        parts.join("; ")
    }
}

/// For `skip_serializing_if` of counts that are usually 0.
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The result of a kill: the contract `{success, run_id, killed_at, cleanup_status, message}`
/// plus how it went.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct KillResult {
    pub success: bool,
    pub run_id: String,
    /// RFC 3339 time the run was found dead.
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub killed_at: Option<DateTime<Utc>>,
    pub cleanup_status: CleanupStatus,
    pub message: String,
    /// The run had ended before this request; `ended_as` says how.
    #[serde(default)]
    pub already_ended: bool,
    pub ended_as: Option<String>,
    /// How the kill ran; `none` (absent) when it did not (the run had ended).
    #[serde(with = "mode_or_none")]
    #[schemars(with = "String")]
    pub mode: Option<KillMode>,
    pub reason: Option<String>,
    /// Processes that were in the run when the kill began.
    pub processes_killed: u32,
    pub phases: Vec<Phase>,
    pub duration_ms: f64,
    /// Critical sections seen open during the kill.
    pub sections: Vec<Section>,
    /// How long the kill waited for critical sections to close.
    pub waited_ms: f64,
    /// Kinds of section whose grace ran out while still open.
    pub graces_expired: Vec<SectionKind>,
    /// The overall limit on waiting ran out.
    pub max_wait_expired: bool,
    /// `written` once the attempt is in the audit trail; `pending` while the
    /// agent still retries writing it.
    pub audit: Option<String>,
    /// The runs started from inside this one (and theirs), killed with it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<KillResult>,
}

/// A run as `ps` and `status` show it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RunInfo {
    pub run_id: String,
    pub workflow: Option<String>,
    pub owner_uid: u32,
    pub owner: Option<String>,
    pub status: RunStatus,
    /// The supervisor's pid (`wfcg run`, the parent of the command).
    pub pid: Option<i32>,
    /// Processes of its payload now: the command and all it started (not its
    /// supervisor, `wfcg run`).
    pub processes: u32,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub ended_at: Option<DateTime<Utc>>,
    pub age_secs: f64,
    /// CPU time of the cgroup, from `cpu.stat`.
    pub cpu_usec: Option<u64>,
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub workspace: Option<String>,
    pub cgroup: String,
    pub log_path: Option<String>,
    pub kill_result: Option<KillResult>,
    /// Critical sections open right now (live runs only).
    pub sections: Vec<Section>,
    pub template: Option<String>,
    /// When it sent READY=1.
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub ready_at: Option<DateTime<Utc>>,
    /// `first output` when the first bytes of its output already met its ready
    /// condition: readiness then says little (a banner, a warning, an init event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_on: Option<String>,
    /// Its last STATUS= message.
    pub status_text: Option<String>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Deadlines in force (RFC 3339).
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub init_deadline: Option<DateTime<Utc>>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub total_deadline: Option<DateTime<Utc>>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub watchdog_deadline: Option<DateTime<Utc>>,
    /// Why it counts as stuck: past or near a deadline, or a heartbeat overdue.
    pub stuck: Option<String>,
    /// The same command started again and again while initializing.
    pub loop_suspected: Option<String>,
    /// Started outside wfcg and adopted: `pid` (its tree moved in) or `cgroup`
    /// (its cgroup taken in place). Such a run has no supervisor; `pid` is its root.
    #[serde(default)]
    pub adopted: Option<String>,
    /// While it initializes: what it waits for to be ready, and the flags
    /// that change it (e.g. `READY=1 or its first output (…)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// What became of a workspace it was to remove (see
    /// [`CleanupStatus::workspace`]), once that is done; `wfcg status` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_cleanup: Option<String>,
    /// The run this one was started from inside of (its caller was in that
    /// run's cgroup): it is killed with that run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    /// A live run's readiness condition in words (`READY=1 or …`, `its start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_when: Option<String>,
    /// When a live run with a stall timeout is killed unless it makes progress.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::option"
    )]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub stall_deadline: Option<DateTime<Utc>>,
    /// A watched live run's last progress (RFC 3339) and of what kind: `output`
    /// (a new line), `process` (a new command), `io`, `cpu`, or `start` (none
    /// yet: when the watch began).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::option"
    )]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub last_progress: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_kind: Option<String>,
    /// `retrying: LINE, N times in M`: its newest line of output repeats an
    /// earlier one with only numbers changed, and nothing else new happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retrying: Option<String>,
    /// How an ended run ended, in words: the kill's reason, or its exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Its lease (`wfcg run --lease`): the duration, its last renewal (none
    /// yet: null) and when it runs out (RFC 3339); all null without a lease.
    #[serde(default)]
    pub lease_ms: Option<u64>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub lease_renewed_at: Option<DateTime<Utc>>,
    #[serde(default, with = "time::option")]
    #[schemars(with = "Option<time::Rfc3339>")]
    pub lease_expires_at: Option<DateTime<Utc>>,
}

impl RunInfo {
    /// Seconds from `now` to a time (negative when past).
    fn secs_until(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<f64> {
        Some((t? - now).num_milliseconds() as f64 / 1e3)
    }

    /// A live run's deadlines in force, (`init`, `stall`, `total`, `beat`,
    /// `lease`) each with the seconds left (negative when past).
    pub fn deadlines(&self, now: DateTime<Utc>) -> Vec<(&'static str, f64)> {
        if !self.status.is_live() {
            return Vec::new();
        }
        [
            ("init", &self.init_deadline),
            ("stall", &self.stall_deadline),
            ("total", &self.total_deadline),
            ("beat", &self.watchdog_deadline),
            ("lease", &self.lease_expires_at),
        ]
        .into_iter()
        .filter_map(|(name, t)| Some((name, Self::secs_until(*t, now)?)))
        .collect()
    }

    /// A live run's nearest deadline and the seconds left.
    pub fn next_deadline(&self, now: DateTime<Utc>) -> Option<(&'static str, f64)> {
        self.deadlines(now)
            .into_iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
    }

    /// A watched run's last progress: its kind and how many seconds ago.
    pub fn progress_ago(&self, now: DateTime<Utc>) -> Option<(&str, f64)> {
        let ago = -Self::secs_until(self.last_progress, now)?;
        Some((self.last_progress_kind.as_deref().unwrap_or("?"), ago))
    }

    /// The owner's name, or the uid when it has none.
    pub fn owner_display(&self) -> String {
        self.owner
            .clone()
            .unwrap_or_else(|| self.owner_uid.to_string())
    }
}

/// The kinds of critical section a kill waits for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    /// A git lock file is open (`.git/index.lock`, …).
    Git,
    /// A SQLite database is in a write transaction.
    Database,
    /// A file in the workspace is open for writing.
    Files,
}

impl SectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SectionKind::Git => "git",
            SectionKind::Database => "database",
            SectionKind::Files => "files",
        }
    }
}

/// An open critical section of a run, as seen in procfs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Section {
    pub kind: SectionKind,
    pub path: String,
    pub pid: i32,
    pub command: String,
    /// RFC 3339 time it was first seen open.
    #[serde(with = "time")]
    #[schemars(with = "time::Rfc3339")]
    pub since: DateTime<Utc>,
    /// How long it has been seen open, in seconds.
    pub open_secs: f64,
}

/// `GET /v1/audit` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct AuditQuery {
    pub run: Option<String>,
    pub actor: Option<String>,
    /// Only records of the last N seconds.
    #[serde(default, deserialize_with = "crate::bounds::wire::opt_secs")]
    pub since_secs: Option<u64>,
    pub limit: Option<u32>,
}

/// Defines a name-valued audit field: its known names as variants, and
/// `Other` for a name this build does not know (written by another version of
/// wfcg, or by hand), read and written back as it was so the chain's hashes
/// hold. Stored and sent as its name.
macro_rules! audit_names {
    ($(#[$doc:meta])* $name:ident, default $default:ident, { $($(#[$vdoc:meta])* $var:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $var,)+
            /// A name this build does not know, kept as it was.
            Other(String),
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string" })
            }
        }

        impl $name {
            /// The known ones.
            pub const KNOWN: &[$name] = &[$($name::$var,)+];

            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$var => $text,)+
                    $name::Other(s) => s,
                }
            }

            /// A name as stored: a known one, else [`Self::Other`]; never fails.
            pub fn parse(s: &str) -> $name {
                match s {
                    $($text => $name::$var,)+
                    other => $name::Other(other.to_owned()),
                }
            }
        }

        impl Default for $name {
            fn default() -> $name {
                $name::$default
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name::parse(s)
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                $name::parse(&s)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                String::deserialize(d).map($name::from)
            }
        }
    };
}

audit_names!(
    /// What an audit record is about: its `action`.
    AuditAction, default Unnamed, {
        /// A kill request (`POST /v1/runs/{id}/kill`) or a child run killed with its parent.
        Kill = "kill",
        /// The monitor's kill of a run past a deadline.
        AutoKill = "auto_kill",
        /// Written before a kill acts; its outcome is a `KillStarted`.
        KillStart = "kill_start",
        /// A kill the previous agent did not finish, found at start.
        KillInterrupted = "kill_interrupted",
        /// That kill, carried on by the new agent.
        KillResumed = "kill_resumed",
        /// `GET /v1/runs/{id}/may-kill`.
        PermissionQuery = "permission_query",
        RunStart = "run_start",
        RunEnd = "run_end",
        /// `POST /v1/agent/stop`.
        AgentStop = "agent_stop",
        Adopt = "adopt",
        AdoptDryRun = "adopt_dry_run",
        /// What became of a workspace the run was to remove.
        Workspace = "workspace",
        BreakerOpen = "breaker_open",
        BreakerReset = "breaker_reset",
        LeaseRenew = "lease_renew",
        PolicyLoad = "policy_load",
        /// The agent found the chain not ending where it last wrote it.
        ChainBreak = "chain_break",
        /// The summary of a user's repeated refused requests.
        DenialsCoalesced = "denials_coalesced",
        /// A supervisor's exit report (audited when refused).
        ExitReport = "exit_report",
        /// A supervisor's move to its leaf (audited when refused).
        EnterSupervisor = "enter_supervisor",
        /// No action named (the default of an entry being built).
        Unnamed = "",
    }
);

audit_names!(
    /// An audit record's `decision`: what the policy said, or `-` where no
    /// decision was needed.
    Decision, default NotNeeded, {
        Allowed = "allowed",
        Denied = "denied",
        NotNeeded = "-",
    }
);

impl Decision {
    /// `allowed` or `denied`.
    pub fn of(allowed: bool) -> Decision {
        if allowed {
            Decision::Allowed
        } else {
            Decision::Denied
        }
    }
}

/// One event for the audit trail, before it is chained (the store chains it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditEntry {
    pub time: String,
    pub actor_uid: Option<u32>,
    pub actor_name: String,
    pub caller_pid: Option<i32>,
    pub action: AuditAction,
    pub run_id: Option<String>,
    pub reason: Option<String>,
    /// `graceful`, `force` or `emergency`.
    pub mode: Option<String>,
    /// `allowed`, `denied`, or `-` where no decision was needed.
    pub decision: Decision,
    /// The permission the decision rested on (or the one missing).
    pub permission: Option<String>,
    pub outcome: String,
    /// Critical sections waited on, as JSON.
    pub sections: Option<String>,
    pub duration_ms: Option<f64>,
}

/// A chained audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AuditRecord {
    pub seq: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// `GET /v1/audit/verify`: the result of recomputing the hash chain.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AuditVerify {
    pub records: u64,
    pub intact: bool,
    /// The first record that does not match.
    pub first_bad_seq: Option<i64>,
    pub message: String,
}

/// What went wrong, as a category the CLI maps to its exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed (bad run id, bad duration, …). HTTP 400.
    BadInput,
    /// No such run. HTTP 404.
    NotFound,
    /// The caller may not do this. HTTP 403.
    Forbidden,
    /// The request conflicts with the state (a run id already in use). HTTP 409.
    Conflict,
    /// The agent failed. HTTP 500.
    Internal,
    /// The workflow's circuit breaker is open: new runs are refused. HTTP 503.
    BreakerOpen,
    /// The agent's state filesystem is full, or below the reserve kept for root.
    /// HTTP 507.
    NoSpace,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub error: String,
}

/// The rule for run ids given with `--run-id`: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`
/// and no `..`. Returns what is wrong, or `None` for a good id.
pub fn run_id_problem(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("run id is empty".into());
    }
    if id.len() > 64 {
        return Some(format!(
            "run id is {} characters long, at most 64 are allowed",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Some(format!(
            "run id {:?} contains {:?}; only letters, digits, '_', '.' and '-' are allowed",
            id, c
        ));
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Some(format!("run id {id:?} must start with a letter or digit"));
    }
    if id.contains("..") {
        return Some(format!("run id {id:?} must not contain '..'"));
    }
    None
}

/// Checks a `--marker` argument: `VAR=VALUE` with a non-empty name of letters,
/// digits and `_`, and a non-empty value.
pub fn marker_problem(m: &str) -> Option<String> {
    let Some((var, value)) = m.split_once('=') else {
        return Some(format!("marker {m:?} is not VAR=VALUE"));
    };
    if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Some(format!(
            "marker {m:?}: the variable name must be letters, digits and '_'"
        ));
    }
    if value.is_empty() {
        return Some(format!(
            "marker {m:?}: the value must not be empty (it would match too much)"
        ));
    }
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_cleanup_summary_is_words() {
        let clean = CleanupStatus {
            cgroup_removed: true,
            tmpdir_removed: true,
            run_dir_removed: true,
            workspace: "kept".into(),
            ..Default::default()
        };
        assert_eq!(
            clean.summary(),
            "nothing left running; removed: cgroup, TMPDIR, run directory; workspace kept"
        );
        let messy = CleanupStatus {
            processes_remaining: 2,
            tmpdir_removed: true,
            stale_locks_removed: vec!["/w/.git/index.lock".into()],
            escapees_killed: vec![41, 42],
            workspace: "none".into(),
            ..Default::default()
        };
        assert_eq!(
            messy.summary(),
            "2 processes still alive; removed: TMPDIR; kept: cgroup, run directory; \
             stale git locks removed: /w/.git/index.lock; \
             escapees outside the cgroup killed: pid 41, 42"
        );
    }

    use super::*;

    #[test]
    fn run_id_rule() {
        assert_eq!(run_id_problem("run_5fbae44ab6f0"), None);
        assert_eq!(run_id_problem("a"), None);
        assert_eq!(run_id_problem(&"a".repeat(64)), None);
        for bad in [
            "", "../x", "a/b", "a\0b", ".hidden", "-x", "a..b", "sp ace", "é",
        ] {
            assert!(run_id_problem(bad).is_some(), "{bad:?} accepted");
        }
        assert!(run_id_problem(&"a".repeat(65)).unwrap().contains("65"));
    }

    #[test]
    fn a_lease_is_bounded_when_read_naming_the_value() {
        let read = |body: &str| serde_json::from_str::<CreateRun>(body).map(|r| r.lease_ms);
        assert_eq!(read(r#"{"command":["x"]}"#).unwrap(), None);
        assert_eq!(read(r#"{"command":["x"],"lease_ms":null}"#).unwrap(), None);
        assert_eq!(
            read(r#"{"command":["x"],"lease_ms":1000}"#).unwrap(),
            Some(1000)
        );
        let most = format!(r#"{{"command":["x"],"lease_ms":{MAX_LEASE_MS}}}"#);
        assert_eq!(read(&most).unwrap(), Some(MAX_LEASE_MS));
        for (bad, says) in [
            ("0", "0 ms is shorter"),
            ("500", "500 ms is shorter"),
            ("2678400000", "2678400000 ms is longer"),
            ("-1", "invalid value"),
            ("1.5", "invalid type"),
            (r#""10s""#, "invalid type"),
            ("18446744073709551616", "expected u64"),
        ] {
            let e = read(&format!(r#"{{"command":["x"],"lease_ms":{bad}}}"#)).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn marker_rule() {
        assert_eq!(marker_problem("RUNNER_TRACKING_ID=github_5fbae44a"), None);
        for bad in ["", "X", "=v", "X=", "A B=c", "É=1"] {
            assert!(marker_problem(bad).is_some(), "{bad:?} accepted");
        }
    }

    #[test]
    fn kill_modes_round_trip_by_name() {
        for m in KillMode::ALL {
            assert_eq!(KillMode::parse(m.as_str()), Some(m));
            assert_eq!(m.to_string().parse::<KillMode>(), Ok(m));
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert!("hard".parse::<KillMode>().unwrap_err().contains("hard"));
        assert!(KillMode::Graceful < KillMode::Force && KillMode::Force < KillMode::Emergency);
        assert!(!KillMode::Graceful.is_forced() && KillMode::Emergency.is_forced());
    }

    #[test]
    fn a_kill_request_reads_the_old_flags_and_the_mode_the_strongest_winning() {
        let mode =
            |body: serde_json::Value| serde_json::from_value::<KillRequest>(body).map(|r| r.mode());
        use serde_json::json;
        assert_eq!(mode(json!({})).unwrap(), KillMode::Graceful);
        assert_eq!(mode(json!({"force": true})).unwrap(), KillMode::Force);
        assert_eq!(
            mode(json!({"emergency": true})).unwrap(),
            KillMode::Emergency
        );
        assert_eq!(
            mode(json!({"force": true, "emergency": true})).unwrap(),
            KillMode::Emergency
        );
        assert_eq!(mode(json!({"mode": "force"})).unwrap(), KillMode::Force);
        assert_eq!(
            mode(json!({"mode": "emergency", "force": true})).unwrap(),
            KillMode::Emergency
        );
        assert_eq!(
            mode(json!({"mode": "graceful", "force": true})).unwrap(),
            KillMode::Force
        );
        assert!(mode(json!({"mode": "hard"})).is_err());
        // The adoption's kill reads the same fields.
        let adopt: AdoptRequest =
            serde_json::from_value(json!({"pid": 7, "kill": true, "emergency": true,
                                          "grace_ms": 500, "reason": "r"}))
            .unwrap();
        let kill = adopt.kill_request();
        assert_eq!(kill.mode(), KillMode::Emergency);
        assert_eq!(kill.settings.grace_ms, Some(500));
        assert_eq!(kill.reason.as_deref(), Some("r"));
    }

    #[test]
    fn a_kill_request_is_written_with_the_old_flags_and_reads_back() {
        let req = KillRequest {
            settings: KillSettings {
                mode: KillMode::Emergency,
                grace_ms: Some(1500),
                max_wait_ms: Some(0),
                ..Default::default()
            },
            reason: Some("stuck".into()),
        };
        let json = serde_json::to_value(&req).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"force": false, "emergency": true, "grace_ms": 1500,
                               "grace_git_ms": null, "grace_db_ms": null,
                               "grace_files_ms": null, "max_wait_ms": 0, "reason": "stuck"})
        );
        assert_eq!(serde_json::from_value::<KillRequest>(json).unwrap(), req);
        for m in KillMode::ALL {
            let req = KillRequest::new(m, None);
            let back: KillRequest =
                serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
            assert_eq!(back, req);
        }
    }

    #[test]
    fn a_grace_out_of_bounds_is_refused_naming_the_field() {
        for field in [
            "grace_ms",
            "grace_git_ms",
            "grace_db_ms",
            "grace_files_ms",
            "max_wait_ms",
        ] {
            let body = format!(r#"{{"{field}": 18446744073709551615}}"#);
            let e = serde_json::from_str::<KillRequest>(&body)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("10 years"), "{e}");
            let body = format!(r#"{{"pid": 1, "{field}": 18446744073709551615}}"#);
            let e = serde_json::from_str::<AdoptRequest>(&body)
                .unwrap_err()
                .to_string();
            assert!(e.contains(field) && e.contains("10 years"), "{e}");
        }
        let most = format!(r#"{{"grace_ms": {}}}"#, crate::bounds::MAX_MS);
        let req: KillRequest = serde_json::from_str(&most).unwrap();
        assert_eq!(req.settings.grace_ms, Some(crate::bounds::MAX_MS));
    }

    #[test]
    fn a_kill_results_mode_is_none_when_no_kill_ran() {
        let r = KillResult::default();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mode"], "none");
        for (text, mode) in [
            ("none", None),
            ("", None),
            ("force", Some(KillMode::Force)),
            ("graceful", Some(KillMode::Graceful)),
        ] {
            let mut v = json.clone();
            v["mode"] = text.into();
            let back: KillResult = serde_json::from_value(v).unwrap();
            assert_eq!(back.mode, mode, "{text}");
        }
        let mut v = json.clone();
        v["mode"] = "hard".into();
        assert!(serde_json::from_value::<KillResult>(v).is_err());
    }

    #[test]
    fn a_may_kill_query_reads_the_flags_or_the_mode() {
        let q = |s: &str| serde_json::from_str::<MayKillQuery>(s).unwrap();
        assert_eq!(q(r#"{"uid": 5}"#).mode, KillMode::Graceful);
        assert_eq!(q(r#"{"uid": 5}"#).uid, Some(5));
        assert_eq!(q(r#"{"force": true}"#).mode, KillMode::Force);
        assert_eq!(q(r#"{"emergency": true}"#).mode, KillMode::Emergency);
        assert_eq!(q(r#"{"mode": "emergency"}"#).mode, KillMode::Emergency);
    }

    #[test]
    fn audit_actions_and_decisions_keep_their_text_known_or_not() {
        for a in AuditAction::KNOWN {
            assert_eq!(AuditAction::parse(a.as_str()), *a);
            let json = serde_json::to_string(a).unwrap();
            assert_eq!(json, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<AuditAction>(&json).unwrap(), *a);
        }
        for d in Decision::KNOWN {
            assert_eq!(Decision::parse(d.as_str()), *d);
        }
        assert_eq!(AuditAction::parse("kill_start"), AuditAction::KillStart);
        assert_eq!(Decision::parse("-"), Decision::NotNeeded);
        assert_eq!(Decision::of(true), Decision::Allowed);
        assert_eq!(Decision::of(false), Decision::Denied);
        // A name unknown here is kept, to be written back as it was.
        let odd = AuditAction::parse("reboot_host");
        assert_eq!(odd, AuditAction::Other("reboot_host".into()));
        assert_eq!(serde_json::to_string(&odd).unwrap(), "\"reboot_host\"");
        assert_eq!(Decision::parse("maybe").as_str(), "maybe");
        // An entry being built says no decision, and names no action.
        let e = AuditEntry::default();
        assert_eq!((e.action.as_str(), e.decision.as_str()), ("", "-"));
        let names: std::collections::HashSet<&str> =
            AuditAction::KNOWN.iter().map(AuditAction::as_str).collect();
        assert_eq!(names.len(), AuditAction::KNOWN.len(), "a name twice");
    }

    #[test]
    fn status_names_round_trip() {
        for st in RunStatus::ALL {
            assert_eq!(RunStatus::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
    }

    /// Every route is spelt here only: a `"/v1/…"` or `"/metrics"` string
    /// anywhere else in `src/` (its tests too) is named with its file and line.
    #[test]
    fn no_route_is_spelt_outside_the_api_module() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = crate::layers::rs_files(&root.join("src"));
        files.sort();
        assert!(files.len() > 20, "src/ has {} files", files.len());
        let mut spelt = Vec::new();
        for file in files.iter().filter(|f| !f.ends_with("src/api.rs")) {
            let text = std::fs::read_to_string(file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.contains("\"/v1/") || line.contains("\"/metrics\"") {
                    let shown = file.strip_prefix(root).unwrap_or(file).display();
                    spelt.push(format!("{shown}:{}: {}", n + 1, line.trim()));
                }
            }
        }
        assert!(
            spelt.is_empty(),
            "routes spelt outside src/api.rs (use api::route):\n{}",
            spelt.join("\n")
        );
        for r in route::ALL {
            assert!(r.starts_with("/v1/") || r == route::METRICS, "{r}");
        }
    }
}
#[cfg(test)]
mod time_tests {
    use super::time::{self, Rfc3339};
    use super::*;

    /// What the agent writes, read and written back: the same bytes.
    #[test]
    fn a_time_round_trips_byte_for_byte() {
        let wire = r#"{"run_id":"r","lease_ms":1000,"renewed_at":"2026-01-01T00:00:00.250Z","expires_at":"2026-12-31T23:59:59.999Z"}"#;
        let l: LeaseRenewed = serde_json::from_str(wire).unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), wire);
        let b: BreakerInfo = serde_json::from_str(
            r#"{"workflow":"w","failures":3,"open":true,"opened_at":"2026-01-01T00:00:00.000Z","open_until":null}"#,
        )
        .unwrap();
        let back = serde_json::to_value(&b).unwrap();
        assert_eq!(back["opened_at"], "2026-01-01T00:00:00.000Z");
        assert_eq!(back["open_until"], serde_json::Value::Null);
        assert_eq!(
            time::format(&time::parse("2026-01-01T00:00:00.000Z").unwrap()),
            "2026-01-01T00:00:00.000Z"
        );
    }

    /// Any RFC 3339 time reads (another offset, no or more fraction digits,
    /// lower-case separators), and is written in UTC with milliseconds; an
    /// absent or null optional time is `None`.
    #[test]
    fn older_forms_of_a_time_are_accepted() {
        for (given, written) in [
            ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00.000Z"),
            ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00.000Z"),
            ("2026-01-01T00:00:00.123456789Z", "2026-01-01T00:00:00.123Z"),
            ("2026-01-01t00:00:00.5z", "2026-01-01T00:00:00.500Z"),
            ("2025-12-31T19:00:00.250-05:00", "2026-01-01T00:00:00.250Z"),
        ] {
            let t = time::parse(given).unwrap_or_else(|e| panic!("{given}: {e}"));
            assert_eq!(time::format(&t), written, "{given}");
        }
        let h: Health = serde_json::from_str(r#"{"ok":true,"pid":1,"version":"0"}"#).unwrap();
        assert_eq!(h.started_at, None);
        let h: Health =
            serde_json::from_str(r#"{"ok":true,"pid":1,"version":"0","started_at":null}"#).unwrap();
        assert_eq!(h.started_at, None);
        assert_eq!(time::format_or(None, "-"), "-");
    }

    /// A text that is not a time is an error that says what it got, and the
    /// path of the field where the reader tracks it (the agent's and the
    /// client's readers do).
    #[test]
    fn a_bad_time_is_an_error_naming_the_field() {
        let wire = r#"{"run_id":"r","lease_ms":1,"renewed_at":"yesterday","expires_at":"2026-01-01T00:00:00Z"}"#;
        let plain = serde_json::from_str::<LeaseRenewed>(wire)
            .unwrap_err()
            .to_string();
        assert!(plain.starts_with(r#"bad time "yesterday": "#), "{plain}");
        assert!(plain.contains("want RFC 3339"), "{plain}");
        let mut de = serde_json::Deserializer::from_str(wire);
        let e = serde_path_to_error::deserialize::<_, LeaseRenewed>(&mut de).unwrap_err();
        assert_eq!(e.path().to_string(), "renewed_at");
        assert!(
            e.to_string()
                .starts_with(r#"renewed_at: bad time "yesterday""#),
            "{e}"
        );
        let wire = r#"[{"kind":"git","path":"p","pid":1,"command":"c","since":"2026-13-01T00:00:00Z","open_secs":0}]"#;
        let mut de = serde_json::Deserializer::from_str(wire);
        let e = serde_path_to_error::deserialize::<_, Vec<Section>>(&mut de).unwrap_err();
        assert_eq!(e.path().to_string(), "[0].since");
        let e =
            serde_json::from_str::<Health>(r#"{"ok":true,"pid":1,"version":"0","started_at":5}"#)
                .unwrap_err();
        assert!(e.to_string().contains("invalid type"), "{e}");
    }

    /// The schema says what a time is: a string, format `date-time`.
    #[test]
    fn a_time_is_a_date_time_string_in_the_schema() {
        let schema = schema();
        let run_info = &schema["$defs"]["RunInfo"]["properties"];
        for field in [
            "started_at",
            "last_heartbeat",
            "stall_deadline",
            "lease_expires_at",
        ] {
            let types = &run_info[field]["type"];
            assert_eq!(types, &serde_json::json!(["string", "null"]), "{field}");
            assert_eq!(run_info[field]["format"], "date-time", "{field}");
        }
        let lease = &schema["$defs"]["LeaseRenewed"]["properties"]["renewed_at"];
        assert_eq!(
            (&lease["type"], &lease["format"]),
            (&"string".into(), &"date-time".into())
        );
        assert_eq!(<Rfc3339 as JsonSchema>::schema_name(), "Rfc3339");
    }
}
