//! Exit codes of every `wfcg` command, and the error that carries one.
//!
//! [`TABLE`] is the one list of the codes and what each means: `wfcg --help`
//! prints it ([`help`]), docs/cli.md shows it row for row ([`markdown`]), and
//! tests/it/docs.rs checks that both (and the README's summary) say the same.
//! `wfcg run` exits with its command's status instead ([`RUN_EXITS`]).

use crate::api::ErrorKind;
use crate::client;

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const NO_SUCH_RUN: i32 = 3;
pub const NOT_PERMITTED: i32 = 4;
pub const UNREACHABLE: i32 = 5;
pub const BREAKER_OPEN: i32 = 6;
/// The agent's state filesystem is full (or below root's reserve): nothing started.
pub const NO_SPACE: i32 = 7;

/// An exit code and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: i32,
    /// One sentence, Markdown (`code` spans) allowed.
    pub meaning: &'static str,
}

/// Every exit code a `wfcg` command (other than `wfcg run`'s own) ends with.
pub const TABLE: [Code; 8] = [
    Code {
        code: OK,
        meaning: "done; for `kill`, the run ended (or had ended already)",
    },
    Code {
        code: FAILED,
        meaning: "failed; for `kill`, processes survived (the run is `unkillable`)",
    },
    Code {
        code: USAGE,
        meaning: "usage or bad input (a bad run id, a bad duration, a run id in use)",
    },
    Code {
        code: NO_SUCH_RUN,
        meaning: "no such run",
    },
    Code {
        code: NOT_PERMITTED,
        meaning: "not permitted",
    },
    Code {
        code: UNREACHABLE,
        meaning: "agent unreachable: nothing listens on the socket, or the agent did not \
                  answer within its deadline (`--agent-timeout`)",
    },
    Code {
        code: BREAKER_OPEN,
        meaning: "the workflow's circuit breaker is open: the run was refused (see `wfcg breaker`)",
    },
    Code {
        code: NO_SPACE,
        meaning: "the agent's state filesystem is full, or below the reserve it keeps for root \
                  (policy `[limits] state_reserve`): nothing was started",
    },
];

/// What `wfcg run` exits with instead of [`TABLE`]'s codes.
pub const RUN_EXITS: &str = "`wfcg run` exits with its command's status instead: 128+N if it \
     died of signal N, 124 if the monitor killed it (a deadline passed), 127 if the command \
     was not found.";

/// The table as `wfcg --help` ends: `Exit codes:`, then a code and its meaning
/// a line (wrapped, continuations indented), then [`RUN_EXITS`].
pub fn help() -> String {
    let plain = |s: &str| s.replace('`', "");
    let mut out = String::from("Exit codes:\n");
    for c in TABLE {
        wrap(&mut out, &format!("{:<3}", c.code), &plain(c.meaning));
    }
    wrap(&mut out, "", &plain(RUN_EXITS));
    out.truncate(out.trim_end().len());
    out
}

/// The table as docs/cli.md has it: a header, then `| code | meaning |` rows.
pub fn markdown() -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for c in TABLE {
        out.push_str(&format!("| {} | {} |\n", c.code, c.meaning));
    }
    out
}

/// Appends `text` after `  {lead}`, wrapped at 80 columns under its first word.
fn wrap(out: &mut String, lead: &str, text: &str) {
    let indent = 2 + lead.len();
    let mut line = format!("  {lead}");
    let mut empty = true;
    for word in text.split_whitespace() {
        if !empty && line.len() + 1 + word.len() > 80 {
            out.push_str(&line);
            out.push('\n');
            line = " ".repeat(indent);
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    out.push_str(&line);
    out.push('\n');
}

/// A command's failure: the message for stderr (none when empty) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(USAGE, message)
    }

    /// An end with `code` and nothing to say (a closed pipe: exit 0).
    pub fn quiet(code: i32) -> Failure {
        Failure::new(code, "")
    }
}

/// The exit code for an error kind the agent answered with.
fn code_for(kind: ErrorKind) -> i32 {
    match kind {
        ErrorKind::BadInput | ErrorKind::Conflict => USAGE,
        ErrorKind::NotFound => NO_SUCH_RUN,
        ErrorKind::Forbidden => NOT_PERMITTED,
        ErrorKind::Internal => FAILED,
        ErrorKind::BreakerOpen => BREAKER_OPEN,
        ErrorKind::NoSpace => NO_SPACE,
    }
}

impl From<client::Error> for Failure {
    fn from(e: client::Error) -> Failure {
        let code = match &e {
            client::Error::Unreachable { .. } | client::Error::Timeout { .. } => UNREACHABLE,
            client::Error::Api(api) => code_for(api.kind),
            client::Error::Protocol(_) => FAILED,
        };
        let mut message = e.to_string();
        match e {
            client::Error::Unreachable { .. } => message.push_str(
                " (start one with `sudo wfcg install-service` on a systemd host, else \
                     `sudo wfcg agent` in the foreground; a root `wfcg run` starts one in the \
                     background; or pass --socket)",
            ),
            client::Error::Timeout { .. } => message.push_str(
                " (it is hung or overloaded: see its log; what was asked may still be under way; \
                 --agent-timeout waits longer)",
            ),
            _ => {}
        }
        Failure { code, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_each_code_once_in_order() {
        let codes: Vec<i32> = TABLE.iter().map(|c| c.code).collect();
        assert_eq!(codes, (0..TABLE.len() as i32).collect::<Vec<_>>());
    }

    #[test]
    fn help_lists_each_code_at_the_start_of_a_line_and_nothing_else() {
        let help = help();
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
        let listed: Vec<i32> = help
            .lines()
            .skip(1)
            .filter_map(|l| l.trim_start().split(' ').next()?.parse().ok())
            .collect();
        assert_eq!(listed, TABLE.map(|c| c.code).to_vec(), "{help}");
        assert!(!help.contains('`'), "{help}");
    }
}
