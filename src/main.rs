//! The `wfcg` binary: parse the command line, dispatch, map the outcome to an exit code.

use clap::Parser;

fn main() {
    let cli = wfcg::cli::Cli::parse();
    match wfcg::cli::dispatch(cli) {
        Ok(code) => std::process::exit(code),
        Err(f) => {
            eprintln!("wfcg: {}", f.message);
            std::process::exit(f.code);
        }
    }
}
