//! The dashboard's state and what each key does to it. No I/O: the loop in
//! [`super::run`] feeds it snapshots and key events and carries out the
//! [`Action`]s it returns, so all of it can be tested without a terminal.

use chrono::{DateTime, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::api::AuditRecord;
use crate::api::{KillMode, KillResult, RunInfo};

/// A run as the dashboard shows it: what the agent said, plus what was read
/// beside it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub info: RunInfo,
    /// `memory.current` of the run's cgroup; `None` without the memory controller.
    pub memory_bytes: Option<u64>,
    /// CPU use since the previous refresh, in percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Whether `info.sections` was scanned (the run list leaves it empty).
    pub sections_known: bool,
}

/// The agent process's own resource use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentUsage {
    pub pid: i32,
    pub version: String,
    /// CPU use since the previous refresh, in percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Total CPU time (user + system), in seconds.
    pub cpu_secs: Option<f64>,
    /// Resident memory (`VmRSS`).
    pub rss_bytes: Option<u64>,
}

/// Everything one refresh read.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub taken_at: DateTime<Utc>,
    /// Live runs, then runs seen ending lately (greyed).
    pub runs: Vec<RunRow>,
    /// Latest kill attempts (`kill`, `auto_kill`), newest first.
    pub kills: Vec<AuditRecord>,
    /// Why the kills could not be read, when they could not.
    pub kills_error: Option<String>,
    pub agent: Option<AgentUsage>,
    /// Workflows whose circuit breaker is open.
    pub breakers_open: Vec<String>,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            taken_at: DateTime::<Utc>::UNIX_EPOCH,
            runs: Vec::new(),
            kills: Vec::new(),
            kills_error: None,
            agent: None,
            breakers_open: Vec::new(),
        }
    }
}

/// What the keyboard is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter; Enter applies `draft`, Esc keeps the old filter.
    Filter {
        draft: String,
    },
    /// Asking y/n before killing `run_id`.
    Confirm {
        run_id: String,
        mode: KillMode,
    },
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    Kill { run_id: String, mode: KillMode },
}

/// How a status-line message is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Info,
    Good,
    Bad,
}

/// How many refreshes a message stays (the kills pane keeps the history).
pub const MESSAGE_REFRESHES: u32 = 5;

/// The dashboard's whole state.
#[derive(Debug, Clone)]
pub struct App {
    pub snapshot: Snapshot,
    /// Why the last refresh failed (the snapshot shown is older).
    pub error: Option<String>,
    /// The selected run, by id, so refreshes that reorder runs keep it.
    selected: Option<String>,
    /// The filter in force (case-insensitive substring).
    pub filter: String,
    pub mode: Mode,
    /// The last thing to tell the user (a kill's result, a refusal), shown
    /// for [`MESSAGE_REFRESHES`] refreshes.
    pub message: Option<(String, Tone)>,
    /// Refreshes since the message was set.
    message_age: u32,
    /// Runs with a kill under way from this dashboard.
    pub killing: Vec<String>,
}

impl Default for App {
    fn default() -> App {
        App::new()
    }
}

impl App {
    pub fn new() -> App {
        App {
            snapshot: Snapshot::default(),
            error: None,
            selected: None,
            filter: String::new(),
            mode: Mode::Normal,
            message: None,
            message_age: 0,
            killing: Vec::new(),
        }
    }

    /// Takes a refresh: a new snapshot, or why there is none.
    pub fn update(&mut self, snapshot: Result<Snapshot, String>) {
        match snapshot {
            Ok(s) => {
                self.snapshot = s;
                self.error = None;
                self.message_age += 1;
                if self.message_age > MESSAGE_REFRESHES {
                    self.message = None;
                }
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Takes the outcome of a kill started from here.
    pub fn kill_done(&mut self, run_id: &str, result: Result<KillResult, String>) {
        self.killing.retain(|id| id != run_id);
        self.message_age = 0;
        self.message = Some(match result {
            Ok(r) if r.success => (r.message, Tone::Good),
            Ok(r) => (r.message, Tone::Bad),
            Err(e) => (format!("{run_id}: {e}"), Tone::Bad),
        });
    }

    /// The runs the filter lets through, in order.
    pub fn visible(&self) -> Vec<&RunRow> {
        let needle = self.filter.to_lowercase();
        self.snapshot
            .runs
            .iter()
            .filter(|r| needle.is_empty() || matches(r, &needle))
            .collect()
    }

    /// The index of the selected run among [`Self::visible`] (the first one when
    /// the selected run is gone or filtered out).
    pub fn selected_index(&self) -> Option<usize> {
        let visible = self.visible();
        if visible.is_empty() {
            return None;
        }
        let at = self
            .selected
            .as_ref()
            .and_then(|id| visible.iter().position(|r| &r.info.run_id == id));
        Some(at.unwrap_or(0))
    }

    /// The selected run, if any run is visible.
    pub fn selected(&self) -> Option<&RunRow> {
        let i = self.selected_index()?;
        self.visible().get(i).copied()
    }

    /// Selects the visible run `delta` rows away from the selected one (clamped).
    fn move_selection(&mut self, delta: isize) {
        let visible = self.visible();
        if visible.is_empty() {
            return;
        }
        let cur = self.selected_index().unwrap_or(0) as isize;
        let to = (cur + delta).clamp(0, visible.len() as isize - 1) as usize;
        self.selected = Some(visible[to].info.run_id.clone());
    }

    /// Handles one key; returns what the loop must do.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let before = self.message.clone();
        let action = self.handle_key(key);
        if self.message != before {
            self.message_age = 0;
        }
        action
    }

    fn handle_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            return Action::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.on_normal_key(key),
            Mode::Filter { mut draft } => {
                match key.code {
                    KeyCode::Enter => {
                        self.filter = draft.trim().to_string();
                        self.message = None;
                    }
                    KeyCode::Esc => {}
                    KeyCode::Backspace => {
                        draft.pop();
                        self.mode = Mode::Filter { draft };
                    }
                    KeyCode::Char('u') if ctrl => {
                        self.mode = Mode::Filter {
                            draft: String::new(),
                        }
                    }
                    KeyCode::Char(c) if !ctrl => {
                        draft.push(c);
                        self.mode = Mode::Filter { draft };
                    }
                    _ => self.mode = Mode::Filter { draft },
                }
                Action::None
            }
            Mode::Confirm { run_id, mode } => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => {
                    if !self.killing.contains(&run_id) {
                        self.killing.push(run_id.clone());
                    }
                    self.message = Some((format!("killing {run_id} ({mode})…"), Tone::Info));
                    Action::Kill { run_id, mode }
                }
                _ => {
                    self.message = Some((format!("{run_id} not killed"), Tone::Info));
                    Action::None
                }
            },
        }
    }

    fn on_normal_key(&mut self, key: KeyEvent) -> Action {
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Up => self.move_selection(-1),
            KeyCode::Down => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home => self.move_selection(isize::MIN / 2),
            KeyCode::End => self.move_selection(isize::MAX / 2),
            KeyCode::Char('/') => {
                self.mode = Mode::Filter {
                    draft: self.filter.clone(),
                }
            }
            KeyCode::Esc if !self.filter.is_empty() => {
                self.filter.clear();
                self.message = Some(("filter cleared".into(), Tone::Info));
            }
            KeyCode::Char(c @ ('k' | 'K')) => {
                let mode = KillMode::from_flags(c == 'K', false);
                match self.selected() {
                    None => self.message = Some(("no run selected".into(), Tone::Info)),
                    Some(r) if !r.info.status.is_live() => {
                        self.message = Some((
                            format!("{} has ended ({})", r.info.run_id, r.info.status),
                            Tone::Info,
                        ))
                    }
                    Some(r) => {
                        let run_id = r.info.run_id.clone();
                        self.selected = Some(run_id.clone());
                        self.mode = Mode::Confirm { run_id, mode };
                    }
                }
            }
            _ => {}
        }
        Action::None
    }
}

/// Whether a run matches a lowercased filter: its id, workflow, owner, status,
/// STATUS= text or command contains it.
fn matches(r: &RunRow, needle: &str) -> bool {
    let i = &r.info;
    let fields = [
        Some(i.run_id.as_str()),
        i.workflow.as_deref(),
        i.owner.as_deref(),
        Some(i.status.as_str()),
        i.status_text.as_deref(),
    ];
    fields
        .into_iter()
        .flatten()
        .any(|f| f.to_lowercase().contains(needle))
        || i.command.join(" ").to_lowercase().contains(needle)
}
