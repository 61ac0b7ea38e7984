//! The agent's own records in the audit trail (policy loads, run ends, kill
//! starts), the policy reload they follow, and reading and verifying the trail.

use super::audit::Receipt;
use super::time::{now, rfc3339};
use super::{Agent, Caller, Failure, Result};
use crate::api::{self, ErrorKind, RunStatus};
use crate::api::{AuditAction, Decision};
use crate::api::{AuditEntry, AuditRecord};
use crate::policy::Identity;
use crate::store::{AuditFilter, ChainCheck};

/// An audit entry naming `caller` (uid, name, pid) as its actor, the rest
/// default: the base of every record of a caller's request
/// (`AuditEntry { action, .., ..by_caller(caller, &id) }`).
pub(super) fn by_caller(caller: &Caller, id: &Identity) -> AuditEntry {
    AuditEntry {
        actor_uid: Some(caller.uid),
        actor_name: id.user.clone().unwrap_or_else(|| caller.uid.to_string()),
        caller_pid: Some(caller.pid),
        ..Default::default()
    }
}

impl Agent {
    /// Reads the policy file again (SIGHUP, or the file changed); a broken file
    /// keeps the previous policy. Either way the load is audited.
    pub fn reload_policy(&self, trigger: &str) {
        let res = self.access.reload();
        match &res {
            Ok(()) => tracing::info!(
                "policy reloaded ({trigger}) from {}",
                self.access.path().display()
            ),
            Err(e) => {
                tracing::error!("policy NOT reloaded ({trigger}), the previous one stays: {e}")
            }
        }
        self.audit_policy_load(trigger, res);
    }

    pub(super) fn audit_policy_load(
        &self,
        trigger: &str,
        res: std::result::Result<(), crate::policy::PolicyError>,
    ) {
        self.records.auditor.set_budgets(
            self.state_reserve(),
            self.access.policy().limits.denial_window_secs,
        );
        let outcome = match res {
            Ok(()) if self.access.path().exists() => "loaded".to_string(),
            Ok(()) => "built-in (no policy file)".to_string(),
            Err(e) => format!("refused: {e}"),
        };
        self.audit_event(AuditEntry {
            action: AuditAction::PolicyLoad,
            reason: Some(format!("{trigger}: {}", self.access.path().display())),
            outcome,
            ..Default::default()
        });
    }

    /// Writes an event of the agent's own to the audit trail.
    pub(super) fn audit_event(&self, entry: AuditEntry) -> Receipt {
        self.records
            .auditor
            .record(&self.runs.store, agent_event(entry))
    }

    /// [`Agent::audit_event`] not synced to the disk (see
    /// [`super::audit::Auditor::keep_unsynced`]): what a force kill writes before it acts.
    pub(super) fn audit_event_unsynced(&self, entry: AuditEntry) {
        self.records.auditor.keep_unsynced(
            &self.runs.store,
            super::audit::Record::Audit(agent_event(entry)),
        );
    }

    /// [`Agent::audit_event`] synced to the disk within
    /// [`super::audit::SYNC_WITHIN`] rather than before the answer (see
    /// [`super::audit::Auditor::record_soon`]): a run's start.
    pub(super) fn audit_event_soon(&self, entry: AuditEntry) -> Receipt {
        self.records
            .auditor
            .record_soon(&self.runs.store, agent_event(entry))
    }

    /// Audit: a run ended, and how.
    pub(super) fn audit_run_end(&self, run_id: &str, status: RunStatus) {
        self.records
            .auditor
            .record(&self.runs.store, run_end(run_id, status));
        self.breaker_on_end(run_id, status);
    }

    /// [`Agent::audit_run_end`] synced within [`super::audit::SYNC_WITHIN`]:
    /// the end its supervisor reported, after the run's processes are gone.
    pub(super) fn audit_run_end_soon(&self, run_id: &str, status: RunStatus) -> Receipt {
        let receipt = self
            .records
            .auditor
            .record_soon(&self.runs.store, run_end(run_id, status));
        self.breaker_on_end(run_id, status);
        receipt
    }

    /// [`Agent::audit_run_end`] written with the next record kept (the kill's
    /// own, before its answer): one transaction for both.
    pub(super) fn defer_run_end(&self, run_id: &str, status: RunStatus) {
        self.records
            .auditor
            .defer(super::audit::Record::Audit(run_end(run_id, status)));
        self.breaker_on_end(run_id, status);
    }

    /// Audit records the caller may read: all with view_all, else its own actions.
    pub fn audit_list(&self, caller: &Caller, q: &api::AuditQuery) -> Result<Vec<AuditRecord>> {
        let id = self.access.identity(caller);
        let all = self
            .access
            .policy()
            .permissions(&id)
            .contains(&crate::policy::Permission::ViewAll);
        let filter = AuditFilter {
            run_id: q.run.clone(),
            actor: q.actor.clone(),
            actor_uid: (!all).then_some(caller.uid),
            since: q.since_secs.map(|s| {
                let ago = std::time::Duration::from_secs(s);
                rfc3339(crate::bounds::earlier(chrono::Utc::now(), ago))
            }),
            limit: q.limit,
        };
        Ok(self.store().audit_records(&filter)?)
    }

    /// Recomputes the audit chain (needs view_all).
    pub fn audit_verify(&self, caller: &Caller) -> Result<api::AuditVerify> {
        let id = self.access.identity(caller);
        if !self
            .access
            .policy()
            .permissions(&id)
            .contains(&crate::policy::Permission::ViewAll)
        {
            return Err(Failure::new(
                ErrorKind::Forbidden,
                "not permitted: verifying the audit trail needs view_all",
            ));
        }
        let check: ChainCheck = self.records.auditor.verify(&self.store())?;
        let pending = self.records.auditor.pending();
        Ok(match check.first_bad {
            None => api::AuditVerify {
                records: check.records,
                intact: true,
                first_bad_seq: None,
                message: if pending == 0 {
                    format!("{} records, chain intact", check.records)
                } else {
                    format!(
                        "{} records, chain intact ({pending} pending)",
                        check.records
                    )
                },
            },
            Some((seq, why)) => api::AuditVerify {
                records: check.records,
                intact: false,
                first_bad_seq: Some(seq),
                message: format!("audit record {seq} does not match: {why}"),
            },
        })
    }
}

/// An event of the agent's own, timed now.
fn agent_event(mut entry: AuditEntry) -> AuditEntry {
    entry.time = now();
    if entry.actor_name.is_empty() {
        entry.actor_name = "agent".into();
    }
    if entry.decision.as_str().is_empty() {
        entry.decision = Decision::NotNeeded;
    }
    entry
}

fn run_end(run_id: &str, status: RunStatus) -> AuditEntry {
    agent_event(AuditEntry {
        action: AuditAction::RunEnd,
        run_id: Some(run_id.to_owned()),
        outcome: status.as_str().into(),
        ..Default::default()
    })
}
