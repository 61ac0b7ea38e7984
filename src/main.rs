//! The `wfcg` binary: parse the command line, dispatch, map the outcome to an exit code.

#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // The agent's short-lived removal process (src/walk.rs), not a command.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == wfcg::walk::CHILD_ARG) {
        return ExitCode::from(wfcg::walk::child_main(&args[2..]) as u8);
    }
    let cli = wfcg::cli::parse();
    // What the command printed is flushed before the exit code counts as final: a
    // write error there is the command's failure too.
    let outcome = wfcg::cli::dispatch(cli).and_then(|code| wfcg::output::flush().map(|()| code));
    let code = match outcome {
        Ok(code) => code,
        Err(f) => {
            if !f.message.is_empty() {
                // Escaped whole, newlines too: a message may echo a user's text.
                wfcg::output::err_line(format_args!("wfcg: {}", wfcg::output::Shown(&f.message)));
            }
            f.code
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
