use super::*;

#[test]
fn a_survivor_is_described_with_its_innermost_kernel_frames() {
    let s = Survivor {
        pid: 42,
        state: Some('D'),
        cmdline: Some("dd if=/dev/sdz".into()),
        wchan: Some("io_schedule".into()),
        stack: Some(
            "[<0>] io_schedule+0x12/0x40\n[<0>] folio_wait_bit+0x1/0x2\n\
             [<0>] filemap_read+0x3/0x4\n[<0>] vfs_read+0x5/0x6\n"
                .into(),
        ),
    };
    assert_eq!(
        s.describe(),
        "pid 42 (dd if=/dev/sdz) state D wchan io_schedule stack \
         io_schedule+0x12/0x40 < folio_wait_bit+0x1/0x2 < filemap_read+0x3/0x4"
    );
    let unknown = Survivor {
        stack: None,
        wchan: None,
        state: None,
        cmdline: None,
        pid: 7,
    };
    assert_eq!(unknown.describe(), "pid 7 (?) state ? wchan ? stack ?");
}
use crate::cgroup;
use std::fs;

/// A fake cgroup whose `cgroup.events` never reports `populated 0`: the kill
/// must give up at its deadline and name the survivors, not hang.
#[test]
fn a_cgroup_that_never_empties_yields_survivors_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cg = Cgroup::new(dir.path().join("stuck"));
    cg.create().unwrap();
    let me = std::process::id();
    fs::write(cg.path().join(cgroup::CGROUP_PROCS), format!("{me}\n")).unwrap();
    fs::write(
        cg.path().join(cgroup::CGROUP_EVENTS),
        "populated 1\nfrozen 0\n",
    )
    .unwrap();
    let plan = Plan {
        mode: crate::api::KillMode::Force,
        term_grace: Duration::from_millis(100),
        freeze_timeout: Duration::from_millis(100),
        kill_deadline: Duration::from_millis(200),
        spare: None,
        graces: Graces {
            git: Duration::ZERO,
            database: Duration::ZERO,
            files: Duration::ZERO,
            max_wait: Duration::ZERO,
        },
        scope: Default::default(),
        stop_reason: None,
        escalate: Arc::default(),
        emergency: Arc::default(),
        whole: None,
        supervisor_grace: Duration::ZERO,
    };
    let report = kill(&cg, &plan, Path::new("/proc"));
    // A force kill freezes nothing first; the survivors are then kept frozen,
    // and the fake tree never says `frozen 1`: that freeze is an error.
    assert!(
        report
            .errors
            .iter()
            .any(|e| matches!(e, KillError::Freeze(why) if why.contains("not confirmed"))),
        "{:?}",
        report.errors
    );
    assert!(
        report.phases.iter().all(|p| p.name != "scan"),
        "a force kill scanned: {:?}",
        report.phases
    );
    assert_eq!(report.processes, 1);
    assert_eq!(report.survivors.len(), 1);
    assert_eq!(report.survivors[0].pid, me as i32);
    assert!(report.survivors[0].state.is_some());
    assert_eq!(
        fs::read_to_string(cg.path().join(cgroup::CGROUP_KILL)).unwrap(),
        "1"
    );
    assert_eq!(
        fs::read_to_string(cg.path().join(cgroup::CGROUP_FREEZE)).unwrap(),
        "1"
    );
}

/// A fake cgroup whose `cgroup.events` and `cgroup.procs` fail to read (EIO):
/// the kill must not report the processes ended, nor "no survivors".
#[test]
fn a_cgroup_that_cannot_be_read_is_no_proof_of_an_end() {
    let dir = tempfile::tempdir().unwrap();
    let cg = Cgroup::new(dir.path().join("eio"));
    cg.create().unwrap();
    for file in [cgroup::CGROUP_EVENTS, cgroup::CGROUP_PROCS] {
        std::os::unix::fs::symlink("/proc/self/mem", cg.path().join(file)).unwrap();
    }
    let plan = Plan {
        mode: crate::api::KillMode::Force,
        term_grace: Duration::from_millis(100),
        freeze_timeout: Duration::from_millis(100),
        kill_deadline: Duration::from_millis(300),
        spare: None,
        graces: Graces {
            git: Duration::ZERO,
            database: Duration::ZERO,
            files: Duration::ZERO,
            max_wait: Duration::ZERO,
        },
        scope: Default::default(),
        stop_reason: None,
        whole: None,
        supervisor_grace: Duration::ZERO,
        emergency: Arc::default(),
        escalate: Arc::default(),
    };
    let report = kill(&cg, &plan, Path::new("/proc"));
    let why = report
        .unconfirmed
        .expect("an unreadable cgroup taken as empty");
    assert!(why.contains("Input/output error"), "{why}");
    assert!(
        report.errors.iter().any(|e| matches!(e, KillError::List(_))
            && e.to_string().contains("cannot list the processes")),
        "{:?}",
        report.errors
    );
}
