//! `wfcg logs`: a detached run's output, from the log the agent made for it.
//!
//! The agent says where the log is (`GET /v1/runs/{id}`, which checks that the
//! caller may see the run); this command opens the file itself, with the
//! caller's own credentials. The file belongs to the run's owner, mode 0600, in
//! a directory of the agent's: only the owner (and root) can open it, whatever
//! the policy lets others see of the run.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use rustix::fs::inotify;

use crate::api::{self, RunInfo};
use crate::client;
use crate::exit::{self, Failure};
use crate::output::{OutputStream, Shown};

/// Print a detached run's output (its stdout and stderr, as written to its log).
///
/// Only runs started with `wfcg run --detach` have a log (`<state dir>/logs/RUN.log`);
/// an attached run's output went to the terminal of its `wfcg run`. The log is
/// readable by the run's owner and root only: a role that lets you see or kill
/// another user's runs does not let you read their output (exit 4).
///
/// On a terminal, control characters (escape sequences, colours, carriage
/// returns) are shown as text (`\u001b[31m`, `\r`), so that no output can drive
/// the terminal; newlines and tabs are kept. Into a pipe or a file, and with
/// --raw, the bytes go out as the run wrote them.
///
/// Exits 0 (also when the run wrote nothing: then said on stderr), 1 when the
/// run has no log, 3 no such run, 4 not permitted, 5 agent unreachable.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run's id (`wfcg ps --all` lists them).
    pub run_id: String,
    /// Keep printing what the run writes until the run ends (then exit 0).
    #[arg(long, short)]
    pub follow: bool,
    /// Write the output as it is, escape sequences and all, even on a terminal.
    #[arg(long)]
    pub raw: bool,
}

/// How long a follow waits for the log to grow before it asks the agent
/// whether the run still goes on.
const IDLE: Duration = Duration::from_secs(1);
/// How much is read at once.
const CHUNK: usize = 64 * 1024;

pub fn run(cli: &super::Cli, args: &Args) -> Result<i32, Failure> {
    if let Some(problem) = api::run_id_problem(&args.run_id) {
        return Err(Failure::usage(problem));
    }
    let client = super::client(cli)?;
    let info = client.run(&args.run_id)?;
    let id = &args.run_id;
    let Some(path) = info.log_path.as_deref() else {
        let why = if info.adopted.is_some() {
            "it was adopted (started outside wfcg), so wfcg never held its output"
        } else {
            "it was started without --detach, so its output went to the terminal of its \
             `wfcg run`"
        };
        return Err(Failure::new(
            exit::FAILED,
            format!("run {id} has no log: {why}"),
        ));
    };
    let mut file = open_log(&info, path)?;
    let raw = args.raw || !std::io::stdout().is_terminal();
    let mut shown = OutputStream::new(raw);
    let mut out = std::io::stdout().lock();
    let follow = args.follow.then(|| Follow::new(path));
    let mut ended = !info.status.is_live();
    let mut written = 0u64;
    let mut agent_away = false;
    loop {
        written += copy_to_end(&mut file, &mut shown, &mut out, path)?;
        let Some(follow) = &follow else { break };
        if ended {
            break;
        }
        if !follow.wait(IDLE) {
            // Nothing new for a while: does the run still go on?
            match client.run(id) {
                Ok(now) => ended = !now.status.is_live(),
                // The agent may be restarting: the run goes on meanwhile.
                Err(e @ (client::Error::Unreachable { .. } | client::Error::Timeout { .. })) => {
                    if !agent_away {
                        crate::output::errln!(
                            "wfcg: {e}; following the log until an agent answers again"
                        );
                        agent_away = true;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    shown.finish(&mut out).map_err(crate::output::failure)?;
    if written == 0 {
        crate::output::errln!("wfcg: run {id} wrote no output");
    }
    Ok(exit::OK)
}

/// Opens the run's log as the caller, never through a symlink, never blocking.
fn open_log(info: &RunInfo, path: &str) -> Result<File, Failure> {
    let id = &info.run_id;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => Failure::new(
                exit::NOT_PERMITTED,
                format!(
                    "run {id}: you may not read its output: its log {} is readable by the \
                     run's owner ({}) and root only",
                    Shown(path),
                    Shown(&info.owner_display())
                ),
            ),
            std::io::ErrorKind::NotFound => Failure::new(
                exit::FAILED,
                format!("run {id}: its log {} is gone", Shown(path)),
            ),
            _ => Failure::new(
                exit::FAILED,
                format!("run {id}: cannot open its log {}: {e}", Shown(path)),
            ),
        })?;
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(file),
        _ => Err(Failure::new(
            exit::FAILED,
            format!("run {id}: its log {} is not a regular file", Shown(path)),
        )),
    }
}

/// Copies what the log holds from where the last copy ended to its end; the
/// number of bytes copied.
fn copy_to_end(
    file: &mut File,
    shown: &mut OutputStream,
    out: &mut impl Write,
    path: &str,
) -> Result<u64, Failure> {
    // The owner may have emptied the file (it is theirs): start again from its start.
    if let (Ok(meta), Ok(at)) = (file.metadata(), file.stream_position())
        && meta.len() < at
    {
        let _ = file.seek(std::io::SeekFrom::Start(0));
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Failure::new(
                    exit::FAILED,
                    format!("cannot read {}: {e}", Shown(path)),
                ));
            }
        };
        shown
            .write(out, &buf[..n])
            .map_err(crate::output::failure)?;
        total += n as u64;
    }
    out.flush().map_err(crate::output::failure)?;
    Ok(total)
}

/// Waits for a log to grow: an inotify watch on it (MODIFY), or, where none can
/// be had, the idle time each round.
struct Follow {
    ino: Option<std::os::fd::OwnedFd>,
}

impl Follow {
    fn new(path: &str) -> Follow {
        let ino = inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)
            .ok()
            .filter(|ino| inotify::add_watch(ino, path, inotify::WatchFlags::MODIFY).is_ok());
        Follow { ino }
    }

    /// Whether the log changed within `idle` (its events are drained).
    fn wait(&self, idle: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let Some(ino) = &self.ino else {
            std::thread::sleep(idle);
            return false;
        };
        let timeout = Timespec::try_from(idle).unwrap_or(Timespec {
            tv_sec: 1,
            tv_nsec: 0,
        });
        let mut fds = [PollFd::new(ino, PollFlags::IN)];
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => false,
            Ok(_) => {
                let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
                let mut reader = inotify::Reader::new(ino, &mut buf);
                while reader.next().is_ok() {}
                true
            }
            Err(_) => true,
        }
    }
}
