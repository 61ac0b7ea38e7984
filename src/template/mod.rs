//! Run templates (`cgroup-templates/*.toml`): the timeouts, graces, cleanup,
//! alert channels and cgroup limits a run gets.
//!
//! The shipped templates (`default`, `builder`, `lina`, `guardian`, and the agent
//! CLI profiles `codex`, `claude` and `gemini`) are built into
//! the binary; a file `/etc/wfcg/templates/NAME.toml` takes the place of the
//! shipped one of that name, or adds a new one. Every template may be partial:
//! its TOML table is deep-merged over the built-in `default.toml`, then read with
//! unknown keys refused. Errors are `NAME:LINE: message`, the line being in the
//! template's own text.
//!
//! Templates serialize (serde) with durations as strings like `"5m"`, so the
//! agent stores a run's resolved template as JSON and reads it back.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::alerts::Alerts;

/// The shipped `default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../cgroup-templates/default.toml");

/// The shipped templates, by name, in the order `wfcg templates` lists them.
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", DEFAULT_TOML),
    (
        "builder",
        include_str!("../../cgroup-templates/builder.toml"),
    ),
    ("lina", include_str!("../../cgroup-templates/lina.toml")),
    (
        "guardian",
        include_str!("../../cgroup-templates/guardian.toml"),
    ),
    ("codex", include_str!("../../cgroup-templates/codex.toml")),
    ("claude", include_str!("../../cgroup-templates/claude.toml")),
    ("gemini", include_str!("../../cgroup-templates/gemini.toml")),
];

/// Where operators put their own templates.
pub const SYSTEM_DIR: &str = "/etc/wfcg/templates";

/// Where `wfcg templates` says a shipped template comes from.
pub const BUILTIN_SOURCE: &str = "built-in";

/// How many problems `check` reports at most.
const MAX_PROBLEMS: usize = 50;

/// Reads a duration: a string (`"30s"`, `"5m"`, `"1h30m"`, `"0"`) or a number of seconds.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration like \"30s\", \"5m\", \"1h30m\", or seconds")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            crate::duration::parse(v).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            crate::duration::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            crate::duration::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            crate::duration::parse(&v.to_string()).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// Writes a duration the way [`duration`] reads it back exactly: `"5m"`, `"2.5s"`,
/// `"1234ms"`.
fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration_text(*d))
}

/// A duration as text that parses back to the same value (to the nanosecond
/// where it has sub-millisecond parts).
pub fn duration_text(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let pretty = crate::duration::format(d);
    if crate::duration::parse(&pretty) == Ok(d) {
        pretty
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
}

/// Reads the limits table: values are strings, or integers (`"pids.max" = 4096`).
fn limit_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Text {
        S(String),
        I(i64),
    }
    let map = BTreeMap::<String, Text>::deserialize(d)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Text::S(s) => s,
                Text::I(i) => i.to_string(),
            };
            (k, v)
        })
        .collect())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Template {
    #[serde(default)]
    pub run: RunSettings,
    pub kill: KillSettings,
    pub timeouts: Timeouts,
    pub critical_sections: CriticalSections,
    #[serde(default)]
    pub cleanup: Cleanup,
    #[serde(default)]
    pub alerts: Alerts,
    #[serde(default)]
    pub tmpdir: TmpdirSettings,
    pub breaker: Breaker,
    /// cgroup limits by file name (`memory.max`, `pids.max`, `cpu.max`), written
    /// where the controller is enabled.
    #[serde(default, deserialize_with = "limit_map")]
    pub limits: std::collections::BTreeMap<String, String>,
}

/// One way a run shows it is initialized (`[run] ready`, `wfcg run --ready-when`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Ready {
    /// It sends READY=1 (sd_notify); until then it is `initializing`.
    Notify,
    /// As soon as its command starts.
    Start,
    /// Its first byte on stdout or stderr.
    Output,
    /// A line of its output matches this regular expression.
    Log(String),
    /// This file exists (relative to the workspace), as the run's owner sees it.
    File(String),
    /// A process of the run listens on this TCP port.
    Port(u16),
}

/// The forms `Ready` takes, for error messages.
pub const READY_FORMS: &str = "notify, start, output, log:REGEX, file:PATH or port:N";

impl Ready {
    pub fn parse(text: &str) -> Result<Ready, String> {
        let bad = |why: String| Err(format!("ready {text:?}: {why} (one of {READY_FORMS})"));
        match text {
            "notify" => return Ok(Ready::Notify),
            "start" => return Ok(Ready::Start),
            "output" => return Ok(Ready::Output),
            _ => {}
        }
        let Some((kind, arg)) = text.split_once(':') else {
            return bad("unknown".into());
        };
        match kind {
            "log" if arg.len() > 1024 => bad("the pattern is longer than 1024 bytes".into()),
            "log" => match regex::Regex::new(arg) {
                Ok(_) => Ok(Ready::Log(arg.into())),
                Err(e) => bad(format!("bad regular expression: {e}")),
            },
            "file" if arg.is_empty() || arg.len() > 4096 || arg.contains('\0') => {
                bad("a path of 1 to 4096 bytes".into())
            }
            "file" => Ok(Ready::File(arg.into())),
            "port" => match arg.parse::<u16>() {
                Ok(n) if n > 0 => Ok(Ready::Port(n)),
                _ => bad("a TCP port from 1 to 65535".into()),
            },
            _ => bad("unknown".into()),
        }
    }
}

impl TryFrom<String> for Ready {
    type Error = String;
    fn try_from(s: String) -> Result<Ready, String> {
        Ready::parse(&s)
    }
}

impl From<Ready> for String {
    fn from(r: Ready) -> String {
        r.to_string()
    }
}

impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Ready::Notify => f.write_str("notify"),
            Ready::Start => f.write_str("start"),
            Ready::Output => f.write_str("output"),
            Ready::Log(re) => write!(f, "log:{re}"),
            Ready::File(p) => write!(f, "file:{p}"),
            Ready::Port(n) => write!(f, "port:{n}"),
        }
    }
}

/// Reads `ready`: one condition as a string, or a list of them (the first that
/// holds ends initialization).
fn ready_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ready>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<Ready>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "one of {READY_FORMS}, or a list of them")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Vec<Ready>, E> {
            Ready::parse(v).map(|r| vec![r]).map_err(E::custom)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<Ready>, A::Error> {
            let mut list = Vec::new();
            while let Some(text) = seq.next_element::<String>()? {
                list.push(Ready::parse(&text).map_err(serde::de::Error::custom)?);
            }
            if list.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "ready: give at least one of {READY_FORMS}"
                )));
            }
            Ok(list)
        }
    }
    d.deserialize_any(V)
}

fn ser_ready<S: Serializer>(list: &[Ready], s: S) -> Result<S::Ok, S::Error> {
    match list {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

/// The default readiness: READY=1 or the first output, whichever comes first,
/// so that a plain command that prints is never killed for not sending READY=1.
fn default_ready() -> Vec<Ready> {
    vec![Ready::Output]
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// When the run counts as initialized: the first of these that holds.
    /// READY=1 always counts too.
    #[serde(
        default = "default_ready",
        deserialize_with = "ready_list",
        serialize_with = "ser_ready"
    )]
    pub ready: Vec<Ready>,
}

impl Default for RunSettings {
    fn default() -> RunSettings {
        RunSettings {
            ready: default_ready(),
        }
    }
}

impl RunSettings {
    /// Whether the run starts `initializing` (it does unless `start` is among its conditions).
    pub fn waits(&self) -> bool {
        !self.ready.contains(&Ready::Start)
    }

    /// What a run waits for while it initializes, in words, with the flags
    /// that change it: for `wfcg status` and the init timeout's kill message.
    pub fn waiting_for(&self) -> String {
        format!(
            "{} (--ready-when COND changes the condition, --init-timeout DUR the time allowed)",
            self.ready_condition()
        )
    }

    /// The readiness condition in words (`READY=1 or its first output …`), or
    /// `its start` for a run that is running from its start.
    pub fn ready_condition(&self) -> String {
        if !self.waits() {
            return "its start".into();
        }
        let mut conds = vec!["READY=1".to_string()];
        for r in &self.ready {
            conds.push(match r {
                Ready::Notify | Ready::Start => continue,
                Ready::Output => "its first output on stdout or stderr".into(),
                Ready::Log(re) => format!("a line of output matching {re:?}"),
                Ready::File(p) => format!("the file {p:?} in its workspace"),
                Ready::Port(n) => format!("a listener on TCP port {n}"),
            });
        }
        conds.join(" or ")
    }

    /// The TCP port whose listener makes it ready, if any.
    pub fn port(&self) -> Option<u16> {
        self.ready.iter().find_map(|r| match r {
            Ready::Port(n) => Some(*n),
            _ => None,
        })
    }
}

/// The circuit breaker of a workflow: after `failures` runs in a row ended stuck
/// (an init, first-output or stall timeout), new runs are refused for `cooldown`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// 0 is off.
    #[serde(default)]
    pub failures: u32,
    #[serde(
        default = "default_cooldown",
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub cooldown: Duration,
    /// Whose failures count together: each run owner's apart (the default: one
    /// user's stuck runs never refuse another's), or the whole host's (`"host"`).
    #[serde(default)]
    pub scope: BreakerScope,
}

/// Whose stuck runs a breaker counts together.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BreakerScope {
    /// One breaker per workflow and run owner.
    #[default]
    Owner,
    /// One breaker per workflow for everybody (operator templates only).
    Host,
}

fn default_cooldown() -> Duration {
    Duration::from_secs(600)
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            failures: 0,
            cooldown: default_cooldown(),
            scope: BreakerScope::Owner,
        }
    }
}

/// The run's TMPDIR: a tmpfs of its own of this size.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TmpdirSettings {
    /// Bytes, with K, M, G or T (`mount -t tmpfs -o size=`).
    pub size: String,
}

impl Default for TmpdirSettings {
    fn default() -> Self {
        TmpdirSettings { size: "1G".into() }
    }
}

/// What happens to the workspace when a run ends.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkspacePolicy {
    #[default]
    Keep,
    Remove,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Cleanup {
    #[serde(default)]
    pub workspace: WorkspacePolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KillSettings {
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub term_grace: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub freeze_timeout: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub kill_deadline: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub init: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub total: Duration,
    /// Heartbeat interval (WATCHDOG=1); zero is off.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub watchdog: Duration,
    /// No progress (CPU time, processes started or ended, output) for this long
    /// kills the run as stalled; zero is off.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub stall: Duration,
    /// No first byte of output within this long kills the run; zero is off.
    #[serde(
        default,
        deserialize_with = "duration",
        serialize_with = "ser_duration"
    )]
    pub output: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CriticalSections {
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub git: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub database: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub files: Duration,
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub max_wait: Duration,
}

impl Template {
    /// The waits of a kill this template leaves to itself where a request
    /// does not ask ([`crate::api::KillCourse::longest`] says how long they take).
    pub fn kill_course(&self) -> crate::api::KillCourse {
        crate::api::KillCourse {
            max_wait: self.critical_sections.max_wait,
            term_grace: self.kill.term_grace,
            freeze_timeout: self.kill.freeze_timeout,
            kill_deadline: self.kill.kill_deadline,
        }
    }
}

mod check;
mod error;
mod lookup;
mod overrides;
#[cfg(test)]
mod tests;

pub use error::{Problem, TemplateError, TooLong};
pub use lookup::{builtin_text, check_name};
pub use overrides::{Authority, Key, Overrides};
