use super::*;

fn remove_orphan_git_locks(proc_root: &Path, dirs: &[PathBuf], since: SystemTime) -> Vec<String> {
    remove_locks(&orphan_git_locks(proc_root, dirs, since, None, None))
}

fn remove_stale_git_locks(proc_root: &Path, seen: &[Finding]) -> Vec<String> {
    remove_locks(&stale_git_locks(proc_root, seen))
}

#[test]
fn an_orphan_lock_is_removed_unless_someone_works_in_the_repository() {
    let ws = tempfile::tempdir().unwrap();
    let git = ws.path().join(".git");
    fs::create_dir_all(git.join("refs/heads")).unwrap();
    let head = git.join("HEAD.lock");
    let branch = git.join("refs/heads/main.lock");
    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    fs::write(&head, "x").unwrap();
    fs::write(&branch, "x").unwrap();
    assert_eq!(git_dir_of(&branch.display().to_string()), Some(git.clone()));
    // A live process working in the repository: nothing is touched.
    let mut busy = std::process::Command::new("sleep")
        .arg("30")
        .current_dir(ws.path())
        .spawn()
        .unwrap();
    let proc_root = Path::new("/proc");
    let kept = remove_orphan_git_locks(proc_root, std::slice::from_ref(&git), before);
    busy.kill().unwrap();
    busy.wait().unwrap();
    assert!(kept.is_empty() && head.exists());
    // A lock older than the run is not the run's.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    assert!(remove_orphan_git_locks(proc_root, std::slice::from_ref(&git), later).is_empty());
    // Nobody there: both go.
    let mut removed = remove_orphan_git_locks(proc_root, &[git], before);
    removed.sort();
    assert_eq!(
        removed,
        vec![head.display().to_string(), branch.display().to_string()]
    );
    assert!(!head.exists() && !branch.exists());
}

#[test]
fn appends_and_reads_are_not_writes_in_place() {
    assert!(writes_in_place(0o100001)); // O_WRONLY|O_LARGEFILE
    assert!(writes_in_place(0o100002)); // O_RDWR
    assert!(!writes_in_place(0o102001)); // O_WRONLY|O_APPEND
    assert!(!writes_in_place(0o100000)); // O_RDONLY
}

/// A file the supervisor holds (the run's inherited stdout) is not a section;
/// the same kind of file opened by the run itself is.
#[test]
fn an_inherited_output_file_is_not_a_section() {
    let ws = tempfile::tempdir().unwrap();
    let inherited = ws.path().join("inherited.log");
    let own = ws.path().join("own.out");
    let _a = fs::File::create(&inherited).unwrap();
    let _b = fs::File::create(&own).unwrap();
    // A stand-in supervisor holding `inherited.log`.
    let mut sup = std::process::Command::new("sleep")
        .arg("30")
        .stdout(fs::File::options().write(true).open(&inherited).unwrap())
        .spawn()
        .unwrap();
    let scope = Scope {
        pids: vec![std::process::id() as i32],
        workspace: Some(ws.path().to_path_buf()),
        exclude: vec![],
        inherited_from: Some(sup.id() as i32),
        since: None,
        owner: None,
        creators: None,
    };
    let found: Vec<String> = scan(Path::new("/proc"), &scope)
        .into_iter()
        .map(|f| f.path)
        .filter(|p| p.starts_with(&*ws.path().to_string_lossy()))
        .collect();
    sup.kill().unwrap();
    sup.wait().unwrap();
    assert_eq!(found, vec![own.display().to_string()]);
}

#[test]
fn parses_holders_and_waiters() {
    let text = "1: POSIX  ADVISORY  WRITE 7346 fe:00:10010649 1073741825 1073741825\n\
                1: -> POSIX  ADVISORY  WRITE 7400 fe:00:10010649 1073741825 1073741825\n\
                2: OFDLCK ADVISORY  READ  -1 08:01:42 0 EOF\n\
                3: FLOCK  ADVISORY  WRITE 12 00:1a:7 0 EOF\n";
    let locks = parse_locks(text);
    assert_eq!(locks.len(), 4);
    assert_eq!(
        locks[0],
        Lock {
            class: "POSIX".into(),
            write: true,
            blocked: false,
            pid: 7346,
            major: 0xfe,
            minor: 0,
            ino: 10010649
        }
    );
    assert!(locks[1].blocked && locks[1].pid == 7400);
    assert!(!locks[2].write && locks[2].pid == -1 && locks[2].minor == 1);
    assert_eq!(locks[3].minor, 0x1a);
}

#[test]
fn git_lock_paths() {
    for yes in [
        "/w/.git/index.lock",
        "/w/.git/HEAD.lock",
        "/w/.git/refs/heads/main.lock",
        "/w/.git/packed-refs.lock",
        "/w/.git/worktrees/x/index.lock",
    ] {
        assert!(is_git_lock(yes), "{yes}");
    }
    for no in [
        "/w/.git/index",
        "/w/Cargo.lock",
        "/w/git/index.lock",
        "/w/.gitignore.lock",
    ] {
        assert!(!is_git_lock(no), "{no}");
    }
}

/// Our own process holding a git lock, a SQLite write lock and a file open
/// for writing in a workspace: each is found, with its kind.
#[test]
fn finds_each_kind_in_a_live_process() {
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join(".git")).unwrap();
    let lock_path = ws.path().join(".git/index.lock");
    let _lock = fs::File::create(&lock_path).unwrap();
    let _out = fs::File::create(ws.path().join("out.txt")).unwrap();
    let db = ws.path().join("x.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE t(a); BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
        .unwrap();
    let me = std::process::id() as i32;
    let scope = Scope {
        pids: vec![me],
        workspace: Some(ws.path().to_path_buf()),
        exclude: vec![],
        inherited_from: None,
        since: None,
        owner: None,
        creators: None,
    };
    // Tests run side by side in this process: look only at our own directory.
    let mine = |found: Vec<Finding>| -> Vec<Finding> {
        found
            .into_iter()
            .filter(|f| f.path.starts_with(&*ws.path().to_string_lossy()))
            .collect()
    };
    let found = mine(scan(Path::new("/proc"), &scope));
    let kind_of = |suffix: &str| {
        found
            .iter()
            .filter(|f| f.path.ends_with(suffix))
            .map(|f| f.kind)
            .collect::<Vec<_>>()
    };
    assert_eq!(kind_of("index.lock"), vec![SectionKind::Git]);
    assert_eq!(kind_of("out.txt"), vec![SectionKind::Files]);
    assert!(
        kind_of("x.db").contains(&SectionKind::Database),
        "{found:?}"
    );
    assert!(found.iter().all(|f| f.pid == me));

    // Excluded paths are not reported; after the transaction the database is not either.
    conn.execute_batch("COMMIT").unwrap();
    let scope = Scope {
        exclude: vec![ws.path().join("out.txt")],
        ..scope
    };
    let found = mine(scan(Path::new("/proc"), &scope));
    assert!(
        found.iter().all(|f| !f.path.ends_with("out.txt")),
        "{found:?}"
    );
    assert!(
        found.iter().all(|f| f.kind != SectionKind::Database),
        "{found:?}"
    );
}

#[test]
fn a_stale_lock_is_removed_only_when_nobody_holds_it() {
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join(".git")).unwrap();
    let path = ws.path().join(".git/index.lock");
    let held = fs::File::create(&path).unwrap();
    let me = std::process::id() as i32;
    let scope = Scope {
        pids: vec![me],
        ..Default::default()
    };
    let found: Vec<Finding> = scan(Path::new("/proc"), &scope)
        .into_iter()
        .filter(|f| f.path.starts_with(&*ws.path().to_string_lossy()))
        .collect();
    assert_eq!(found.len(), 1);
    // Still held by us: kept.
    assert!(remove_stale_git_locks(Path::new("/proc"), &found).is_empty());
    assert!(path.exists());
    drop(held);
    // Another file under the same name (a new inode, while the old one lives on
    // elsewhere) is never touched.
    let aside = ws.path().join(".git/index.lock.aside");
    fs::rename(&path, &aside).unwrap();
    fs::File::create(&path).unwrap();
    assert!(remove_stale_git_locks(Path::new("/proc"), &found).is_empty());
    assert!(path.exists());
    // The very file the dead process had, held by nobody: removed.
    fs::rename(&aside, &path).unwrap();
    let removed = remove_stale_git_locks(Path::new("/proc"), &found);
    assert_eq!(removed, vec![path.display().to_string()]);
    assert!(!path.exists());
}

/// A lock released and taken again (git add, then git commit) was two files
/// under one path: the one left behind is removed whichever was seen first.
#[test]
fn a_stale_lock_is_removed_when_its_path_was_seen_twice() {
    let ws = tempfile::tempdir().unwrap();
    fs::create_dir_all(ws.path().join(".git")).unwrap();
    let path = ws.path().join(".git/index.lock");
    let scope = Scope {
        pids: vec![std::process::id() as i32],
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut files = Vec::new();
    for _ in 0..2 {
        // Kept open while the next is made, so the inode is not reused.
        let _ = fs::remove_file(&path);
        files.push(fs::File::create(&path).unwrap());
        seen.extend(
            scan(Path::new("/proc"), &scope)
                .into_iter()
                .filter(|f| f.path.starts_with(&*ws.path().to_string_lossy())),
        );
    }
    drop(files);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[0].ino, seen[1].ino);
    let removed = remove_stale_git_locks(Path::new("/proc"), &seen);
    assert_eq!(removed, vec![path.display().to_string()]);
    assert!(!path.exists());
}

/// A process's stdout and stderr are logs, and so is the same file through any
/// other fd; a file it writes through an fd of its own is a section.
#[test]
fn a_stdout_into_the_workspace_is_a_log_and_another_fd_is_not() {
    let ws = tempfile::tempdir().unwrap();
    let log = ws.path().join("out.log");
    let data = ws.path().join("data.bin");
    let script = format!(
        "exec 3>'{}' 4>>'{}'; exec sleep 30",
        data.display(),
        log.display()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &script])
        .stdout(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let scope = Scope {
        pids: vec![pid],
        workspace: Some(ws.path().to_path_buf()),
        ..Scope::default()
    };
    // Once sh has opened its fds and exec'd sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while procfs::cmdline(Path::new("/proc"), pid).is_none_or(|c| c != "sleep 30")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let found: Vec<String> = scan(Path::new("/proc"), &scope)
        .into_iter()
        .map(|f| f.path)
        .collect();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(found, vec![data.display().to_string()]);
    assert!(is_stream("1") && is_stream("2") && !is_stream("3"));
}

/// A locked file is a lock file when it is empty or unchanged since the run
/// started; written since, it is not.
#[test]
fn a_locked_file_is_only_a_lock_when_empty_or_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lock");
    fs::write(&path, "").unwrap();
    let now = SystemTime::now();
    let meta = fs::metadata(&path).unwrap();
    assert!(lock_file_only(&meta, None));
    fs::write(&path, "42").unwrap();
    let meta = fs::metadata(&path).unwrap();
    assert!(!lock_file_only(&meta, None));
    assert!(!lock_file_only(&meta, Some(now)));
    let later = now + std::time::Duration::from_secs(60);
    assert!(lock_file_only(&meta, Some(later)));
}

/// A lock held on an fd's file is read from that fd's own fdinfo, whatever
/// `/proc/locks` (read in several calls when long) showed.
#[test]
fn a_lock_on_an_fds_file_is_seen_in_its_fdinfo() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let locked = std::fs::File::create(dir.path().join("a.lock")).unwrap();
    let plain = std::fs::File::create(dir.path().join("b.dat")).unwrap();
    rustix::fs::flock(&locked, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let me = std::process::id() as i32;
    let proc_root = Path::new("/proc");
    let info = |f: &std::fs::File| super::fdinfo(proc_root, me, &f.as_raw_fd().to_string());
    assert!(super::fd_locked(&info(&locked)));
    assert!(!super::fd_locked(&info(&plain)));
}
