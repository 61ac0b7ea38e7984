use super::*;

fn sample(id: &str) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        pid: Some(42),
        pid_starttime: Some(u64::MAX / 2),
        status: "running".into(),
        owner_uid: 1000,
        command: r#"["sleep","1"]"#.into(),
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
        decision: "allowed".into(),
        outcome: "killed".into(),
        ..Default::default()
    }
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

#[test]
fn lists_by_status_and_counts_kills() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("wfcg.db")).unwrap();
    store.insert_run(&sample("run_a")).unwrap();
    store.insert_run(&sample("run_b")).unwrap();
    store
        .finish_run("run_b", "killed", "2026-01-01T00:00:00Z")
        .unwrap();
    assert!(
        !store
            .finish_run_if("run_b", &["running"], "exited", "x")
            .unwrap()
    );
    assert!(
        store
            .transition("run_a", &["initializing", "running"], "stopping")
            .unwrap()
    );
    assert!(
        !store
            .transition("run_a", &["initializing"], "running")
            .unwrap()
    );
    store.transition("run_a", &["stopping"], "running").unwrap();
    store
        .set("run_a", Col::StatusText, Some("cloning"))
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
            "2026-01-01T00:00:00Z",
            "{}",
            "killed",
            Some("2026-01-01T00:00:01Z"),
        )
        .unwrap();
    let live = store.list_runs(Some(&["running"])).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].run_id, "run_a");
    assert_eq!(store.kill_count("run_b").unwrap(), 1);
    assert_eq!(
        store
            .get_run("run_b")
            .unwrap()
            .unwrap()
            .kill_result
            .as_deref(),
        Some("{}")
    );
}
