//! `POST /v1/runs/adopt`: runs started outside wfcg, taken over.
//!
//! A tree rooted at a pid is moved (race-free, see [`crate::adopt`]) into
//! `runs/<id>/payload`, created frozen before anything moves; an adopted tree
//! has no supervisor, so `runs/<id>/supervisor` is never made. A whole cgroup is
//! taken in place (`cgroup`, [`in_place`]), nothing moved. Either way the run is
//! recorded with the root process's uid as owner, its real start time and
//! command, audited as `adopt` with every member and why it was taken, and then
//! thawed, or, with `kill`, killed while still frozen.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::audit::Audited;
use super::audit_trail::by_caller;
use super::time::now;
use super::{Agent, Caller, Failure, Result, layout};
use crate::adopt::{self, Gathered, Root, Walk};
use crate::api::AuditEntry;
use crate::api::{AdoptMember, AdoptRequest, Adopted, CreateRun, ErrorKind, RunStatus};
use crate::api::{AuditAction, Decision};
use crate::cgroup::{self, Cgroup};
use crate::policy::{Identity, Permission};
use crate::procfs;
use crate::store::RunRecord;

mod in_place;

/// `adopted` of a run whose cgroup was taken in place.
pub use super::layout::ADOPTED_IN_PLACE as IN_PLACE;
/// `adopted` of a run whose tree was moved in.
pub use super::layout::ADOPTED_TREE as TREE;
/// The leaf of an adopted run's cgroup that holds the tree: the payload leaf of
/// every run (an adopted tree has no supervisor leaf).
pub use super::layout::PAYLOAD;

fn bad(msg: impl Into<String>) -> Failure {
    Failure::new(ErrorKind::BadInput, msg)
}

/// The parent chain of a process, itself first, up to PID 1.
fn lineage(proc_root: &Path, pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut p = pid;
    while p > 1 && out.len() < 4096 {
        match procfs::stat(proc_root, p) {
            Some(s) if s.ppid > 0 => {
                out.push(s.ppid);
                p = s.ppid;
            }
            _ => break,
        }
    }
    out
}

/// `uid N`, or what a process with differing real, effective and saved uids is.
fn uid_text(uid: Option<u32>) -> String {
    match uid {
        Some(u) => format!("uid {u}"),
        None => "differing real, effective and saved uids (setuid?)".into(),
    }
}

/// What a caller may do with processes it does not own.
struct Rights {
    any: bool,
    view_all: bool,
}

impl Rights {
    /// The one adoption permission, for a tree and a cgroup alike: a caller's
    /// own processes with kill_own; another user's (`foreign`) with kill_any,
    /// or only listed (`dry_run`) with view_all. `Ok`: the permission that
    /// allows it; `Err`: the one it needs.
    fn to_adopt(
        &self,
        foreign: bool,
        dry_run: bool,
    ) -> std::result::Result<Permission, Permission> {
        match (foreign, dry_run) {
            (false, _) => Ok(Permission::KillOwn),
            (true, _) if self.any => Ok(Permission::KillAny),
            (true, true) if self.view_all => Ok(Permission::ViewAll),
            (true, true) => Err(Permission::ViewAll),
            (true, false) => Err(Permission::KillAny),
        }
    }
}

/// An adoption's decision, as its audit record says it.
fn decided(entry: &mut AuditEntry, verdict: std::result::Result<Permission, Permission>) {
    entry.decision = Decision::of(verdict.is_ok());
    entry.permission = Some(verdict.unwrap_or_else(|needed| needed).as_str().into());
}

/// Removes a new run's cgroup after a failed adoption, logging what fails.
fn discard(run_cg: &Cgroup, run_id: &str) {
    if let Err(e) = run_cg.remove_recursive() {
        tracing::warn!(run_id, "undoing a failed adoption: {e}");
    }
}

/// What [`Agent::pin_tree`] found (once per request, on the stack).
#[allow(clippy::large_enum_variant)]
enum Pinned<'a> {
    /// A tree to adopt.
    Tree(Tree<'a>),
    /// The run the root is in already.
    Adopted(Adopted),
}

/// A tree to adopt: its root pinned, and what its walks never take.
struct Tree<'a> {
    agent: &'a Agent,
    caller: &'a Caller,
    pid: i32,
    root: Root,
    mount: std::path::PathBuf,
    /// The agent's pid, and the caller and its ancestors.
    me: i32,
    callers: Vec<i32>,
    /// The executors' markers the root carries, and those the caller named.
    markers: Vec<Vec<u8>>,
    named: Vec<Vec<u8>>,
    rights: Rights,
}

impl Tree<'_> {
    /// Never taken, whatever the tree: init, the agent, the caller's line,
    /// processes of wfcg's runs.
    fn never(&self, c: &adopt::Candidate<'_>) -> Option<String> {
        if c.pid == 1 {
            return Some("pid 1".into());
        }
        if c.pid == self.me {
            return Some("the wfcg agent".into());
        }
        if self.callers.contains(&c.pid) {
            return Some("the caller or its ancestor".into());
        }
        let abs = self.mount.join(c.cgroup?.trim_start_matches('/'));
        match self.agent.wfcg_owner(&abs) {
            Some(Some(run)) => Some(format!("in run {run}")),
            Some(None) => Some("in the wfcg agent's cgroup".into()),
            None => None,
        }
    }

    /// A walk of the tree: a dry run (`target` none), or its move into `target`.
    fn walk(&self, target: Option<&Cgroup>, veto: adopt::Veto<'_>, uids: bool) -> Gathered {
        adopt::gather(&Walk {
            proc_root: &self.agent.cfg.proc_root,
            mount: &self.mount,
            root: &self.root,
            markers: self.markers.clone(),
            named: self.named.clone(),
            infer: true,
            veto,
            target,
            max_passes: if target.is_some() {
                adopt::MAX_PASSES
            } else {
                adopt::DRY_RUN_PASSES
            },
            uids,
            marker_uid: (!self.rights.any).then_some(self.caller.uid),
        })
    }

    /// Who may take what: decided on a walk that changes nothing (skipped for
    /// kill_any, which may take anything anyway), and written to `entry`. The
    /// answer of a dry run, or none when the adoption goes on.
    fn permit(&self, req: &AdoptRequest, entry: &mut AuditEntry) -> Result<Option<Adopted>> {
        if !req.dry_run && self.rights.any {
            decided(entry, Ok(Permission::KillAny));
            return Ok(None);
        }
        let caller = self.caller;
        let seen = self.walk(None, &|c| self.never(c), true);
        let foreign = seen.members.iter().find(|m| m.uid != Some(caller.uid));
        let verdict = self.rights.to_adopt(foreign.is_some(), req.dry_run);
        decided(entry, verdict);
        if let Err(needed) = verdict {
            let m = foreign.expect("a foreign member");
            let what = needed.as_str();
            return Err(Failure::new(
                ErrorKind::Forbidden,
                format!(
                    "not permitted: pid {} ({}) belongs to {}; adopting another \
                     user's processes needs {what}",
                    m.pid,
                    m.command,
                    uid_text(m.uid)
                ),
            ));
        }
        if req.dry_run {
            let run_id = req.run_id.clone().unwrap_or_default();
            return Ok(Some(self.agent.answer(
                &self.root,
                &seen,
                run_id,
                String::new(),
                true,
            )));
        }
        Ok(None)
    }

    /// Moves the tree into the frozen `payload` of `run_cg` (a caller who may
    /// act on no other's takes only its own processes); the run's cgroup is
    /// removed when nothing could be moved. Returns the walk and its time in ms.
    fn move_into(
        &self,
        payload: &Cgroup,
        run_cg: &Cgroup,
        run_id: &str,
    ) -> Result<(Gathered, f64)> {
        let owned_only = !self.rights.any;
        let uid = self.caller.uid;
        let veto = |c: &adopt::Candidate<'_>| -> Option<String> {
            self.never(c).or_else(|| {
                (owned_only && c.uid != Some(uid)).then(|| format!("owned by {}", uid_text(c.uid)))
            })
        };
        let t = Instant::now();
        let got = self.walk(Some(payload), &veto, owned_only);
        let walked_ms = t.elapsed().as_secs_f64() * 1e3;
        let pid = self.pid;
        if got.members.is_empty() {
            discard(run_cg, run_id);
            return Err(bad(format!(
                "no such process: {pid} (it exited before it could be adopted)"
            )));
        }
        Ok((got, walked_ms))
    }
}

impl Agent {
    fn rights(&self, id: &Identity) -> Rights {
        let perms = self.access.policy().permissions(id);
        Rights {
            any: perms.contains(&Permission::KillAny),
            view_all: perms.contains(&Permission::ViewAll),
        }
    }

    /// An adopted run is a live run like a started one: a user's counts against
    /// the same caps (live runs, starts a minute, root's reserve on the state
    /// filesystem), held until it is recorded. A dry run makes nothing, and a
    /// `kill --pid` ends its run at once: neither is counted.
    fn adoption_budget(
        &self,
        caller: &Caller,
        req: &AdoptRequest,
    ) -> Result<Option<super::runs::Slot>> {
        if req.dry_run || req.kill {
            return Ok(None);
        }
        // It has no TMPDIR of its own.
        self.check_budgets_with(caller, 0)
    }

    /// Adopts a tree (`pid`) or a cgroup in place (`cgroup`) into a new run, or
    /// lists what would be taken (`dry_run`); with `kill`, kills it at once.
    /// The attempt is audited as `adopt`, whatever its outcome.
    pub fn adopt(self: &Arc<Self>, caller: &Caller, req: AdoptRequest) -> Result<Audited<Adopted>> {
        if let Some(problem) = req.problem() {
            return Err(bad(problem));
        }
        let id = self.access.identity(caller);
        let t = Instant::now();
        let mut entry = AuditEntry {
            time: now(),
            action: if req.dry_run {
                AuditAction::AdoptDryRun
            } else {
                AuditAction::Adopt
            },
            run_id: req.run_id.clone(),
            reason: req.reason.clone(),
            decision: Decision::NotNeeded,
            ..by_caller(caller, &id)
        };
        // Processes of the tree left alone: after a kill, those still alive are
        // what is known to live on of it.
        let mut left_alone = Vec::new();
        let adopted = {
            let _one_at_a_time = self.runs.adopt_lock.lock();
            match self.adoption_budget(caller, &req) {
                Err(e) => Err(e),
                Ok(_budget) => match (req.pid, req.cgroup.as_deref()) {
                    (Some(pid), None) => {
                        self.adopt_tree(caller, &id, pid, &req, &mut entry, &mut left_alone)
                    }
                    (None, Some(path)) => self.adopt_cgroup(caller, &id, path, &req, &mut entry),
                    (Some(_), Some(_)) => Err(bad("give a pid or a cgroup to adopt, not both")),
                    (None, None) => Err(bad("give a pid (or a cgroup) to adopt")),
                },
            }
        };
        entry.duration_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        entry.outcome = match &adopted {
            Ok(a) if a.already_adopted => format!("already adopted as {}", a.run_id),
            Ok(a) => {
                let list: Vec<String> = a
                    .members
                    .iter()
                    .map(|m| format!("{} ({})", m.pid, m.reason))
                    .collect();
                let verb = if a.dry_run { "would adopt" } else { "adopted" };
                format!("{verb} {} processes: {}", a.members.len(), list.join(", "))
            }
            Err(f) => format!("refused: {}", f.message),
        };
        if let Ok(a) = &adopted {
            entry.run_id = (!a.run_id.is_empty()).then(|| a.run_id.clone());
        }
        let receipt = self.records.auditor.record(&self.runs.store, entry);
        let mut adopted = adopted.map_err(|f| f.recorded(receipt.clone()))?;
        if req.kill && !req.dry_run {
            let run_cg = Cgroup::new(&adopted.cgroup);
            match self
                .kill(caller, &adopted.run_id, req.kill_request())
                .map(Audited::into_inner)
            {
                Ok(mut result) => {
                    // Of the tree as far as wfcg can tell: not init, the agent or
                    // the caller's line, which are left alone whatever they are.
                    let proc_root = &self.cfg.proc_root;
                    let callers = lineage(proc_root, caller.pid);
                    let me = std::process::id() as i32;
                    let alive: Vec<String> = left_alone
                        .iter()
                        .filter(|s| s.pid != 1 && s.pid != me && !callers.contains(&s.pid))
                        .filter(|s| {
                            procfs::stat(proc_root, s.pid)
                                .is_some_and(|st| st.starttime == s.starttime && st.state != 'Z')
                        })
                        .map(|s| format!("pid {} ({}): {}", s.pid, s.command, s.reason))
                        .collect();
                    super::kill_result::left_alone(&mut result, alive);
                    adopted.message = format!("{}; {}", adopted.message, result.message);
                    adopted.kill = Some(result);
                }
                Err(f) => {
                    // Refused (e.g. a force kill without kill_force): the run stays
                    // adopted, and must not stay frozen (if this request froze it).
                    if !adopted.already_adopted {
                        let _ = layout::payload(&run_cg).thaw();
                    }
                    return Err(Failure::new(
                        f.kind,
                        format!(
                            "run {} adopted, but not killed: {}",
                            adopted.run_id, f.message
                        ),
                    )
                    .recorded(receipt));
                }
            }
        }
        Ok(Audited::new(adopted, receipt))
    }

    /// Refuses roots wfcg must never take: PID 1, the agent and its ancestors,
    /// the caller and its ancestors (the caller's shell).
    fn refuse_root(&self, caller: &Caller, pid: i32) -> Result<()> {
        let proc_root = &self.cfg.proc_root;
        if pid == 1 {
            return Err(bad("pid 1 is the init process: wfcg never adopts it"));
        }
        let me = std::process::id() as i32;
        if lineage(proc_root, me).contains(&pid) {
            return Err(bad(format!(
                "pid {pid} is the wfcg agent or one of its ancestors: wfcg never adopts it"
            )));
        }
        if lineage(proc_root, caller.pid).contains(&pid) {
            return Err(bad(format!(
                "pid {pid} is the caller or one of its ancestors (your shell?): \
                 adopting it would take the caller too"
            )));
        }
        Ok(())
    }

    /// The run of wfcg a cgroup (an absolute path) belongs to: `Some(Some(id))`
    /// inside `runs/<id>`, `Some(None)` inside the agent's own leaf or `runs/`
    /// itself, `None` elsewhere.
    fn wfcg_owner(&self, abs: &Path) -> Option<Option<String>> {
        if let Ok(rest) = abs.strip_prefix(self.runs.cg.path()) {
            return Some(
                rest.components()
                    .next()
                    .and_then(|c| c.as_os_str().to_str())
                    .map(str::to_owned),
            );
        }
        let agent_leaf = self.runs.cg.parent()?.child("agent");
        abs.starts_with(agent_leaf.path()).then_some(None)
    }

    /// The answer for a root found inside a run already (adopted, or started
    /// by `wfcg run`): that run, if the caller may see it.
    fn existing_run(&self, caller: &Caller, run_id: &str, pid: i32) -> Result<Adopted> {
        let rec = self.visible_run(caller, run_id)?;
        Ok(Adopted {
            run_id: rec.run_id.clone(),
            cgroup: rec.cgroup_path,
            started_at: rec.started_at,
            message: format!("pid {pid} is in run {} already", rec.run_id),
            already_adopted: true,
            complete: true,
            ..Default::default()
        })
    }

    fn adopt_tree(
        self: &Arc<Self>,
        caller: &Caller,
        id: &Identity,
        pid: i32,
        req: &AdoptRequest,
        entry: &mut AuditEntry,
        left_alone: &mut Vec<adopt::Skipped>,
    ) -> Result<Adopted> {
        let tree = match self.pin_tree(caller, id, pid, req)? {
            Pinned::Tree(tree) => tree,
            Pinned::Adopted(already) => return Ok(already),
        };
        if let Some(dry_run) = tree.permit(req, entry)? {
            return Ok(dry_run);
        }
        let (run_id, run_cg, payload) = self.frozen_payload(req)?;
        let moved = tree.move_into(&payload, &run_cg, &run_id)?;
        self.record_tree(
            caller, req, &tree, &run_id, &run_cg, &payload, moved, left_alone,
        )
    }

    /// The tree's root, pinned (never init, the agent's or the caller's line),
    /// or the run it is in already.
    fn pin_tree<'a>(
        &'a self,
        caller: &'a Caller,
        id: &Identity,
        pid: i32,
        req: &AdoptRequest,
    ) -> Result<Pinned<'a>> {
        let proc_root = self.cfg.proc_root.clone();
        self.refuse_root(caller, pid)?;
        let root = adopt::pin(&proc_root, pid).map_err(|e| bad(e.to_string()))?;
        let mount = cgroup::cgroup2_mount().map_err(Failure::internal)?;
        let abs = |rel: &str| mount.join(rel.trim_start_matches('/'));
        match self.wfcg_owner(&abs(&root.cgroup)) {
            Some(Some(run_id)) if self.store().get_run(&run_id)?.is_some() => {
                return self.existing_run(caller, &run_id, pid).map(Pinned::Adopted);
            }
            Some(_) => {
                return Err(bad(format!(
                    "pid {pid} is in wfcg's own cgroup {}",
                    root.cgroup
                )));
            }
            None => {}
        }
        Ok(Pinned::Tree(Tree {
            agent: self,
            caller,
            pid,
            me: std::process::id() as i32,
            callers: lineage(&proc_root, caller.pid),
            markers: adopt::executor_markers(&proc_root, &root),
            named: req.markers.iter().map(|m| m.as_bytes().to_vec()).collect(),
            rights: self.rights(id),
            root,
            mount,
        }))
    }

    /// A new run's cgroup with its payload leaf, frozen before anything moves
    /// (a process stops the moment it is moved in).
    fn frozen_payload(&self, req: &AdoptRequest) -> Result<(String, Cgroup, Cgroup)> {
        let run_id = self.new_adopted_id(req)?;
        let run_cg = self.runs.cg.child(&run_id);
        self.create_cgroup(&run_cg, &run_id)?;
        let payload = run_cg.child(PAYLOAD);
        let frozen = payload
            .create_new()
            .and_then(|()| payload.freeze(std::time::Duration::from_secs(1)));
        if let Err(e) = frozen {
            discard(&run_cg, &run_id);
            return Err(Failure::internal(e));
        }
        Ok((run_id, run_cg, payload))
    }

    /// Records the adopted run, watches it, and thaws what was moved (unless it
    /// is to be killed, or never held still); the tree's processes left alone
    /// go to `left_alone`.
    #[allow(clippy::too_many_arguments)]
    fn record_tree(
        self: &Arc<Self>,
        caller: &Caller,
        req: &AdoptRequest,
        tree: &Tree<'_>,
        run_id: &str,
        run_cg: &Cgroup,
        payload: &Cgroup,
        (got, walked_ms): (Gathered, f64),
        left_alone: &mut Vec<adopt::Skipped>,
    ) -> Result<Adopted> {
        let (pid, root) = (tree.pid, &tree.root);
        let rec = self.adopted_record(caller, run_id, root, req, run_cg, TREE)?;
        if let Err(e) = self.store().insert_run(&rec) {
            // Nothing records the run: let the tree go on where it is now.
            let _ = payload.thaw();
            return Err(Failure::internal(format!(
                "cannot record the adopted run {run_id} (its processes are in {}): {e}",
                payload.path().display()
            )));
        }
        self.lifecycle_begin(&rec, false);
        self.watch.reaper.watch(run_id, run_cg, &**self);
        // Thaw, unless it is to be killed (then it stays frozen until the kill
        // sequence, which thaws what it froze before SIGTERM: only the payload
        // is frozen, so that thaw lets the handlers run), or it never held still.
        let thawed = if req.kill {
            Ok(())
        } else if got.complete {
            payload.thaw()
        } else {
            Ok(())
        };
        if let Err(e) = thawed {
            tracing::warn!(run_id, "{e}");
        }
        let mut message = format!(
            "adopted {} processes of pid {pid} ({}) as run {run_id}",
            got.members.len(),
            root.command
        );
        if !got.complete {
            message.push_str(&format!(
                "; the tree was still growing after {} passes: what was moved is left \
                 frozen (wfcg kill {run_id} ends it)",
                got.passes
            ));
        }
        if !got.errors.is_empty() {
            message.push_str(&format!(" (errors: {})", got.errors.join("; ")));
        }
        tracing::info!(
            run_id,
            pid,
            members = got.members.len(),
            passes = got.passes,
            walked_ms,
            "adopted a tree"
        );
        let mut answer = self.answer(root, &got, run_id.to_owned(), message, false);
        answer.cgroup = rec.cgroup_path;
        *left_alone = got.skipped;
        Ok(answer)
    }

    /// The answer for a walk of `root`'s tree.
    fn answer(
        &self,
        root: &Root,
        got: &Gathered,
        run_id: String,
        message: String,
        dry_run: bool,
    ) -> Adopted {
        let member = |pid, reason: &str, command: &str| AdoptMember {
            pid,
            reason: reason.into(),
            command: command.into(),
        };
        let message = if dry_run {
            format!(
                "would adopt {} processes of pid {} ({})",
                got.members.len(),
                root.pid,
                root.command
            )
        } else {
            message
        };
        Adopted {
            run_id,
            dry_run,
            cgroup: String::new(),
            started_at: procfs::start_wall_time(&self.cfg.proc_root, root.stat.starttime)
                .map(Into::into),
            members: got
                .members
                .iter()
                .map(|m| member(m.pid, &m.reason, &m.command))
                .collect(),
            skipped: got
                .skipped
                .iter()
                .map(|s| member(s.pid, &s.reason, &s.command))
                .collect(),
            complete: got.complete,
            message,
            inferred_markers: got.inferred.clone(),
            ..Default::default()
        }
    }

    /// The id for an adopted run: the one asked for (which must be new), or a fresh one.
    fn new_adopted_id(&self, req: &AdoptRequest) -> Result<String> {
        let run_id = req.run_id.clone().unwrap_or_else(super::create::new_run_id);
        if self.store().get_run(&run_id)?.is_some() {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!("run id {run_id:?} is already in use"),
            ));
        }
        Ok(run_id)
    }

    fn create_cgroup(&self, cg: &Cgroup, run_id: &str) -> Result<()> {
        match cg.create_new() {
            Ok(()) => Ok(()),
            Err(cgroup::Error::Create { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Err(Failure::new(
                    ErrorKind::Conflict,
                    format!("run id {run_id:?} is already in use"),
                ))
            }
            Err(e) => Err(Failure::internal(e)),
        }
    }

    /// The record of an adopted run: owned by the root's uid, started when the
    /// root started, deadlines (only those asked for) counted from then.
    fn adopted_record(
        &self,
        caller: &Caller,
        run_id: &str,
        root: &Root,
        req: &AdoptRequest,
        cg: &Cgroup,
        how: &str,
    ) -> Result<RunRecord> {
        let (template_name, mut template) = self.resolve_template(
            caller,
            &CreateRun {
                workflow: req.workflow.clone(),
                ..Default::default()
            },
        )?;
        let ms = std::time::Duration::from_millis;
        template.timeouts.init = ms(req.init_timeout_ms.unwrap_or(0));
        template.timeouts.total = ms(req.timeout_ms.unwrap_or(0));
        template.timeouts.watchdog = std::time::Duration::ZERO;
        let start: chrono::DateTime<chrono::Utc> =
            procfs::start_wall_time(&self.cfg.proc_root, root.stat.starttime)
                .map(Into::into)
                .unwrap_or_else(chrono::Utc::now);
        // The durations are bounded when the request is read (at most 10 years);
        // the sum is checked all the same.
        let after = |d: std::time::Duration| (!d.is_zero()).then(|| crate::bounds::later(start, d));
        let initializing = !template.timeouts.init.is_zero();
        let workspace =
            std::fs::read_link(self.cfg.proc_root.join(root.pid.to_string()).join("cwd"))
                .ok()
                .map(|p| p.display().to_string());
        Ok(RunRecord {
            run_id: run_id.to_owned(),
            pid: Some(root.pid),
            pid_starttime: Some(root.stat.starttime),
            status: if initializing {
                RunStatus::Initializing
            } else {
                RunStatus::Running
            },
            started_at: Some(start),
            ready_at: (!initializing).then(chrono::Utc::now),
            init_deadline: after(template.timeouts.init),
            total_deadline: after(template.timeouts.total),
            workspace_path: workspace,
            template: Some(template.clone()),
            template_name: Some(template_name),
            teams: Vec::new(),
            owner_uid: root.uid,
            workflow: req.workflow.clone(),
            command: vec![root.command.clone()],
            cgroup_path: cg.path().display().to_string(),
            adopted: Some(how.into()),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_users_processes_are_adopted_with_kill_any_or_listed_with_view_all() {
        let none = Rights {
            any: false,
            view_all: false,
        };
        let viewer = Rights {
            any: false,
            view_all: true,
        };
        let any = Rights {
            any: true,
            view_all: false,
        };
        for (rights, dry_run) in [(&none, false), (&none, true), (&any, false)] {
            assert_eq!(rights.to_adopt(false, dry_run), Ok(Permission::KillOwn));
        }
        assert_eq!(none.to_adopt(true, false), Err(Permission::KillAny));
        assert_eq!(none.to_adopt(true, true), Err(Permission::ViewAll));
        assert_eq!(viewer.to_adopt(true, false), Err(Permission::KillAny));
        assert_eq!(viewer.to_adopt(true, true), Ok(Permission::ViewAll));
        assert_eq!(any.to_adopt(true, false), Ok(Permission::KillAny));
        assert_eq!(any.to_adopt(true, true), Ok(Permission::KillAny));
        let mut entry = AuditEntry::default();
        decided(&mut entry, Err(Permission::ViewAll));
        assert_eq!(
            (&entry.decision, entry.permission.as_deref()),
            (&Decision::Denied, Some("view_all"))
        );
        decided(&mut entry, Ok(Permission::KillOwn));
        assert_eq!(
            (&entry.decision, entry.permission.as_deref()),
            (&Decision::Allowed, Some("kill_own"))
        );
    }
}
