//! The circuit breaker of each workflow: when its template's `[breaker] failures`
//! runs in a row ended stuck (killed at their init, first-output or stall
//! timeout), new runs of the workflow are refused (exit 6) until the cooldown
//! passes or an operator resets it. State lives in the store (`breakers`), so a
//! restarted agent keeps it. After the cooldown the next run is let through; if
//! it too ends stuck, the breaker opens again at once; any other end of a run
//! closes it and clears the count.

use chrono::Utc;

use super::time::rfc3339;
use super::{Agent, Caller, Failure, Result};
use crate::api::AuditEntry;
use crate::api::{BreakerInfo, ErrorKind, RunStatus};
use crate::policy::Permission;
use crate::store::BreakerRecord;

fn info(b: BreakerRecord) -> BreakerInfo {
    let open = b.open_until.is_some_and(|t| t > Utc::now());
    BreakerInfo {
        workflow: b.workflow,
        failures: b.failures,
        open,
        opened_at: b.opened_at.map(rfc3339),
        open_until: b.open_until.map(rfc3339),
        last_run_id: b.last_run_id,
        last_reason: b.last_reason,
    }
}

impl Agent {
    /// A run is about to be killed as stuck: its end will count against its
    /// workflow's breaker.
    pub(super) fn mark_stuck(&self, run_id: &str, reason: &str) {
        self.life
            .stuck_ends()
            .insert(run_id.to_owned(), reason.to_owned());
    }

    /// A run ended with `status`: count it against (stuck) or for (anything
    /// else) its workflow's breaker, opening it when the count is reached.
    pub(super) fn breaker_on_end(&self, run_id: &str, status: RunStatus) {
        let stuck = self.life.stuck_ends().remove(run_id);
        let Ok(Some(rec)) = self.store().get_run(run_id) else {
            return;
        };
        let Some(workflow) = rec.workflow.clone() else {
            return;
        };
        let limit = self.run_template(&rec).breaker.clone();
        if limit.failures == 0 {
            return;
        }
        let store = self.store();
        let Some(reason) = stuck.filter(|_| status == RunStatus::TimedOut) else {
            if let Err(e) = store.delete_breaker(&workflow) {
                tracing::error!(workflow, "cannot clear the breaker: {e}");
            }
            return;
        };
        let mut b = store
            .breaker(&workflow)
            .ok()
            .flatten()
            .unwrap_or_else(|| BreakerRecord {
                workflow: workflow.clone(),
                ..Default::default()
            });
        b.failures += 1;
        b.last_run_id = Some(run_id.to_owned());
        b.last_reason = Some(reason);
        let opens = b.failures >= limit.failures;
        if opens {
            let now = Utc::now();
            b.opened_at = Some(now);
            b.open_until =
                Some(now + chrono::Duration::from_std(limit.cooldown).unwrap_or_default());
        }
        if let Err(e) = store.put_breaker(&b) {
            tracing::error!(workflow, "cannot store the breaker: {e}");
        }
        drop(store);
        if opens {
            let message = format!(
                "circuit breaker of workflow {workflow} open: {} runs in a row ended stuck (last: \
                 run {run_id}, {}); new runs are refused until {} or `wfcg breaker reset {workflow}`",
                b.failures,
                b.last_reason.as_deref().unwrap_or("?"),
                b.open_until.map_or("?".into(), rfc3339),
            );
            self.audit_event(AuditEntry {
                actor_name: "monitor".into(),
                action: "breaker_open".into(),
                run_id: Some(run_id.to_owned()),
                reason: Some(message.clone()),
                outcome: "opened".into(),
                ..Default::default()
            });
            self.alert("breaker_open", &rec, &message);
        }
    }

    /// A breaker as `caller` may see it: the last stuck run and its reason (which
    /// carries the run's STATUS= text) only for callers who may see that run.
    fn shown_to(&self, caller: &Caller, b: BreakerRecord) -> BreakerInfo {
        let mut b = info(b);
        let visible = self.sees_all(caller)
            || b.last_run_id.as_deref().is_some_and(|id| {
                self.store()
                    .get_run(id)
                    .ok()
                    .flatten()
                    .is_some_and(|r| r.owner_uid == caller.uid)
            });
        if !visible {
            b.last_run_id = None;
            b.last_reason = None;
        }
        b
    }

    /// Refuses a new run of a workflow whose breaker is open (exit 6).
    pub(super) fn check_breaker(&self, caller: &Caller, workflow: Option<&str>) -> Result<()> {
        let Some(workflow) = workflow else {
            return Ok(());
        };
        let Some(b) = self.store().breaker(workflow)? else {
            return Ok(());
        };
        let b = self.shown_to(caller, b);
        if !b.open {
            return Ok(());
        }
        let last = match (&b.last_run_id, &b.last_reason) {
            (Some(id), Some(why)) => format!(" (last: run {id}, {why})"),
            _ => String::new(),
        };
        Err(Failure::new(
            ErrorKind::BreakerOpen,
            format!(
                "workflow {workflow}: circuit breaker open since {}: {} runs in a row ended \
                 stuck{last}; new runs are refused until {}, or until an operator runs \
                 `wfcg breaker reset {workflow}`",
                b.opened_at.as_deref().unwrap_or("?"),
                b.failures,
                b.open_until.as_deref().unwrap_or("?"),
            ),
        ))
    }

    /// The breakers with a count or open. Anyone may see which workflows are
    /// refused and until when; the last stuck run and why only who may see it.
    pub fn breakers(&self, caller: &Caller) -> Result<Vec<BreakerInfo>> {
        let all = self.store().breakers()?;
        Ok(all.into_iter().map(|b| self.shown_to(caller, b)).collect())
    }

    /// How many breakers are open now (for `/metrics`).
    pub(super) fn open_breakers(&self) -> usize {
        self.store()
            .breakers()
            .map(|all| all.into_iter().map(info).filter(|b| b.open).count())
            .unwrap_or(0)
    }

    /// Closes a workflow's breaker and clears its count: root, or kill_any. Audited.
    pub fn reset_breaker(&self, caller: &Caller, workflow: &str) -> Result<BreakerInfo> {
        let id = self.access.identity(caller);
        let allowed = caller.is_root()
            || self
                .access
                .policy()
                .permissions(&id)
                .contains(&Permission::KillAny);
        let before = self.store().breaker(workflow)?;
        let outcome = if !allowed {
            "denied"
        } else if before.is_some() {
            "reset"
        } else {
            "no_such_breaker"
        };
        if allowed && before.is_some() {
            self.store().delete_breaker(workflow)?;
        }
        self.audit_event(AuditEntry {
            actor_uid: Some(caller.uid),
            actor_name: id.user.clone().unwrap_or_else(|| caller.uid.to_string()),
            caller_pid: Some(caller.pid),
            action: "breaker_reset".into(),
            reason: Some(format!("workflow {workflow}")),
            decision: if allowed { "allowed" } else { "denied" }.into(),
            permission: allowed.then(|| Permission::KillAny.as_str().to_string()),
            outcome: outcome.into(),
            ..Default::default()
        });
        if !allowed {
            return Err(Failure::new(
                ErrorKind::Forbidden,
                format!(
                    "resetting the breaker of workflow {workflow} needs the kill_any permission"
                ),
            ));
        }
        match before {
            Some(b) => Ok(BreakerInfo {
                open: false,
                failures: 0,
                ..self.shown_to(caller, b)
            }),
            None => Err(Failure::new(
                ErrorKind::NotFound,
                format!("workflow {workflow} has no breaker counting (nothing to reset)"),
            )),
        }
    }
}
