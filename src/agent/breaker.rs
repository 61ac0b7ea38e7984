//! The circuit breakers: when a template's `[breaker] failures` runs of a
//! workflow in a row ended stuck (killed at their init, first-output or stall
//! timeout), new runs are refused (exit 6) until the cooldown passes or an
//! operator resets it. A breaker counts the runs of one workflow *and one
//! owner*: one user's stuck runs never refuse another user's or root's runs.
//! Only an operator's template may make it host-wide (`[breaker] scope =
//! "host"`; a user's template may not set `[breaker]` at all). State lives in
//! the store (`breakers`), so a restarted agent keeps it. After the cooldown the
//! next run is let through; if it too ends stuck, the breaker opens again at
//! once; any other end of a run closes it and clears the count.

use chrono::Utc;

use super::audit::Audited;
use super::audit_trail::by_caller;
use super::time::rfc3339;
use super::{Agent, Caller, Failure, Result};
use crate::api::AuditEntry;
use crate::api::{AuditAction, Decision};
use crate::api::{BreakerInfo, ErrorKind, RunStatus};
use crate::policy::Permission;
use crate::store::BreakerRecord;
use crate::template::BreakerScope;

fn info(b: BreakerRecord) -> BreakerInfo {
    let open = b.open_until.is_some_and(|t| t > Utc::now());
    BreakerInfo {
        workflow: b.workflow,
        owner_uid: b.owner_uid,
        owner: b.owner_uid.and_then(crate::users::user_name_cached),
        failures: b.failures,
        open,
        opened_at: b.opened_at,
        open_until: b.open_until,
        last_run_id: b.last_run_id,
        last_reason: b.last_reason,
    }
}

/// Whose breaker `owner` names, for messages: `uid 1001 (alice)` or `every user`.
fn whose(owner: Option<u32>) -> String {
    match owner {
        None => "every user (host-wide)".into(),
        Some(uid) => match crate::users::user_name_cached(uid) {
            Some(name) => format!("uid {uid} ({name})"),
            None => format!("uid {uid}"),
        },
    }
}

/// The `wfcg breaker reset` command that closes a breaker.
fn reset_command(workflow: &str, owner: Option<u32>) -> String {
    match owner {
        None => format!("wfcg breaker reset {workflow} --user host"),
        Some(uid) => format!("wfcg breaker reset {workflow} --user {uid}"),
    }
}

/// Which breakers a reset closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetScope {
    /// Every breaker of the workflow: the host-wide one and every owner's.
    All,
    /// The host-wide breaker only.
    Host,
    /// One owner's.
    Owner(u32),
}

impl Agent {
    /// A run is about to be killed as stuck: its end will count against its
    /// workflow's breaker.
    pub(super) fn mark_stuck(&self, run_id: &str, reason: &str) {
        self.watch
            .stuck_ends()
            .insert(run_id.to_owned(), reason.to_owned());
    }

    /// A run ended with `status`: count it against (stuck) or for (anything
    /// else) its workflow's breaker of its owner (or the host-wide one), opening
    /// it when the count is reached.
    pub(super) fn breaker_on_end(&self, run_id: &str, status: RunStatus) {
        let stuck = self.watch.stuck_ends().remove(run_id);
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
        let owner = match limit.scope {
            BreakerScope::Owner => Some(rec.owner_uid),
            BreakerScope::Host => None,
        };
        let store = self.store();
        let Some(reason) = stuck.filter(|_| status == RunStatus::TimedOut) else {
            if let Err(e) = store.delete_breaker(&workflow, owner) {
                tracing::error!(workflow, "cannot clear the breaker: {e}");
            }
            return;
        };
        let mut b = store
            .breaker(&workflow, owner)
            .ok()
            .flatten()
            .unwrap_or_else(|| BreakerRecord {
                workflow: workflow.clone(),
                owner_uid: owner,
                ..Default::default()
            });
        b.failures = b.failures.saturating_add(1);
        b.last_run_id = Some(run_id.to_owned());
        b.last_reason = Some(reason);
        let opens = b.failures >= limit.failures;
        if opens {
            let now = Utc::now();
            b.opened_at = Some(now);
            b.open_until = chrono::Duration::from_std(limit.cooldown)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .or(Some(now));
        }
        if let Err(e) = store.put_breaker(&b) {
            tracing::error!(workflow, "cannot store the breaker: {e}");
        }
        drop(store);
        if opens {
            let message = format!(
                "circuit breaker of workflow {workflow} open for {}: {} runs in a row ended \
                 stuck (last: run {run_id}, {}); new runs are refused until {} or `{}`",
                whose(owner),
                b.failures,
                b.last_reason.as_deref().unwrap_or("?"),
                b.open_until.map_or("?".into(), rfc3339),
                reset_command(&workflow, owner),
            );
            self.audit_event(AuditEntry {
                actor_name: "monitor".into(),
                action: AuditAction::BreakerOpen,
                run_id: Some(run_id.to_owned()),
                reason: Some(message.clone()),
                outcome: "opened".into(),
                ..Default::default()
            });
            self.alert("breaker_open", &rec, &message);
        }
    }

    /// Whether `caller` may see a breaker at all: its own, the host-wide ones,
    /// and everyone's with `view_all`.
    fn may_see(&self, caller: &Caller, b: &BreakerRecord) -> bool {
        b.owner_uid.is_none_or(|uid| uid == caller.uid) || self.sees_all(caller)
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

    /// Refuses a new run of a workflow whose breaker is open for the caller
    /// (its own, or the host-wide one) with exit 6.
    pub(super) fn check_breaker(&self, caller: &Caller, workflow: Option<&str>) -> Result<()> {
        let Some(workflow) = workflow else {
            return Ok(());
        };
        for owner in [None, Some(caller.uid)] {
            let Some(b) = self.store().breaker(workflow, owner)? else {
                continue;
            };
            let b = self.shown_to(caller, b);
            if !b.open {
                continue;
            }
            let last = match (&b.last_run_id, &b.last_reason) {
                (Some(id), Some(why)) => format!(" (last: run {id}, {why})"),
                _ => String::new(),
            };
            return Err(Failure::new(
                ErrorKind::BreakerOpen,
                format!(
                    "workflow {workflow}: circuit breaker open for {} since {}: {} runs in a row \
                     ended stuck{last}; new runs are refused until {}, or until an operator \
                     runs `{}`",
                    whose(owner),
                    b.opened_at.map_or("?".into(), rfc3339),
                    b.failures,
                    b.open_until.map_or("?".into(), rfc3339),
                    reset_command(workflow, owner),
                ),
            ));
        }
        Ok(())
    }

    /// The breakers with a count or open, with whose each is: the caller's own
    /// and the host-wide ones (everyone's with `view_all`); the last stuck run
    /// and why only to who may see that run.
    pub fn breakers(&self, caller: &Caller) -> Result<Vec<BreakerInfo>> {
        let all = self.store().breakers()?;
        Ok(all
            .into_iter()
            .filter(|b| self.may_see(caller, b))
            .map(|b| self.shown_to(caller, b))
            .collect())
    }

    /// How many breakers are open now (for `/metrics`).
    pub(super) fn open_breakers(&self) -> usize {
        self.store()
            .breakers()
            .map(|all| all.into_iter().map(info).filter(|b| b.open).count())
            .unwrap_or(0)
    }

    /// Closes breakers of a workflow and clears their counts (`scope`: all of
    /// them, the host-wide one, or one owner's): root, or kill_any. Audited.
    pub fn reset_breaker(
        &self,
        caller: &Caller,
        workflow: &str,
        scope: ResetScope,
    ) -> Result<Audited<Vec<BreakerInfo>>> {
        let id = self.access.identity(caller);
        let allowed = caller.is_root()
            || self
                .access
                .policy()
                .permissions(&id)
                .contains(&Permission::KillAny);
        let before: Vec<BreakerRecord> = self
            .store()
            .breakers()?
            .into_iter()
            .filter(|b| {
                b.workflow == workflow
                    && match scope {
                        ResetScope::All => true,
                        ResetScope::Host => b.owner_uid.is_none(),
                        ResetScope::Owner(uid) => b.owner_uid == Some(uid),
                    }
            })
            .collect();
        let outcome = if !allowed {
            "denied"
        } else if before.is_empty() {
            "no_such_breaker"
        } else {
            "reset"
        };
        if allowed {
            let store = self.store();
            for b in &before {
                store.delete_breaker(workflow, b.owner_uid)?;
            }
        }
        let target = match scope {
            ResetScope::All => String::new(),
            ResetScope::Host => " (host-wide)".into(),
            ResetScope::Owner(uid) => format!(" of {}", whose(Some(uid))),
        };
        let receipt = self.audit_event(AuditEntry {
            action: AuditAction::BreakerReset,
            reason: Some(format!("workflow {workflow}{target}")),
            decision: Decision::of(allowed),
            permission: allowed.then(|| Permission::KillAny.as_str().to_string()),
            outcome: outcome.into(),
            ..by_caller(caller, &id)
        });
        if !allowed {
            return Err(Failure::new(
                ErrorKind::Forbidden,
                format!(
                    "resetting the breaker of workflow {workflow} needs the kill_any permission"
                ),
            )
            .recorded(receipt));
        }
        if before.is_empty() {
            return Err(Failure::new(
                ErrorKind::NotFound,
                format!("workflow {workflow} has no breaker{target} counting (nothing to reset)"),
            )
            .recorded(receipt));
        }
        Ok(before
            .into_iter()
            .map(|b| BreakerInfo {
                open: false,
                failures: 0,
                ..self.shown_to(caller, b)
            })
            .collect())
        .map(|closed| Audited::new(closed, receipt))
    }
}
