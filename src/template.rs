//! Run templates (`cgroup-templates/*.toml`): the timeouts, graces, cleanup,
//! alert channels and cgroup limits a run gets.
//!
//! The shipped templates (`default`, `builder`, `lina`, `guardian`) are built into
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
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// The shipped `default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../cgroup-templates/default.toml");

/// The shipped templates, by name, in the order `wfcg templates` lists them.
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", DEFAULT_TOML),
    ("builder", include_str!("../cgroup-templates/builder.toml")),
    ("lina", include_str!("../cgroup-templates/lina.toml")),
    (
        "guardian",
        include_str!("../cgroup-templates/guardian.toml"),
    ),
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

/// The 1-based line number of a byte offset in `text`, for error messages.
pub fn line_of(text: &str, offset: usize) -> usize {
    let before = &text[..offset.min(text.len())];
    before.lines().count().max(1) + usize::from(before.ends_with('\n'))
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

fn default_ready() -> Vec<Ready> {
    vec![Ready::Notify]
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
}

fn default_cooldown() -> Duration {
    Duration::from_secs(600)
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker {
            failures: 0,
            cooldown: default_cooldown(),
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

/// Where events about a run go. Each one set here replaces the agent-wide one
/// (`wfcg agent --on-event/--webhook`); an empty string turns it off for the run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// A command run with the event as JSON on stdin.
    pub on_event: Option<String>,
    /// An http:// URL the event is POSTed to as JSON.
    pub webhook: Option<String>,
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

/// A problem found in a template's text: where (a line, when known) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    fn at(text: &str, span: Option<Range<usize>>, message: impl Into<String>) -> Problem {
        Problem {
            line: span.map(|s| line_of(text, s.start)),
            message: message.into(),
        }
    }

    /// `file:line: message`, or `file: message` when no line is known.
    pub fn render(&self, file: &str) -> String {
        match self.line {
            Some(l) => format!("{file}:{l}: {}", self.message),
            None => format!("{file}: {}", self.message),
        }
    }
}

/// A value a user asked for that is longer than the operator's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{key} = {} is longer than the operator's {} (only root may lengthen or remove it)",
    show(*.value, *.zero_is_off),
    show(*.limit, *.zero_is_off)
)]
pub struct TooLong {
    pub key: String,
    pub value: Duration,
    pub limit: Duration,
    /// 0 means "off" (a timeout), the longest value there is.
    pub zero_is_off: bool,
}

fn show(d: Duration, zero_is_off: bool) -> String {
    if zero_is_off && d.is_zero() {
        "0 (off)".to_string()
    } else {
        duration_text(d)
    }
}

/// Why a template cannot be used; every variant names the file (or the name
/// looked up) and, for problems in the text, the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The text has problems: each is `file:line: message`; shown as the first,
    /// with a count of the others.
    #[error("{}", first_of(.file, .problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
    #[error("no template {name:?} (known: {}; add one as {})", .known.join(", "), .path.display())]
    NotFound {
        name: String,
        known: Vec<String>,
        path: PathBuf,
    },
    #[error("cannot read {}: {error}", .path.display())]
    Unreadable { path: PathBuf, error: String },
    #[error(
        "bad template name {0:?}: a plain name (letters, digits, '-', '_', '.'), not a path; \
         use --template FILE for a file"
    )]
    BadName(String),
    #[error(
        "{file}: [{section}] may be set only by the operator (a template in {SYSTEM_DIR}, or \
         the agent's flags), not by a run's template"
    )]
    OperatorOnly { file: String, section: &'static str },
    #[error("{file}: {too_long}")]
    Longer { file: String, too_long: TooLong },
    #[error("cannot write the base template: {0}")]
    Base(String),
}

impl TemplateError {
    /// Every problem, one line each (`wfcg template check` prints them all).
    pub fn lines(&self) -> Vec<String> {
        match self {
            TemplateError::Invalid { file, problems } => {
                problems.iter().map(|p| p.render(file)).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

fn first_of(file: &str, problems: &[Problem]) -> String {
    let mut first = problems
        .first()
        .map(|p| p.render(file))
        .unwrap_or_else(|| format!("{file}: invalid"));
    if problems.len() > 1 {
        first.push_str(&format!(
            " (and {} more problem{}: see `wfcg template check`)",
            problems.len() - 1,
            if problems.len() == 2 { "" } else { "s" }
        ));
    }
    first
}

impl Template {
    /// Parses a template, deep-merged over the built-in default; the error names
    /// the file, the line and what is wrong (the first problem, with a count of
    /// the others: [`Template::check`] lists them all).
    pub fn parse(text: &str, name: &str) -> Result<Template, TemplateError> {
        Template::check(text, name)
    }

    /// Parses a template like [`Template::parse`]; the error holds every
    /// problem: syntax errors, unknown keys, bad values, in line order
    /// ([`TemplateError::lines`]).
    pub fn check(text: &str, name: &str) -> Result<Template, TemplateError> {
        Template::check_over(text, name, DEFAULT_TOML)
    }

    /// [`Template::check`] with `base` (TOML) in place of the built-in default.
    fn check_over(text: &str, name: &str, base: &str) -> Result<Template, TemplateError> {
        let invalid = |mut problems: Vec<Problem>| {
            problems.sort_by_key(|p| p.line);
            problems.dedup();
            TemplateError::Invalid {
                file: name.to_string(),
                problems,
            }
        };
        let (user, syntax) = DeTable::parse_recoverable(text);
        if !syntax.is_empty() {
            let problems = syntax
                .iter()
                .map(|e| Problem::at(text, e.span(), e.message().trim()))
                .collect();
            return Err(invalid(problems));
        }
        let mut user = user.into_inner();
        let mut problems = Vec::new();
        check_limits(text, &mut user, &mut problems);
        let base = DeTable::parse(base)
            .map_err(|e| TemplateError::Base(e.message().to_string()))?
            .into_inner();
        loop {
            let mut merged = base.clone();
            merge(&mut merged, user.clone());
            let de = toml::de::Deserializer::from(Spanned::new(0..text.len(), merged));
            match Template::deserialize(de) {
                Ok(t) => {
                    check_values(text, &t, &user, &mut problems);
                    return if problems.is_empty() {
                        Ok(t)
                    } else {
                        Err(invalid(problems))
                    };
                }
                Err(e) => {
                    problems.push(Problem::at(text, e.span(), e.message().trim()));
                    // Take the offending entry out (the default fills in) and
                    // read again, to report the next problem too.
                    let removed = e.span().is_some_and(|s| remove_at(&mut user, &s));
                    if !removed || problems.len() >= MAX_PROBLEMS {
                        return Err(invalid(problems));
                    }
                }
            }
        }
    }

    /// A template sent by a client that is not root, read over `base` (the
    /// operator's template the run would get without it). Such a template is data,
    /// not authority: it may set `[run]`, and make timeouts, graces and kill
    /// deadlines shorter; it may not set `[alerts]` (commands and webhooks the
    /// root agent would run or call), `[cleanup]` or `[limits]`, nor lengthen or
    /// remove a timeout or grace. The error names the key and the operator's value.
    pub fn confine(text: &str, name: &str, base: &Template) -> Result<Template, TemplateError> {
        let base_text = toml::to_string(base).map_err(|e| TemplateError::Base(e.to_string()))?;
        let t = Template::check_over(text, name, &base_text).map_err(|e| match e {
            // Only the first problem: the rest may follow from it.
            TemplateError::Invalid { file, mut problems } => {
                problems.truncate(1);
                TemplateError::Invalid { file, problems }
            }
            other => other,
        })?;
        let operator_only = |section: &'static str, same: bool| {
            if same {
                Ok(())
            } else {
                Err(TemplateError::OperatorOnly {
                    file: name.to_string(),
                    section,
                })
            }
        };
        operator_only("alerts", t.alerts == base.alerts)?;
        operator_only("cleanup", t.cleanup == base.cleanup)?;
        operator_only("limits", t.limits == base.limits)?;
        operator_only("tmpdir", t.tmpdir == base.tmpdir)?;
        // A breaker is shared by everyone's runs of the workflow: a user's template
        // may not trip it sooner for others, nor turn it off.
        operator_only("breaker", t.breaker == base.breaker)?;
        let fields = [
            ("timeouts.init", t.timeouts.init, base.timeouts.init, true),
            (
                "timeouts.total",
                t.timeouts.total,
                base.timeouts.total,
                true,
            ),
            (
                "timeouts.watchdog",
                t.timeouts.watchdog,
                base.timeouts.watchdog,
                true,
            ),
            (
                "timeouts.stall",
                t.timeouts.stall,
                base.timeouts.stall,
                true,
            ),
            (
                "timeouts.output",
                t.timeouts.output,
                base.timeouts.output,
                true,
            ),
            (
                "kill.term_grace",
                t.kill.term_grace,
                base.kill.term_grace,
                false,
            ),
            (
                "kill.freeze_timeout",
                t.kill.freeze_timeout,
                base.kill.freeze_timeout,
                false,
            ),
            (
                "kill.kill_deadline",
                t.kill.kill_deadline,
                base.kill.kill_deadline,
                false,
            ),
            (
                "critical_sections.git",
                t.critical_sections.git,
                base.critical_sections.git,
                false,
            ),
            (
                "critical_sections.database",
                t.critical_sections.database,
                base.critical_sections.database,
                false,
            ),
            (
                "critical_sections.files",
                t.critical_sections.files,
                base.critical_sections.files,
                false,
            ),
            (
                "critical_sections.max_wait",
                t.critical_sections.max_wait,
                base.critical_sections.max_wait,
                false,
            ),
        ];
        for (key, value, limit, zero_is_off) in fields {
            no_longer(key, value, limit, zero_is_off).map_err(|too_long| {
                TemplateError::Longer {
                    file: name.to_string(),
                    too_long,
                }
            })?;
        }
        Ok(t)
    }

    /// The template `name`: `/etc/wfcg/templates/NAME.toml` if present, else the
    /// shipped one. An unknown name is an error listing the known ones.
    pub fn lookup(name: &str) -> Result<Template, TemplateError> {
        Template::lookup_in(Path::new(SYSTEM_DIR), name)
    }

    /// [`Template::lookup`] with another directory in place of `/etc/wfcg/templates`.
    pub fn lookup_in(dir: &Path, name: &str) -> Result<Template, TemplateError> {
        check_name(name)?;
        let path = dir.join(format!("{name}.toml"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Template::parse(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match builtin_text(name) {
                Some(text) => Template::parse(text, &builtin_file(name)),
                None => Err(TemplateError::NotFound {
                    name: name.to_string(),
                    known: Template::list_in(dir).into_iter().map(|(n, _)| n).collect(),
                    path,
                }),
            },
            Err(e) => Err(TemplateError::Unreadable {
                path,
                error: e.to_string(),
            }),
        }
    }

    /// The template `name` if there is one: `Ok(None)` when no file and no
    /// shipped template has that name (or it is no plain name, e.g. a workflow
    /// label with a '/'), an error when it exists but is broken or unreadable.
    /// For `--workflow NAME`, whose template is optional.
    pub fn find(name: &str) -> Result<Option<Template>, TemplateError> {
        Template::find_in(Path::new(SYSTEM_DIR), name)
    }

    /// [`Template::find`] with another directory in place of `/etc/wfcg/templates`.
    pub fn find_in(dir: &Path, name: &str) -> Result<Option<Template>, TemplateError> {
        if check_name(name).is_err()
            || (builtin_text(name).is_none() && !dir.join(format!("{name}.toml")).exists())
        {
            return Ok(None);
        }
        Template::lookup_in(dir, name).map(Some)
    }

    /// The templates there are, as (name, where from): the shipped ones first
    /// (`built-in`, or the file in `/etc/wfcg/templates` that replaces one), then
    /// the other files of `/etc/wfcg/templates`, by name.
    pub fn list() -> Vec<(String, String)> {
        Template::list_in(Path::new(SYSTEM_DIR))
    }

    /// [`Template::list`] with another directory in place of `/etc/wfcg/templates`.
    pub fn list_in(dir: &Path) -> Vec<(String, String)> {
        let file = |name: &str| dir.join(format!("{name}.toml"));
        let mut out: Vec<(String, String)> = BUILTIN
            .iter()
            .map(|(name, _)| {
                let source = if file(name).exists() {
                    file(name).display().to_string()
                } else {
                    BUILTIN_SOURCE.to_string()
                };
                (name.to_string(), source)
            })
            .collect();
        let mut extra: Vec<(String, String)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let path: PathBuf = entry.path();
                let stem = path.file_name()?.to_str()?.strip_suffix(".toml")?;
                (check_name(stem).is_ok() && builtin_text(stem).is_none())
                    .then(|| (stem.to_string(), path.display().to_string()))
            })
            .collect();
        extra.sort();
        out.extend(extra);
        out
    }

    /// The default template: `/etc/wfcg/templates/default.toml` if present, else the built-in one.
    pub fn default_for_host() -> Result<Template, TemplateError> {
        Template::lookup("default")
    }

    /// The shipped `default.toml`.
    pub fn builtin() -> Result<Template, TemplateError> {
        Template::parse(DEFAULT_TOML, &builtin_file("default"))
    }
}

/// Checks that `value` for `key` is no longer than the operator's `limit`: what a
/// user may ask for themselves. With `zero_is_off` (timeouts), 0 means no limit at
/// all, so it is the longest value there is.
pub fn no_longer(
    key: &str,
    value: Duration,
    limit: Duration,
    zero_is_off: bool,
) -> Result<(), TooLong> {
    let off = |d: Duration| zero_is_off && d.is_zero();
    if off(limit) || (!off(value) && value <= limit) {
        return Ok(());
    }
    Err(TooLong {
        key: key.to_string(),
        value,
        limit,
        zero_is_off,
    })
}

/// The text of a shipped template.
pub fn builtin_text(name: &str) -> Option<&'static str> {
    BUILTIN.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// How errors name a shipped template.
fn builtin_file(name: &str) -> String {
    format!("cgroup-templates/{name}.toml")
}

/// A template name must be a plain file stem: no path, no `..`.
pub fn check_name(name: &str) -> Result<(), TemplateError> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !name.contains("..");
    if plain {
        Ok(())
    } else {
        Err(TemplateError::BadName(name.to_string()))
    }
}

/// Deep merge: `over`'s entries replace `base`'s, tables merging key by key.
/// Replaced entries take `over`'s key too, so errors point into `over`'s text.
fn merge<'i>(base: &mut DeTable<'i>, over: DeTable<'i>) {
    for (key, value) in over {
        let existing = base.remove(key.get_ref().as_ref());
        let value = match (existing.map(Spanned::into_inner), value) {
            (Some(DeValue::Table(mut b)), v) if matches!(v.get_ref(), DeValue::Table(_)) => {
                let span = v.span();
                let DeValue::Table(o) = v.into_inner() else {
                    unreachable!("matched a table")
                };
                merge(&mut b, o);
                Spanned::new(span, DeValue::Table(b))
            }
            (_, v) => v,
        };
        base.insert(key, value);
    }
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Removes the innermost entry of `table` whose key or value spans `span`
/// (a table's own span may cover only its header, so every table is searched).
fn remove_at(table: &mut DeTable<'_>, span: &Range<usize>) -> bool {
    let mut hit: Option<String> = None;
    for (key, value) in table.iter_mut() {
        if let DeValue::Table(inner) = value.get_mut()
            && remove_at(inner, span)
        {
            return true;
        }
        if hit.is_none() && (contains(&key.span(), span) || contains(&value.span(), span)) {
            hit = Some(key.get_ref().to_string());
        }
    }
    match hit {
        Some(key) => table.remove(key.as_str()).is_some(),
        None => false,
    }
}

/// The entry at `path` in the template's own text, if it sets it.
fn entry_at<'a, 'i>(table: &'a DeTable<'i>, path: &[&str]) -> Option<&'a Spanned<DeValue<'i>>> {
    let (first, rest) = path.split_first()?;
    let value = table.get(*first)?;
    if rest.is_empty() {
        return Some(value);
    }
    match value.get_ref() {
        DeValue::Table(inner) => entry_at(inner, rest),
        _ => None,
    }
}

/// Checks the `[limits]` the template's text sets, before they are read: each
/// must be a limit wfcg writes, with a value the kernel takes. Bad entries are
/// reported and taken out.
fn check_limits(text: &str, user: &mut DeTable<'_>, problems: &mut Vec<Problem>) {
    let Some(DeValue::Table(limits)) = user.get_mut("limits").map(Spanned::get_mut) else {
        return;
    };
    let mut bad = Vec::new();
    for (key, value) in limits.iter() {
        let name = key.get_ref().as_ref();
        let problem = match value.get_ref() {
            DeValue::Table(inner) => {
                let file = match inner.iter().next() {
                    Some((k, _)) => format!("{name}.{}", k.get_ref()),
                    None => name.to_string(),
                };
                Some((
                    key.span(),
                    format!(
                        "limits: {file} is read as a dotted key; quote the file name: \
                         \"{file}\" = \"...\""
                    ),
                ))
            }
            _ if crate::cgroup::limit_controller(name).is_none() => Some((
                key.span(),
                format!(
                    "unknown limit {name:?} (wfcg writes {})",
                    crate::cgroup::LIMIT_FILES.join(", ")
                ),
            )),
            DeValue::String(s) => crate::cgroup::check_limit(name, s)
                .err()
                .map(|e| (value.span(), format!("limits: {name}: {e}"))),
            DeValue::Integer(i) => crate::cgroup::check_limit(name, i.as_str())
                .err()
                .map(|e| (value.span(), format!("limits: {name}: {e}"))),
            other => Some((
                value.span(),
                format!(
                    "limits: {name}: expected a string like \"8G\", found {}",
                    other.type_str()
                ),
            )),
        };
        if let Some((span, message)) = problem {
            problems.push(Problem::at(text, Some(span), message));
            bad.push(name.to_string());
        }
    }
    for name in bad {
        limits.remove(name.as_str());
    }
}

/// Checks what types alone do not: the values make sense together and the
/// alert channels can be used.
fn check_values(text: &str, t: &Template, user: &DeTable<'_>, problems: &mut Vec<Problem>) {
    let span = |path: &[&str]| entry_at(user, path).map(Spanned::span);
    if let Some(url) = t.alerts.webhook.as_deref().filter(|u| !u.is_empty())
        && let Err(e) = crate::alerts::HttpUrl::parse(url)
    {
        problems.push(Problem::at(
            text,
            span(&["alerts", "webhook"]),
            format!("alerts.webhook: {e}"),
        ));
    }
    if !crate::tmpfs::valid_size(&t.tmpdir.size) {
        problems.push(Problem::at(
            text,
            span(&["tmpdir", "size"]),
            format!(
                "tmpdir.size: {:?} is not a size (bytes, with K, M, G or T, more than 0)",
                t.tmpdir.size
            ),
        ));
    }
    for (what, d) in [
        ("kill.freeze_timeout", t.kill.freeze_timeout),
        ("kill.kill_deadline", t.kill.kill_deadline),
    ] {
        if d.is_zero() {
            let path: Vec<&str> = what.split('.').collect();
            problems.push(Problem::at(
                text,
                span(&path),
                format!("{what} must be more than 0"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tmpdir_size_is_checked_and_defaults_to_1g() {
        assert_eq!(Template::parse("", "x.toml").unwrap().tmpdir.size, "1G");
        assert_eq!(
            Template::parse("[tmpdir]\nsize = \"64M\"\n", "x.toml")
                .unwrap()
                .tmpdir
                .size,
            "64M"
        );
        for bad in ["lots", "0", "1G,uid=0"] {
            let err = Template::parse(&format!("[tmpdir]\nsize = {bad:?}\n"), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("x.toml:2: tmpdir.size"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_shipped_default_parses_with_the_documented_values() {
        let t = Template::builtin().unwrap();
        assert_eq!(t.kill.term_grace, Duration::from_secs(5));
        assert_eq!(t.kill.kill_deadline, Duration::from_secs(10));
        assert_eq!(t.timeouts.init, Duration::from_secs(300));
        assert_eq!(t.timeouts.total, Duration::from_secs(3600));
        assert_eq!(t.critical_sections.git, Duration::from_secs(30));
        assert_eq!(t.critical_sections.database, Duration::from_secs(15));
        assert_eq!(t.critical_sections.files, Duration::from_secs(10));
    }

    #[test]
    fn every_shipped_template_parses_with_its_init_timeout() {
        let dir = tempfile::tempdir().unwrap();
        for (name, init) in [
            ("default", 5),
            ("builder", 30),
            ("lina", 30),
            ("guardian", 5),
        ] {
            let t = Template::lookup_in(dir.path(), name).unwrap();
            assert_eq!(t.timeouts.init, Duration::from_secs(init * 60), "{name}");
            assert_eq!(t.timeouts.total, Duration::from_secs(3600), "{name}");
            // The agent-CLI templates: ready at the first output, a stall
            // timeout and a breaker; the default keeps sd_notify and neither.
            let agent_cli = name != "default";
            assert_eq!(t.run.ready == [Ready::Output], agent_cli, "{name}");
            assert_eq!(!t.timeouts.stall.is_zero(), agent_cli, "{name}");
            assert_eq!(t.breaker.failures, if agent_cli { 3 } else { 0 }, "{name}");
        }
        assert_eq!(BUILTIN.len(), 4);
    }

    #[test]
    fn errors_name_the_line() {
        let bad = DEFAULT_TOML.replace("term_grace = \"5s\"", "term_grace = \"5 parsecs\"");
        let err = Template::parse(&bad, "x.toml").unwrap_err().to_string();
        let line = DEFAULT_TOML
            .lines()
            .position(|l| l.starts_with("term_grace"))
            .unwrap()
            + 1;
        assert!(err.starts_with(&format!("x.toml:{line}:")), "{err}");
        let unknown = DEFAULT_TOML.replace("[kill]", "[kill]\nbogus = 1");
        assert!(
            Template::parse(&unknown, "y.toml")
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
    }

    #[test]
    fn a_partial_template_is_merged_over_the_default() {
        let t = Template::parse("[timeouts]\ninit = \"30m\"\n", "p.toml").unwrap();
        let d = Template::builtin().unwrap();
        assert_eq!(t.timeouts.init, Duration::from_secs(1800));
        assert_eq!(t.timeouts.total, d.timeouts.total);
        assert_eq!(t.kill, d.kill);
        assert_eq!(t.critical_sections, d.critical_sections);
        assert_eq!(Template::parse("", "empty.toml").unwrap(), d);
    }

    #[test]
    fn check_reports_every_problem_with_its_own_line() {
        let text = "\
[timeouts]
init = \"soon\"
bogus = 1

[kill]
term_grace = \"10s\"

[cleanup]
workspace = \"shred\"

[limits]
\"memory.max\" = \"lots\"
\"io.max\" = \"1\"
";
        let problems = Template::check(text, "t.toml").unwrap_err().lines();
        assert_eq!(problems.len(), 5, "{problems:#?}");
        let lines: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').nth(1).unwrap())
            .collect();
        assert_eq!(lines, ["2", "3", "9", "12", "13"], "{problems:#?}");
        assert!(
            problems[1].contains("unknown field `bogus`"),
            "{problems:#?}"
        );
        assert!(problems[2].contains("shred"), "{problems:#?}");
        assert!(problems[3].contains("memory.max"), "{problems:#?}");
        assert!(
            problems[4].contains("unknown limit \"io.max\""),
            "{problems:#?}"
        );
        let one = Template::parse(text, "t.toml").unwrap_err().to_string();
        assert!(
            one.starts_with("t.toml:2:") && one.contains("and 4 more problems"),
            "{one}"
        );
    }

    #[test]
    fn syntax_errors_and_bad_webhooks_have_lines_too() {
        let err = Template::parse("[timeouts\ninit = \"1m\"\n", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("s.toml:1:"), "{err}");
        let err = Template::parse("\n[alerts]\nwebhook = \"https://x/y\"\n", "w.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("w.toml:3:") && err.contains("http://"),
            "{err}"
        );
        let err = Template::parse("[limits]\nmemory.max = \"1G\"\n", "d.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("d.toml:2:") && err.contains("quote"),
            "{err}"
        );
    }

    #[test]
    fn limits_take_strings_and_integers() {
        let t = Template::parse(
            "[limits]\n\"pids.max\" = 512\n\"memory.max\" = \"2G\"\n\"cpu.max\" = \"max 100000\"\n",
            "l.toml",
        )
        .unwrap();
        assert_eq!(t.limits["pids.max"], "512");
        assert_eq!(t.limits["memory.max"], "2G");
        assert_eq!(t.limits["cpu.max"], "max 100000");
    }

    #[test]
    fn a_json_round_trip_gives_the_same_template() {
        for (name, text) in BUILTIN {
            let mut t = Template::parse(text, name).unwrap();
            t.timeouts.init = Duration::from_millis(1234);
            t.kill.term_grace = Duration::from_nanos(1_500_000_007);
            t.limits.insert("pids.max".into(), "64".into());
            t.alerts.webhook = Some("http://127.0.0.1:9/x".into());
            let json = serde_json::to_string(&t).unwrap();
            assert!(json.contains("\"total\":\"1h\""), "{json}");
            let back: Template = serde_json::from_str(&json).unwrap();
            assert_eq!(back, t, "{json}");
        }
    }

    #[test]
    fn lookup_prefers_the_host_file_and_lists_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("builder.toml"),
            "[timeouts]\ninit = \"45m\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("nightly.toml"),
            "[timeouts]\ntotal = \"6h\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("broken.toml"), "[timeouts]\nnope = 1\n").unwrap();
        std::fs::write(dir.path().join("README"), "not a template").unwrap();
        let t = Template::lookup_in(dir.path(), "builder").unwrap();
        assert_eq!(t.timeouts.init, Duration::from_secs(45 * 60));
        let t = Template::lookup_in(dir.path(), "nightly").unwrap();
        assert_eq!(t.timeouts.total, Duration::from_secs(6 * 3600));
        assert_eq!(t.timeouts.init, Duration::from_secs(300));
        let err = Template::lookup_in(dir.path(), "broken")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("broken.toml:2:") && err.contains("nope"),
            "{err}"
        );

        let list = Template::list_in(dir.path());
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "default", "builder", "lina", "guardian", "broken", "nightly"
            ]
        );
        assert_eq!(list[0].1, BUILTIN_SOURCE);
        assert!(list[1].1.ends_with("builder.toml"), "{list:?}");

        let err = Template::lookup_in(dir.path(), "nosuch")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("default, builder, lina, guardian, broken, nightly"),
            "{err}"
        );
    }

    #[test]
    fn find_tells_a_missing_template_from_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken.toml"), "[timeouts\n").unwrap();
        assert_eq!(Template::find_in(dir.path(), "nosuch"), Ok(None));
        assert_eq!(Template::find_in(dir.path(), "team/a"), Ok(None));
        assert!(Template::find_in(dir.path(), "lina").unwrap().is_some());
        let err = Template::find_in(dir.path(), "broken")
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.toml:1:"), "{err}");
    }

    #[test]
    fn durations_may_be_plain_numbers_of_seconds() {
        let t = Template::parse("[timeouts]\ninit = 90\ntotal = 1.5\n", "n.toml").unwrap();
        assert_eq!(t.timeouts.init, Duration::from_secs(90));
        assert_eq!(t.timeouts.total, Duration::from_millis(1500));
        let err = Template::parse("[timeouts]\ninit = -1\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("n.toml:2:"), "{err}");
    }

    #[test]
    fn names_are_plain_file_stems() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../etc/passwd", "a/b", "..", ".hidden", "x..y", "a b"] {
            let err = Template::lookup_in(dir.path(), bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("bad template name"), "{bad:?}: {err}");
        }
        assert!(check_name("builder-2.nightly_x").is_ok());
    }

    #[test]
    fn durations_are_written_so_they_read_back_exactly() {
        for d in [
            Duration::ZERO,
            Duration::from_millis(1234),
            Duration::from_secs(5400),
            Duration::from_millis(90_250),
            Duration::from_nanos(1_000_000_001),
        ] {
            assert_eq!(crate::duration::parse(&duration_text(d)), Ok(d), "{d:?}");
        }
        assert_eq!(duration_text(Duration::from_secs(300)), "5m");
    }

    #[test]
    fn ready_takes_one_condition_or_a_list_and_checks_each() {
        let t = Template::parse("[run]\nready = \"output\"\n", "r.toml").unwrap();
        assert_eq!(t.run.ready, [Ready::Output]);
        let t = Template::parse(
            "[run]\nready = [\"log:^up$\", \"port:8080\", \"file:run/ready\"]\n",
            "r.toml",
        )
        .unwrap();
        assert_eq!(
            t.run.ready,
            [
                Ready::Log("^up$".into()),
                Ready::Port(8080),
                Ready::File("run/ready".into())
            ]
        );
        assert!(t.run.waits());
        assert_eq!(t.run.port(), Some(8080));
        let back: Template = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(back, t);
        for (bad, why) in [
            ("port:0", "TCP port"),
            ("port:http", "TCP port"),
            ("log:(", "regular expression"),
            ("file:", "path"),
            ("soon", "unknown"),
        ] {
            let err = Template::parse(&format!("\n[run]\nready = \"{bad}\"\n"), "b.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("b.toml:3:") && err.contains(why),
                "{bad}: {err}"
            );
        }
        assert!(
            !Template::parse("[run]\nready = \"start\"\n", "s")
                .unwrap()
                .run
                .waits()
        );
    }

    #[test]
    fn a_users_template_may_shorten_stall_and_output_but_not_set_the_breaker() {
        let base = Template::parse(
            "[timeouts]\nstall = \"10m\"\n[breaker]\nfailures = 3\n",
            "op.toml",
        )
        .unwrap();
        // A timeout the operator left off may be turned on: that only tightens.
        let t =
            Template::confine("[timeouts]\nstall = \"1m\"\noutput = \"5m\"\n", "u", &base).unwrap();
        assert_eq!(t.timeouts.output, Duration::from_secs(300));
        let t = Template::confine("[timeouts]\nstall = \"1m\"\n", "u", &base).unwrap();
        assert_eq!(t.timeouts.stall, Duration::from_secs(60));
        for (text, key) in [
            ("[timeouts]\nstall = \"1h\"\n", "timeouts.stall"),
            ("[timeouts]\nstall = \"0\"\n", "timeouts.stall"),
            ("[breaker]\nfailures = 0\n", "[breaker]"),
            ("[breaker]\nfailures = 1\n", "[breaker]"),
        ] {
            let err = Template::confine(text, "u", &base).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn errors_are_typed_and_name_the_file_and_line() {
        let base = Template::builtin().unwrap();
        let err = Template::confine("[alerts]\non_event = \"id\"\n", "u.toml", &base).unwrap_err();
        assert_eq!(
            err,
            TemplateError::OperatorOnly {
                file: "u.toml".into(),
                section: "alerts"
            }
        );
        let err = Template::confine("[timeouts]\ninit = \"0\"\n", "u.toml", &base).unwrap_err();
        assert!(
            matches!(&err, TemplateError::Longer { file, too_long }
                if file == "u.toml" && too_long.key == "timeouts.init" && too_long.value.is_zero()),
            "{err:?}"
        );
        let err = Template::parse("\n[kill]\nbogus = 1\n", "k.toml").unwrap_err();
        let TemplateError::Invalid { file, problems } = &err else {
            panic!("{err:?}")
        };
        assert_eq!((file.as_str(), problems[0].line), ("k.toml", Some(3)));
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Template::lookup_in(dir.path(), "nosuch"),
            Err(TemplateError::NotFound { name, .. }) if name == "nosuch"
        ));
        assert_eq!(
            Template::lookup_in(dir.path(), "a/b"),
            Err(TemplateError::BadName("a/b".into()))
        );
    }
}
