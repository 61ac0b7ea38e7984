//! The dashboard drawn into ratatui's `TestBackend`: what shows at 80×24, that
//! no size makes it panic, that stuck runs stand out, and what the keys do.

use chrono::{TimeZone, Utc};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::style::{Color, Modifier};

use super::app::{Action, AgentUsage, App, Mode, RunRow, Snapshot};
use super::view;
use crate::api::{AuditEntry, AuditRecord};
use crate::api::{RunInfo, RunStatus, Section, SectionKind};

/// A time written as on the wire.
fn at(t: &str) -> chrono::DateTime<Utc> {
    crate::api::time::parse(t).unwrap()
}

fn info(id: &str, status: RunStatus) -> RunInfo {
    RunInfo {
        run_id: id.into(),
        workflow: Some("build".into()),
        owner_uid: 0,
        owner: Some("root".into()),
        status,
        pid: Some(4242),
        processes: 3,
        started_at: Some(at("2026-01-01T12:00:00Z")),
        ended_at: None,
        age_secs: 125.0,
        cpu_usec: Some(1_500_000),
        command: vec!["sh".into(), "-c".into(), "sleep 100".into()],
        exit_code: None,
        exit_signal: None,
        workspace: None,
        cgroup: format!("/sys/fs/cgroup/wfcg/runs/{id}"),
        log_path: None,
        kill_result: None,
        sections: Vec::new(),
        template: Some("default".into()),
        ready_at: None,
        ready_on: None,
        status_text: Some("compiling".into()),
        last_heartbeat: Some(at("2026-01-01T12:02:00Z")),
        init_deadline: None,
        total_deadline: None,
        watchdog_deadline: None,
        stuck: None,
        loop_suspected: None,
        adopted: None,
        waiting_for: None,
        workspace_cleanup: None,
        parent_run_id: None,
        ready_when: Some("READY=1".into()),
        stall_deadline: None,
        last_progress: Some(at("2026-01-01T12:01:50Z")),
        last_progress_kind: Some("output".into()),
        retrying: None,
        end_reason: None,
        lease_ms: None,
        lease_renewed_at: None,
        lease_expires_at: None,
    }
}

fn row(info: RunInfo) -> RunRow {
    RunRow {
        info,
        memory_bytes: Some(12 * 1024 * 1024),
        cpu_percent: Some(12.5),
        sections_known: true,
    }
}

fn kill_record(seq: i64, run: &str) -> AuditRecord {
    AuditRecord {
        seq,
        entry: AuditEntry {
            time: "2026-01-01T12:01:00Z".into(),
            actor_uid: Some(0),
            actor_name: "root".into(),
            action: crate::api::AuditAction::Kill,
            run_id: Some(run.into()),
            mode: Some(crate::api::KillMode::Graceful.to_string()),
            decision: crate::api::Decision::Allowed,
            outcome: "killed".into(),
            reason: Some("wfcg top".into()),
            ..Default::default()
        },
        prev_hash: String::new(),
        hash: String::new(),
    }
}

/// An app with three runs: one fine, one stuck, one in a `lina` workflow that
/// has been killed; and one kill in the audit trail.
fn sample() -> App {
    let mut stuck = info("run_00000000beef", RunStatus::Initializing);
    stuck.stuck = Some("initializing for 4m10s of 5m".into());
    let mut sectioned = info("run_0000000000aa", RunStatus::Running);
    sectioned.sections = vec![Section {
        kind: SectionKind::Git,
        path: "/src/.git/index.lock".into(),
        pid: 77,
        command: "git commit".into(),
        since: at("2026-01-01T12:01:59Z"),
        open_secs: 1.0,
    }];
    let mut ended = info("run_0000000dead0", RunStatus::Killed);
    ended.workflow = Some("lina".into());
    ended.status_text = None;
    let mut app = App::new();
    app.update(Ok(Snapshot {
        taken_at: Utc.with_ymd_and_hms(2026, 1, 1, 12, 2, 5).unwrap(),
        runs: vec![row(sectioned), row(stuck), row(ended)],
        kills: vec![kill_record(9, "run_0000000dead0")],
        kills_error: None,
        breakers_open: vec!["flaky".into()],
        agent: Some(AgentUsage {
            pid: 99,
            version: "0.1.0".into(),
            cpu_percent: Some(0.5),
            cpu_secs: Some(3.0),
            rss_bytes: Some(20 * 1024 * 1024),
        }),
    }));
    app
}

fn render(app: &App, w: u16, h: u16) -> Buffer {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| view::draw(f, app)).unwrap();
    t.backend().buffer().clone()
}

fn lines(buf: &Buffer) -> Vec<String> {
    let w = buf.area.width as usize;
    if w == 0 {
        return Vec::new();
    }
    buf.content()
        .chunks(w)
        .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
        .collect()
}

fn text(buf: &Buffer) -> String {
    lines(buf).join("\n")
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_keys(app: &mut App, s: &str) -> Vec<Action> {
    s.chars()
        .map(|c| app.on_key(key(KeyCode::Char(c))))
        .collect()
}

#[test]
fn shows_everything_at_80x24() {
    let app = sample();
    let buf = render(&app, 80, 24);
    let screen = text(&buf);
    for want in [
        "wfcg top",
        "2 live, 1 stuck",
        "agent 99 cpu 0.5% mem 20.0M",
        "Runs (3)",
        "RUN",
        "STATUS",
        "AGE",
        "BEAT",
        "PROCS",
        "CPU%",
        "MEM",
        "CRIT",
        "PHASE",
        "run_0000000000aa",
        "!initializing",
        "2m05s",
        "12.0M",
        "compiling",
        "Latest kills",
        "run_0000000dead0",
        "killed",
        "q quit",
    ] {
        assert!(screen.contains(want), "{want:?} not on screen:\n{screen}");
    }
    // The selected run (the first) is detailed below the table.
    assert!(screen.contains("$ sh -c sleep 100"), "{screen}");
    // Heartbeat 5 s before the snapshot; one critical section.
    let first = lines(&buf)
        .into_iter()
        .find(|l| l.contains("run_0000000000aa"))
        .unwrap();
    assert!(first.contains(" 5s"), "{first}");
    assert!(first.contains(" 1 "), "{first}");
}

#[test]
fn never_panics_at_any_size() {
    let app = sample();
    // Every tiny size, then a sparser grid up to a large terminal (each new size
    // costs a layout solve, slow in debug builds).
    let widths = (0..=24).chain([30, 40, 57, 66, 77, 78, 79, 80, 81, 100, 160, 300]);
    for w in widths {
        let heights = (0..=12).chain([15, 16, 19, 20, 21, 22, 24, 40, 80]);
        for h in heights {
            render(&app, w, h);
        }
    }
    let mut empty = App::new();
    render(&empty, 10, 3);
    empty.update(Err("no wfcg agent answers".into()));
    render(&empty, 80, 24);
    render(&empty, 3, 1);
}

#[test]
fn small_terminals_drop_panes_and_columns_but_keep_the_footer() {
    let mut app = sample();
    let buf = render(&app, 40, 10);
    let screen = text(&buf);
    assert!(!screen.contains("Latest kills"), "{screen}");
    assert!(screen.contains("run_0000000000aa"), "{screen}");
    assert!(screen.contains("STATUS"), "{screen}");
    assert!(!screen.contains("PHASE"), "{screen}");

    // Very narrow: the status squeezes in beside a shortened run id.
    let screen = text(&render(&app, 24, 6));
    assert!(screen.contains("run_000000 running"), "{screen}");

    // Three lines: the header, the selected run (no column titles), the footer.
    app.on_key(key(KeyCode::Char('k')));
    let buf = render(&app, 10, 3);
    let l = lines(&buf);
    assert!(l[1].contains("run_0"), "{l:?}");
    assert!(l[2].starts_with(" Kill run_"), "{l:?}");
}

#[test]
fn a_stuck_run_is_highlighted() {
    let app = sample();
    let buf = render(&app, 80, 24);
    let y = lines(&buf)
        .iter()
        .position(|l| l.contains("run_00000000beef"))
        .expect("stuck run on screen") as u16;
    let x = lines(&buf)[y as usize].find("run_00000000beef").unwrap() as u16;
    let cell = &buf[(x, y)];
    assert_eq!(cell.fg, Color::Red, "stuck run's id cell: {cell:?}");
    assert!(cell.modifier.contains(Modifier::BOLD));
    // A healthy run is not.
    let y2 = lines(&buf)
        .iter()
        .position(|l| l.contains("run_0000000000aa"))
        .unwrap() as u16;
    assert_ne!(buf[(x, y2)].fg, Color::Red);
    // The header counts it in red too.
    let header = &lines(&buf)[0];
    let sx = header.find("1 stuck").unwrap() as u16;
    assert_eq!(buf[(sx, 0)].fg, Color::Red);
}

#[test]
fn the_filter_narrows_the_list() {
    let mut app = sample();
    assert_eq!(app.on_key(key(KeyCode::Char('/'))), Action::None);
    type_keys(&mut app, "lina");
    assert_eq!(
        app.mode,
        Mode::Filter {
            draft: "lina".into()
        }
    );
    // Not applied until Enter; the footer shows what is typed.
    assert_eq!(app.visible().len(), 3);
    assert!(text(&render(&app, 80, 24)).contains("/lina"));
    app.on_key(key(KeyCode::Enter));
    let ids: Vec<&str> = app
        .visible()
        .iter()
        .map(|r| r.info.run_id.as_str())
        .collect();
    assert_eq!(ids, vec!["run_0000000dead0"]);
    let screen = text(&render(&app, 80, 24));
    assert!(
        screen.contains("Runs (1 of 3, filter \"lina\")"),
        "{screen}"
    );
    assert!(!screen.contains("run_0000000000aa"), "{screen}");

    // Esc while typing keeps the filter in force.
    app.on_key(key(KeyCode::Char('/')));
    type_keys(&mut app, "zzz");
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.filter, "lina");
    assert_eq!(app.visible().len(), 1);

    // Matching is by status and command too; a filter nothing matches says so.
    app.on_key(key(KeyCode::Char('/')));
    app.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
    type_keys(&mut app, "INIT");
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.visible().len(), 1);
    app.on_key(key(KeyCode::Char('/')));
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    app.on_key(key(KeyCode::Backspace));
    type_keys(&mut app, "nothing-like-this");
    app.on_key(key(KeyCode::Enter));
    assert!(app.visible().is_empty());
    assert!(text(&render(&app, 80, 24)).contains("no run matches the filter"));

    // Esc in normal mode clears it.
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.visible().len(), 3);
}

#[test]
fn kill_asks_first_and_force_is_separate() {
    let mut app = sample();
    app.on_key(key(KeyCode::Down));
    assert_eq!(
        app.selected().unwrap().info.run_id,
        "run_00000000beef",
        "down selects the second run"
    );
    assert_eq!(app.on_key(key(KeyCode::Char('k'))), Action::None);
    assert!(text(&render(&app, 80, 24)).contains("Kill run_00000000beef (graceful)? y/n"));
    assert_eq!(app.on_key(key(KeyCode::Char('n'))), Action::None);
    assert_eq!(app.mode, Mode::Normal);

    app.on_key(key(KeyCode::Char('K')));
    assert_eq!(
        app.on_key(key(KeyCode::Char('y'))),
        Action::Kill {
            run_id: "run_00000000beef".into(),
            mode: crate::api::KillMode::Force
        }
    );
    assert!(text(&render(&app, 80, 24)).contains("killing run_00000000beef (force)"));
    app.kill_done(
        "run_00000000beef",
        Ok(crate::api::KillResult {
            success: true,
            message: "run run_00000000beef killed (force)".into(),
            ..Default::default()
        }),
    );
    assert!(app.killing.is_empty());
    let shown = text(&render(&app, 80, 24));
    assert!(shown.contains("killed (force)"), "{shown}");
    // The message goes after a few refreshes; the kills pane keeps the history.
    for _ in 0..=super::app::MESSAGE_REFRESHES {
        app.update(Ok(app.snapshot.clone()));
    }
    assert!(app.message.is_none());

    // A run that has ended cannot be killed again.
    app.on_key(key(KeyCode::End));
    assert_eq!(app.selected().unwrap().info.run_id, "run_0000000dead0");
    assert_eq!(app.on_key(key(KeyCode::Char('k'))), Action::None);
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.message.as_ref().unwrap().0.contains("has ended"));

    // q quits, but not while typing a filter.
    app.on_key(key(KeyCode::Char('/')));
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::None);
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
}

#[test]
fn the_selection_follows_its_run_across_refreshes() {
    let mut app = sample();
    app.on_key(key(KeyCode::Down));
    let mut s = app.snapshot.clone();
    s.runs.reverse();
    app.update(Ok(s));
    assert_eq!(app.selected().unwrap().info.run_id, "run_00000000beef");
    // A failed refresh keeps what was shown and says why.
    app.update(Err("no wfcg agent answers on /x".into()));
    assert_eq!(app.visible().len(), 3);
    assert!(text(&render(&app, 80, 24)).contains("no wfcg agent answers"));
}

#[test]
fn formats() {
    assert_eq!(crate::duration::short(59.9), "59s");
    assert_eq!(crate::duration::short(125.0), "2m05s");
    assert_eq!(crate::duration::short(7300.0), "2h01m");
    assert_eq!(crate::duration::short(-3.0), "0s");
    assert_eq!(view::bytes(512 * 1024), "512K");
    assert_eq!(view::bytes(3 * 1024 * 1024 * 1024 / 2), "1.5G");
    assert_eq!(view::percent(None), "-");
    assert_eq!(view::percent(Some(0.24)), "0.2%");
    assert_eq!(view::percent(Some(150.0)), "150%");
}

#[test]
fn a_long_run_id_gives_way_to_the_phase() {
    let mut app = sample();
    let mut s = app.snapshot.clone();
    s.runs.push(row(info(
        "nightly-backup-of-the-database-2026-11-23",
        RunStatus::Running,
    )));
    app.update(Ok(s));
    let screen = text(&render(&app, 80, 24));
    assert!(screen.contains("PHASE"), "{screen}");
    assert!(screen.contains("nightly-backup-o"), "{screen}");
    // Wide terminals show more of it, and the workflow and owner.
    let screen = text(&render(&app, 160, 24));
    assert!(screen.contains("nightly-backup-of-the-data"), "{screen}");
    assert!(
        screen.contains("WORKFLOW") && screen.contains("OWNER"),
        "{screen}"
    );
}

#[test]
fn open_breakers_are_named_in_the_header() {
    let app = sample();
    let header = lines(&render(&app, 160, 24)).remove(0);
    assert!(header.contains("breaker open: flaky"), "{header}");
}
