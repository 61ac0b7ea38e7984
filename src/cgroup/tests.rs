use std::collections::BTreeMap;

use super::*;

/// The guard thaws on every path out: when dropped, and when a panic unwinds
/// through it; kept, it leaves the cgroup frozen.
#[test]
fn a_freeze_guard_thaws_even_on_a_panic_unless_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cg = Cgroup::new(dir.path().join("g"));
    cg.create().unwrap();
    fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 0\n").unwrap();
    let freeze = || fs::read_to_string(cg.path().join(CGROUP_FREEZE)).unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let frozen = cg.freeze_guard(Duration::from_millis(20)).unwrap();
        assert!(!frozen.confirmed);
        assert!(frozen.unconfirmed().unwrap().contains("not confirmed"));
        assert_eq!(freeze(), "1");
        panic!("in the middle of a kill");
    }));
    assert!(result.is_err());
    assert_eq!(freeze(), "0", "a panic left the cgroup frozen");
    fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 1\n").unwrap();
    let frozen = cg.freeze_guard(Duration::from_millis(20)).unwrap();
    assert!(frozen.confirmed && frozen.unconfirmed().is_none());
    frozen.keep();
    assert_eq!(freeze(), "1");
}

#[test]
fn finds_hybrid_and_pure_v2_mounts() {
    let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
        41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    assert_eq!(
        parse_cgroup2_mount(hybrid),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    let pure = "36 35 98:0 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";
    assert_eq!(
        parse_cgroup2_mount(pure),
        Some(PathBuf::from("/sys/fs/cgroup"))
    );
    assert_eq!(
        parse_cgroup2_mount("31 23 0:28 / /sys rw - sysfs sysfs rw\n"),
        None
    );
    let escaped = "1 2 0:1 / /mnt/with\\040space rw - cgroup2 cgroup2 rw\n";
    assert_eq!(
        parse_cgroup2_mount(escaped),
        Some(PathBuf::from("/mnt/with space"))
    );
}

#[test]
fn membership_compares_the_whole_path_never_a_suffix() {
    let mount = Path::new("/sys/fs/cgroup/unified");
    let run = mount.join("wfcg/runs/user.slice");
    assert!(within(mount, "/wfcg/runs/user.slice", &run));
    assert!(within(mount, "/wfcg/runs/user.slice/payload", &run));
    // A suffix of the run's path, or of one of its ancestors, is not the run.
    for outside in [
        "/user.slice",
        "/user.slice/user-0.slice/session-1.scope",
        "/runs/user.slice",
        "/other/wfcg/runs/user.slice",
        "/wfcg/runs/user.slice2",
        "/wfcg/runs",
        "/",
    ] {
        assert!(!within(mount, outside, &run), "{outside}");
    }
}

fn fake() -> (tempfile::TempDir, Cgroup) {
    let dir = tempfile::tempdir().unwrap();
    let cg = Cgroup::new(dir.path().join("run"));
    cg.create().unwrap();
    fs::write(cg.path().join(CGROUP_PROCS), "12\n34\n").unwrap();
    fs::write(cg.path().join(CGROUP_EVENTS), "populated 1\nfrozen 0\n").unwrap();
    (dir, cg)
}

#[test]
fn reads_procs_and_events_of_a_fake_cgroup() {
    let (_dir, cg) = fake();
    assert_eq!(cg.procs().unwrap(), vec![12, 34]);
    assert_eq!(
        cg.events().unwrap(),
        Events {
            populated: true,
            frozen: false
        }
    );
    fs::write(cg.path().join(CGROUP_PROCS), "12\nnope\n").unwrap();
    let err = cg.procs().unwrap_err().to_string();
    assert!(
        err.contains("cgroup.procs") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn wait_times_out_when_populated_never_drops() {
    let (_dir, cg) = fake();
    let start = Instant::now();
    assert!(!cg.wait_unpopulated(Duration::from_millis(300)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[test]
fn wait_wakes_on_a_change_of_cgroup_events() {
    let (_dir, cg) = fake();
    let events = cg.path().join(CGROUP_EVENTS);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        fs::write(events, "populated 0\nfrozen 0\n").unwrap();
    });
    assert!(cg.wait_unpopulated(Duration::from_secs(10)).unwrap());
    writer.join().unwrap();
}

#[test]
fn write_errors_name_the_file_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let cg = Cgroup::new(dir.path().join("missing"));
    let err = cg.kill().unwrap_err().to_string();
    assert!(
        err.contains("missing/cgroup.kill") && err.contains("\"1\""),
        "{err}"
    );
}

#[test]
fn cpu_usage_comes_from_cpu_stat() {
    let (_dir, cg) = fake();
    assert_eq!(cg.cpu_usage_usec(), None);
    fs::write(
        cg.path().join(CPU_STAT),
        "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n",
    )
    .unwrap();
    assert_eq!(cg.cpu_usage_usec(), Some(1234));
}

/// The CPU time a cgroup wanted: used, plus waited for (pressure); used alone
/// where the kernel keeps no pressure file.
#[test]
fn cpu_wanted_is_used_plus_the_time_waiting_for_a_cpu() {
    let (_dir, cg) = fake();
    assert_eq!(cg.cpu_wanted_usec(), None);
    fs::write(
        cg.path().join(CPU_STAT),
        "usage_usec 1234
",
    )
    .unwrap();
    assert_eq!(cg.cpu_wanted_usec(), Some(1234));
    fs::write(
        cg.path().join(CPU_PRESSURE),
        "some avg10=3.47 avg60=3.15 avg300=2.35 total=19352156
         full avg10=3.47 avg60=3.15 avg300=2.31 total=17158473
",
    )
    .unwrap();
    assert_eq!(cg.cpu_wanted_usec(), Some(1234 + 19352156));
    assert_eq!(
        super::pressure_some_total(
            "full total=5
"
        ),
        None
    );
    assert_eq!(
        super::pressure_some_total(
            "some avg10=0.00 total=x
"
        ),
        None
    );
}

/// A fake cgroupfs: root/ (the wfcg root) → runs/ → r1/, with the given
/// `cgroup.controllers` in root and runs.
fn fake_tree(root_has: &str, runs_has: &str) -> (tempfile::TempDir, Cgroup, Cgroup, Cgroup) {
    let dir = tempfile::tempdir().unwrap();
    let root = Cgroup::new(dir.path().join("wfcg"));
    let runs = root.child("runs");
    let run = runs.child("r1");
    for (cg, controllers) in [(&root, root_has), (&runs, runs_has), (&run, "")] {
        cg.create().unwrap();
        fs::write(
            cg.path().join(CGROUP_CONTROLLERS),
            format!("{controllers}\n"),
        )
        .unwrap();
        fs::write(cg.path().join(CGROUP_SUBTREE_CONTROL), "").unwrap();
        fs::write(cg.path().join(CGROUP_PROCS), "").unwrap();
    }
    (dir, root, runs, run)
}

fn limits(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn limits_are_written_where_the_controllers_are_enabled() {
    let (_dir, _root, runs, run) = fake_tree("cpu memory pids", "cpu memory pids");
    let warnings = run.apply_limits(&limits(&[("memory.max", "2G")]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        fs::read_to_string(run.path().join(MEMORY_MAX)).unwrap(),
        "2G"
    );
    assert_eq!(
        fs::read_to_string(runs.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
        "+memory"
    );
    let warnings = run.apply_limits(&limits(&[
        ("pids.max", "512"),
        ("cpu.max", "200000 100000"),
    ]));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        fs::read_to_string(run.path().join(PIDS_MAX)).unwrap(),
        "512"
    );
    assert_eq!(
        fs::read_to_string(run.path().join(CPU_MAX)).unwrap(),
        "200000 100000"
    );
}

#[test]
fn a_controller_enabled_already_is_not_written_again() {
    let (_dir, _root, runs, run) = fake_tree("memory", "memory pids");
    fs::write(runs.path().join(CGROUP_SUBTREE_CONTROL), "pids\n").unwrap();
    assert!(run.apply_limits(&limits(&[("pids.max", "max")])).is_empty());
    assert_eq!(
        fs::read_to_string(runs.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
        "pids\n"
    );
    assert_eq!(
        fs::read_to_string(run.path().join(PIDS_MAX)).unwrap(),
        "max"
    );
}

#[test]
fn limits_are_skipped_with_a_warning_where_the_controller_is_missing() {
    let (_dir, root, runs, run) = fake_tree("", "");
    let warnings = run.apply_limits(&limits(&[("memory.max", "2G"), ("pids.max", "64")]));
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert_eq!(
        warnings[0],
        format!(
            "memory.max=2G skipped: the memory controller is not enabled for {} (hybrid host?)",
            runs.path().display()
        )
    );
    assert!(
        warnings[1].starts_with("pids.max=64 skipped:"),
        "{warnings:?}"
    );
    assert!(!run.path().join(MEMORY_MAX).exists());
    assert!(!run.path().join(PIDS_MAX).exists());
    assert_eq!(
        fs::read_to_string(root.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
        ""
    );
}

#[test]
fn the_grandparent_is_asked_first_when_only_it_has_the_controller() {
    // The fake kernel does not pass controllers down, so the limit is still
    // skipped, but the wfcg root got the "+memory" a real kernel would act on.
    let (_dir, root, runs, run) = fake_tree("memory", "pids");
    let warnings = run.apply_limits(&limits(&[("memory.max", "1G")]));
    assert_eq!(
        fs::read_to_string(root.path().join(CGROUP_SUBTREE_CONTROL)).unwrap(),
        "+memory"
    );
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains(&format!(
            "not enabled for {} (not delegated",
            runs.path().display()
        )),
        "{warnings:?}"
    );
    // And once it is passed down, the limit is written.
    fs::write(runs.path().join(CGROUP_CONTROLLERS), "memory pids\n").unwrap();
    assert!(
        run.apply_limits(&limits(&[("memory.max", "1G")]))
            .is_empty()
    );
    assert_eq!(
        fs::read_to_string(run.path().join(MEMORY_MAX)).unwrap(),
        "1G"
    );
}

#[test]
fn unknown_limits_and_bad_values_are_skipped_with_a_warning() {
    let (_dir, _root, _runs, run) = fake_tree("cpu memory pids io", "cpu memory pids io");
    let warnings = run.apply_limits(&limits(&[
        ("io.max", "8:0 rbps=1"),
        ("memory.max", "lots"),
        ("cpu.max", "1 2 3"),
    ]));
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with("cpu.max=1 2 3 skipped: "),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("io.max=8:0 rbps=1 skipped: unknown limit"),
        "{warnings:?}"
    );
    assert!(
        warnings[2].starts_with("memory.max=lots skipped: "),
        "{warnings:?}"
    );
    assert!(!run.path().join("io.max").exists());
}

#[test]
fn limit_values_are_checked_like_the_kernel_reads_them() {
    for (file, good) in [
        (MEMORY_MAX, "max"),
        (MEMORY_MAX, "1073741824"),
        (MEMORY_MAX, "512M"),
        (MEMORY_MAX, "8g"),
        (PIDS_MAX, "4096"),
        (PIDS_MAX, "max"),
        (CPU_MAX, "max"),
        (CPU_MAX, "50000"),
        (CPU_MAX, "200000 100000"),
        (CPU_MAX, "max 100000"),
    ] {
        assert!(check_limit(file, good).is_ok(), "{file}={good}");
    }
    for (file, bad) in [
        (MEMORY_MAX, ""),
        (MEMORY_MAX, "2GB"),
        (MEMORY_MAX, "-1"),
        (PIDS_MAX, "lots"),
        (PIDS_MAX, "1.5"),
        (CPU_MAX, "10"),
        (CPU_MAX, "100000 10"),
        (CPU_MAX, "1 2 3"),
        ("io.max", "1"),
    ] {
        assert!(check_limit(file, bad).is_err(), "{file}={bad}");
    }
}

/// A cgroup held below its parent's open directory reads the same files as by
/// its path, and so do the cgroups below it; it is still the same cgroup. A
/// parent that cannot be opened leaves the cgroup read by its path.
#[test]
fn a_cgroup_held_below_its_parent_reads_the_files_its_path_names() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let run = Cgroup::new(runs.join("r1"));
    fs::create_dir_all(run.child("payload").path()).unwrap();
    fs::write(
        run.path().join(CPU_STAT),
        "usage_usec 1234\nuser_usec 1000\n",
    )
    .unwrap();
    fs::write(run.child("payload").path().join(CGROUP_PROCS), "7\n8\n9\n").unwrap();
    let mut dirs = Dirs::default();
    let held = dirs.held(run.clone());
    assert_eq!(held, run);
    assert_eq!(held.cpu_usage_usec(), Some(1234));
    assert_eq!(held.child("payload").procs().unwrap(), vec![7, 8, 9]);
    assert!(matches!(
        held.child("supervisor").procs(),
        Err(Error::Read { path, .. }) if path == run.path().join("supervisor").join(CGROUP_PROCS)
    ));
    // The file changes: the next read sees it (nothing is kept but the directory).
    fs::write(run.child("payload").path().join(CGROUP_PROCS), "7\n").unwrap();
    assert_eq!(held.child("payload").procs().unwrap(), vec![7]);
    // Another cgroup of the same parent shares the open directory.
    let other = Cgroup::new(runs.join("r2"));
    fs::create_dir(other.path()).unwrap();
    fs::write(other.path().join(CGROUP_PROCS), "42\n").unwrap();
    assert_eq!(dirs.held(other).procs().unwrap(), vec![42]);
    assert_eq!(dirs.open.len(), 1);
    // A symlink in the last component is not followed.
    std::os::unix::fs::symlink(run.path().join(CPU_STAT), runs.join("r2").join(CPU_STAT)).unwrap();
    assert_eq!(
        dirs.held(Cgroup::new(runs.join("r2"))).cpu_usage_usec(),
        None
    );
    let gone = Cgroup::new(dir.path().join("missing").join("r3"));
    assert!(dirs.held(gone.clone()).below.is_none());
    assert!(gone.procs().is_err());
}
