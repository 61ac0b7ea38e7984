//! The terminal: raw mode and the alternate screen while the dashboard runs,
//! restored on every way out — return, error, panic (any thread) and the
//! signals that would otherwise end the process with the terminal left raw.

use std::io::{self, Stdout, stdout};
use std::sync::Once;
use std::sync::mpsc::Sender;

use crossterm::cursor::{Hide, Show};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;

/// Puts the terminal back: raw mode off, main screen, cursor shown. Safe to
/// call more than once and when the terminal was never set up.
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), LeaveAlternateScreen, Show);
}

/// Restores the terminal when dropped.
struct RestoreOnDrop;

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        restore();
    }
}

/// The terminal in dashboard mode; dropping it restores the terminal.
pub struct Tui {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
    _restore: RestoreOnDrop,
}

impl Tui {
    /// Raw mode, alternate screen, hidden cursor; restores what was done so far
    /// if a step fails.
    pub fn enter() -> io::Result<Tui> {
        install_panic_hook();
        let restore = RestoreOnDrop;
        enable_raw_mode()?;
        execute!(stdout(), EnterAlternateScreen, Hide)?;
        let terminal = Terminal::new(CrosstermBackend::new(stdout()))?;
        Ok(Tui {
            terminal,
            _restore: restore,
        })
    }
}

/// A panic anywhere restores the terminal before the panic message is printed,
/// so the message is readable and the shell usable.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

/// Sends the number of the first SIGTERM, SIGHUP or SIGINT that arrives (raw
/// mode turns Ctrl-C into a key, but `kill -INT` still comes as a signal), so
/// the loop can restore the terminal and exit 128+N. The handlers are in place
/// when this returns.
pub fn watch_signals(tx: Sender<i32>) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut sigs = rt.block_on(async {
        Ok::<_, io::Error>([
            (libc::SIGTERM, signal(SignalKind::terminate())?),
            (libc::SIGHUP, signal(SignalKind::hangup())?),
            (libc::SIGINT, signal(SignalKind::interrupt())?),
        ])
    })?;
    std::thread::Builder::new()
        .name("top-signals".into())
        .spawn(move || {
            rt.block_on(async move {
                let [(t, term), (h, hup), (i, int)] = &mut sigs;
                let n = tokio::select! {
                    _ = term.recv() => *t,
                    _ = hup.recv() => *h,
                    _ = int.recv() => *i,
                };
                let _ = tx.send(n);
            })
        })?;
    Ok(())
}
