//! Why a template cannot be used: typed errors naming the file and line.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use super::{SYSTEM_DIR, duration_text};
use crate::diagnostics::line_of;

/// A problem found in a template's text: where (a line, when known) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub(super) fn at(
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Problem {
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
