//! `wfcg top` in a real terminal: tmux runs it at 80×24, the test reads the
//! screen with `capture-pane` and types with `send-keys`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::util::{CommandExt, TestAgent, WFCG, wait_until};

/// A tmux server of our own (`tmux -L NAME`), killed when dropped so a failing
/// test leaves no server or `wfcg top` behind.
pub(crate) struct Tmux {
    name: String,
    /// The server's socket file, removed when dropped (tmux leaves it).
    socket: Option<PathBuf>,
}

impl Tmux {
    /// Starts `command` (through `sh -c`) in a detached session of `w`×`h`.
    pub(crate) fn start(w: u16, h: u16, command: &str) -> Tmux {
        static N: AtomicUsize = AtomicUsize::new(0);
        let mut tmux = Tmux {
            name: format!(
                "wfcg-top-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            socket: None,
        };
        let out = tmux
            .cmd()
            .args(["new-session", "-d", "-s", "top"])
            .args(["-x", &w.to_string(), "-y", &h.to_string()])
            .arg(command)
            .output()
            .expect("running tmux (is it installed?)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = tmux
            .cmd()
            .args(["display-message", "-p", "#{socket_path}"])
            .output()
            .expect("tmux display-message");
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        tmux.socket = (!path.is_empty()).then(|| PathBuf::from(path));
        tmux
    }

    pub(crate) fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.name])
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::null());
        cmd
    }

    /// The screen's text.
    fn capture(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", "top"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types keys (tmux key names: `k`, `y`, `Down`, `Enter`, …).
    fn send(&self, key: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", "top", key])
            .status()
            .expect("tmux send-keys");
        assert!(status.success(), "tmux send-keys {key}");
    }

    fn session_alive(&self) -> bool {
        self.cmd()
            .args(["has-session", "-t", "top"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits until the screen satisfies `cond`; fails with the screen otherwise.
    pub(crate) fn wait_screen(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let mut screen = String::new();
        let ok = wait_until(Duration::from_secs(15), || {
            screen = self.capture();
            cond(&screen)
        });
        assert!(ok, "waiting for {what}; the screen:\n{screen}");
        screen
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").stderr(Stdio::null()).status();
        if let Some(socket) = &self.socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// `VAR='value' ... wfcg top`, for tmux's shell; then its exit status goes to
/// `dir/top.exit` and the terminal's settings after it to `dir/top.stty`, and
/// `tail` runs.
pub(crate) fn top_command(agent: &TestAgent, tail: &str) -> String {
    let quote = |p: &Path| format!("'{}'", p.display());
    let env: Vec<String> = agent
        .env()
        .iter()
        .map(|(k, v)| format!("{k}={}", quote(v)))
        .collect();
    let dir = agent.dir.path();
    format!(
        "{} {} top; code=$?; stty -a > {}; echo $code > {}; {tail}",
        env.join(" "),
        quote(Path::new(WFCG)),
        quote(&dir.join("top.stty")),
        quote(&dir.join("top.exit")),
    )
}

/// Waits for `wfcg top`'s exit status (see [`top_command`]).
pub(crate) fn wait_exit(agent: &TestAgent, tmux: &Tmux) -> String {
    let file = agent.dir.path().join("top.exit");
    let mut code = String::new();
    let exited = wait_until(Duration::from_secs(10), || {
        code = std::fs::read_to_string(&file).unwrap_or_default();
        !code.is_empty()
    });
    assert!(exited, "wfcg top did not exit; screen:\n{}", tmux.capture());
    code.trim().to_string()
}

/// Asserts the terminal was given back: canonical mode and echo on (not raw).
fn assert_terminal_restored(agent: &TestAgent) {
    let stty = std::fs::read_to_string(agent.dir.path().join("top.stty")).unwrap();
    let words: Vec<&str> = stty.split_whitespace().collect();
    for want in ["icanon", "echo", "isig"] {
        assert!(
            words.contains(&want),
            "{want} is off after wfcg top: {stty}"
        );
    }
}

#[test]
fn top_shows_a_run_kills_it_on_k_y_and_quits_on_q() {
    crate::require_privileges!();
    let t0 = Instant::now();
    let agent = TestAgent::start();
    let run = agent.start_run(&[], "sleep 300");
    let tmux = Tmux::start(80, 24, &top_command(&agent, ""));

    let screen = tmux.wait_screen("the run in the table", |s| {
        s.lines()
            .any(|l| l.starts_with("> ") && l.contains(&run.id))
    });
    assert!(screen.contains("wfcg top"), "{screen}");
    assert!(screen.contains("Latest kills"), "{screen}");
    let shown = t0.elapsed();

    tmux.send("k");
    let question = format!("Kill {} (graceful)? y/n", run.id);
    tmux.wait_screen("the y/n question", |s| s.contains(&question));
    tmux.send("y");

    assert!(
        agent.wait_status(&run.id, "killed"),
        "run not killed: {}\nscreen:\n{}",
        agent.status(&run.id),
        tmux.capture()
    );
    let screen = tmux.wait_screen("the run killed, in the table and the kills pane", |s| {
        let table = s
            .lines()
            .any(|l| l.contains(&run.id) && l.contains(" killed ") && !l.contains("graceful"));
        let pane = s
            .lines()
            .any(|l| l.contains(" kill ") && l.contains(&run.id) && l.contains("killed"));
        table && pane
    });
    assert!(
        screen.contains("nothing left"),
        "kill result shown:\n{screen}"
    );
    agent.assert_run_gone(&run);
    let killed = t0.elapsed();

    tmux.send("q");
    assert_eq!(
        wait_exit(&agent, &tmux),
        "0",
        "wfcg top's exit status after q"
    );
    assert_terminal_restored(&agent);
    assert!(
        wait_until(Duration::from_secs(5), || !tmux.session_alive()),
        "the tmux session did not end"
    );
    eprintln!(
        "top: run shown after {shown:?}, killed and shown after {killed:?}, done after {:?}",
        t0.elapsed()
    );
}

#[test]
fn top_restores_the_terminal_on_sigterm() {
    crate::require_privileges!();
    let agent = TestAgent::start();
    let tmux = Tmux::start(80, 24, &top_command(&agent, "sleep 60"));
    tmux.wait_screen("the dashboard", |s| s.contains("Latest kills"));
    let me = format!("{WFCG} top");
    let socket = agent.socket.display().to_string();
    let top: Vec<i32> = crate::util::pids_with_env("WFCG_SOCKET", &socket)
        .into_iter()
        .filter(|&p| crate::util::cmdline(p) == me)
        .collect();
    assert_eq!(top.len(), 1, "wfcg top processes: {top:?}");
    let pid = rustix::process::Pid::from_raw(top[0]).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    assert_eq!(wait_exit(&agent, &tmux), "143", "128 + SIGTERM");
    assert_terminal_restored(&agent);
    // Back on the main screen, with the cursor shown.
    let out = tmux
        .cmd()
        .args([
            "display-message",
            "-p",
            "-t",
            "top",
            "#{alternate_on} #{cursor_flag}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0 1");
}

#[test]
fn top_without_an_agent_fails_before_taking_the_screen() {
    // No privileges needed: nothing answers on the socket.
    let dir = tempfile::tempdir().unwrap();
    let exit_file = dir.path().join("top.exit");
    let command = format!(
        "WFCG_SOCKET='{}' '{WFCG}' top 2> '{}'; echo $? > '{}'",
        dir.path().join("none.sock").display(),
        dir.path().join("stderr").display(),
        exit_file.display()
    );
    let tmux = Tmux::start(80, 24, &command);
    assert!(
        wait_until(Duration::from_secs(10), || exit_file.exists()
            && !std::fs::read_to_string(&exit_file).unwrap().is_empty()),
        "screen:\n{}",
        tmux.capture()
    );
    assert_eq!(std::fs::read_to_string(&exit_file).unwrap().trim(), "5");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(stderr.contains("no wfcg agent answers"), "{stderr}");
}

#[test]
fn top_needs_a_terminal() {
    let out = Command::new(WFCG)
        .arg("top")
        .stdin(Stdio::null())
        .expect_code(2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"));
}
