//! Run templates (`cgroup-templates/*.toml`): the graces and timeouts a run gets.
//!
//! `default.toml` is built into the binary; a file of the same name in
//! `/etc/wfcg/templates` takes its place.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The shipped `default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../cgroup-templates/default.toml");

/// Where operators put their own templates.
pub const SYSTEM_DIR: &str = "/etc/wfcg/templates";

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    crate::duration::parse(&text).map_err(serde::de::Error::custom)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&crate::duration::format(*d))
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
    /// cgroup limits by file name (`memory.max`, `pids.max`, `cpu.max`), written
    /// where the controller is enabled.
    #[serde(default)]
    pub limits: std::collections::BTreeMap<String, String>,
}

/// When a run counts as initialized.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ready {
    /// When it sends READY=1 (sd_notify); until then it is `initializing`.
    #[default]
    Notify,
    /// As soon as its command starts.
    Start,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    #[serde(default)]
    pub ready: Ready,
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

/// Where events about a run go.
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
    /// Parses a template; the error names the file, the line and what is wrong.
    pub fn parse(text: &str, name: &str) -> Result<Template, String> {
        toml::from_str(text).map_err(|e| match e.span().map(|s| line_of(text, s.start)) {
            Some(l) => format!("{name}:{l}: {}", e.message()),
            None => format!("{name}: {}", e.message()),
        })
    }

    /// The default template: `/etc/wfcg/templates/default.toml` if present, else the built-in one.
    pub fn default_for_host() -> Result<Template, String> {
        let path = Path::new(SYSTEM_DIR).join("default.toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => Template::parse(&text, &path.display().to_string()),
            Err(_) => Template::builtin(),
        }
    }

    pub fn builtin() -> Result<Template, String> {
        Template::parse(DEFAULT_TOML, "cgroup-templates/default.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_default_parses_with_the_documented_values() {
        let t = Template::builtin().unwrap();
        assert_eq!(t.kill.term_grace, Duration::from_secs(5));
        assert_eq!(t.kill.kill_deadline, Duration::from_secs(10));
        assert_eq!(t.timeouts.init, Duration::from_secs(300));
        assert_eq!(t.critical_sections.git, Duration::from_secs(30));
        assert_eq!(t.critical_sections.database, Duration::from_secs(15));
        assert_eq!(t.critical_sections.files, Duration::from_secs(10));
    }

    #[test]
    fn errors_name_the_line() {
        let bad = DEFAULT_TOML.replace("term_grace = \"5s\"", "term_grace = \"5 parsecs\"");
        let err = Template::parse(&bad, "x.toml").unwrap_err();
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
                .contains("bogus")
        );
    }
}
