//! `wfcg top`: a live terminal dashboard of the agent's runs.
//!
//! Every second it shows the runs (status, the run's own STATUS= text as its
//! phase, age, time since the last heartbeat, processes, CPU, memory where the
//! memory controller is on, open critical sections), stuck and overdue runs in
//! red, the latest kills from the audit trail, and the agent's own CPU and
//! memory. Arrows select a run, `k` / `K` kill it gracefully / by force after a
//! y/n question, `/` filters, `q` quits.
//!
//! The parts, so the drawing can be tested without a terminal:
//! - [`app`]: the state and what each key does to it (pure);
//! - [`view`]: drawing an [`app::App`] into a ratatui frame (pure);
//! - [`source`]: reading a snapshot from the agent, the cgroups and `/proc`;
//! - `term`: raw mode and the alternate screen, restored on every exit path;
//! - [`run`] (here): the loop tying them together. Refreshes and kills run on
//!   threads of their own, so a slow agent or a long graceful kill never
//!   freezes the keyboard.

pub mod app;
pub mod source;
mod term;
pub mod view;

use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use crossterm::event::{self, Event as TermEvent};

use crate::api::{KillMode, KillRequest, KillResult};
use crate::client::Client;
use app::{Action, App, Snapshot};
use source::Source;

/// What `wfcg top` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub socket: PathBuf,
    /// How long each request to the agent may take (a kill: on top of its course).
    pub agent_timeout: Duration,
    /// Time between refreshes.
    pub interval: Duration,
    /// Every run the agent knows, not only live ones and those that just ended.
    pub all: bool,
    /// How many kills the kills pane keeps.
    pub kills: usize,
}

/// What the worker threads tell the loop.
enum Event {
    Snapshot(Result<Snapshot, String>),
    KillDone(String, Box<Result<KillResult, String>>),
}

/// How long the loop waits for a key before looking at its channels again.
const TICK: Duration = Duration::from_millis(100);

/// Runs the dashboard until `q` (exit code 0), a signal (128+N) or the loss
/// of its terminal (129, as SIGHUP). The terminal is restored whatever happens.
pub fn run(opts: &Options) -> io::Result<i32> {
    let (sig_tx, sig_rx) = mpsc::channel();
    term::watch_signals(sig_tx)?;
    let (tx, rx) = mpsc::channel();

    let mut app = App::new();
    let mut source = Source::new(
        Client::new(&opts.socket).with_timeout(opts.agent_timeout),
        opts.all,
        opts.kills,
    );
    app.update(source.fetch());
    let (fetcher, nudge) = spawn_fetcher(source, opts.interval, tx.clone())?;
    let mut kills: Vec<JoinHandle<()>> = Vec::new();

    let input = term::Input::open()?;
    let mut tui = term::Tui::enter()?;
    // Drawn again only when something changed: a refresh, a kill's end, a key
    // or a resize.
    let mut dirty = true;
    loop {
        if let Ok(n) = sig_rx.try_recv() {
            return Ok(128 + n);
        }
        dirty |= drain(&rx, &mut app);
        if fetcher.is_finished() {
            return Err(io::Error::other("the refresh thread stopped"));
        }
        for k in std::mem::take(&mut kills) {
            if !k.is_finished() {
                kills.push(k);
            } else if k.join().is_err() {
                return Err(io::Error::other("a kill thread panicked"));
            }
        }
        if dirty {
            tui.terminal.draw(|f| view::draw(f, &app))?;
            dirty = false;
        }
        // The terminal is polled here, crossterm only asked for what is there
        // already: its own wait reads a hung-up terminal in a loop, forever.
        if input.wait(TICK)? == term::Ready::Gone {
            return Ok(128 + libc::SIGHUP);
        }
        // Keys read, and a resize (which crossterm learns from SIGWINCH).
        while event::poll(Duration::ZERO)? {
            match event::read()? {
                TermEvent::Key(key) => {
                    dirty = true;
                    match app.on_key(key) {
                        Action::None => {}
                        Action::Quit => return Ok(0),
                        Action::Kill { run_id, mode } => kills.push(spawn_kill(
                            (opts.socket.clone(), opts.agent_timeout),
                            run_id,
                            mode,
                            tx.clone(),
                            nudge.clone(),
                        )?),
                    }
                }
                TermEvent::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
}

/// Applies whatever the workers sent since the last look; returns whether
/// there was anything.
fn drain(rx: &Receiver<Event>, app: &mut App) -> bool {
    let mut any = false;
    while let Ok(ev) = rx.try_recv() {
        any = true;
        match ev {
            Event::Snapshot(s) => app.update(s),
            Event::KillDone(id, r) => app.kill_done(&id, *r),
        }
    }
    any
}

/// Refreshes every `interval`, or at once when nudged; stops when the loop is gone.
fn spawn_fetcher(
    mut source: Source,
    interval: Duration,
    tx: Sender<Event>,
) -> io::Result<(JoinHandle<()>, Sender<()>)> {
    let (nudge, nudged) = mpsc::channel::<()>();
    let handle = std::thread::Builder::new()
        .name("top-refresh".into())
        .spawn(move || {
            loop {
                match nudged.recv_timeout(interval) {
                    Ok(()) => while nudged.try_recv().is_ok() {},
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if tx.send(Event::Snapshot(source.fetch())).is_err() {
                    return;
                }
            }
        })?;
    Ok((handle, nudge))
}

/// Asks the agent to kill a run, reports the result and nudges a refresh.
fn spawn_kill(
    (socket, timeout): (PathBuf, Duration),
    run_id: String,
    mode: KillMode,
    tx: Sender<Event>,
    nudge: Sender<()>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("top-kill".into())
        .spawn(move || {
            let req = KillRequest::new(mode, Some("wfcg top".into()));
            let result = Client::new(&socket)
                .with_timeout(timeout)
                .kill(&run_id, &req)
                .map_err(|e| e.to_string());
            let _ = tx.send(Event::KillDone(run_id, Box::new(result)));
            let _ = nudge.send(());
        })
}

#[cfg(test)]
mod tests;
