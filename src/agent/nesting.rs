//! Runs started from inside a run: the caller of `POST /v1/runs` is in a run's
//! cgroup (as the kernel says: `/proc/<pid>/cgroup` of the caller pinned by its
//! pidfd, never its environment), so the new run is that run's child. It gets a
//! cgroup of its own under `runs/<child>` like every run (so its limits,
//! payload/supervisor split and kill are those of any run), is recorded with
//! `parent_run_id`, and is killed whenever its parent is: the parent's kill
//! kills its live children (and theirs), in the same mode, and reports them.
//!
//! Race-free by order: a parent's kill makes it `stopping` before it acts, and
//! lists its children only after its own cgroup is empty (no process of it is
//! left to start one). A child whose record is written after that listing
//! checks its parent once recorded ([`Agent::parent_still_live`]) and finds it
//! `stopping` or ended: the child is killed at once.

use super::audit::Audited;
use super::{Agent, Failure, Requester, Result};
use crate::api::{AuditAction, Decision};
use crate::api::{AuditEntry, ErrorKind, KillMode, KillRequest, KillResult, RunStatus};
use crate::store::RunRecord;

impl Agent {
    /// The run whose cgroup holds `origin` (a cgroup relative to the cgroup2
    /// mount, as `/proc/<pid>/cgroup` names it), if any: the parent of a run
    /// started from there. A run that is being killed or has ended takes no
    /// child (its processes are going).
    pub(super) fn parent_run(&self, origin: Option<&str>) -> Result<Option<String>> {
        let Some(origin) = origin else {
            return Ok(None);
        };
        let Ok(mount) = crate::cgroup::cgroup2_mount() else {
            return Ok(None);
        };
        let abs = mount.join(origin.trim_start_matches('/'));
        let Some(run_id) = abs
            .strip_prefix(self.runs.cg.path())
            .ok()
            .and_then(|rest| rest.components().next())
            .and_then(|c| c.as_os_str().to_str())
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        match self.store().get_run(&run_id)? {
            Some(rec) if rec.status.is_live() && rec.status != RunStatus::Stopping => {
                Ok(Some(run_id))
            }
            Some(rec) => Err(Failure::new(
                ErrorKind::Conflict,
                format!(
                    "the caller is in run {run_id}, which is {}: no run starts inside it",
                    rec.status
                ),
            )),
            None => Ok(None),
        }
    }

    /// Once a child's record is written: whether its parent is still live and
    /// not being killed. When it is not, the parent's kill may have listed its
    /// children before this one was recorded: the child is killed here.
    pub(super) fn parent_still_live(&self, child: &RunRecord) -> Result<()> {
        let Some(parent) = &child.parent_run_id else {
            return Ok(());
        };
        let status = self.store().get_run(parent)?.map(|r| r.status);
        if status.is_some_and(|s| s.is_live() && s != RunStatus::Stopping) {
            return Ok(());
        }
        let req = KillRequest::new(
            KillMode::Force,
            Some(format!("started inside run {parent}, which was killed")),
        );
        let _ = self.kill_allowed(
            Requester::named(format!("agent (run {parent} ended)")),
            child.clone(),
            req,
            RunStatus::Killed,
        );
        Err(Failure::new(
            ErrorKind::Conflict,
            format!(
                "run {parent}, which the caller was in, was killed while run {} started \
                 inside it: that run was killed too",
                child.run_id
            ),
        ))
    }

    /// After a run's kill: kills its live children (each audited, in the same
    /// mode, theirs in turn), all at once, and adds them to `result`. The run
    /// is killed only if they are.
    pub(super) fn kill_children(
        &self,
        by: &Requester,
        rec: &RunRecord,
        req: &KillRequest,
        end: RunStatus,
        result: &mut KillResult,
    ) {
        let children = match self.store().live_children(&rec.run_id) {
            Ok(c) => c,
            Err(e) => {
                result.success = false;
                result.message.push_str(&format!(
                    "; its child runs could not be listed ({e}): kill it again"
                ));
                return;
            }
        };
        if children.is_empty() {
            return;
        }
        let req = KillRequest {
            reason: Some(format!("its parent run {} was killed", rec.run_id)),
            ..req.clone()
        };
        let by = Requester {
            name: format!("{} (killing run {})", by.name, rec.run_id),
            ..by.clone()
        };
        let killed: Vec<KillResult> = std::thread::scope(|s| {
            let threads: Vec<_> = children
                .into_iter()
                .map(|child| {
                    let (by, req) = (&by, &req);
                    s.spawn(move || self.kill_child(by, child, req, end))
                })
                .collect();
            threads.into_iter().filter_map(|t| t.join().ok()).collect()
        });
        let ok = killed.iter().filter(|k| k.success).count();
        result.message.push_str(&format!(
            "; {} child run(s) started inside it killed with it{}",
            ok,
            if ok < killed.len() {
                format!(", {} not: kill them again", killed.len() - ok)
            } else {
                String::new()
            }
        ));
        for k in &killed {
            result
                .message
                .push_str(&format!(" [{}: {}]", k.run_id, k.message));
        }
        result.success &= ok == killed.len();
        result.children = killed;
    }

    fn kill_child(
        &self,
        by: &Requester,
        child: RunRecord,
        req: &KillRequest,
        end: RunStatus,
    ) -> KillResult {
        let entry = AuditEntry {
            actor_uid: by.uid,
            actor_name: by.name.clone(),
            caller_pid: by.pid,
            action: AuditAction::Kill,
            run_id: Some(child.run_id.clone()),
            decision: Decision::Allowed,
            permission: Some("parent".into()),
            ..Default::default()
        };
        let run_id = child.run_id.clone();
        let res = self.audited(entry, req, |entry| {
            entry.decision = Decision::Allowed;
            entry.permission = Some("parent".into());
            self.kill_allowed(by.clone(), child, req.clone(), end)
        });
        res.map(Audited::into_inner).unwrap_or_else(|f| KillResult {
            run_id,
            message: f.message,
            ..Default::default()
        })
    }
}
