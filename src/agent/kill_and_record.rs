//! One kill sequence of a run: the plan made from its template and the request,
//! [`crate::kill::kill`] carrying it out, the cleanup, and the result recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::kill_result::{Cleanup, Done};
use super::kills::{KILL_START, KillStarted};
use super::{Agent, Requester, audit, layout};
use crate::api::AuditEntry;
use crate::api::{KillRequest, KillResult, RunStatus};
use crate::cgroup::Cgroup;
use crate::kill;
use crate::procfs;
use crate::sections::{self, Finding};
use crate::store::RunRecord;
use crate::userfs::Cred;
use chrono::Utc;

/// How long a run's supervisor has to exit by itself once its payload is empty.
const SUPERVISOR_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whose git directories a run's locks are looked for in: its owner's (root's
/// for a root run: a shared directory's `.git` of another user is not root's
/// to clean).
pub(super) fn lock_owner(rec: &RunRecord) -> Option<u32> {
    Some(rec.owner_uid)
}

impl Agent {
    /// Where a run's critical sections are looked for: its workspace, less its
    /// own log, TMPDIR and run directory.
    pub(super) fn section_scope(&self, rec: &RunRecord) -> sections::Scope {
        let workspace = rec
            .workspace_path
            .as_deref()
            .map(PathBuf::from)
            .filter(|w| w != Path::new("/"));
        sections::Scope {
            pids: Vec::new(),
            workspace,
            exclude: [&rec.log_path, &rec.tmpdir, &rec.run_dir]
                .into_iter()
                .flatten()
                .map(PathBuf::from)
                .collect(),
            // An adopted run's pid is just one of its processes, not a supervisor.
            inherited_from: (rec.status != RunStatus::Unknown)
                .then_some(rec.pid)
                .flatten()
                .filter(|&pid| procfs::starttime(&self.cfg.proc_root, pid) == rec.pid_starttime),
            since: rec.started_at.map(std::time::SystemTime::from),
            owner: lock_owner(rec),
            creators: self.lock_creators(&rec.run_id),
        }
    }

    /// The plan of a kill of `rec` and the cgroup it acts on: the run's
    /// template's graces (shortened by the request), who is spared, where the
    /// stop reason goes; the payload, with the whole run after it, unless this
    /// is an emergency (everything at once).
    fn kill_plan(
        &self,
        requested_by: &Requester,
        rec: &RunRecord,
        req: &KillRequest,
        end: RunStatus,
        escalate: Arc<std::sync::atomic::AtomicBool>,
        emergency: Arc<std::sync::atomic::AtomicBool>,
    ) -> (Cgroup, kill::Plan) {
        let template = self.run_template(rec);
        let settings = &template.kill;
        let cs = &template.critical_sections;
        let asked = &req.settings;
        let ms =
            |v: Option<u64>, default| v.map(std::time::Duration::from_millis).unwrap_or(default);
        let plan = kill::Plan {
            mode: req.mode(),
            term_grace: ms(asked.grace_ms, settings.term_grace),
            freeze_timeout: settings.freeze_timeout,
            kill_deadline: settings.kill_deadline,
            // Only a supervisor is spared; an adopted run's pid is just one of its processes.
            spare: (rec.status != RunStatus::Unknown && rec.adopted.is_none())
                .then(|| rec.pid.zip(rec.pid_starttime))
                .flatten(),
            graces: kill::Graces {
                git: ms(asked.grace_git_ms, cs.git),
                database: ms(asked.grace_db_ms, cs.database),
                files: ms(asked.grace_files_ms, cs.files),
                max_wait: ms(asked.max_wait_ms, cs.max_wait),
            },
            scope: self.section_scope(rec),
            stop_reason: rec.run_dir.as_ref().map(|d| kill::StopReason {
                dir: PathBuf::from(d),
                owner: Cred::of_uid(rec.owner_uid),
                reason: req.reason.clone(),
                requested_by: requested_by.to_string(),
                ending: end.as_str(),
            }),
            escalate,
            whole: None,
            supervisor_grace: SUPERVISOR_GRACE,
            emergency,
        };
        let run_cg = Cgroup::new(&rec.cgroup_path);
        // The kill acts on the payload; the supervisor is killed once the payload
        // is empty, unless this is an emergency (everything at once).
        if req.mode().is_emergency() {
            (run_cg, plan)
        } else {
            let payload = layout::payload(&run_cg);
            let whole = (payload != run_cg).then_some(run_cg);
            (payload, kill::Plan { whole, ..plan })
        }
    }

    pub(super) fn kill_sequence(
        &self,
        requested_by: &Requester,
        rec: &RunRecord,
        req: &KillRequest,
        end: RunStatus,
        escalate: Arc<std::sync::atomic::AtomicBool>,
        emergency: Arc<std::sync::atomic::AtomicBool>,
    ) -> KillResult {
        let started_at = chrono::Utc::now();
        let t = Instant::now();
        let (cg, plan) = self.kill_plan(requested_by, rec, req, end, escalate, emergency);
        let mode = req.mode();
        // A trace before the kill acts (kept pending if the disk refuses it): an
        // agent that dies mid-kill leaves it, and its successor resumes the kill.
        // A force kill does not wait for the disk here: the host losing power
        // ends the run anyway, and its result is synced with this before the answer.
        let entry = AuditEntry {
            actor_name: requested_by.name.clone(),
            actor_uid: requested_by.uid,
            caller_pid: requested_by.pid,
            action: KILL_START,
            run_id: Some(rec.run_id.clone()),
            reason: req.reason.clone(),
            mode: Some(mode.to_string()),
            outcome: KillStarted { ending: end }.to_string(),
            ..Default::default()
        };
        if plan.mode.is_forced() {
            self.audit_event_unsynced(entry);
        } else {
            self.audit_event(entry);
        }
        // The locks created so far are asked about while their creators live.
        self.sync_lock_creators();
        let prepared = t.elapsed().as_secs_f64() * 1e3;
        let report = kill::kill(&cg, &plan, &self.cfg.proc_root);
        // A force kill looks at nothing before it kills: what was open is what
        // the run was last seen holding.
        let last_seen = if plan.mode.is_forced() {
            self.kills.last_seen(&rec.run_id)
        } else {
            Vec::new()
        };
        let cleanup = (report.unconfirmed.is_none() && report.survivors.is_empty()).then(|| {
            let killed_at = Utc::now();
            let t_clean = Instant::now();
            let seen: Vec<Finding> = report
                .sections
                .iter()
                .map(|s| s.finding.clone())
                .chain(last_seen.iter().map(|s| s.finding.clone()))
                .collect();
            let (status, steps) = self.cleanup_timed(rec, &seen);
            Cleanup {
                killed_at,
                status,
                duration_ms: t_clean.elapsed().as_secs_f64() * 1e3,
                steps,
            }
        });
        let done = Done {
            rec,
            req,
            report: &report,
            started_at,
            prepared_ms: prepared,
            last_seen: &last_seen,
            end,
        };
        let (mut result, status) = KillResult::build(&done, cleanup);
        result.duration_ms = t.elapsed().as_secs_f64() * 1e3;
        let ended_at = (status == end).then(chrono::Utc::now);
        // Written with the kill's audit record before the answer (see `audited`),
        // in one transaction; kept pending while the store cannot be written.
        self.records.auditor.defer(audit::Record::Kill {
            run_id: rec.run_id.clone(),
            started_at,
            result: result.clone(),
            status,
            ended_at,
        });
        if status == end {
            self.defer_run_end(&rec.run_id, status);
        }
        tracing::info!(
            run_id = rec.run_id,
            mode = mode.as_str(),
            success = result.success,
            "{}",
            result.message
        );
        result
    }
}
