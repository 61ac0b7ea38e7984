//! A kill request (`POST /v1/runs/<id>/kill`, the monitor's automatic kill, a kill
//! resumed after a restart): the policy's decision, the audit record of the
//! attempt, and the coalescing of concurrent kills of one run into one sequence.

use std::sync::Arc;
use std::time::Instant;

use super::audit::Audited;
use super::audit_trail::by_caller;
use super::kill_result::{self, already_ended};
use super::kills::KillSlot;
use super::reaper::OnEmpty;
use super::time::now;
use super::{Agent, Caller, Failure, Requester, Result};
use crate::api::AuditEntry;
use crate::api::{self, ErrorKind, KillRequest, KillResult, RunStatus};
use crate::api::{AuditAction, Decision};
use crate::cgroup::Cgroup;
use crate::policy::Action;
use crate::store::RunRecord;
use crate::template::{Authority, Key, Overrides};

/// Ends a run's kill slot when the leader is done, even if its kill sequence
/// panicked: the waiters get an answer and later kills start a new sequence.
struct Answer<'a> {
    agent: &'a Agent,
    run_id: &'a str,
    slot: Arc<KillSlot>,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        let mut result = self.slot.result.lock();
        result.get_or_insert_with(|| KillResult {
            run_id: self.run_id.to_owned(),
            message: "the kill sequence failed with an agent error (see its log)".into(),
            ..Default::default()
        });
        self.slot.done.notify_all();
        drop(result);
        self.agent.kills.inflight.lock().remove(self.run_id);
    }
}

/// What a kill request is to do ([`Agent::claim_kill`]).
enum Claim {
    /// Start the run's kill sequence, in this slot.
    Lead(Arc<KillSlot>),
    /// Wait for the sequence under way in this slot.
    Join(Arc<KillSlot>),
    /// Nothing: the run had ended; the answer says how.
    Ended(Box<KillResult>),
}

impl Agent {
    pub(super) fn kill_in_flight(&self, run_id: &str) -> bool {
        self.kills.in_flight(run_id)
    }

    /// How the kill under way of a run ends it, if one is under way.
    pub(super) fn kill_ending(&self, run_id: &str) -> Option<RunStatus> {
        self.kills.ending(run_id)
    }

    /// Kills a run, if the policy allows, and writes the attempt to the audit
    /// trail before answering, whatever its outcome.
    pub fn kill(
        &self,
        caller: &Caller,
        run_id: &str,
        req: KillRequest,
    ) -> Result<Audited<KillResult>> {
        let id = self.access.identity(caller);
        let entry = AuditEntry {
            action: AuditAction::Kill,
            run_id: Some(run_id.to_owned()),
            ..by_caller(caller, &id)
        };
        self.audited(entry, &req, |entry| {
            if let Some(reason) = &req.reason
                && reason.len() > api::MAX_REASON
            {
                return Err(Failure::new(
                    ErrorKind::BadInput,
                    format!(
                        "the reason is {} bytes long; at most {} are accepted",
                        reason.len(),
                        api::MAX_REASON
                    ),
                ));
            }
            let rec = self.find_run(run_id)?;
            let action = Action::Kill { mode: req.mode() };
            let d = self.decide(&id, action, &rec);
            entry.decision = Decision::of(d.allowed);
            entry.permission = d.permission.map(|p| p.as_str().to_string());
            if !d.allowed {
                return Err(Failure::new(
                    ErrorKind::Forbidden,
                    format!("run {run_id}: {}", d.message),
                ));
            }
            let mut req = req.clone();
            // Root's and `kill_any`'s graces are taken as asked; anyone else's capped.
            let operator = caller.is_root()
                || (self.access.policy().permissions(&id))
                    .contains(&crate::policy::Permission::KillAny);
            self.cap_graces(&rec, &mut req, Authority::operator_if(operator));
            self.kill_allowed(Requester::of(caller), rec, req, RunStatus::Killed)
        })
    }

    /// The monitor's kill of a run whose deadline passed: graceful, ending as
    /// `timed_out`, audited as `auto_kill` by `monitor`, with alerts.
    pub(super) fn auto_kill(&self, rec: RunRecord, req: KillRequest) {
        let entry = AuditEntry {
            actor_name: "monitor".into(),
            action: AuditAction::AutoKill,
            run_id: Some(rec.run_id.clone()),
            ..Default::default()
        };
        let run = rec.clone();
        let res = self
            .audited(entry, &req, |_| {
                self.kill_allowed(
                    Requester::named("monitor"),
                    run,
                    req.clone(),
                    RunStatus::TimedOut,
                )
            })
            .map(Audited::into_inner);
        match res {
            Ok(r) if r.already_ended => {}
            Ok(r) if r.success => self.alert("auto_killed", &rec, &r.message),
            Ok(r) if r.cleanup_status.processes_remaining > 0 && r.mode.is_some() => {
                self.alert("unkillable", &rec, &r.message)
            }
            Ok(r) => self.alert("kill_failed", &rec, &r.message),
            Err(f) => self.alert("kill_failed", &rec, &f.message),
        }
    }

    /// Carries out `attempt` and writes its audit record (completed with mode,
    /// reason, outcome, sections and duration) before returning, whatever the
    /// outcome: a failure comes back recorded too.
    pub(super) fn audited(
        &self,
        mut entry: AuditEntry,
        req: &KillRequest,
        attempt: impl FnOnce(&mut AuditEntry) -> Result<KillResult>,
    ) -> Result<Audited<KillResult>> {
        let t = Instant::now();
        entry.time = now();
        entry.reason = req.reason.as_deref().map(kill_result::recorded_reason);
        entry.mode = Some(req.mode().to_string());
        entry.decision = Decision::NotNeeded;
        let outcome = attempt(&mut entry);
        entry.duration_ms = Some(t.elapsed().as_secs_f64() * 1e3);
        entry.outcome = kill_result::audit_outcome(&outcome).into();
        if let Ok(r) = &outcome
            && !r.sections.is_empty()
        {
            entry.sections = serde_json::to_string(&r.sections).ok();
        }
        self.records.metrics.kill(
            req.mode(),
            &entry.outcome,
            outcome.as_ref().ok(),
            t.elapsed().as_secs_f64(),
        );
        let t_audit = Instant::now();
        let receipt = self.records.auditor.record(&self.runs.store, entry);
        // Not a phase of the answer: concurrent kills of one run share one
        // sequence and answer alike, and each writes its own record.
        tracing::debug!(
            run_id = outcome.as_ref().map_or("-", |r| r.run_id.as_str()),
            ms = t_audit.elapsed().as_secs_f64() * 1e3,
            "the kill's audit record written"
        );
        match outcome {
            Ok(mut r) => {
                r.audit = Some(
                    if receipt.written() {
                        "written"
                    } else {
                        "pending"
                    }
                    .into(),
                );
                Ok(Audited::new(r, receipt))
            }
            Err(f) => Err(f.recorded(receipt)),
        }
    }

    /// Kills a run the caller may kill. Concurrent kills of one run share one kill
    /// sequence; a run that has ended answers success with `already_ended`.
    pub(super) fn kill_allowed(
        &self,
        requested_by: Requester,
        rec: RunRecord,
        req: KillRequest,
        end: RunStatus,
    ) -> Result<KillResult> {
        match self.claim_kill(&rec, &req, end)? {
            Claim::Ended(r) => Ok(*r),
            Claim::Join(slot) => self.join_kill(&requested_by, &rec, &req, end, slot),
            Claim::Lead(slot) => Ok(self.lead_kill(&requested_by, &rec, &req, end, slot)),
        }
    }

    /// Whether this request starts the run's kill sequence, joins the one under
    /// way, or finds the run ended.
    fn claim_kill(&self, rec: &RunRecord, req: &KillRequest, end: RunStatus) -> Result<Claim> {
        let run_id = rec.run_id.as_str();
        let mut inflight = self.kills.inflight.lock();
        if let Some(slot) = inflight.get(run_id) {
            return Ok(Claim::Join(slot.clone()));
        }
        // Decide under the lock, so only one request starts the sequence:
        // a live run becomes `stopping` in one statement. A store that
        // cannot be written does not stop a kill: the run's record
        // (read, with what is pending over it) says whether it is live.
        // A force kill does not wait for the disk before it acts (its
        // result, written before the answer, syncs this too).
        let durable = !req.mode().is_forced();
        let stopping = self
            .store()
            .with_sync(durable, |s| {
                s.transition(run_id, &RunStatus::live(), RunStatus::Stopping)
            })
            .unwrap_or_else(|e| {
                tracing::error!(
                    run_id,
                    "cannot record the kill's start, killing anyway: {e}"
                );
                false
            });
        if !stopping {
            let mut current = self.store().get_run(run_id)?.unwrap_or_else(|| rec.clone());
            self.records.auditor.overlay(&mut current);
            let status = current.status;
            if !status.is_live() {
                return Ok(Claim::Ended(Box::new(already_ended(&current, status))));
            }
        }
        let slot = Arc::new(KillSlot {
            end,
            ..Default::default()
        });
        inflight.insert(run_id.to_owned(), slot.clone());
        Ok(Claim::Lead(slot))
    }

    /// A request for a run whose kill is under way: it waits for that kill's
    /// answer (a force or emergency request hurries it); a force kill that does
    /// not get it in time kills beside it, another is a conflict.
    fn join_kill(
        &self,
        requested_by: &Requester,
        rec: &RunRecord,
        req: &KillRequest,
        end: RunStatus,
        slot: Arc<KillSlot>,
    ) -> Result<KillResult> {
        let run_id = rec.run_id.as_str();
        let forced = req.mode().is_forced();
        if forced {
            slot.escalate
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if req.mode().is_emergency() {
            slot.emergency
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let limit = self.kill_wait_limit(rec, forced);
        let deadline = Instant::now() + limit;
        let mut result = slot.result.lock();
        slot.done
            .wait_while_until(&mut result, |r| r.is_none(), deadline);
        if let Some(r) = result.clone() {
            return Ok(r);
        }
        drop(result);
        if forced {
            // The sequence under way does not answer: kill without it
            // (cgroup.kill may be written any number of times).
            tracing::warn!(
                run_id,
                "a kill under way did not end in {limit:?}: killing beside it"
            );
            return Ok(self.kill_sequence(
                requested_by,
                rec,
                req,
                end,
                Arc::default(),
                Arc::new(req.mode().is_emergency().into()),
            ));
        }
        Err(Failure::new(
            ErrorKind::Conflict,
            format!(
                "a kill of {run_id} has been under way for more than {}; --force or \
                 --emergency ends it at once",
                crate::duration::format(limit)
            ),
        ))
    }

    /// The request that started the run's kill runs its sequence, kills its
    /// child runs, and gives the answer to those waiting.
    fn lead_kill(
        &self,
        requested_by: &Requester,
        rec: &RunRecord,
        req: &KillRequest,
        end: RunStatus,
        slot: Arc<KillSlot>,
    ) -> KillResult {
        let run_id = rec.run_id.as_str();
        let answer = Answer {
            agent: self,
            run_id,
            slot,
        };
        let escalate = answer.slot.escalate.clone();
        let emergency = answer.slot.emergency.clone();
        let mut result = self.kill_sequence(requested_by, rec, req, end, escalate, emergency);
        // Nothing started inside the run outlives its kill: its child runs.
        self.kill_children(requested_by, rec, req, end, &mut result);
        *answer.slot.result.lock() = Some(result.clone());
        drop(answer);
        // The reaper skips a run while its kill is under way: if the survivors of
        // an unkillable run died meanwhile, nothing else would finish it.
        if result.cleanup_status.processes_remaining > 0
            && Cgroup::new(&rec.cgroup_path)
                .events()
                .is_ok_and(|e| !e.populated)
        {
            self.on_run_empty(run_id);
        }
        result
    }

    /// A kill asked by someone without `kill_any` (a [`Authority::User`]) waits
    /// no longer than the run's template allows: its graces are capped at the
    /// operator's ([`crate::template::Template::with_overrides_capped`]), so no
    /// request can hold a run in `stopping` past its deadlines. Never refused.
    fn cap_graces(&self, rec: &RunRecord, req: &mut KillRequest, who: Authority) {
        let s = &mut req.settings;
        let asked = [
            (Key::TermGrace, &mut s.grace_ms),
            (Key::Git, &mut s.grace_git_ms),
            (Key::Database, &mut s.grace_db_ms),
            (Key::Files, &mut s.grace_files_ms),
            (Key::MaxWait, &mut s.max_wait_ms),
        ];
        let request = (asked.iter()).fold(Overrides::new(), |o, (key, ms)| o.with_ms(*key, **ms));
        let t = self.run_template(rec).with_overrides_capped(&request, who);
        for (key, ms) in asked {
            if let Some(ms) = ms {
                *ms = key.of(&t).as_millis().min(u128::from(u64::MAX)) as u64;
            }
        }
    }

    /// How long a kill request waits for a sequence of the same run already under
    /// way: its whole graceful course (by the run's template:
    /// [`api::KillCourse::longest`], as a client's deadline is), or for a forced
    /// request (which makes it go straight to the hard kill) the hard kill
    /// alone; a few seconds more either way.
    fn kill_wait_limit(&self, rec: &RunRecord, forced: bool) -> std::time::Duration {
        let course = self.run_template(rec).kill_course();
        let margin = std::time::Duration::from_secs(5);
        let course = if forced {
            course.hard()
        } else {
            course.longest(&api::KillSettings::default())
        };
        course.saturating_add(margin)
    }
}
