//! `POST /v1/runs/adopt` with `cgroup`: a whole cgroup taken in place as a run,
//! nothing moved. Refused for wfcg's own cgroups, one holding PID 1, the agent or
//! the caller's lineage, or one without `cgroup.kill`; its oldest process is the
//! run's root.

use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::{IN_PLACE, bad, decided, lineage, uid_text};
use crate::adopt::{self, Gathered};
use crate::agent::{Agent, Caller, Failure, Result};
use crate::api::AuditEntry;
use crate::api::{AdoptRequest, Adopted, ErrorKind, RunStatus};
use crate::cgroup::{self, Cgroup};
use crate::policy::Identity;
use crate::procfs;

/// `statfs` type of cgroup2 (`CGROUP2_SUPER_MAGIC`).
const CGROUP2_MAGIC: u64 = 0x6367_7270;

impl Agent {
    /// `cgroup` as a cgroup on the cgroup2 mount: a path under the mount or
    /// relative to it, with no `..`, no symlink on the way (checked with
    /// openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and on cgroup2 itself.
    fn resolve_cgroup(&self, given: &str) -> Result<PathBuf> {
        let mount = cgroup::cgroup2_mount().map_err(Failure::internal)?;
        let rel = Path::new(given)
            .strip_prefix(&mount)
            .unwrap_or(Path::new(given.trim_start_matches('/')));
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(bad(format!(
                "cgroup {given:?}: give a path under {} without '.' or '..'",
                mount.display()
            )));
        }
        if rel.as_os_str().is_empty() {
            return Err(bad(format!(
                "cgroup {given:?} is the root cgroup: wfcg never adopts it"
            )));
        }
        use rustix::fs::{Mode, OFlags, ResolveFlags, fstatfs, open, openat2};
        let not_one = |e: rustix::io::Errno| bad(format!("cgroup {given:?}: no such cgroup ({e})"));
        let dir = open(
            &mount,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(Failure::internal)?;
        let fd = openat2(
            dir.as_fd(),
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH
                | ResolveFlags::NO_SYMLINKS
                | ResolveFlags::NO_MAGICLINKS
                | ResolveFlags::NO_XDEV,
        )
        .map_err(not_one)?;
        let fs = fstatfs(&fd).map_err(not_one)?;
        if fs.f_type as u64 != CGROUP2_MAGIC {
            return Err(bad(format!("cgroup {given:?} is not on the cgroup2 mount")));
        }
        Ok(mount.join(rel))
    }

    /// The processes of a cgroup to adopt in place (`cg`, `shown` as given), or
    /// the run it is already (`Err`). Refused for wfcg's own cgroups, one that
    /// holds PID 1, the agent or the caller's line, and one without cgroup.kill.
    fn cgroup_to_adopt(
        &self,
        caller: &Caller,
        cg: &Cgroup,
        shown: &str,
    ) -> Result<std::result::Result<Vec<i32>, Box<Adopted>>> {
        let abs = cg.path();
        let wfcg_root = self
            .runs
            .cg
            .parent()
            .unwrap_or_else(|| self.runs.cg.clone());
        if wfcg_root.path().starts_with(abs) {
            return Err(bad(format!(
                "cgroup {shown} holds wfcg's own cgroups: wfcg never adopts it"
            )));
        }
        if let Some(owner) = self.wfcg_owner(abs) {
            return match owner {
                Some(run_id) if self.store().get_run(&run_id)?.is_some() => {
                    self.existing_run(caller, &run_id, 0).map(|mut a| {
                        a.message = format!("cgroup {shown} is run {run_id}'s already");
                        Err(Box::new(a))
                    })
                }
                _ => Err(bad(format!(
                    "cgroup {shown} is wfcg's own (or holds it): wfcg never adopts it"
                ))),
            };
        }
        let live = RunStatus::live();
        let same = self
            .store()
            .list_runs_brief(Some(&live))?
            .into_iter()
            .find(|r| r.cgroup_path == shown);
        if let Some(r) = same {
            return self
                .existing_run(caller, &r.run_id, 0)
                .map(|a| Err(Box::new(a)));
        }
        let pids = cg.procs_recursive().map_err(|e| bad(e.to_string()))?;
        let callers = lineage(&self.cfg.proc_root, caller.pid);
        let me = std::process::id() as i32;
        if let Some(p) = pids
            .iter()
            .find(|&&p| p == 1 || p == me || callers.contains(&p))
        {
            let who = match *p {
                1 => "PID 1".to_string(),
                p if p == me => "the wfcg agent".to_string(),
                p => format!("the caller or its ancestor (pid {p})"),
            };
            return Err(bad(format!(
                "cgroup {shown} holds {who}: wfcg never adopts it"
            )));
        }
        if !cg.supports_kill() {
            return Err(bad(format!(
                "cgroup {shown} has no cgroup.kill (the root cgroup, or Linux < 5.14)"
            )));
        }
        Ok(Ok(pids))
    }

    pub(super) fn adopt_cgroup(
        self: &Arc<Self>,
        caller: &Caller,
        id: &Identity,
        given: &str,
        req: &AdoptRequest,
        entry: &mut AuditEntry,
    ) -> Result<Adopted> {
        let proc_root = self.cfg.proc_root.clone();
        let abs = self.resolve_cgroup(given)?;
        let cg = Cgroup::new(&abs);
        let shown = abs.display().to_string();
        let pids = match self.cgroup_to_adopt(caller, &cg, &shown)? {
            Ok(pids) => pids,
            Err(already) => return Ok(*already),
        };
        // Its members, oldest first: the oldest is the run's root.
        let members = members_oldest_first(&proc_root, &pids);
        let Some((_, oldest, ..)) = members.first().cloned() else {
            return Err(bad(format!("cgroup {shown} holds no process")));
        };
        let rights = self.rights(id);
        let foreign = members.iter().find(|m| m.2 != Some(caller.uid));
        let verdict = rights.to_adopt(foreign.is_some(), req.dry_run);
        decided(entry, verdict);
        if let (Err(needed), Some(m)) = (verdict, foreign) {
            let what = needed.as_str();
            return Err(Failure::new(
                ErrorKind::Forbidden,
                format!(
                    "not permitted: pid {} ({}) in {shown} belongs to {}; adopting \
                     another user's processes needs {what}",
                    m.1,
                    m.3,
                    uid_text(m.2)
                ),
            ));
        }
        let root = adopt::pin(&proc_root, oldest).map_err(|e| bad(e.to_string()))?;
        let got = Gathered {
            members: members
                .iter()
                .map(|(st, p, uid, cmd)| adopt::Member {
                    pid: *p,
                    starttime: *st,
                    uid: *uid,
                    reason: format!("in cgroup {shown}"),
                    command: cmd.clone(),
                })
                .collect(),
            complete: true,
            ..Default::default()
        };
        if req.dry_run {
            let run_id = req.run_id.clone().unwrap_or_default();
            let mut a = self.answer(&root, &got, run_id, String::new(), true);
            a.cgroup = shown;
            return Ok(a);
        }
        let run_id = self.new_adopted_id(req)?;
        let rec = self.adopted_record(caller, &run_id, &root, req, &cg, IN_PLACE)?;
        self.store().insert_run(&rec)?;
        self.lifecycle_begin(&rec, false);
        self.watch.reaper.watch(&run_id, &cg, &**self);
        tracing::info!(run_id, cgroup = shown, "adopted a cgroup in place");
        let message = format!(
            "adopted cgroup {shown} ({} processes) in place as run {run_id}",
            got.members.len()
        );
        let mut a = self.answer(&root, &got, run_id, message, false);
        a.cgroup = shown;
        Ok(a)
    }
}

/// The processes `pids` that are still there, oldest first, with their start
/// time, sole uid and command line.
fn members_oldest_first(proc_root: &Path, pids: &[i32]) -> Vec<(u64, i32, Option<u32>, String)> {
    let mut members: Vec<(u64, i32, Option<u32>, String)> = pids
        .iter()
        .filter_map(|&p| {
            let s = procfs::stat(proc_root, p)?;
            let uid = procfs::uids(proc_root, p).and_then(procfs::sole_uid);
            Some((
                s.starttime,
                p,
                uid,
                procfs::cmdline(proc_root, p).unwrap_or_default(),
            ))
        })
        .collect();
    members.sort();
    members
}
