//! Leases (`wfcg run --lease DUR`): a run that nobody renews for DUR is killed,
//! so that a run whose executor died or was cut off does not go on beside the
//! retry the orchestrator starts elsewhere.
//!
//! The lease is a deadline of the monitor ([`Kind::Lease`]), moved by each renewal
//! (`POST /v1/runs/{id}/lease`, [`Agent::renew_lease`]); when it passes, the
//! lifecycle's automatic kill ends the run (`on_deadline`, reason
//! [`api::LEASE_EXPIRED`]). Renewals are kept in the store without waiting for
//! the disk: after an agent restart every leased live run gets a fresh full lease
//! from the agent's start ([`Agent::lease_begin`]), so the time the agent was
//! away never counts as a lapse.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::audit::{Audited, Unrecorded};
use super::audit_trail::by_caller;
use super::monitor::Kind;
use super::time::{now, rfc3339};
use super::{Agent, Caller, Failure, Result};
use crate::api::{self, AuditEntry, ErrorKind, LeaseRenewed, RunStatus};
use crate::api::{AuditAction, Decision};
use crate::bounds;
use crate::policy::Permission;
use crate::store::RunRecord;

impl Agent {
    /// Arms a live run's lease in the monitor: as recorded for a run just
    /// started; a fresh full lease from now for one the agent takes over after a
    /// restart (written to the store, so `status` shows it).
    pub(super) fn lease_begin(&self, rec: &RunRecord, restarted: bool) {
        let Some(ms) = rec.lease_ms else { return };
        let expires = if restarted || rec.lease_expires_at.is_none() {
            let fresh = bounds::later(Utc::now(), Duration::from_millis(ms));
            let stored = self
                .store()
                .with_sync(false, |s| s.set_lease(&rec.run_id, None, fresh));
            if let Err(e) = stored {
                tracing::error!(run_id = rec.run_id, "cannot store the lease's expiry: {e}");
            }
            fresh
        } else {
            rec.lease_expires_at.unwrap_or_else(Utc::now)
        };
        if let Some(m) = self.monitor() {
            m.set(&rec.run_id, Kind::Lease, Some(expires));
        }
    }

    /// Why a live run's lease counts as lapsed now (for the log and the alert),
    /// or `None` if it was renewed meanwhile or the run has none.
    pub(super) fn lease_lapsed(&self, rec: &RunRecord, now_t: DateTime<Utc>) -> Option<String> {
        let ms = rec.lease_ms?;
        let expires = rec.lease_expires_at?;
        if expires > now_t {
            return None;
        }
        let last = rec
            .lease_renewed_at
            .map(|t| format!("last renewed at {}", rfc3339(t)))
            .unwrap_or_else(|| "never renewed".into());
        Some(format!(
            "{} (lease {}, {last}, expired at {})",
            api::LEASE_EXPIRED,
            crate::duration::format(Duration::from_millis(ms)),
            rfc3339(expires)
        ))
    }

    /// Renews a run's lease for its full duration: allowed to the run's owner
    /// and to callers with `kill_any`. A refusal is audited (`lease_renew`),
    /// coalesced like every refused request; a renewal is not (an executor
    /// renews every few seconds).
    pub fn renew_lease(&self, caller: &Caller, run_id: &str) -> Result<Audited<LeaseRenewed>> {
        let id = self.access.identity(caller);
        let mut entry = AuditEntry {
            time: now(),
            action: AuditAction::LeaseRenew,
            run_id: Some(run_id.to_owned()),
            decision: Decision::NotNeeded,
            ..by_caller(caller, &id)
        };
        let refused = |entry: AuditEntry, f: Failure| {
            Err(f.recorded(self.records.auditor.record(&self.runs.store, entry)))
        };
        let rec = match self.find_run(run_id) {
            Ok(rec) => rec,
            Err(f) => {
                entry.outcome = match f.kind {
                    ErrorKind::NotFound => "no_such_run",
                    _ => "bad_input",
                }
                .into();
                return refused(entry, f);
            }
        };
        let may = caller.uid == rec.owner_uid
            || self
                .access
                .policy()
                .permissions(&id)
                .contains(&Permission::KillAny);
        if !may {
            entry.decision = Decision::Denied;
            entry.permission = Some(Permission::KillAny.as_str().into());
            entry.outcome = "denied".into();
            return refused(
                entry,
                Failure::new(
                    ErrorKind::Forbidden,
                    format!(
                        "run {run_id}: not permitted: only its owner (uid {}) or a caller \
                         with kill_any may renew its lease",
                        rec.owner_uid
                    ),
                ),
            );
        }
        let Some(ms) = rec.lease_ms else {
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!("run {run_id} has no lease (it was started without --lease)"),
            ));
        };
        let status = rec.status;
        if !status.is_live() || status == RunStatus::Unkillable || self.kill_in_flight(run_id) {
            let what = if status.is_live() && status != RunStatus::Unkillable {
                "is being killed".to_string()
            } else {
                format!("is {status}")
            };
            return Err(Failure::new(
                ErrorKind::Conflict,
                format!("run {run_id} {what}: its lease can no longer be renewed"),
            ));
        }
        let renewed = Utc::now();
        let expires = bounds::later(renewed, Duration::from_millis(ms));
        // Not synced: after a restart every lease starts afresh anyway.
        self.store()
            .with_sync(false, |s| s.set_lease(run_id, Some(renewed), expires))?;
        if let Some(m) = self.monitor() {
            m.set(run_id, Kind::Lease, Some(expires));
        }
        // Not recorded: see `Unrecorded::LeaseRenewed`.
        Ok(LeaseRenewed {
            run_id: run_id.to_owned(),
            lease_ms: ms,
            renewed_at: renewed,
            expires_at: expires,
        })
        .map(|renewal| Audited::unrecorded(renewal, Unrecorded::LeaseRenewed))
    }
}
