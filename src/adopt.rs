//! Adopting a process tree that wfcg did not start: find every process of it,
//! and move them into a cgroup, race-free.
//!
//! The recipe (like CRIU's seize loop, with the freezer doing the seizing):
//! 1. pin the root with a pidfd and its raw stat start time ([`pin`]);
//! 2. the target cgroup is frozen before anything moves, so a process stops the
//!    moment it is moved and only processes not yet moved can fork;
//! 3. move the tree top down, breadth first: the children of each moved process
//!    (`/proc/P/task/*/children`), then a scan of every process whose parent was
//!    moved; each process is identified by a pidfd and re-checked (still the
//!    child of a moved parent, started after it) right before its move;
//! 4. then its escapees: processes in the root's source cgroup (reparenting
//!    never changes a cgroup) started after the root, that share its session or
//!    process group (when the leader of that session or group is the root, one
//!    of the tree, or gone: an interactive shell's session is not a workflow's),
//!    or carry one of the markers in their environment: an executor's marker
//!    with the root's value, or one inferred ([`State::infer`]: a `VAR=VALUE`
//!    of the root's that no process outside the tree has); a marker the caller
//!    named takes its carriers whatever their age. The root's ancestors are
//!    never taken, whatever their start time;
//! 5. scan again until a whole scan finds nothing new, at most [`MAX_PASSES`]
//!    times: a tree that keeps growing past that is left moved and frozen, and
//!    [`Gathered::complete`] says so.
//!
//! Without a target (a dry run) the same walk lists what would be taken, and
//! why, and changes nothing.
//!
//! A leaf module over [`crate::cgroup`] and [`crate::procfs`]: it knows nothing of
//! runs, policies or the agent; what may not be taken is the caller's to say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::OwnedFd;
use std::path::Path;

use crate::cgroup::{self, Cgroup};
use crate::procfs;

/// Passes over the process table before a still-growing tree is given up on.
pub const MAX_PASSES: usize = 32;
/// Passes of a dry run: the tree is not frozen, so it never holds still.
pub const DRY_RUN_PASSES: usize = 2;
/// The most of a process's environment read when looking for a marker.
pub const ENVIRON_LIMIT: u64 = 256 * 1024;
/// The markers executors set, looked for (with the root's own values) by default.
pub const DEFAULT_MARKERS: [&str; 4] = [
    "WFCG_RUN_ID",
    "RUNNER_TRACKING_ID",
    "GITHUB_RUN_ID",
    "CI_JOB_ID",
];

/// Variables a shell sets anew for every command it starts (the command's
/// path, the working directory, the nesting depth): a later command of the same
/// shell has the same value, so they never mark a tree.
pub const NOT_INFERRED: [&str; 4] = ["_", "PWD", "OLDPWD", "SHLVL"];
/// The most of the root's variables considered as inferred markers.
pub const MAX_INFERRED: usize = 256;

/// The root of a tree, pinned: its pidfd keeps the number from naming anything
/// else while the process lives.
#[derive(Debug)]
pub struct Root {
    pub pid: i32,
    pub pidfd: OwnedFd,
    pub stat: procfs::Stat,
    /// Real uid.
    pub uid: u32,
    /// Its cgroup, relative to the cgroup2 mount (as `/proc/<pid>/cgroup` says).
    pub cgroup: String,
    pub command: String,
}

/// Why a process cannot be a root.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PinError {
    #[error("no such process: {0}")]
    NoSuchProcess(i32),
    #[error("pid {0} is a zombie: it has exited already (its parent has not reaped it)")]
    Zombie(i32),
    #[error("pid {0} is a kernel thread")]
    KernelThread(i32),
    #[error("pid {0} is not a valid process id")]
    Invalid(i32),
}

/// Pins `pid`: a pidfd first, then its stat, uid, cgroup and command, then a
/// check through the pidfd that all of it was read of that same process.
pub fn pin(proc_root: &Path, pid: i32) -> Result<Root, PinError> {
    if pid <= 0 {
        return Err(PinError::Invalid(pid));
    }
    let gone = PinError::NoSuchProcess(pid);
    let pidfd = procfs::pidfd_open(pid).map_err(|_| PinError::NoSuchProcess(pid))?;
    let stat = procfs::stat(proc_root, pid).ok_or(PinError::NoSuchProcess(pid))?;
    if stat.is_kernel_thread() {
        return Err(PinError::KernelThread(pid));
    }
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(PinError::Zombie(pid));
    }
    let uid = procfs::uids(proc_root, pid).ok_or(PinError::NoSuchProcess(pid))?[0];
    let cgroup = cgroup::process_cgroup(proc_root, pid).ok_or(PinError::NoSuchProcess(pid))?;
    let command = procfs::cmdline(proc_root, pid).unwrap_or_default();
    if !procfs::pidfd_alive(&pidfd) {
        return Err(gone);
    }
    Ok(Root {
        pid,
        pidfd,
        stat,
        uid,
        cgroup,
        command,
    })
}

/// One process taken (or, in a dry run, that would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: i32,
    pub starttime: u64,
    /// The uid it runs as, when its real, effective and saved uids agree (and
    /// were read: [`Walk::uids`]).
    pub uid: Option<u32>,
    /// Why: `root`, `child of N`, `escapee: same session S`, `escapee: marker V=X`, …
    pub reason: String,
    pub command: String,
}

/// A process that belonged to the tree but was left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub pid: i32,
    pub starttime: u64,
    pub reason: String,
    pub command: String,
}

/// What one walk found (and moved, given a target).
#[derive(Debug, Default)]
pub struct Gathered {
    pub members: Vec<Member>,
    pub skipped: Vec<Skipped>,
    /// A pass found nothing new (false: the tree kept growing, or a dry run's
    /// last pass still found processes).
    pub complete: bool,
    pub passes: usize,
    /// Moves that failed for another reason than the process exiting.
    pub errors: Vec<String>,
    /// The names of the markers inferred from the root's environment (their
    /// values are not repeated: a value unique to a tree may be a secret).
    pub inferred: Vec<String>,
}

/// Processes the caller says may not be taken, each with why (checked before
/// every move): PID 1, the agent, the caller and its ancestors, other runs.
pub type Veto<'a> = &'a (dyn Fn(&Candidate<'_>) -> Option<String> + Sync);

/// A process about to be taken, as the veto sees it.
pub struct Candidate<'a> {
    pub pid: i32,
    pub stat: &'a procfs::Stat,
    /// As in [`Member::uid`].
    pub uid: Option<u32>,
    /// Its cgroup, relative to the cgroup2 mount.
    pub cgroup: Option<&'a str>,
}

/// What to walk and how.
pub struct Walk<'a> {
    pub proc_root: &'a Path,
    /// The cgroup2 mount, which `/proc/<pid>/cgroup` paths are relative to.
    pub mount: &'a Path,
    pub root: &'a Root,
    /// `VAR=VALUE` entries that mark an escapee started after the root (the
    /// executors' markers with the root's values: [`executor_markers`]).
    pub markers: Vec<Vec<u8>>,
    /// `VAR=VALUE` entries the caller named: they mark an escapee whatever its age.
    pub named: Vec<Vec<u8>>,
    /// Infer markers from the root's environment ([`State::infer`]).
    pub infer: bool,
    pub veto: Veto<'a>,
    /// Moves here when given (frozen by the caller beforehand); a dry run when not.
    pub target: Option<&'a Cgroup>,
    pub max_passes: usize,
    /// Read each process's uids (for ownership checks); a `status` read each.
    pub uids: bool,
    /// Markers are looked for only in processes whose real, effective and saved
    /// uids are all this one (the caller's, when it may act on no other's):
    /// checked before the environment is read, so that whether another user's
    /// process carries a marker changes nothing in the answer (no oracle).
    /// `None`: the root's owner's, for a caller who may act on anyone's: a value
    /// the tree's owner chose (`CI_JOB_ID=4242`) never pulls in a process of
    /// root's or of another user's that happens to carry it.
    pub marker_uid: Option<u32>,
}

/// Each of the executors' markers ([`DEFAULT_MARKERS`]) the root carries, with
/// the root's value.
pub fn executor_markers(proc_root: &Path, root: &Root) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in procfs::environ(proc_root, root.pid, ENVIRON_LIMIT) {
        if DEFAULT_MARKERS
            .iter()
            .any(|k| entry.starts_with(k.as_bytes()) && entry.get(k.len()) == Some(&b'='))
            && entry.len() > entry.iter().position(|b| *b == b'=').unwrap_or(0) + 1
        {
            out.push(entry);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The name of a `VAR=VALUE` entry (empty when it has no `=`).
fn name_of(entry: &[u8]) -> &[u8] {
    entry
        .iter()
        .position(|b| *b == b'=')
        .map_or(&[][..], |eq| &entry[..eq])
}

/// The ancestors of `pid` (not itself), each with its start time, up to PID 1.
pub fn ancestors(proc_root: &Path, pid: i32) -> HashMap<i32, u64> {
    let mut out = HashMap::new();
    let mut p = pid;
    while out.len() < 4096 {
        let Some(parent) = procfs::stat(proc_root, p)
            .map(|s| s.ppid)
            .filter(|&pp| pp > 0)
        else {
            break;
        };
        let Some(st) = procfs::stat(proc_root, parent) else {
            break;
        };
        out.insert(parent, st.starttime);
        p = parent;
    }
    out
}

/// Whether `st` (of `pid`) could be one of the tree's escapees: started after
/// the root, in its source cgroup, not one of its `ancestors`, and not started
/// by the root's own launcher (its parent, unless that is PID 1): a sibling of
/// the root is a later command of the same shell or executor.
fn could_be_of_tree(
    proc_root: &Path,
    root: &Root,
    ancestors: &HashMap<i32, u64>,
    pid: i32,
    st: &procfs::Stat,
) -> bool {
    let launcher = root.stat.ppid;
    st.starttime >= root.stat.starttime
        && !(launcher > 1 && st.ppid == launcher)
        && ancestors.get(&pid) != Some(&st.starttime)
        && cgroup::process_cgroup(proc_root, pid).as_deref() == Some(&root.cgroup)
}

struct State<'a> {
    walk: &'a Walk<'a>,
    /// pid → start time of every process taken.
    taken: HashMap<i32, u64>,
    /// The root's ancestors (pid → start time): never taken.
    ancestors: HashMap<i32, u64>,
    /// Markers inferred from the root's environment.
    inferred: Vec<Vec<u8>>,
    skipped: HashMap<i32, Skipped>,
    frontier: VecDeque<i32>,
    out: Gathered,
}

impl State<'_> {
    /// Takes `pid` if it is still what it was found as: `parent` (a member) its
    /// parent, or for an escapee `check` still true of it. Returns whether it was taken.
    fn consider(
        &mut self,
        pid: i32,
        parent: Option<i32>,
        reason: &dyn Fn(&procfs::Stat) -> Option<String>,
    ) -> bool {
        if self.taken.contains_key(&pid) || self.skipped.contains_key(&pid) {
            return false;
        }
        let proc_root = self.walk.proc_root;
        // Pin it, then read what it is: what is read after the pidfd and before
        // the pidfd says it died is of this very process.
        let Ok(pidfd) = procfs::pidfd_open(pid) else {
            return false;
        };
        let Some(stat) = procfs::stat(proc_root, pid) else {
            return false;
        };
        if stat.state == 'Z' || stat.state == 'X' || stat.is_kernel_thread() {
            return false; // dead already (a zombie cannot be moved), or not ours to move
        }
        if self.ancestors.get(&pid) == Some(&stat.starttime) {
            return false; // the root's parent, its shell, …: never of the tree
        }
        if let Some(p) = parent {
            // Still the child of that member, and younger than it.
            if stat.ppid != p || self.taken.get(&p).is_none_or(|&st| stat.starttime < st) {
                return false;
            }
        }
        let Some(why) = reason(&stat) else {
            return false;
        };
        let uid = if self.walk.uids {
            procfs::uids(proc_root, pid).and_then(procfs::sole_uid)
        } else {
            None
        };
        let command = procfs::cmdline(proc_root, pid).unwrap_or_default();
        let from = cgroup::process_cgroup(proc_root, pid);
        let candidate = Candidate {
            pid,
            stat: &stat,
            uid,
            cgroup: from.as_deref(),
        };
        if let Some(veto) = (self.walk.veto)(&candidate) {
            self.skipped.insert(
                pid,
                Skipped {
                    pid,
                    starttime: stat.starttime,
                    reason: format!("{why}, left alone: {veto}"),
                    command,
                },
            );
            return false;
        }
        if !procfs::pidfd_alive(&pidfd) {
            return false;
        }
        if let Some(target) = self.walk.target {
            if let Err(e) = target.add_process(pid) {
                if procfs::pidfd_alive(&pidfd) {
                    self.out.errors.push(format!("pid {pid}: {e}"));
                }
                return false;
            }
            // The write named a number: it moved this process unless the process
            // died in between and the number went to another, which is then put
            // back where the dead one was (never killed). A child of a frozen
            // member that dies stays a zombie, its number taken, until the parent
            // thaws; an escapee's number would have to go round pid_max meanwhile.
            if !procfs::pidfd_alive(&pidfd) {
                if procfs::stat(proc_root, pid).is_some_and(|now| now.starttime != stat.starttime)
                    && target.contains_process(proc_root, pid) == Some(true)
                {
                    let back = from
                        .map(|rel| Cgroup::new(self.walk.mount.join(rel.trim_start_matches('/'))));
                    let moved_back = back.is_some_and(|cg| cg.add_process(pid).is_ok());
                    self.out.errors.push(format!(
                        "pid {pid} exited while it was moved and its number went to a new \
                         process at once; that one was {}",
                        if moved_back {
                            "moved back"
                        } else {
                            "moved too"
                        }
                    ));
                }
                return false;
            }
        }
        self.taken.insert(pid, stat.starttime);
        self.frontier.push_back(pid);
        self.out.members.push(Member {
            pid,
            starttime: stat.starttime,
            uid,
            reason: why,
            command,
        });
        true
    }

    /// Breadth first from the frontier: each member's children.
    fn descend(&mut self) -> usize {
        let mut found = 0;
        while let Some(p) = self.frontier.pop_front() {
            for c in procfs::children(self.walk.proc_root, p) {
                let why = format!("child of {p}");
                if self.consider(c, Some(p), &|_| Some(why.clone())) {
                    found += 1;
                }
            }
        }
        found
    }

    /// Whether the leader of a session or process group `id` makes membership
    /// in it a sign of the tree: the leader is the root, a member, or gone.
    /// An id of 0 is a leader outside this PID namespace (a container's
    /// processes all show session 0): it is not gone, and it leads strangers.
    fn led_by_tree(&self, id: i32) -> bool {
        id > 0
            && (id == self.walk.root.pid
                || self.taken.contains_key(&id)
                || procfs::stat(self.walk.proc_root, id).is_none_or(|s| s.state == 'Z'))
    }

    /// The markers inferred from the root's environment: each `VAR=VALUE` of
    /// the root's (but [`NOT_INFERRED`], empty values and markers known
    /// already; at most [`MAX_INFERRED`]) that no process outside the tree
    /// carries and some process that could be an escapee ([`could_be_of_tree`],
    /// and not vetoed) does (a marker that takes nothing is none). Two bounded
    /// reads of the environments of [`Self::inferred_uid`]'s processes: first
    /// those that could be escapees, for the values they carry; then, only if
    /// they carry some, every other process but the members, for which of
    /// those values are common. Run once the root's descendants are taken.
    fn infer(&mut self) {
        let walk = self.walk;
        let known: HashSet<&[u8]> = walk
            .markers
            .iter()
            .chain(&walk.named)
            .map(Vec::as_slice)
            .collect();
        let mut wanted: Vec<Vec<u8>> =
            procfs::environ(walk.proc_root, walk.root.pid, ENVIRON_LIMIT)
                .into_iter()
                .filter(|e| {
                    let name = name_of(e);
                    !name.is_empty()
                        && e.len() > name.len() + 1
                        && !NOT_INFERRED.iter().any(|n| n.as_bytes() == name)
                        && !known.contains(e.as_slice())
                })
                .take(MAX_INFERRED)
                .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return;
        }
        let (proc_root, uid) = (walk.proc_root, Self::inferred_uid(walk));
        let (taken, ancestors) = (&self.taken, &self.ancestors);
        // A process the caller says may not be taken (the caller itself, run
        // from the root's shell) is no escapee: what it carries is common.
        let candidate = |pid: i32, st: &procfs::Stat| {
            !taken.contains_key(&pid)
                && could_be_of_tree(proc_root, walk.root, ancestors, pid, st)
                && (walk.veto)(&Candidate {
                    pid,
                    stat: st,
                    uid: Some(uid),
                    cgroup: Some(&walk.root.cgroup),
                })
                .is_none()
        };
        // The hits of each entry among processes of one read.
        let hit = |found: procfs::markers::Carriers| {
            let mut hit = vec![false; wanted.len()];
            for i in found.pids.into_iter().flat_map(|(_, hits)| hits) {
                hit[i] = true;
            }
            hit
        };
        let held = hit(procfs::markers::carriers(
            proc_root,
            &wanted,
            uid,
            &|pid, st| !candidate(pid, st),
        ));
        if !held.contains(&true) {
            return; // no possible escapee has a value of the root's
        }
        let common = hit(procfs::markers::carriers(
            proc_root,
            &wanted,
            uid,
            &|pid, st| taken.contains_key(&pid) || candidate(pid, st),
        ));
        self.inferred = wanted
            .into_iter()
            .zip(held.into_iter().zip(common))
            .filter_map(|(w, (held, common))| (held && !common).then_some(w))
            .collect();
        self.out.inferred = self
            .inferred
            .iter()
            .map(|m| String::from_utf8_lossy(name_of(m)).into_owned())
            .collect();
    }

    /// Whose processes an inferred marker is looked for in (and its values
    /// checked against): the caller's when it may act on no other's, else the
    /// root's owner's. A value the tree gave another user's process (through a
    /// setuid program) is not followed.
    fn inferred_uid(walk: &Walk<'_>) -> u32 {
        Self::marker_uid(walk)
    }

    /// Whose processes any marker is looked for in: [`Walk::marker_uid`], else
    /// the root's owner's.
    fn marker_uid(walk: &Walk<'_>) -> u32 {
        walk.marker_uid.unwrap_or(walk.root.uid)
    }

    /// Why a process carries a marker of the tree, if it does: a named marker
    /// whatever its age (`young`: started after the root), an executor's or an
    /// inferred one only if young. Its environment is read only if its real,
    /// effective and saved uids are [`Self::marker_uid`]'s.
    fn marked(walk: &Walk<'_>, inferred: &[Vec<u8>], pid: i32, young: bool) -> Option<String> {
        if walk.named.is_empty() && (!young || (walk.markers.is_empty() && inferred.is_empty())) {
            return None;
        }
        let sole = procfs::uids(walk.proc_root, pid).and_then(procfs::sole_uid);
        if sole != Some(Self::marker_uid(walk)) {
            return None;
        }
        let env = procfs::environ(walk.proc_root, pid, ENVIRON_LIMIT);
        let shown = |m: &Vec<u8>| String::from_utf8_lossy(m).into_owned();
        if let Some(m) = walk.named.iter().find(|m| env.contains(m)) {
            return Some(format!("escapee: marker {}", shown(m)));
        }
        if !young {
            return None;
        }
        if let Some(m) = walk.markers.iter().find(|m| env.contains(m)) {
            return Some(format!("escapee: marker {}", shown(m)));
        }
        if sole != Some(Self::inferred_uid(walk)) {
            return None;
        }
        inferred.iter().find(|m| env.contains(m)).map(|m| {
            format!(
                "escapee: inferred marker {}",
                String::from_utf8_lossy(name_of(m))
            )
        })
    }

    /// One scan of every process: children of members the child lists missed,
    /// and escapees.
    fn scan(&mut self) -> usize {
        let proc_root = self.walk.proc_root;
        let root = self.walk.root;
        let session_counts = self.led_by_tree(root.stat.session);
        let group_counts = self.led_by_tree(root.stat.pgrp);
        let walk = self.walk;
        let inferred = self.inferred.clone();
        let named = !self.walk.named.is_empty();
        let any_marker = named || !self.walk.markers.is_empty() || !self.inferred.is_empty();
        let mut found = 0;
        for pid in procfs::all_pids(proc_root) {
            if self.taken.contains_key(&pid) || self.skipped.contains_key(&pid) {
                continue;
            }
            let Some(stat) = procfs::stat(proc_root, pid) else {
                continue;
            };
            if self.taken.contains_key(&stat.ppid) {
                let why = format!("child of {}", stat.ppid);
                if self.consider(pid, Some(stat.ppid), &|_| Some(why.clone())) {
                    found += 1 + self.descend();
                }
                continue;
            }
            let young = stat.starttime >= root.stat.starttime;
            if !young && !named {
                continue;
            }
            let escapee = |s: &procfs::Stat| -> Option<String> {
                let young = s.starttime >= root.stat.starttime;
                if cgroup::process_cgroup(proc_root, pid).as_deref() != Some(&root.cgroup) {
                    return None;
                }
                if young && session_counts && s.session == root.stat.session {
                    return Some(format!("escapee: same session {}", s.session));
                }
                if young && group_counts && s.pgrp == root.stat.pgrp {
                    return Some(format!("escapee: same process group {}", s.pgrp));
                }
                Self::marked(walk, &inferred, pid, young)
            };
            // Cheap tests first; the closure runs again under the pidfd.
            let maybe = (young && session_counts && stat.session == root.stat.session)
                || (young && group_counts && stat.pgrp == root.stat.pgrp)
                || any_marker;
            if maybe && self.consider(pid, None, &escapee) {
                found += 1 + self.descend();
            }
        }
        found
    }
}

/// Walks the tree of `walk.root`, moving each process into `walk.target` when
/// given. The root is taken first (its pidfd proves it is still the process
/// pinned); if it has exited, nothing is taken.
pub fn gather(walk: &Walk<'_>) -> Gathered {
    let mut st = State {
        walk,
        taken: HashMap::new(),
        ancestors: ancestors(walk.proc_root, walk.root.pid),
        inferred: Vec::new(),
        skipped: HashMap::new(),
        frontier: VecDeque::new(),
        out: Gathered::default(),
    };
    let root = walk.root;
    let root_start = root.stat.starttime;
    let taken_root = procfs::pidfd_alive(&root.pidfd)
        && st.consider(root.pid, None, &|s| {
            (s.starttime == root_start).then(|| "root".to_string())
        });
    if !taken_root {
        st.out.skipped = st.skipped.into_values().collect();
        return st.out;
    }
    for pass in 1..=walk.max_passes.max(1) {
        st.out.passes = pass;
        // Stable once a scan, begun after every member's children were taken,
        // finds nothing: a member forks only into the frozen target from then
        // on (a child is born in its parent's cgroup).
        st.descend();
        if pass == 1 && walk.infer {
            st.infer();
        }
        if st.scan() == 0 {
            st.out.complete = true;
            break;
        }
    }
    let mut skipped: Vec<Skipped> = st.skipped.into_values().collect();
    skipped.sort_by_key(|s| s.pid);
    st.out.skipped = skipped;
    st.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_that_cannot_be_pinned_says_why() {
        let proc_root = Path::new("/proc");
        assert_eq!(pin(proc_root, 0).unwrap_err(), PinError::Invalid(0));
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        // Exited, not yet reaped: a zombie.
        while procfs::state(proc_root, pid) != Some('Z') {
            std::thread::yield_now();
        }
        assert_eq!(pin(proc_root, pid).unwrap_err(), PinError::Zombie(pid));
        c.wait().unwrap();
        assert_eq!(
            pin(proc_root, pid).unwrap_err(),
            PinError::NoSuchProcess(pid)
        );
    }

    #[test]
    fn a_dry_run_lists_the_tree_with_reasons_and_moves_nothing() {
        let proc_root = Path::new("/proc");
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 31 & wait"])
            .spawn()
            .unwrap();
        let pid = sh.id() as i32;
        // Started after the root, in its cgroup and session, yet not of it.
        let mut neighbour = std::process::Command::new("sleep")
            .arg("32")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while procfs::children(proc_root, pid).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let root = pin(proc_root, pid).unwrap();
        let cgroup_before = root.cgroup.clone();
        let got = gather(&Walk {
            proc_root,
            mount: Path::new("/sys/fs/cgroup"),
            root: &root,
            markers: Vec::new(),
            named: Vec::new(),
            infer: false,
            veto: &|_| None,
            target: None,
            max_passes: DRY_RUN_PASSES,
            uids: true,
            marker_uid: None,
        });
        let kids = procfs::children(proc_root, pid);
        for k in &kids {
            let _ = std::process::Command::new("kill")
                .arg(k.to_string())
                .status();
        }
        sh.wait().unwrap();
        let _ = neighbour.kill();
        neighbour.wait().unwrap();
        assert_eq!(got.members[0].reason, "root");
        assert_eq!(got.members[0].uid, Some(rustix::process::getuid().as_raw()));
        let mut listed: Vec<(i32, String)> = got.members[1..]
            .iter()
            .map(|m| (m.pid, m.reason.clone()))
            .collect();
        listed.sort();
        let mut want: Vec<(i32, String)> = kids
            .iter()
            .map(|&k| (k, format!("child of {pid}")))
            .collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(
            cgroup::process_cgroup(proc_root, std::process::id() as i32),
            Some(cgroup_before)
        );
    }

    /// Only values the tree alone has are inferred: not what its launcher (this
    /// test, an ancestor) has, not what a later command of the same launcher has
    /// too, not what a shell sets for every command; and an inferred marker
    /// takes the tree's double-forked escapee.
    #[test]
    fn markers_are_inferred_from_values_no_process_outside_the_tree_has() {
        let proc_root = Path::new("/proc");
        let token = format!("token-{}", std::process::id());
        let pwd = format!("/nowhere-{token}");
        let start = |script: &str, env: &[(&str, &str)]| {
            std::process::Command::new("sh")
                .args(["-c", script])
                .envs(env.iter().copied())
                .spawn()
                .unwrap()
        };
        let mut root_child = start(
            "(sleep 30 &); exec sleep 31",
            &[
                ("WFCG_INFER_TOKEN", &token),
                ("WFCG_INFER_SHARED", &token),
                ("_", &pwd),
                ("PWD", &pwd),
            ],
        );
        let mut sibling = start("exec sleep 32", &[("WFCG_INFER_SHARED", &token)]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let marked =
            || crate::procfs::markers::pids_with_env(proc_root, "WFCG_INFER_TOKEN", &token);
        let shared =
            || crate::procfs::markers::pids_with_env(proc_root, "WFCG_INFER_SHARED", &token);
        while (marked().len() < 2 || shared().len() < 3) && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        let escapee = marked()
            .into_iter()
            .find(|&p| p != root_child.id() as i32)
            .expect("the escapee runs");
        let root = pin(proc_root, root_child.id() as i32).unwrap();
        let got = gather(&Walk {
            proc_root,
            mount: Path::new("/sys/fs/cgroup"),
            root: &root,
            markers: Vec::new(),
            named: Vec::new(),
            infer: true,
            veto: &|_| None,
            target: None,
            max_passes: DRY_RUN_PASSES,
            uids: false,
            marker_uid: None,
        });
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(escapee).unwrap(),
            rustix::process::Signal::KILL,
        );
        for c in [&mut root_child, &mut sibling] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert_eq!(got.inferred, vec!["WFCG_INFER_TOKEN".to_string()]);
        let reasons: Vec<(i32, &str)> = got
            .members
            .iter()
            .map(|m| (m.pid, m.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (root.pid, "root"),
                (escapee, "escapee: inferred marker WFCG_INFER_TOKEN")
            ]
        );
    }

    /// In a container every process shows session 0 (its leader is outside the
    /// PID namespace): the dry run above, run there, must still take no neighbour.
    #[test]
    fn in_a_pid_namespace_session_0_takes_no_neighbour() {
        let out = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "adopt::tests::a_dry_run_lists_the_tree_with_reasons_and_moves_nothing",
            ])
            .output()
            .expect("unshare (util-linux) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
