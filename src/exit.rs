//! Exit codes of every `wfcg` command, and the error that carries one.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | done (a kill: the run ended, or had ended already) |
//! | 1 | failed (a kill: processes survived; or an internal error) |
//! | 2 | usage or bad input |
//! | 3 | no such run |
//! | 4 | not permitted |
//! | 5 | agent unreachable, or no answer within its deadline |
//! | 6 | the workflow's circuit breaker is open: the run was refused (`wfcg breaker reset`) |
//! | 7 | the agent's state filesystem is full (or below root's reserve): nothing was started |
//!
//! `wfcg run` exits with its command's status instead (128+N for signal N).
//! docs/cli.md and `wfcg --help` list the same codes (checked by tests/it/docs.rs).

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
