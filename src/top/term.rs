//! The terminal: raw mode and the alternate screen while the dashboard runs,
//! restored on every way out — return, error, panic (any thread) and the
//! signals that would otherwise end the process with the terminal left raw —
//! and the terminal's loss: a hung-up terminal ends the dashboard, it is never
//! read in a loop (crossterm's reader retries a read that fails with EIO forever).

use std::io::{self, Stdout, stdout};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Once;
use std::sync::mpsc::Sender;
use std::time::Duration;

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

/// The terminal the keys come from, as crossterm reads it: stdin when it is a
/// terminal, else `/dev/tty`.
pub enum Input {
    Stdin,
    Tty(OwnedFd),
}

/// What the terminal has for the loop after a wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// Nothing within the wait.
    Idle,
    /// Input to read.
    Input,
    /// Hung up or gone (its pty closed, its tmux killed): nothing will come.
    Gone,
}

impl Input {
    pub fn open() -> io::Result<Input> {
        use std::io::IsTerminal;
        if io::stdin().is_terminal() {
            return Ok(Input::Stdin);
        }
        let tty = std::fs::OpenOptions::new().read(true).open("/dev/tty")?;
        Ok(Input::Tty(tty.into()))
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Input::Stdin => rustix::stdio::stdin(),
            Input::Tty(fd) => fd.as_fd(),
        }
    }

    /// `poll(2)` of the terminal for up to `timeout`: a hung-up terminal polls
    /// POLLHUP (or POLLERR, POLLNVAL) at once, and then is not to be read.
    pub fn wait(&self, timeout: Duration) -> io::Result<Ready> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let fd = self.fd();
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        });
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => Ok(Ready::Idle),
            Ok(_) => {
                let got = fds[0].revents();
                if got.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                    Ok(Ready::Gone)
                } else {
                    Ok(Ready::Input)
                }
            }
            Err(rustix::io::Errno::INTR) => Ok(Ready::Idle),
            Err(e) => Err(e.into()),
        }
    }
}

/// How long the loop has to act on a signal before the signal thread ends the
/// process itself (terminal restored as far as it still can be).
const SIGNAL_BACKSTOP: Duration = Duration::from_secs(1);

/// Sends the number of the first SIGTERM, SIGHUP or SIGINT that arrives (raw
/// mode turns Ctrl-C into a key, but `kill -INT` still comes as a signal), so
/// the loop can restore the terminal and exit 128+N. If the loop has not ended
/// the process within [`SIGNAL_BACKSTOP`] (stuck in a read or a draw), this
/// thread restores the terminal and exits 128+N itself: a signal always ends
/// `wfcg top`. The handlers are in place when this returns.
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
                n
            })
        })
        .map(|handle| {
            std::thread::Builder::new()
                .name("top-backstop".into())
                .spawn(move || {
                    let Ok(n) = handle.join() else { return };
                    std::thread::sleep(SIGNAL_BACKSTOP);
                    restore();
                    #[allow(
                        clippy::exit,
                        reason = "the loop did not end the process on a signal in time: \
                                  it is stuck, so the process ends from here"
                    )]
                    std::process::exit(128 + n);
                })
        })??;
    Ok(())
}
