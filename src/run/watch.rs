//! What the supervisor watches of its command for the agent (the run's
//! [`Watch`]): its output, passed through pipes to where it would have gone
//! (the terminal, or a detached run's log) and reported through the notify
//! socket (`X_WFCG_OUTPUT=1`, the first byte at once, then at most once a
//! second), READY=1 at the first byte or at a line matching the ready pattern
//! (saying so when the first chunk of output already met it: a banner?),
//! and READY=1 when the ready file appears (looked for as the run's owner, in
//! the command's working directory).
//!
//! Each line (ended by a newline or a carriage return) is compared with the
//! recent ones ([`crate::novelty`]): a new one is progress
//! (`X_WFCG_NEW_LINE=1`); one that repeats an earlier line with only numbers
//! changed is reported as a repeat (`X_WFCG_REPEAT=COUNT SECS LINE`), so the
//! agent can tell a retry loop from work. Reports go at most once a second; what
//! is held meanwhile is sent by a timer within the next second.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use crate::api::{
    NEW_LINE_NOTIFY, OUTPUT_NOTIFY, READY_ON_FIRST_OUTPUT_NOTIFY, REPEAT_LINE_MAX, REPEAT_NOTIFY,
    RunStarted, Watch,
};
use crate::novelty::{Recent, Seen, normalize};

/// How often output is reported after the first byte.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often the ready file is looked for.
const FILE_EVERY: Duration = Duration::from_millis(200);
/// The longest line the ready pattern is tried on (longer ones are cut).
const MAX_LINE: usize = 64 * 1024;
/// How long output still in the pipes is copied after the command ended.
const DRAIN: Duration = Duration::from_secs(2);
/// How many recent distinct lines a run's output is compared with.
const RECENT_LINES: usize = 256;

struct Shared {
    watch: Watch,
    notify: Option<String>,
    pattern: Option<regex::Regex>,
    ready_sent: AtomicBool,
    report: Mutex<Report>,
    /// Whether a chunk of output was read already.
    output_seen: AtomicBool,
    stop: AtomicBool,
}

/// What the agent is told about the output, and what is held until it may be.
struct Report {
    last: Option<Instant>,
    recent: Recent,
    /// Output, a new line, and the newest line when it repeats, since the last report.
    output: bool,
    new_line: bool,
    repeat: Option<(u64, Instant, String)>,
}

impl Report {
    /// The notify message of what is held, if anything (and clears it).
    fn take(&mut self, now: Instant) -> Option<String> {
        if !self.output {
            return None;
        }
        let mut msg = String::from(OUTPUT_NOTIFY);
        if std::mem::take(&mut self.new_line) {
            msg.push('\n');
            msg.push_str(NEW_LINE_NOTIFY);
        }
        if let Some((count, first, line)) = self.repeat.take() {
            let secs = now.duration_since(first).as_secs();
            msg.push_str(&format!("\n{REPEAT_NOTIFY}={count} {secs} {line}"));
        }
        self.output = false;
        self.last = Some(now);
        Some(msg)
    }
}

/// A line as sent to the agent: at most [`REPEAT_LINE_MAX`] characters, control
/// characters as '?', no newline.
fn shown_line(line: &str) -> String {
    line.chars()
        .take(REPEAT_LINE_MAX)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

impl Shared {
    fn send(&self, msg: &str) {
        if let Some(socket) = &self.notify {
            let _ = crate::sdnotify::send(socket, msg);
        }
    }

    fn ready(&self) {
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.send("READY=1");
        }
    }

    /// READY=1 from output; `first`: the first chunk read met the condition.
    fn ready_on_output(&self, first: bool) {
        if !first {
            return self.ready();
        }
        if !self.ready_sent.swap(true, Ordering::SeqCst) {
            self.send(READY_ON_FIRST_OUTPUT_NOTIFY);
        }
    }

    /// A chunk of output: report it and its lines (rate-limited) and look for
    /// the ready line.
    fn output(&self, chunk: &[u8], line: &mut Vec<u8>) {
        let first = !self.output_seen.swap(true, Ordering::SeqCst);
        if self.watch.ready_on_output {
            self.ready_on_output(first);
        }
        let mut lines = Vec::new();
        for &b in chunk {
            let end = b == b'\n' || b == b'\r';
            if end || line.len() >= MAX_LINE {
                if !line.is_empty() {
                    lines.push(String::from_utf8_lossy(line).into_owned());
                    line.clear();
                }
                if end {
                    continue;
                }
            }
            line.push(b);
        }
        if let Some(re) = &self.pattern
            && !self.ready_sent.load(Ordering::SeqCst)
            && lines.iter().any(|l| re.is_match(l))
        {
            self.ready_on_output(first);
        }
        if !self.watch.output {
            return;
        }
        let now = Instant::now();
        let msg = {
            let mut r = self.report.lock();
            r.output = true;
            for l in &lines {
                match r.recent.see(&normalize(l)) {
                    Seen::New => {
                        r.new_line = true;
                        r.repeat = None;
                    }
                    Seen::Repeat(count, first) => r.repeat = Some((count, first, shown_line(l))),
                }
            }
            if r.last.is_none_or(|t| now.duration_since(t) >= REPORT_EVERY) {
                r.take(now)
            } else {
                None
            }
        };
        if let Some(msg) = msg {
            self.send(&msg);
        }
    }

    /// Sends what is held, once its second is over.
    fn flush_held(&self) {
        let now = Instant::now();
        let msg = {
            let mut r = self.report.lock();
            if r.last.is_some_and(|t| now.duration_since(t) < REPORT_EVERY) {
                return;
            }
            r.take(now)
        };
        if let Some(msg) = msg {
            self.send(&msg);
        }
    }
}

/// The watch of one command.
pub struct Watcher {
    shared: Arc<Shared>,
    done: Option<mpsc::Receiver<()>>,
    copies: usize,
    /// The read ends of the command's stdout and stderr pipes, when watched.
    pipes: Vec<(OwnedFd, Sink)>,
}

/// Where the command's output goes on from its pipe.
#[derive(Clone, Copy)]
enum Sink {
    Stdout,
    Stderr,
}

impl Watcher {
    /// Makes the command's stdout and stderr pipes when its output is watched.
    /// The command holds their write ends: drop it once it is started, so that
    /// the copies see the end of its output.
    pub fn prepare(started: &RunStarted, cmd: &mut Command) -> std::io::Result<Watcher> {
        let watch = started.watch.clone();
        let mut pipes = Vec::new();
        if watch.needs_output() {
            let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
            pipes = vec![(out_r, Sink::Stdout), (err_r, Sink::Stderr)];
        }
        let pattern = watch
            .ready_on_log
            .as_deref()
            .and_then(|p| regex::Regex::new(p).ok());
        Ok(Watcher {
            shared: Arc::new(Shared {
                watch,
                notify: started.notify_socket.clone(),
                pattern,
                ready_sent: AtomicBool::new(false),
                report: Mutex::new(Report {
                    last: None,
                    recent: Recent::new(RECENT_LINES),
                    output: false,
                    new_line: false,
                    repeat: None,
                }),
                output_seen: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            }),
            done: None,
            copies: 0,
            pipes,
        })
    }

    /// Starts copying the command's output and looking for the ready file
    /// (relative to `cwd`, the command's working directory).
    pub fn start(&mut self, cwd: Option<&Path>) {
        let (tx, rx) = mpsc::channel();
        for (pipe, sink) in std::mem::take(&mut self.pipes) {
            self.copies += 1;
            let from = std::fs::File::from(pipe);
            match sink {
                Sink::Stdout => self.copy(from, std::io::stdout(), tx.clone()),
                Sink::Stderr => self.copy(from, std::io::stderr(), tx.clone()),
            }
        }
        self.done = Some(rx);
        if self.copies > 0 && self.shared.watch.output {
            // Sends what a burst of output left held, within a second.
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(REPORT_EVERY);
                    shared.flush_held();
                }
            });
        }
        if let Some(file) = self.shared.watch.ready_on_file.clone() {
            let path = match cwd {
                Some(dir) => dir.join(&file),
                None => PathBuf::from(&file),
            };
            let shared = self.shared.clone();
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::SeqCst)
                    && !shared.ready_sent.load(Ordering::SeqCst)
                {
                    if std::fs::symlink_metadata(&path).is_ok() {
                        shared.ready();
                        return;
                    }
                    std::thread::sleep(FILE_EVERY);
                }
            });
        }
    }

    fn copy(
        &self,
        mut from: impl Read + Send + 'static,
        mut to: impl Write + Send + 'static,
        done: mpsc::Sender<()>,
    ) {
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut line = Vec::new();
            loop {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        // Where it would have gone; if that is closed, keep draining
                        // so the command never blocks on a full pipe.
                        let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
                        shared.output(&buf[..n], &mut line);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done.send(());
        });
    }

    /// The command ended (and the agent killed what it left): copies the rest
    /// of its output, waiting at most [`DRAIN`] for processes that still hold
    /// the pipes.
    pub fn finish(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let Some(done) = self.done else { return };
        let deadline = Instant::now() + DRAIN;
        for _ in 0..self.copies {
            let left = deadline.saturating_duration_since(Instant::now());
            if done.recv_timeout(left).is_err() {
                return;
            }
        }
    }
}
