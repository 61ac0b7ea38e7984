//! Host-wide scans for a run's marker (`WFCG_RUN_ID=<id>` in a process's
//! environment), bounded so that no user can make them costly or turn them
//! against another user's run.
//!
//! A marker is a hint its carrier controls. A scan reads the environment only
//! of processes that pass an [`EnvFilter`] first (the uid and the start time:
//! the owner of `/proc/<pid>`, then `/proc/<pid>/stat` and `status`), at most
//! [`ENV_READ_LIMIT`] of each, and at most [`ENV_SCAN_BUDGET`] bytes in all; what
//! it did not read is counted in its answer ([`EnvScan`]), never guessed.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use super::{all_pids, read_small, sole_uid, stat, uids};

/// The most of one process's environment a scan reads (as adoption does).
pub const ENV_READ_LIMIT: u64 = 256 * 1024;
/// The most a scan reads of all environments together.
pub const ENV_SCAN_BUDGET: u64 = 64 * 1024 * 1024;

/// Whose environment a scan may read: processes whose real, effective and
/// saved uids are all `uid`, started (clock ticks since boot, the raw stat
/// field) at or after `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnvFilter {
    pub uid: u32,
    pub since: u64,
}

/// What a scan found for one marker, and what it did not look at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvScan {
    /// Processes (zombies excepted) that passed the filter and carry the marker.
    pub pids: Vec<i32>,
    /// Processes that passed the filter but were not read: the scan's budget
    /// was spent, or they were in uninterruptible sleep (reading another
    /// process's memory takes its mmap lock, which such a process may hold).
    pub unread: u32,
    /// Processes read only in part: their environment is larger than
    /// [`ENV_READ_LIMIT`] (a marker past it is not seen).
    pub cut: u32,
}

/// Every process on the host whose environment holds `key=value`, zombies
/// excepted, read whole and unfiltered: for tests and tools, never for a scan a
/// user can make the agent run.
pub fn pids_with_env(proc_root: &Path, key: &str, value: &str) -> Vec<i32> {
    let want = format!("{key}={value}");
    let pids = all_pids(proc_root);
    crate::parallel::map(&pids, 256, |&pid| {
        let raw = read_small(&proc_root.join(pid.to_string()).join("environ")).ok()?;
        let has = raw.split(|b| *b == 0).any(|e| e == want.as_bytes());
        (has && stat(proc_root, pid).is_some_and(|s| s.state != 'Z')).then_some(pid)
    })
    .into_iter()
    .flatten()
    .collect()
}

/// At most `limit` bytes of a process's environment, and whether there was more.
fn read_environ(proc_root: &Path, pid: i32, limit: u64) -> Option<(Vec<u8>, bool)> {
    let file = std::fs::File::open(proc_root.join(pid.to_string()).join("environ")).ok()?;
    let mut raw = Vec::new();
    file.take(limit + 1).read_to_end(&mut raw).ok()?;
    let cut = raw.len() as u64 > limit;
    raw.truncate(limit as usize);
    Some((raw, cut))
}

/// Whether `pid` passes `filter` now (read from its stat and status).
pub fn admitted(proc_root: &Path, pid: i32, filter: &EnvFilter) -> bool {
    stat(proc_root, pid).is_some_and(|s| s.starttime >= filter.since && !s.is_kernel_thread())
        && uids(proc_root, pid).and_then(sole_uid) == Some(filter.uid)
}

/// Whether `pid`, which passes `filter`, carries `key=value` within the first
/// [`ENV_READ_LIMIT`] bytes of its environment (never read in state D).
pub fn carries(proc_root: &Path, pid: i32, filter: &EnvFilter, key: &str, value: &str) -> bool {
    let want = format!("{key}={value}");
    admitted(proc_root, pid, filter)
        && stat(proc_root, pid).is_some_and(|s| s.state != 'D')
        && read_environ(proc_root, pid, ENV_READ_LIMIT)
            .is_some_and(|(raw, _)| raw.split(|b| *b == 0).any(|e| e == want.as_bytes()))
}

/// One ask of a scan: the proc root, the marker's key and value, and the filter.
type EnvAsk = (PathBuf, String, String, EnvFilter);

/// What one pass made of a process it admitted.
enum Pass<A, R> {
    /// Its environment was read (`cut`: only in part).
    Read(A, R, bool),
    /// Admitted, not read: the budget was spent, or it was in state D.
    Unread(A),
}

/// One bounded pass over the host's environments, the one way wfcg reads them:
/// a process is admitted first by the owner and the change time of `/proc/<pid>`
/// (one statx, no file read: another user's processes end there, however many,
/// and so do those that started before `not_before`, see [`born_before`]), then
/// by its stat and sole uid (`admit`); only then is its environment read, at most
/// [`ENV_READ_LIMIT`] of it, [`ENV_SCAN_BUDGET`] in all, never in state D, and
/// handed to `read`.
fn pass<A: Send, R: Send>(
    proc_root: &Path,
    not_before: Option<SystemTime>,
    owner_ok: &(dyn Fn(u32) -> bool + Sync),
    admit: &(dyn Fn(i32, &super::Stat, u32) -> Option<A> + Sync),
    read: &(dyn Fn(&A, &[u8]) -> R + Sync),
) -> Vec<(i32, Pass<A, R>)> {
    let spent = AtomicU64::new(0);
    let pids = all_pids(proc_root);
    let seen = crate::parallel::map(&pids, 256, |&pid| {
        // Cheapest first: the owner of `/proc/<pid>` is the process's effective
        // uid (root's when it is not dumpable), one statx, no file read.
        let meta = std::fs::metadata(proc_root.join(pid.to_string())).ok()?;
        if meta.uid() != 0 && !owner_ok(meta.uid()) {
            return None;
        }
        if not_before.is_some_and(|t| born_before(&meta, t)) {
            return None;
        }
        let st = stat(proc_root, pid)?;
        if st.state == 'Z' || st.state == 'X' || st.is_kernel_thread() {
            return None;
        }
        let uid = uids(proc_root, pid).and_then(sole_uid)?;
        let admitted = admit(pid, &st, uid)?;
        if st.state == 'D' || spent.load(Ordering::Relaxed) >= ENV_SCAN_BUDGET {
            return Some((pid, Pass::Unread(admitted)));
        }
        let Some((raw, cut)) = read_environ(proc_root, pid, ENV_READ_LIMIT) else {
            return None; // gone
        };
        spent.fetch_add(raw.len() as u64, Ordering::Relaxed);
        let got = read(&admitted, &raw);
        Some((pid, Pass::Read(admitted, got, cut)))
    });
    seen.into_iter().flatten().collect()
}

/// How far the change time of a `/proc/<pid>` inode may be behind a start time
/// computed from the clock ticks since boot: the inode's times come from a coarse
/// clock (a tick behind), the conversion ([`super::start_wall_time`]) reads
/// `/proc/uptime` in hundredths of a second.
const BORN_SLACK: Duration = Duration::from_secs(1);

/// Whether the process behind `/proc/<pid>` (its `meta`) surely started before
/// `t`: the directory's inode is made when it is first looked up, after the
/// process started, with all three times set to that moment; its change time
/// can only move forward (any change of the inode sets it to now; procfs
/// refuses to set its times). So a change time before `t` (less
/// [`BORN_SLACK`]) means a start before `t`; a later one, or one before 1970,
/// proves nothing (the inode may be new), and the stat decides.
fn born_before(meta: &std::fs::Metadata, t: SystemTime) -> bool {
    let (Ok(secs), Ok(nanos)) = (
        u64::try_from(meta.ctime()),
        u32::try_from(meta.ctime_nsec()),
    ) else {
        return false;
    };
    Duration::from_secs(secs)
        .checked_add(Duration::from_nanos(nanos.into()))
        .and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d))
        .and_then(|c| c.checked_add(BORN_SLACK))
        .is_some_and(|c| c < t)
}

/// One pass over the host for every ask of one (proc root, key): each process
/// is filtered by the owner and age of its `/proc` directory, then its stat and
/// status, before its environment is read.
fn scan(proc_root: &Path, key: &str, asks: &[(String, EnvFilter)]) -> Vec<EnvScan> {
    let prefix = format!("{key}=");
    let earliest = asks.iter().map(|(_, f)| f.since).min().unwrap_or(0);
    // The earliest start asked for, on the clock inode times use.
    let not_before = (earliest > 0)
        .then(|| super::start_wall_time(proc_root, earliest))
        .flatten();
    let seen = pass(
        proc_root,
        not_before,
        &|owner| asks.iter().any(|(_, f)| f.uid == owner),
        &|_, st, uid| {
            let by: Vec<usize> = (0..asks.len())
                .filter(|&i| asks[i].1.uid == uid && st.starttime >= asks[i].1.since)
                .collect();
            (st.starttime >= earliest && !by.is_empty()).then_some(by)
        },
        &|by, raw| {
            raw.split(|b| *b == 0)
                .filter_map(|e| e.strip_prefix(prefix.as_bytes()))
                .flat_map(|v| {
                    by.iter()
                        .copied()
                        .filter(move |&i| asks[i].0.as_bytes() == v)
                })
                .collect::<Vec<usize>>()
        },
    );
    let mut out = vec![EnvScan::default(); asks.len()];
    for (pid, seen) in seen {
        match seen {
            Pass::Read(by, found, cut) => {
                found.into_iter().for_each(|i| out[i].pids.push(pid));
                if cut {
                    by.into_iter().for_each(|i| out[i].cut += 1);
                }
            }
            Pass::Unread(by) => by.into_iter().for_each(|i| out[i].unread += 1),
        }
    }
    out
}

/// Which of `wanted` (whole `KEY=VALUE` entries) each process carries, for every
/// process whose real, effective and saved uids are all `uid`, whatever its age,
/// but those `skip` names (given their stat, before their environment is read); processes
/// carrying none are left out. One bounded [`pass`]; the processes it could not
/// read, or read only in part, are counted in `unread`.
pub fn carriers(
    proc_root: &Path,
    wanted: &[Vec<u8>],
    uid: u32,
    skip: &(dyn Fn(i32, &super::Stat) -> bool + Sync),
) -> Carriers {
    let index: HashMap<&[u8], usize> = wanted
        .iter()
        .enumerate()
        .map(|(i, w)| (w.as_slice(), i))
        .collect();
    let seen = pass(
        proc_root,
        None,
        &|owner| owner == uid,
        &|pid, st, sole| (sole == uid && !skip(pid, st)).then_some(()),
        &|(), raw| {
            raw.split(|b| *b == 0)
                .filter_map(|e| index.get(e).copied())
                .collect::<Vec<usize>>()
        },
    );
    let mut out = Carriers::default();
    for (pid, seen) in seen {
        match seen {
            Pass::Read((), found, cut) => {
                out.unread += u32::from(cut);
                if !found.is_empty() {
                    out.pids.push((pid, found));
                }
            }
            Pass::Unread(()) => out.unread += 1,
        }
    }
    out
}

/// What [`carriers`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carriers {
    /// Each process carrying some of the wanted entries, with their indices.
    pub pids: Vec<(i32, Vec<usize>)>,
    /// Processes admitted but not read, or read only in part.
    pub unread: u32,
}

/// [`scan`]s shared by concurrent callers: each waits for a scan of the host
/// that starts after it asked, and one scan answers every caller waiting when
/// it starts. A hundred runs killed at once then cost a few scans, not a hundred.
/// While kills keep coming, scans take at most half of the time: when callers
/// asked while a scan ran, the next does not start before as long after it
/// ended as it took, so that each scan answers more of them. An ask with none
/// waiting (one caller's scans one after the other) waits for nothing.
#[derive(Default)]
pub struct SharedEnvScan {
    state: parking_lot::Mutex<ScanState>,
    done: parking_lot::Condvar,
}

/// What one scan found: the answer to each ask.
type Found = std::sync::Arc<HashMap<EnvAsk, EnvScan>>;

#[derive(Default)]
struct ScanState {
    /// Asked since the last scan started.
    asked: HashSet<EnvAsk>,
    running: bool,
    /// Scans started so far; the running or last one is number `started`.
    started: u64,
    /// The last scan finished: its number and what it found for each ask.
    last: Option<(u64, Found)>,
    /// When the next scan may start.
    next: Option<std::time::Instant>,
}

impl SharedEnvScan {
    /// The processes passing `filter` whose environment holds `key=value`, as
    /// found by a scan that started after this call.
    pub fn scan(&self, proc_root: &Path, key: &str, value: &str, filter: EnvFilter) -> EnvScan {
        let ask: EnvAsk = (
            proc_root.to_owned(),
            key.to_owned(),
            value.to_owned(),
            filter,
        );
        let mut st = self.state.lock();
        st.asked.insert(ask.clone());
        let mut need = st.started + 1;
        loop {
            if let Some((n, found)) = &st.last
                && *n >= need
            {
                // Every scan answers every ask it took.
                if let Some(got) = found.get(&ask) {
                    return got.clone();
                }
                // A scan after the one that took this ask finished first: ask again.
                st.asked.insert(ask.clone());
                need = st.started + 1;
            }
            let now = std::time::Instant::now();
            if !st.running && st.next.is_none_or(|t| t <= now) {
                st.running = true;
                st.started += 1;
                let n = st.started;
                let asked = std::mem::take(&mut st.asked);
                drop(st);
                let found = scan_asks(asked);
                let ended = std::time::Instant::now();
                st = self.state.lock();
                st.last = Some((n, std::sync::Arc::new(found)));
                st.running = false;
                st.next = next_start(now, ended, !st.asked.is_empty());
                self.done.notify_all();
                continue;
            }
            match st.next.filter(|_| !st.running) {
                Some(t) => {
                    self.done.wait_until(&mut st, t);
                }
                None => self.done.wait(&mut st),
            }
        }
    }

    /// How many scans of the host were made.
    pub fn scans(&self) -> u64 {
        self.state.lock().started
    }
}

/// When the scan after one that ran from `started` to `ended` may start: as
/// long after it as it took when callers asked meanwhile (`backlog`), at once
/// otherwise.
fn next_start(
    started: std::time::Instant,
    ended: std::time::Instant,
    backlog: bool,
) -> Option<std::time::Instant> {
    backlog
        .then(|| ended.checked_add(ended.saturating_duration_since(started)))
        .flatten()
}

/// One pass per (proc root, key) over what was asked; every ask gets an answer.
fn scan_asks(asked: HashSet<EnvAsk>) -> HashMap<EnvAsk, EnvScan> {
    let mut groups: HashMap<(PathBuf, String), Vec<(String, EnvFilter)>> = HashMap::new();
    for (root, key, value, filter) in asked {
        groups.entry((root, key)).or_default().push((value, filter));
    }
    let mut out = HashMap::new();
    for ((root, key), asks) in groups {
        let found = scan(&root, &key, &asks);
        for ((value, filter), got) in asks.into_iter().zip(found) {
            out.insert((root.clone(), key.clone(), value, filter), got);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn me() -> u32 {
        rustix::process::getuid().as_raw()
    }

    fn marked(value: &str) -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .env("WFCG_TEST_MARK", value)
            .spawn()
            .unwrap()
    }

    /// spawn() returns once the child is in execve(), a little before the kernel
    /// sets up the new environment: until then `environ` reads empty.
    fn until_marked(values: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while values
            .iter()
            .any(|v| pids_with_env(Path::new("/proc"), "WFCG_TEST_MARK", v).is_empty())
            && Instant::now() < deadline
        {}
    }

    #[test]
    fn finds_a_process_by_its_environment_marker_only_through_the_filter() {
        let proc_root = Path::new("/proc");
        let marker = format!("probe-{}", std::process::id());
        let mut child = marked(&marker);
        until_marked(&[&marker]);
        let shared = SharedEnvScan::default();
        let mine = EnvFilter {
            uid: me(),
            since: 0,
        };
        let found = shared.scan(proc_root, "WFCG_TEST_MARK", &marker, mine);
        // Another uid's marker, or one on a process older than the run: unread.
        let other = EnvFilter {
            uid: me() + 1,
            ..mine
        };
        let not_theirs = shared.scan(proc_root, "WFCG_TEST_MARK", &marker, other);
        let later = EnvFilter {
            since: u64::MAX,
            ..mine
        };
        let too_old = shared.scan(proc_root, "WFCG_TEST_MARK", &marker, later);
        let pid = child.id() as i32;
        let carried = carries(proc_root, pid, &mine, "WFCG_TEST_MARK", &marker);
        let carried_other = carries(proc_root, pid, &other, "WFCG_TEST_MARK", &marker);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.pids, vec![pid]);
        assert_eq!(not_theirs, EnvScan::default());
        assert_eq!(too_old, EnvScan::default());
        assert!(carried && !carried_other);
    }

    /// A scan waits as long after the last as the last took only when callers
    /// asked while the last ran; one caller's scans one after the other do not wait.
    #[test]
    fn scans_are_spaced_only_while_callers_wait_for_them() {
        let t = Instant::now();
        let took = Duration::from_millis(30);
        assert_eq!(next_start(t, t + took, true), Some(t + took + took));
        assert_eq!(next_start(t, t + took, false), None);
        let shared = SharedEnvScan::default();
        let mine = EnvFilter {
            uid: me(),
            since: 0,
        };
        let proc_root = Path::new("/proc");
        shared.scan(proc_root, "WFCG_TEST_MARK", "first", mine);
        assert_eq!(
            shared.state.lock().next,
            None,
            "a lone scan spaced the next"
        );
        shared.scan(proc_root, "WFCG_TEST_MARK", "second", mine);
        assert_eq!(shared.scans(), 2);
    }

    /// A process started after the filter's start is found, while the age of
    /// the older processes' `/proc` directories spares reading their stat.
    #[test]
    fn a_marker_started_after_the_filter_start_is_found_past_the_age_check() {
        let proc_root = Path::new("/proc");
        let since = super::super::ticks_at(proc_root, SystemTime::now()).unwrap();
        let marker = format!("late-{}", std::process::id());
        let mut child = marked(&marker);
        until_marked(&[&marker]);
        let pid = child.id() as i32;
        let meta = std::fs::metadata(format!("/proc/{pid}")).unwrap();
        let filter = EnvFilter { uid: me(), since };
        let found = SharedEnvScan::default().scan(proc_root, "WFCG_TEST_MARK", &marker, filter);
        let at = SystemTime::now();
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(found.pids, vec![pid]);
        // Made just now: no proof of an early start. Made long before: proof.
        assert!(!born_before(&meta, at));
        assert!(born_before(&meta, at + 2 * BORN_SLACK));
    }

    /// Concurrent callers each get the processes of their own marker, from a
    /// scan that started after they asked; they share scans.
    #[test]
    fn concurrent_marker_scans_are_shared_and_each_answered() {
        let tag = format!("shared-{}", std::process::id());
        let markers: Vec<String> = (0..3).map(|i| format!("{tag}-{i}")).collect();
        let mut children: Vec<_> = markers.iter().take(2).map(|m| marked(m)).collect();
        let proc_root = Path::new("/proc");
        until_marked(&[&markers[0], &markers[1]]);
        let shared = SharedEnvScan::default();
        let filter = EnvFilter {
            uid: me(),
            since: 0,
        };
        let callers = 12;
        let answers: Vec<(usize, Vec<i32>)> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..callers)
                .map(|i| {
                    let (shared, m) = (&shared, &markers[i % 3]);
                    s.spawn(move || {
                        let got = shared.scan(proc_root, "WFCG_TEST_MARK", m, filter);
                        (i % 3, got.pids)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let want: Vec<Vec<i32>> = children
            .iter()
            .map(|c| vec![c.id() as i32])
            .chain([vec![]])
            .collect();
        for c in &mut children {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        for (m, pids) in answers {
            assert_eq!(pids, want[m], "marker {m}");
        }
        let scans = shared.scans();
        assert!((1..=callers as u64).contains(&scans), "{scans} scans");
        // A later call scans again: the processes are gone by now.
        let again = shared.scan(proc_root, "WFCG_TEST_MARK", &markers[0], filter);
        assert!(again.pids.is_empty());
        assert_eq!(shared.scans(), scans + 1);
    }

    /// An environment larger than the limit is read only up to it, and said so.
    #[test]
    fn a_huge_environment_is_read_only_up_to_the_limit() {
        let proc_root = Path::new("/proc");
        let marker = format!("huge-{}", std::process::id());
        // Five entries of 100 KiB (one may not pass 128 KiB), sorted before the
        // marker (std passes the environment sorted by name).
        let mut cmd = std::process::Command::new("sleep");
        for i in 0..5 {
            cmd.env(format!("WFCG_PAD{i}"), "x".repeat(100 * 1024));
        }
        let mut child = cmd
            .arg("30")
            .env("WFCG_TEST_MARK", &marker)
            .spawn()
            .unwrap();
        until_marked(&[&marker]);
        let filter = EnvFilter {
            uid: me(),
            since: 0,
        };
        let got = SharedEnvScan::default().scan(proc_root, "WFCG_TEST_MARK", &marker, filter);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(got.pids.is_empty() && got.cut >= 1, "{got:?}");
    }
}
