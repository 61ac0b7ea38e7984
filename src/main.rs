//! The `wfcg` binary: parse the command line, dispatch, map the outcome to an exit code.

use clap::Parser;

fn main() {
    quiet_on_closed_stdout();
    let cli = wfcg::cli::Cli::parse();
    match wfcg::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("wfcg: {}", f.message);
            std::process::exit(f.code);
        }
    }
}

/// Output that cannot be written is never a panic: a closed pipe (`wfcg ps | head
/// -1`) is a quiet exit 0, as for other Unix tools; any other write error (a full
/// disk) is one line on stderr and exit 1. The commands print with `print!`, which
/// panics on a write error, so the panic is turned into that here; every other
/// panic goes to the default hook.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let failed = info
            .payload_as_str()
            .and_then(|m| m.strip_prefix("failed printing to stdout: "));
        match failed {
            Some(e) if e.starts_with("Broken pipe") => std::process::exit(wfcg::exit::OK),
            Some(e) => {
                eprintln!("wfcg: cannot write the output: {e}");
                std::process::exit(wfcg::exit::FAILED);
            }
            None => default(info),
        }
    }));
}
