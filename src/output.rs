//! Standard output of every command, and what happens when it cannot be written.
//!
//! `print!` panics on a write error. Here a write error is a [`Failure`] the
//! command returns: a closed pipe (`wfcg ps --all | head -1`) ends it quietly
//! with exit 0, as for other Unix tools; any other error (a full disk) is one
//! line on stderr and exit 1. Lines for stderr go through [`errln!`], which
//! never panics either.

use std::fmt::Display;
use std::io::{self, Write};

use crate::exit::{self, Failure};

/// Writes `text` and a newline to stdout.
pub fn line(text: impl Display) -> Result<(), Failure> {
    with(|out| writeln!(out, "{text}"))
}

/// Writes `value` as pretty JSON and a newline to stdout.
pub fn json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot encode the answer: {e}")))?;
    line(text)
}

/// Lets `write` write to stdout (locked), then flushes it.
pub fn with(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    write(&mut out).and_then(|()| out.flush()).map_err(failure)
}

/// Flushes what is left of stdout (in `main`, after the command).
pub fn flush() -> Result<(), Failure> {
    io::stdout().flush().map_err(failure)
}

/// The failure of a write to stdout: a closed pipe is a quiet exit 0.
pub fn failure(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::quiet(exit::OK)
    } else {
        Failure::new(exit::FAILED, format!("cannot write the output: {e}"))
    }
}

/// `outln!(...)`: [`line`] with `format!` arguments; returns its `Result`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `errln!(...)`: a line on stderr. A write error there is ignored (stderr is
/// where errors are said: nothing is left to tell), never a panic as with
/// `eprintln!`.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use errln;
