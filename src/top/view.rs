//! Drawing the dashboard from an [`App`]: pure rendering into a ratatui
//! [`Frame`], so it can be checked with a `TestBackend`.
//!
//! From the top: a header (run counts, the agent's own CPU and memory), the runs
//! table, a detail line for the selected run, the latest kills, and a footer with
//! the keys, the filter being typed or a y/n question. When the terminal is
//! small, the kills pane goes first, then the detail line and the header, and
//! narrow terminals lose columns, least useful first; the footer stays, so a
//! question is always visible.
//!
//! Every text that comes from the agent (run ids, workflow names, owners,
//! commands, status texts, reasons, paths, kill messages, errors) is escaped
//! with [`crate::output::escape`] where it is put into a cell or a span:
//! ratatui drops control characters silently, and shows nothing of what was
//! there.
//!
//! One file over 600 lines on purpose: the panes share one layout decision
//! (what to drop first when the terminal is small), which must be read whole.

use chrono::{DateTime, Local, Utc};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Table, TableState};

use super::app::{App, Mode, RunRow, Tone};
use crate::api::AuditRecord;
use crate::api::{RunInfo, SectionKind};
use crate::output::escape;

/// A user's text as the dashboard shows it: escaped, one line.
fn shown(text: &str) -> String {
    escape(text).into_owned()
}

/// The style of a stuck run's row.
pub const STUCK: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
/// The style of a run suspected of an initialization loop.
pub const LOOPING: Style = Style::new().fg(Color::Yellow);
/// The style of a run that has ended.
pub const ENDED: Style = Style::new().fg(Color::DarkGray);

/// Draws the whole dashboard into the frame.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width == 0 || area.height == 0 {
        return;
    }
    let h = area.height;
    let header = u16::from(h >= 3);
    let detail = match h {
        20.. => 2,
        10.. => 1,
        _ => 0,
    };
    let kills = match h {
        22.. => 6,
        16.. => 4,
        _ => 0,
    };
    let [header_area, runs_area, detail_area, kills_area, footer_area] = Layout::vertical([
        Constraint::Length(header),
        Constraint::Fill(1),
        Constraint::Length(detail),
        Constraint::Length(kills),
        Constraint::Length(1),
    ])
    .areas(area);
    if header > 0 {
        draw_header(frame, header_area, app);
    }
    draw_runs(frame, runs_area, app);
    if detail > 0 {
        draw_detail(frame, detail_area, app);
    }
    if kills > 0 {
        draw_kills(frame, kills_area, app);
    }
    draw_footer(frame, footer_area, app);
}

fn draw_header(frame: &mut Frame, area: Rect, app: &App) {
    let s = &app.snapshot;
    let live = s.runs.iter().filter(|r| r.info.status.is_live()).count();
    let stuck = s.runs.iter().filter(|r| is_stuck(r)).count();
    let mut spans = vec![Span::from(" wfcg top").bold()];
    let sep = || Span::from(" │ ").dark_gray();
    if let Some(e) = &app.error {
        spans.push(sep());
        spans.push(Span::styled(shown(e), STUCK));
    }
    spans.push(sep());
    spans.push(Span::from(format!("{live} live")));
    if stuck > 0 {
        spans.push(Span::from(", "));
        spans.push(Span::styled(format!("{stuck} stuck"), STUCK));
    }
    if !s.breakers_open.is_empty() {
        spans.push(sep());
        spans.push(Span::styled(
            format!("breaker open: {}", shown(&s.breakers_open.join(", "))),
            STUCK,
        ));
    }
    if let Some(a) = &s.agent {
        spans.push(sep());
        spans.push(Span::from(format!(
            "agent {} cpu {} mem {}",
            a.pid,
            percent(a.cpu_percent),
            a.rss_bytes.map(bytes).unwrap_or_else(|| "-".into())
        )));
    }
    if s.taken_at != DateTime::<Utc>::UNIX_EPOCH {
        spans.push(sep());
        spans.push(Span::from(
            s.taken_at
                .with_timezone(&Local)
                .format("%H:%M:%S")
                .to_string(),
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A column of the runs table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Col {
    Run,
    Workflow,
    Owner,
    Status,
    Age,
    Beat,
    Procs,
    Cpu,
    Time,
    Mem,
    Crit,
    Progress,
    Next,
    Phase,
}

impl Col {
    /// The order columns are shown in, left to right.
    const SHOWN: [Col; 14] = [
        Col::Run,
        Col::Workflow,
        Col::Owner,
        Col::Status,
        Col::Age,
        Col::Beat,
        Col::Procs,
        Col::Cpu,
        Col::Time,
        Col::Mem,
        Col::Crit,
        Col::Progress,
        Col::Next,
        Col::Phase,
    ];
    /// The order columns are given room in: what matters most first.
    const PRIORITY: [Col; 14] = [
        Col::Run,
        Col::Status,
        Col::Age,
        Col::Cpu,
        Col::Mem,
        Col::Beat,
        Col::Procs,
        Col::Crit,
        Col::Phase,
        Col::Progress,
        Col::Next,
        Col::Time,
        Col::Workflow,
        Col::Owner,
    ];

    fn title(self) -> &'static str {
        match self {
            Col::Run => "RUN",
            Col::Workflow => "WORKFLOW",
            Col::Owner => "OWNER",
            Col::Status => "STATUS",
            Col::Age => "AGE",
            Col::Beat => "BEAT",
            Col::Procs => "PROCS",
            Col::Cpu => "CPU%",
            Col::Time => "CPU TIME",
            Col::Mem => "MEM",
            Col::Crit => "CRIT",
            Col::Progress => "PROGRESS",
            Col::Next => "DEADLINE",
            Col::Phase => "PHASE",
        }
    }

    /// The column's width (the least, for the phase, which takes what is left).
    fn width(self, w: Widths) -> u16 {
        match self {
            Col::Run => w.run,
            Col::Workflow => 10,
            Col::Owner => 8,
            Col::Status => w.status,
            Col::Age | Col::Beat | Col::Mem => 6,
            Col::Procs | Col::Cpu => 5,
            Col::Time => 8,
            Col::Crit => 4,
            Col::Progress | Col::Next => 11,
            Col::Phase => 8,
        }
    }

    fn right_aligned(self) -> bool {
        matches!(
            self,
            Col::Age | Col::Beat | Col::Procs | Col::Cpu | Col::Time | Col::Mem | Col::Crit
        )
    }

    /// The text of a run's cell, escaped.
    fn cell(self, r: &RunRow, now: DateTime<Utc>) -> String {
        shown(&self.raw_cell(r, now))
    }

    fn raw_cell(self, r: &RunRow, now: DateTime<Utc>) -> String {
        let i = &r.info;
        match self {
            Col::Run => i.run_id.clone(),
            Col::Workflow => i.workflow.clone().unwrap_or_else(|| "-".into()),
            Col::Owner => i.owner_display(),
            Col::Status => {
                let mark = if is_stuck(r) || i.loop_suspected.is_some() {
                    "!"
                } else {
                    ""
                };
                format!("{mark}{}", i.status)
            }
            Col::Age => crate::duration::short(i.age_secs),
            Col::Beat => i
                .last_heartbeat
                .map(|t| crate::duration::short((now - t).num_milliseconds() as f64 / 1e3))
                .unwrap_or_else(|| "-".into()),
            Col::Procs => i.processes.to_string(),
            Col::Cpu => percent(r.cpu_percent),
            Col::Time => i
                .cpu_usec
                .map(|u| crate::duration::short(u as f64 / 1e6))
                .unwrap_or_else(|| "-".into()),
            Col::Mem => r.memory_bytes.map(bytes).unwrap_or_else(|| "-".into()),
            Col::Crit if !r.sections_known || !i.status.is_live() => "-".into(),
            Col::Crit => open_sections(i).len().to_string(),
            Col::Progress => i
                .progress_ago(now)
                .filter(|_| i.status.is_live())
                .map_or("-".into(), |(kind, ago)| {
                    format!("{kind} {}", crate::duration::short(ago))
                }),
            Col::Next => i.next_deadline(now).map_or("-".into(), |(name, left)| {
                let sign = if left < 0.0 { "-" } else { "" };
                format!("{name} {sign}{}", crate::duration::short(left.abs()))
            }),
            Col::Phase => i.status_text.clone().unwrap_or_default(),
        }
    }
}

/// Widths of the columns that depend on what is shown.
#[derive(Clone, Copy, Debug)]
struct Widths {
    run: u16,
    status: u16,
}

/// The columns that fit in `width`, in the order they are shown. The run id
/// gives up to 6 columns so the status fits beside it, and shrinks to 16 (the
/// length of generated ids) to make room for the phase.
fn columns(width: u16, want: Widths) -> (Vec<Col>, Widths) {
    let (cols, w) = pick_columns(width, want);
    if cols.contains(&Col::Phase) || w.run <= 16 {
        return (cols, w);
    }
    let used: u16 = cols.iter().map(|c| c.width(w) + 1).sum();
    let short = (Col::Phase.width(w) + 1).saturating_sub(width.saturating_sub(used));
    let shorter = Widths {
        run: w.run.saturating_sub(short).max(16),
        ..w
    };
    let (retry, rw) = pick_columns(width, shorter);
    if retry.contains(&Col::Phase) {
        (retry, rw)
    } else {
        (cols, w)
    }
}

fn pick_columns(width: u16, want: Widths) -> (Vec<Col>, Widths) {
    let mut w = want;
    if w.run + 1 + w.status > width {
        w.run = width
            .saturating_sub(w.status + 1)
            .max(w.run.saturating_sub(6));
    }
    if w.run + 1 + w.status > width {
        w.status = width.saturating_sub(w.run + 1).max(w.status.min(7));
    }
    w.run = w.run.min(width).max(1);
    let mut used = 0u16;
    let mut chosen = Vec::new();
    for col in Col::PRIORITY {
        let need = col.width(w) + u16::from(!chosen.is_empty());
        if used + need <= width {
            used += need;
            chosen.push(col);
        } else if col == Col::Run || col == Col::Status {
            // Too narrow for the essentials: what there is goes to the run id.
            break;
        }
    }
    let shown = Col::SHOWN
        .into_iter()
        .filter(|c| chosen.contains(c))
        .collect();
    (shown, w)
}

fn draw_runs(frame: &mut Frame, area: Rect, app: &App) {
    if area.height == 0 {
        return;
    }
    let visible = app.visible();
    let total = app.snapshot.runs.len();
    let mut title = if app.filter.is_empty() {
        format!(" Runs ({total}) ")
    } else {
        format!(
            " Runs ({} of {total}, filter \"{}\") ",
            visible.len(),
            shown(&app.filter)
        )
    };
    if visible.is_empty() && total > 0 {
        title.push_str("— none match ");
    }
    // A title line only where there is room for the rows too.
    let block = if area.height >= 3 {
        Block::new()
            .borders(Borders::TOP)
            .border_style(Style::new().dark_gray())
            .title(Line::from(title).bold().fg(Color::Reset))
    } else {
        Block::new()
    };
    let inner_width = area.width.saturating_sub(2); // the highlight symbol
    let now = app.snapshot.taken_at;
    let longest = |col: Col, least: usize, most: usize| {
        visible
            .iter()
            .map(|r| col.cell(r, now).chars().count())
            .max()
            .unwrap_or(least)
            .clamp(least, most) as u16
    };
    let want = Widths {
        // Up to a quarter of a wide terminal; 64 is the longest a run id can be.
        run: longest(Col::Run, 6, (inner_width / 4).clamp(24, 64) as usize),
        status: longest(Col::Status, 6, 13),
    };
    let (cols, cw) = columns(inner_width, want);
    let phase_width = {
        let fixed: u16 = cols
            .iter()
            .filter(|c| **c != Col::Phase)
            .map(|c| c.width(cw) + 1)
            .sum();
        inner_width.saturating_sub(fixed)
    };
    let widths: Vec<Constraint> = cols
        .iter()
        .map(|c| match c {
            Col::Phase => Constraint::Length(phase_width),
            c => Constraint::Length(c.width(cw)),
        })
        .collect();
    let cell_text = |c: Col, text: String| {
        let w = if c == Col::Phase {
            phase_width
        } else {
            c.width(cw)
        } as usize;
        if c.right_aligned() {
            format!("{text:>w$}")
        } else {
            text
        }
    };
    let header = Row::new(
        cols.iter()
            .map(|c| cell_text(*c, c.title().to_string()))
            .collect::<Vec<_>>(),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = visible.iter().map(|r| {
        Row::new(
            cols.iter()
                .map(|c| cell_text(*c, c.cell(r, now)))
                .collect::<Vec<_>>(),
        )
        .style(row_style(r))
    });
    let mut table = Table::new(rows, widths).block(block);
    // Below 3 lines the rows need the room more than the column titles.
    if area.height >= 3 {
        table = table.header(header);
    }
    let table = table
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol("> ");
    let mut state = TableState::new().with_selected(app.selected_index());
    frame.render_stateful_widget(table, area, &mut state);
    if visible.is_empty() && area.height >= 3 {
        let msg = if total == 0 {
            "no live runs"
        } else {
            "no run matches the filter"
        };
        let y = area.y + 2.min(area.height - 1);
        frame.render_widget(
            Paragraph::new(format!("  {msg}")).dark_gray(),
            Rect::new(area.x, y, area.width, 1),
        );
    }
}

/// How a run's row looks: stuck red, loop suspected yellow, ended grey.
pub fn row_style(r: &RunRow) -> Style {
    if is_stuck(r) {
        STUCK
    } else if r.info.loop_suspected.is_some() {
        LOOPING
    } else if !r.info.status.is_live() {
        ENDED
    } else {
        Style::new()
    }
}

/// A run's open critical sections, each once however many processes hold it.
fn open_sections(i: &RunInfo) -> Vec<(SectionKind, &str)> {
    let mut out: Vec<(SectionKind, &str)> = Vec::new();
    for s in &i.sections {
        if !out.contains(&(s.kind, s.path.as_str())) {
            out.push((s.kind, s.path.as_str()));
        }
    }
    out
}

/// Whether a run is stuck: the agent's one predicate says so (overdue,
/// unkillable, a suspected initialization loop).
pub fn is_stuck(r: &RunRow) -> bool {
    r.info.status.is_live() && r.info.stuck.is_some()
}

fn draw_detail(frame: &mut Frame, area: Rect, app: &App) {
    let Some(r) = app.selected() else {
        return;
    };
    let i = &r.info;
    let mut about = vec![Span::from(format!(" {} ", shown(&i.run_id))).bold()];
    let mut facts = Vec::new();
    if let Some(w) = &i.workflow {
        facts.push(format!("workflow {w}"));
    }
    facts.push(format!("owner {}", i.owner_display()));
    if let Some(p) = i.pid {
        facts.push(format!("pid {p}"));
    }
    facts.push(format!("$ {}", i.command.join(" ")));
    about.push(Span::from(shown(&facts.join("  "))));

    let mut notes: Vec<Span> = Vec::new();
    if let Some(s) = &i.stuck {
        notes.push(Span::styled(format!(" ! {}", shown(s)), STUCK));
    }
    if let Some(l) = &i.loop_suspected {
        notes.push(Span::styled(format!(" ! {}", shown(l)), LOOPING));
    }
    if let Some(l) = i.retrying.as_ref().filter(|l| i.stuck.as_ref() != Some(*l)) {
        notes.push(Span::styled(format!(" ! {}", shown(l)), LOOPING));
    }
    for (kind, path) in open_sections(i) {
        let holders: Vec<_> = i
            .sections
            .iter()
            .filter(|s| s.kind == kind && s.path == path)
            .collect();
        let pids: Vec<String> = holders.iter().map(|s| s.pid.to_string()).collect();
        let secs = holders.iter().map(|s| s.open_secs).fold(0.0, f64::max);
        notes.push(Span::from(format!(
            " {}: {} (pid {}, {})",
            kind.as_str(),
            shown(path),
            pids.join(","),
            crate::duration::short(secs)
        )));
    }
    if notes.is_empty() {
        let text = match (&i.kill_result, &i.ended_at) {
            (Some(k), _) => format!(" {}", k.message),
            (None, Some(t)) => format!(" {} at {}", i.status, clock_at(t)),
            _ => {
                let mut facts = Vec::new();
                if let Some(t) = &i.template {
                    facts.push(format!("template {t}"));
                }
                if let Some(cond) = &i.ready_when {
                    let verb = if i.status == crate::api::RunStatus::Initializing {
                        "waits for"
                    } else {
                        "ready when"
                    };
                    facts.push(format!("{verb} {cond}"));
                }
                if let Some(t) = &i.last_progress {
                    let kind = i.last_progress_kind.as_deref().unwrap_or("?");
                    facts.push(format!("progress ({kind}) {}", clock_at(t)));
                }
                let deadlines = [
                    ("init by", &i.init_deadline),
                    ("stall by", &i.stall_deadline),
                    ("next beat by", &i.watchdog_deadline),
                    ("ends by", &i.total_deadline),
                ];
                for (what, when) in deadlines {
                    if let Some(t) = when {
                        facts.push(format!("{what} {}", clock_at(t)));
                    }
                }
                if facts.is_empty() {
                    facts.push(format!("cgroup {}", i.cgroup));
                }
                format!(" {}", facts.join("  "))
            }
        };
        notes.push(Span::from(shown(&text)).dark_gray());
    }
    let lines = if area.height >= 2 {
        vec![Line::from(about), Line::from(notes)]
    } else if i.stuck.is_some() || i.loop_suspected.is_some() {
        vec![Line::from(notes)]
    } else {
        vec![Line::from(about)]
    };
    frame.render_widget(Paragraph::new(lines), area);
}

fn draw_kills(frame: &mut Frame, area: Rect, app: &App) {
    let block = Block::new()
        .borders(Borders::TOP)
        .border_style(Style::new().dark_gray())
        .title(Line::from(" Latest kills ").bold().fg(Color::Reset));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let s = &app.snapshot;
    let mut lines: Vec<Line> = Vec::new();
    if let Some(e) = &s.kills_error {
        lines.push(Line::styled(format!(" {}", shown(e)), STUCK));
    }
    lines.extend(
        s.kills
            .iter()
            .take(inner.height as usize)
            .map(|k| kill_line(k)),
    );
    if lines.is_empty() {
        lines.push(Line::from(" no kills yet").dark_gray());
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

/// One kill attempt as a line: time, action, actor, run, mode, outcome, reason.
fn kill_line(k: &AuditRecord) -> Line<'static> {
    let e = &k.entry;
    let time = clock(&e.time);
    let outcome_style = match e.outcome.as_str() {
        "killed" | "already_ended" | "timed_out" => Style::new().fg(Color::Green),
        "denied" | "no_such_run" | "bad_input" => Style::new().fg(Color::Yellow),
        _ => STUCK,
    };
    let mut spans = vec![
        Span::from(format!(
            " {} {:<9} {:<8} {:<16} {:<9} ",
            shown(&time),
            shown(e.action.as_str()),
            truncate(&shown(&e.actor_name), 8),
            e.run_id
                .as_deref()
                .map(|id| ellipsis(&shown(id), 16))
                .unwrap_or("-".into()),
            shown(e.mode.as_deref().unwrap_or("-")),
        )),
        Span::styled(shown(&e.outcome), outcome_style),
    ];
    if let Some(r) = &e.reason {
        spans.push(Span::from(format!("  {}", shown(r))).dark_gray());
    }
    Line::from(spans)
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App) {
    let line = match &app.mode {
        Mode::Filter { draft } => Line::from(vec![
            Span::from("/").bold(),
            Span::from(shown(draft)),
            Span::from("█").slow_blink(),
            Span::from("  Enter apply · Esc cancel").dark_gray(),
        ]),
        Mode::Confirm { run_id, mode } => Line::from(vec![
            Span::from(format!(" Kill {} ({mode})? y/n ", shown(run_id)))
                .black()
                .on_yellow()
                .bold(),
        ]),
        Mode::Normal => {
            let mut spans = Vec::new();
            if let Some((msg, tone)) = &app.message {
                let style = match tone {
                    Tone::Info => Style::new(),
                    Tone::Good => Style::new().fg(Color::Green),
                    Tone::Bad => STUCK,
                };
                spans.push(Span::styled(format!(" {} ", shown(msg)), style));
                spans.push(Span::from("│").dark_gray());
            }
            spans
                .push(Span::from(" ↑↓ select  k kill  K force kill  / filter  q quit").dark_gray());
            Line::from(spans)
        }
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// An RFC 3339 time as local `HH:MM:SS` (as given when it does not parse).
fn clock(t: &str) -> String {
    DateTime::parse_from_rfc3339(t)
        .map(|t| clock_at(&t.with_timezone(&Utc)))
        .unwrap_or_else(|_| t.to_string())
}

/// A time as local `HH:MM:SS`.
fn clock_at(t: &DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// Bytes as `512K`, `12.3M`, `1.5G` (powers of 1024).
pub fn bytes(n: u64) -> String {
    const K: f64 = 1024.0;
    let f = n as f64;
    if f < K * K {
        format!("{:.0}K", f / K)
    } else if f < K * K * K {
        format!("{:.1}M", f / (K * K))
    } else {
        format!("{:.1}G", f / (K * K * K))
    }
}

/// A CPU share in percent, or `-`.
pub fn percent(p: Option<f64>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p < 10.0 => format!("{p:.1}%"),
        Some(p) => format!("{p:.0}%"),
    }
}

/// At most `n` characters, the last one `…` when cut.
fn ellipsis(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
