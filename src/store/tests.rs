use chrono::{DateTime, Utc};

use super::*;
use crate::api::{AuditEntry, KillResult, RunStatus};

/// A time as RFC 3339 text reads it.
fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().into()
}

fn sample(id: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        pid: Some(42),
        pid_starttime: Some(u64::MAX / 2),
        status: RunStatus::Running,
        owner_uid: 1000,
        command: vec!["sleep".into(), "1".into()],
        cgroup_path: format!("/sys/fs/cgroup/wfcg/runs/{id}"),
        ..Default::default()
    }
}

#[test]
fn migrates_and_round_trips_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfcg.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
    store.insert_run(&sample("run_a")).unwrap();
    assert_eq!(store.get_run("run_a").unwrap().unwrap(), sample("run_a"));
    assert_eq!(store.get_run("run_b").unwrap(), None);
    drop(store);
    // Reopening applies nothing twice and keeps the data.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.list_runs(None).unwrap().len(), 1);
    assert_eq!(store.list_runs_brief(None).unwrap()[0].run_id, "run_a");
    // What a stuck check reads, the rest left out.
    let full = RunRecord {
        workspace_path: Some("/w".into()),
        run_dir: Some("/r".into()),
        tmpdir: Some("/t".into()),
        log_path: Some("/l".into()),
        status_text: Some("busy".into()),
        notify_socket: Some("/n".into()),
        ..sample("run_c")
    };
    store.insert_run(&full).unwrap();
    let checked = store
        .list_runs_for_checks(None)
        .unwrap()
        .into_iter()
        .find(|r| r.run_id == "run_c")
        .unwrap();
    assert_eq!(
        checked,
        RunRecord {
            workspace_path: None,
            kill_result: None,
            run_dir: None,
            tmpdir: None,
            log_path: None,
            status_text: None,
            notify_socket: None,
            cgroup_path: String::new(),
            template: None,
            template_ceiling: None,
            ..full.clone()
        }
    );
    assert!(
        full.run_dir.is_some() && full.workspace_path.is_some(),
        "the sample has paths"
    );
}

#[test]
fn a_lease_round_trips_and_a_renewal_keeps_the_last_one_when_none_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    let leased = RunRecord {
        lease_ms: Some(30_000),
        lease_expires_at: Some(at("2026-01-01T00:00:30Z")),
        ..sample("run_l")
    };
    store.insert_run(&leased).unwrap();
    assert_eq!(store.get_run("run_l").unwrap().unwrap(), leased);
    let renewed = at("2026-01-01T00:00:10Z");
    store
        .set_lease("run_l", Some(renewed), at("2026-01-01T00:00:40Z"))
        .unwrap();
    // A restart's fresh lease moves the expiry, not the last renewal.
    store
        .set_lease("run_l", None, at("2026-01-01T00:05:00Z"))
        .unwrap();
    let back = store.get_run("run_l").unwrap().unwrap();
    assert_eq!(back.lease_renewed_at, Some(renewed));
    assert_eq!(back.lease_expires_at, Some(at("2026-01-01T00:05:00Z")));
    assert_eq!(back.lease_ms, Some(30_000));
}

#[test]
fn duplicate_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.insert_run(&sample("run_a")).unwrap();
    let err = store.insert_run(&sample("run_a")).unwrap_err();
    assert!(
        matches!(err, Error::Duplicate(ref id) if id == "run_a"),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfcg.db");
    drop(Store::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&path).err().unwrap().to_string();
    assert!(err.contains("99"), "{err}");
}

fn entry(action: &str) -> AuditEntry {
    AuditEntry {
        time: "2026-01-01T00:00:00.000Z".into(),
        actor_uid: Some(0),
        actor_name: "root".into(),
        action: action.into(),
        decision: crate::api::Decision::Allowed,
        outcome: "killed".into(),
        ..Default::default()
    }
}

/// Actions and decisions are typed, yet a name this build does not know (an
/// older or newer wfcg's, or an edit) reads, keeps its text and its hash; an
/// edit of a known one into another is still found by the chain.
#[test]
fn audit_names_unknown_to_this_build_read_back_as_they_were() {
    use crate::api::{AuditAction, Decision};
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.append_audit(&entry("kill")).unwrap();
    let odd = AuditEntry {
        decision: Decision::parse("maybe"),
        ..entry("reboot_host")
    };
    store.append_audit(&odd).unwrap();
    let recs = store.audit_records(&AuditFilter::default()).unwrap();
    assert_eq!(recs[0].entry.action, AuditAction::Kill);
    assert_eq!(recs[0].entry.decision, Decision::Allowed);
    assert_eq!(
        recs[1].entry.action,
        AuditAction::Other("reboot_host".into())
    );
    assert_eq!(recs[1].entry.decision, Decision::Other("maybe".into()));
    let text: (String, String) = store
        .conn
        .query_row(
            "SELECT action, decision FROM audit WHERE seq = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(text, ("kill".to_string(), "allowed".to_string()));
    assert_eq!(store.verify_audit().unwrap().first_bad, None);
    store
        .conn
        .execute("UPDATE audit SET action = 'auto_kill' WHERE seq = 1", [])
        .unwrap();
    assert_eq!(store.verify_audit().unwrap().first_bad.unwrap().0, 1);
}

#[test]
fn the_audit_chain_detects_edits_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    for i in 0..5 {
        let rec = store.append_audit(&entry(&format!("kill{i}"))).unwrap();
        assert_eq!(rec.seq, i + 1);
    }
    let ok = store.verify_audit().unwrap();
    assert_eq!((ok.records, ok.first_bad.clone()), (5, None));
    let recs = store
        .audit_records(&AuditFilter {
            limit: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 5]);

    store
        .conn
        .execute("UPDATE audit SET outcome = 'denied' WHERE seq = 3", [])
        .unwrap();
    let bad = store.verify_audit().unwrap();
    assert_eq!(bad.first_bad.unwrap().0, 3);
    store
        .conn
        .execute("UPDATE audit SET outcome = 'killed' WHERE seq = 3", [])
        .unwrap();
    assert_eq!(store.verify_audit().unwrap().first_bad, None);

    store
        .conn
        .execute("DELETE FROM audit WHERE seq = 2", [])
        .unwrap();
    let (seq, why) = store.verify_audit().unwrap().first_bad.unwrap();
    assert_eq!(seq, 3);
    assert!(why.contains("records 2..2 deleted"), "{why}");
}

/// A writer that knows its last head does not chain over records deleted from
/// the end, nor over a changed newest record: it writes a chain_break first,
/// and the chain never verifies again.
#[test]
fn a_cut_chain_is_not_chained_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db")).unwrap();
    let mut head = None;
    for i in 0..5 {
        let recs = store
            .append_audit_after(&entry(&format!("kill{i}")), head.as_ref())
            .unwrap();
        assert_eq!(recs.len(), 1);
        head = recs.last().map(|r| (r.seq, r.hash.clone()));
    }
    store
        .conn
        .execute("DELETE FROM audit WHERE seq >= 4", [])
        .unwrap();
    let recs = store
        .append_audit_after(&entry("kill5"), head.as_ref())
        .unwrap();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].entry.action, CHAIN_BREAK);
    assert_eq!((recs[0].seq, recs[1].seq), (6, 7));
    assert!(
        recs[0].entry.outcome.contains("records 4..5 are missing"),
        "{recs:?}"
    );
    let (seq, why) = store.verify_audit().unwrap().first_bad.unwrap();
    assert_eq!(seq, 6);
    assert!(why.contains("records 4..5 deleted"), "{why}");
    head = recs.last().map(|r| (r.seq, r.hash.clone()));

    // The newest record changed: a break naming it.
    store
        .conn
        .execute("UPDATE audit SET reason = 'x' WHERE seq = 7", [])
        .unwrap();
    let recs = store
        .append_audit_after(&entry("kill6"), head.as_ref())
        .unwrap();
    assert!(
        recs[0].entry.outcome.contains("record 7 was changed"),
        "{recs:?}"
    );
    // Chained as expected: no break.
    let head = recs.last().map(|r| (r.seq, r.hash.clone()));
    let recs = store
        .append_audit_after(&entry("kill7"), head.as_ref())
        .unwrap();
    assert_eq!(recs.len(), 1);
}

/// A kill's result, the run's end and the audit records are written in one
/// transaction: all of them, seen by another connection once it returns, or
/// (when a write in it fails) none.
#[test]
fn a_batch_writes_all_of_its_records_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfcg.db");
    let mut store = Store::open(&path).unwrap();
    store.insert_run(&sample("run_a")).unwrap();
    let entry = |action: &str| AuditEntry {
        time: "2026-01-01T00:00:00Z".into(),
        actor_name: "t".into(),
        action: action.into(),
        decision: crate::api::Decision::NotNeeded,
        run_id: Some("run_a".into()),
        ..Default::default()
    };
    let other = || Store::open(&path).unwrap();
    let t0 = at("2026-01-01T00:00:00Z");
    let failed = store.batch(|s| {
        s.record_kill(
            "run_a",
            t0,
            &KillResult::default(),
            RunStatus::Killed,
            Some(t0),
        )?;
        s.append_audit(&entry("kill"))?;
        s.insert_run(&sample("run_a")).map(|_| 0) // a duplicate: fails
    });
    assert!(matches!(failed, Err(Error::Duplicate(_))), "{failed:?}");
    assert_eq!(other().kill_count("run_a").unwrap(), 0);
    assert_eq!(
        other().get_run("run_a").unwrap().unwrap().status,
        RunStatus::Running
    );
    assert!(
        other()
            .audit_records(&AuditFilter::default())
            .unwrap()
            .is_empty()
    );

    let seqs = store
        .batch(|s| {
            s.record_kill(
                "run_a",
                t0,
                &KillResult::default(),
                RunStatus::Killed,
                Some(t0),
            )?;
            let a = s.append_audit(&entry("run_end"))?;
            let b = s.append_audit(&entry("kill"))?;
            Ok((a.seq, b.seq))
        })
        .unwrap();
    assert_eq!(seqs, (1, 2));
    let seen = other();
    assert_eq!(seen.kill_count("run_a").unwrap(), 1);
    assert_eq!(
        seen.get_run("run_a").unwrap().unwrap().status,
        RunStatus::Killed
    );
    let check = seen.verify_audit().unwrap();
    assert_eq!((check.last_seq, check.first_bad), (2, None));
    // Outside a batch, each write is its own transaction again.
    store.append_audit(&entry("after")).unwrap();
    assert_eq!(other().verify_audit().unwrap().last_seq, 3);
}

#[test]
fn lists_by_status_and_counts_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.insert_run(&sample("run_a")).unwrap();
    store.insert_run(&sample("run_b")).unwrap();
    store
        .finish_run("run_b", RunStatus::Killed, at("2026-01-01T00:00:00Z"))
        .unwrap();
    assert!(
        !store
            .finish_run_if(
                "run_b",
                &[RunStatus::Running],
                RunStatus::Exited,
                Utc::now()
            )
            .unwrap()
    );
    assert!(
        store
            .transition(
                "run_a",
                &[RunStatus::Initializing, RunStatus::Running],
                RunStatus::Stopping
            )
            .unwrap()
    );
    assert!(
        !store
            .transition("run_a", &[RunStatus::Initializing], RunStatus::Running)
            .unwrap()
    );
    store
        .transition("run_a", &[RunStatus::Stopping], RunStatus::Running)
        .unwrap();
    store
        .set_text("run_a", TextCol::StatusText, Some("cloning"))
        .unwrap();
    assert_eq!(
        store
            .get_run("run_a")
            .unwrap()
            .unwrap()
            .status_text
            .as_deref(),
        Some("cloning")
    );
    store
        .record_kill(
            "run_b",
            at("2026-01-01T00:00:00Z"),
            &KillResult::default(),
            RunStatus::Killed,
            Some(at("2026-01-01T00:00:01Z")),
        )
        .unwrap();
    let live = store.list_runs(Some(&[RunStatus::Running])).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].run_id, "run_a");
    assert_eq!(store.kill_count("run_b").unwrap(), 1);
    assert_eq!(
        store.get_run("run_b").unwrap().unwrap().kill_result,
        Some(KillResult::default())
    );
}

/// Every time column of `runs`, as `RunRecord` names them.
const TIME_COLUMNS: [&str; 7] = [
    "started_at",
    "last_heartbeat",
    "ended_at",
    "ready_at",
    "init_deadline",
    "total_deadline",
    "watchdog_deadline",
];

/// A row written by an older wfcg (times as text, status by name, command and
/// teams as JSON) reads back as the same times and values.
#[test]
fn a_row_in_the_old_text_format_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store
        .conn
        .execute(
            "INSERT INTO runs (run_id, status, owner_uid, command, cgroup_path, teams, \
             started_at, last_heartbeat, ended_at, ready_at, init_deadline, total_deadline, \
             watchdog_deadline) VALUES ('run_old', 'timed_out', 1000, '[\"sh\",\"-c\",\"echo \\\"hi\\\"\"]', \
             '/sys/fs/cgroup/wfcg/runs/run_old', '[\"ci\",\"ops\"]', \
             '2025-12-31T23:00:00.250Z', '2025-12-31T23:00:01.000Z', '2025-12-31T23:00:09.999Z', \
             '2025-12-31T23:00:00.500Z', NULL, '2026-01-01T00:00:00.000Z', '2025-12-31T23:00:03.001Z')",
            [],
        )
        .unwrap();
    let run = store.get_run("run_old").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::TimedOut);
    assert_eq!(run.command, ["sh", "-c", "echo \"hi\""]);
    assert_eq!(run.teams, ["ci", "ops"]);
    assert_eq!(run.started_at, Some(at("2025-12-31T23:00:00.250Z")));
    assert_eq!(run.last_heartbeat, Some(at("2025-12-31T23:00:01Z")));
    assert_eq!(run.ended_at, Some(at("2025-12-31T23:00:09.999Z")));
    assert_eq!(run.ready_at, Some(at("2025-12-31T23:00:00.5Z")));
    assert_eq!(run.init_deadline, None);
    assert_eq!(run.total_deadline, Some(at("2026-01-01T00:00:00Z")));
    assert_eq!(run.watchdog_deadline, Some(at("2025-12-31T23:00:03.001Z")));
    // Deadlines compare as times, not as text.
    assert!(run.watchdog_deadline < run.total_deadline);
    // Written back, each time is the same text an older wfcg wrote (and reads).
    store.conn.execute("DELETE FROM runs", []).unwrap();
    store.insert_run(&run).unwrap();
    let text = |col: &str| -> Option<String> {
        store
            .conn
            .query_row(&format!("SELECT {col} FROM runs"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(
        text("started_at").as_deref(),
        Some("2025-12-31T23:00:00.250Z")
    );
    assert_eq!(
        text("last_heartbeat").as_deref(),
        Some("2025-12-31T23:00:01.000Z")
    );
    assert_eq!(text("init_deadline"), None);
    assert_eq!(text("status").as_deref(), Some("timed_out"));
    assert_eq!(
        text("command").as_deref(),
        Some(r#"["sh","-c","echo \"hi\""]"#)
    );
    assert_eq!(text("teams").as_deref(), Some(r#"["ci","ops"]"#));
    for col in TIME_COLUMNS.into_iter().filter(|c| *c != "init_deadline") {
        let t = text(col).unwrap();
        assert!(DateTime::parse_from_rfc3339(&t).is_ok(), "{col}: {t}");
    }
}

/// Every typed field, and every status, goes in and comes out the same; so do
/// the typed writes of a running run (times, texts, heartbeats, a kill).
#[test]
fn every_typed_field_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    let t0 = at("2026-03-01T12:00:00.123Z");
    let secs = |s: i64| Some(t0 + chrono::Duration::seconds(s));
    for (i, status) in RunStatus::ALL.into_iter().enumerate() {
        let run = RunRecord {
            status,
            started_at: Some(t0),
            last_heartbeat: secs(1),
            ended_at: secs(2),
            ready_at: secs(3),
            init_deadline: secs(4),
            total_deadline: secs(5),
            watchdog_deadline: secs(6),
            command: vec!["é \" ' ,".into(), String::new(), "[]".into()],
            teams: vec!["a team".into()],
            ..sample(&format!("run_{i}"))
        };
        store.insert_run(&run).unwrap();
        assert_eq!(store.get_run(&run.run_id).unwrap().unwrap(), run);
    }
    assert_eq!(
        store.list_runs(Some(&RunStatus::live())).unwrap().len(),
        RunStatus::live().len()
    );
    assert_eq!(
        store
            .count_runs_of(1000, &[RunStatus::Killed, RunStatus::Lost])
            .unwrap(),
        2
    );

    // A record with nothing set reads back as nothing set.
    let empty = RunRecord {
        run_id: "run_empty".into(),
        ..Default::default()
    };
    store.insert_run(&empty).unwrap();
    assert_eq!(store.get_run("run_empty").unwrap().unwrap(), empty);

    let cols = [
        TimeCol::ReadyAt,
        TimeCol::InitDeadline,
        TimeCol::TotalDeadline,
        TimeCol::WatchdogDeadline,
        TimeCol::LastHeartbeat,
    ];
    for (i, col) in cols.into_iter().enumerate() {
        store
            .set_time("run_empty", col, secs(10 + i as i64))
            .unwrap();
    }
    store
        .set_text("run_empty", TextCol::LoopSuspected, Some("loop"))
        .unwrap();
    let run = store.get_run("run_empty").unwrap().unwrap();
    assert_eq!(
        [
            run.ready_at,
            run.init_deadline,
            run.total_deadline,
            run.watchdog_deadline,
            run.last_heartbeat
        ],
        [secs(10), secs(11), secs(12), secs(13), secs(14)]
    );
    assert_eq!(run.loop_suspected.as_deref(), Some("loop"));
    store
        .set_time("run_empty", TimeCol::InitDeadline, None)
        .unwrap();
    store
        .set_heartbeats(&[("run_empty".into(), t0, None, Some(5))])
        .unwrap();
    let run = store.get_run("run_empty").unwrap().unwrap();
    assert_eq!(
        (run.init_deadline, run.last_heartbeat, run.watchdog_deadline),
        (None, Some(t0), None)
    );
    assert_eq!(run.watchdog_usec, Some(5));
    store
        .record_kill(
            "run_empty",
            t0,
            &KillResult::default(),
            RunStatus::Killed,
            secs(20),
        )
        .unwrap();
    let run = store.get_run("run_empty").unwrap().unwrap();
    assert_eq!((run.status, run.ended_at), (RunStatus::Killed, secs(20)));
    let kill_started: DateTime<Utc> = store
        .conn
        .query_row("SELECT started_at FROM kills", [], |r| r.get(0))
        .unwrap();
    assert_eq!(kill_started, t0);
}

/// A value that does not read as its type (an unknown status, a time that is
/// not one, a command that is not a JSON array) is an error naming the run and
/// the column, not a panic nor a silent default; other runs still read and are
/// listed without it.
#[test]
fn a_bad_value_in_a_row_is_an_error_naming_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.insert_run(&sample("run_good")).unwrap();
    let cases = [
        (
            "status",
            "'paused'",
            "holds \"paused\": not a status wfcg knows",
        ),
        ("started_at", "'yesterday'", "holds \"yesterday\""),
        ("ended_at", "1.5", "holds 1.5: a Real value"),
        (
            "command",
            "'sleep 1'",
            "holds \"sleep 1\": not a JSON array of strings",
        ),
        (
            "teams",
            "'[1]'",
            "holds \"[1]\": not a JSON array of strings",
        ),
        (
            "template",
            r#"'{"kill": 1}'"#,
            "not a template wfcg can read",
        ),
        ("template", "'{'", "not a template wfcg can read"),
        ("kill_result", "'{}'", "not a kill result wfcg can read"),
    ];
    for (column, value, why) in cases {
        store.insert_run(&sample("run_bad")).unwrap();
        store
            .conn
            .execute(
                &format!("UPDATE runs SET {column} = {value} WHERE run_id = 'run_bad'"),
                [],
            )
            .unwrap();
        let err = store.get_run("run_bad").unwrap_err();
        let Error::BadColumn(bad) = &err else {
            panic!("{column}: not a BadColumn: {err:?}");
        };
        assert_eq!(
            (bad.run_id.as_str(), bad.column.as_str()),
            ("run_bad", column)
        );
        let text = err.to_string();
        assert!(
            text.contains("run \"run_bad\"") && text.contains(column) && text.contains(why),
            "{text}"
        );
        let listed = store.list_runs(None).unwrap();
        assert_eq!(listed, [sample("run_good")], "{column}");
        assert_eq!(
            store.get_run("run_good").unwrap().unwrap(),
            sample("run_good")
        );
        store
            .conn
            .execute("DELETE FROM runs WHERE run_id = 'run_bad'", [])
            .unwrap();
    }
}

/// Commits made unsynced are written (another connection reads them), and the
/// store's commits are synced again afterwards, whether `f` failed or not.
#[test]
fn unsynced_commits_are_written_and_the_store_syncs_again_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wfcg.db");
    let mut store = Store::open(&path).unwrap();
    let synchronous = |s: &Store| -> i64 {
        s.conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(synchronous(&store), 2, "FULL");
    store
        .with_sync(false, |s| {
            assert_eq!(synchronous(s), 0, "OFF inside");
            s.insert_run(&sample("run_a"))
        })
        .unwrap();
    assert_eq!(synchronous(&store), 2);
    let failed: Result<()> = store.with_sync(false, |s| {
        s.insert_run(&sample("run_a")) // a duplicate: refused
    });
    assert!(failed.is_err());
    assert_eq!(synchronous(&store), 2);
    let other = Store::open(&path).unwrap();
    assert!(other.get_run("run_a").unwrap().is_some());
}

/// A record whose time is before the newest record's takes the newest one's
/// time (sequence and time order agree), except over a cut chain: an edited
/// newest record's time is never carried forward.
#[test]
fn audit_times_never_go_back_but_an_edited_time_is_not_carried() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("db")).unwrap();
    let at = |time: &str| AuditEntry {
        time: time.into(),
        ..entry("kill")
    };
    let first = store
        .append_audit_after(&at("2026-01-01T00:00:01.000Z"), None)
        .unwrap();
    let head = first.last().map(|r| (r.seq, r.hash.clone()));
    let second = store
        .append_audit_after(&at("2026-01-01T00:00:00.500Z"), head.as_ref())
        .unwrap();
    assert_eq!(second[0].entry.time, "2026-01-01T00:00:01.000Z");
    assert_eq!(store.verify_audit().unwrap().first_bad, None);

    let head = second.last().map(|r| (r.seq, r.hash.clone()));
    store
        .conn
        .execute(
            "UPDATE audit SET time = '2099-01-01T00:00:00.000Z' WHERE seq = 2",
            [],
        )
        .unwrap();
    let after = store
        .append_audit_after(&at("2026-01-01T00:00:02.000Z"), head.as_ref())
        .unwrap();
    assert_eq!(after.len(), 2, "a chain_break, then the record");
    assert_eq!(after[0].entry.action, CHAIN_BREAK);
    for rec in &after {
        assert_eq!(rec.entry.time, "2026-01-01T00:00:02.000Z");
    }
}

/// A kill that ends after its run ended another way (a second kill beside it)
/// keeps its row in `kills` and is the run's last kill result, but leaves the
/// run as it ended: its status and end time are not written over.
#[test]
fn a_late_kill_result_does_not_bring_an_ended_run_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.insert_run(&sample("run_a")).unwrap();
    let t0 = at("2026-01-01T00:00:00Z");
    let killed = KillResult {
        message: "killed".into(),
        ..Default::default()
    };
    store
        .record_kill("run_a", t0, &killed, RunStatus::Killed, Some(t0))
        .unwrap();
    let late = KillResult {
        message: "not confirmed".into(),
        ..Default::default()
    };
    store
        .record_kill("run_a", t0, &late, RunStatus::Running, None)
        .unwrap();
    let run = store.get_run("run_a").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Killed);
    assert_eq!(run.ended_at, Some(t0));
    assert_eq!(run.kill_result.unwrap().message, "not confirmed");
    assert_eq!(store.kill_count("run_a").unwrap(), 2);
}
