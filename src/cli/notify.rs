//! `wfcg notify`: sd_notify from scripts inside a run.

use crate::exit::{self, Failure};

/// Tell the agent about this run's progress (sd_notify over $NOTIFY_SOCKET, as
/// `systemd-notify` does): --ready ends initialization, --heartbeat is a watchdog
/// keep-alive, --status sets the text ps and status show, --stopping says the
/// workflow is shutting down by itself.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// READY=1: initialization is over.
    #[arg(long)]
    pub ready: bool,
    /// WATCHDOG=1: a heartbeat.
    #[arg(long)]
    pub heartbeat: bool,
    /// STATUS=TEXT.
    #[arg(long, value_name = "TEXT")]
    pub status: Option<String>,
    /// STOPPING=1: shutting down.
    #[arg(long)]
    pub stopping: bool,
    /// EXTEND_TIMEOUT_USEC: push the current deadline to at least now + DUR.
    #[arg(long, value_name = "DUR")]
    pub extend: Option<String>,
}

pub fn run(_cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    let socket = std::env::var("NOTIFY_SOCKET").map_err(|_| {
        Failure::usage("NOTIFY_SOCKET is not set: wfcg notify works inside a run (wfcg run -- ...)")
    })?;
    let mut lines = Vec::new();
    if args.ready {
        lines.push("READY=1".to_string());
    }
    if args.heartbeat {
        lines.push("WATCHDOG=1".to_string());
    }
    if args.stopping {
        lines.push("STOPPING=1".to_string());
    }
    if let Some(text) = &args.status {
        if text.contains('\n') {
            return Err(Failure::usage("--status: the text must be one line"));
        }
        lines.push(format!("STATUS={text}"));
    }
    if let Some(d) = &args.extend {
        let d = super::duration_arg("--extend", d)?;
        lines.push(format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()));
    }
    if lines.is_empty() {
        return Err(Failure::usage(
            "nothing to send: give --ready, --heartbeat, --status, --stopping or --extend",
        ));
    }
    crate::sdnotify::send(&socket, &lines.join("\n")).map_err(|e| {
        Failure::new(
            exit::UNREACHABLE,
            format!("cannot send to NOTIFY_SOCKET {socket}: {e}"),
        )
    })?;
    Ok(exit::OK)
}
