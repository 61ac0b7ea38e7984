//! A run's deadlines: those it starts with ([`Agent::initial_deadlines`]), what
//! happens when one passes ([`Agent::on_deadline`]: the automatic kill as
//! `timed_out`, a stuck run marked for its breaker), and when a live run counts
//! as stuck ([`Agent::stuck_reason`]); and the operator's ceilings
//! ([`Ceiling`]) that nothing a run sends may push a deadline past.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::bounds;

use crate::agent::Agent;
use crate::agent::monitor::Kind;
use crate::agent::time::rfc3339;
use crate::agent::watch::Ceiling;
use crate::api::{self, KillMode, KillRequest, RunStatus};
use crate::store::{CeilingMs, RunRecord};

/// A run's template as stored with it, with the operator's ceiling.
pub(in crate::agent) struct Stored {
    pub template: crate::template::Template,
    pub ceiling: Ceiling,
}

impl Stored {
    /// A run's stored template: with its ceiling, or bare (an older record, an
    /// adopted run), whose own timeouts are then the ceiling; `None` when the
    /// record has no template at all. (A template column that does not read
    /// is an error of the store's, never a default: the record is not read.)
    pub fn of(rec: &RunRecord) -> Option<Stored> {
        let template = rec.template.clone()?;
        let ceiling = rec
            .template_ceiling
            .map_or_else(|| Ceiling::of(&template), Ceiling::from);
        Some(Stored { template, ceiling })
    }
}

/// As the store keeps it, in milliseconds (the stored text is unchanged).
impl From<Ceiling> for CeilingMs {
    fn from(c: Ceiling) -> CeilingMs {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        CeilingMs {
            init: ms(c.init),
            total: ms(c.total),
            watchdog: ms(c.watchdog),
        }
    }
}

impl From<CeilingMs> for Ceiling {
    fn from(c: CeilingMs) -> Ceiling {
        let ms = |v: u64| bounds::clamp(Duration::from_millis(v));
        Ceiling {
            init: ms(c.init),
            total: ms(c.total),
            watchdog: ms(c.watchdog),
        }
    }
}

impl Agent {
    /// The operator's ceiling for a new run: the timeouts of the template the
    /// operator gave it (named, the workflow's, the agent's default, or a template
    /// text sent by root), before the caller's overrides; root's overrides may
    /// widen it (root may lengthen), a user's never.
    pub(in crate::agent) fn operator_ceiling(
        &self,
        caller: &crate::agent::Caller,
        req: &crate::api::CreateRun,
        template: &crate::template::Template,
    ) -> crate::agent::Result<Ceiling> {
        let root = caller.is_root();
        // As `resolve_template` reads it, less a user's text (whose name is only
        // a label: its base is the workflow's template or the default).
        let text = req.template_text.clone().filter(|_| root);
        let base = crate::api::CreateRun {
            workflow: req.workflow.clone(),
            template: (root || req.template_text.is_none())
                .then(|| req.template.clone())
                .flatten(),
            template_text: text,
            ..Default::default()
        };
        let (_, operator) = self.resolve_template(caller, &base)?;
        let ceiling = Ceiling::of(&operator);
        Ok(if root {
            ceiling.wider(Ceiling::of(template))
        } else {
            ceiling
        })
    }

    /// A deadline passed: check it against the record, then kill the run
    /// gracefully (critical sections honoured) as `timed_out`.
    pub(super) fn on_deadline(&self, run_id: &str, kind: Kind) {
        // Samples and probes, the frequent timers, read no record unless they
        // find the run stalled.
        let stalled = match kind {
            Kind::Stall => match self.sample_stall(run_id) {
                Some(reason) => Some(reason),
                None => return,
            },
            Kind::Probe => return self.probe_port(run_id),
            _ => None,
        };
        let Ok(Some(rec)) = self.store().get_run(run_id) else {
            return;
        };
        if !rec.status.is_live() || self.kill_in_flight(run_id) {
            return;
        }
        let Some(reason) = self.deadline_reason(kind, &rec, stalled) else {
            return;
        };
        self.kill_past_deadline(kind, rec, reason);
    }

    /// Why the run is killed for deadline `kind`, or none when, read against
    /// its record, the deadline has not passed (`stalled`: what a stall sample
    /// found).
    fn deadline_reason(
        &self,
        kind: Kind,
        rec: &RunRecord,
        stalled: Option<String>,
    ) -> Option<String> {
        let template = self.run_template(rec);
        let now_t = Utc::now();
        let last_status = rec
            .status_text
            .as_deref()
            .map(|s| format!(", last status '{s}'"))
            .unwrap_or_default();
        let fmt = |d: Duration| crate::duration::format(d);
        Some(match kind {
            Kind::Stall | Kind::Probe => stalled?,
            Kind::Output => self.output_overdue(rec)?,
            Kind::Init => {
                if rec.status != RunStatus::Initializing
                    || rec.init_deadline.is_none_or(|d| d > now_t)
                {
                    return None;
                }
                format!(
                    "initialization timeout {} exceeded: still initializing since {}{last_status}; \
                     it was waiting for {}",
                    fmt(template.timeouts.init),
                    clock(&rec.started_at),
                    template.run.waiting_for()
                )
            }
            Kind::Total => {
                if rec.total_deadline.is_none_or(|d| d > now_t) {
                    return None;
                }
                format!(
                    "total timeout {} exceeded: started at {}{last_status}",
                    fmt(template.timeouts.total),
                    clock(&rec.started_at)
                )
            }
            Kind::Lease => self.lease_lapsed(rec, now_t)?,
            Kind::Watchdog => self.heartbeat_missed(rec, &last_status),
        })
    }

    /// Why a run whose watchdog deadline passed is killed: its last heartbeat.
    fn heartbeat_missed(&self, rec: &RunRecord, last_status: &str) -> String {
        let run_id = rec.run_id.as_str();
        let last = self
            .watch
            .beats
            .lock()
            .get(run_id)
            .map(|b| b.at)
            .or(rec.last_heartbeat);
        let threshold = self
            .watch
            .lives
            .lock()
            .get(run_id)
            .and_then(|l| l.threshold);
        format!(
            "heartbeat missed: no WATCHDOG=1 for {} (last at {}){last_status}",
            threshold
                .map(crate::duration::format)
                .unwrap_or_else(|| "?".into()),
            if last.is_some() {
                clock(&last)
            } else {
                "never".into()
            }
        )
    }

    /// Kills a run past its deadline `kind` for `reason`, gracefully, after
    /// the alert (and, for a stuck run, the breaker's count); a kill that could
    /// not be confirmed is tried again in a second.
    fn kill_past_deadline(&self, kind: Kind, rec: RunRecord, reason: String) {
        let run_id = rec.run_id.clone();
        let run_id = run_id.as_str();
        tracing::warn!(run_id, "{reason}; killing it");
        // A lapsed lease says the executor is gone, not that the run was stuck:
        // not counted by the breaker, alerted as what it is.
        // The kill's reason for a lease is always the same words (clients match
        // them); the alert and the log say when it was last renewed.
        let reason = match kind {
            Kind::Lease => {
                self.records.metrics.lease_expired();
                self.alert("lease_expired", &rec, &reason);
                api::LEASE_EXPIRED.to_owned()
            }
            Kind::Total | Kind::Watchdog => {
                self.alert("stuck", &rec, &reason);
                reason
            }
            _ => {
                self.mark_stuck(run_id, &reason);
                self.alert("stuck", &rec, &reason);
                reason
            }
        };
        let req = KillRequest::new(KillMode::Graceful, Some(reason));
        self.auto_kill(rec, req);
        // A kill that could not be confirmed (a read failed) leaves the run live:
        // the deadline fires again in a second (an unkillable run is not retried).
        let live = self
            .store()
            .get_run(run_id)
            .ok()
            .flatten()
            .is_some_and(|r| r.status.is_live() && r.status != RunStatus::Unkillable);
        if live
            && !self.kill_in_flight(run_id)
            && let Some(m) = self.monitor()
        {
            m.set(
                run_id,
                kind,
                Some(bounds::later(Utc::now(), Duration::from_secs(1))),
            );
        }
    }

    /// Why a live run counts as stuck, if it does: initializing for 80% or more of
    /// its init timeout, a heartbeat overdue, or 80% or more of its total time gone.
    pub(in crate::agent) fn stuck_reason(&self, rec: &RunRecord) -> Option<String> {
        let status = rec.status;
        if !status.is_live() {
            return None;
        }
        // One predicate for ps --stuck, kill --stuck, MCP list_stuck, the
        // wfcg_stuck_runs metric and top.
        if status == RunStatus::Unkillable {
            return Some("unkillable: processes survived cgroup.kill".into());
        }
        if let Some(hint) = &rec.loop_suspected {
            return Some(hint.clone());
        }
        if let Some(retrying) = self.retrying(&rec.run_id) {
            return Some(retrying);
        }
        let template = self.run_template(rec);
        let now_t = Utc::now();
        let near = |deadline: Option<DateTime<Utc>>, span: Duration| {
            let d = deadline?;
            (now_t >= bounds::earlier(d, span / 5)).then_some(d)
        };
        if status == RunStatus::Initializing
            && let Some(d) = near(rec.init_deadline, template.timeouts.init)
        {
            return Some(format!(
                "initializing since {} (init deadline {}), waiting for {}",
                rec.started_at.map_or("?".into(), rfc3339),
                rfc3339(d),
                template.run.waiting_for()
            ));
        }
        let watchdog = match self.watch.beats.lock().get(&rec.run_id) {
            Some(b) => b.deadline,
            None => rec.watchdog_deadline,
        };
        if let Some(d) = watchdog.filter(|d| now_t > *d) {
            return Some(format!("heartbeat overdue since {}", rfc3339(d)));
        }
        if let Some(d) = near(rec.total_deadline, template.timeouts.total) {
            return Some(format!("near its total timeout ({})", rfc3339(d)));
        }
        None
    }

    /// The deadlines and status a new run starts with, from its template; the
    /// template is stored with the operator's `ceiling`.
    pub(in crate::agent) fn initial_deadlines(
        template: &crate::template::Template,
        ceiling: Ceiling,
        rec: &mut RunRecord,
    ) {
        let start = Utc::now();
        let after = |d: Duration| (!d.is_zero()).then(|| bounds::later(start, d));
        rec.template = Some(template.clone());
        rec.template_ceiling = Some(ceiling.into());
        // With no init timeout there is no initialization to wait out: a run that
        // will never be killed for not becoming ready is running from the start.
        let notify = template.run.waits() && !template.timeouts.init.is_zero();
        rec.status = if notify {
            RunStatus::Initializing
        } else {
            RunStatus::Running
        };
        if !notify {
            rec.ready_at = Some(start);
        }
        rec.init_deadline = if notify {
            after(template.timeouts.init)
        } else {
            None
        };
        rec.total_deadline = after(template.timeouts.total);
        rec.watchdog_deadline = after(template.timeouts.watchdog.saturating_mul(2));
    }
}

/// A time as `HH:MM:SS` (UTC) in a deadline's reason; `?` when there is none.
fn clock(t: &Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%H:%M:%S").to_string())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_template_reads_back_with_its_ceiling() {
        let t = crate::template::Template::parse(
            "[timeouts]\ninit = \"2s\"\n[kill]\nterm_grace = \"1s\"\n[alerts]\nwebhook = \"http://127.0.0.1:9/x\"\n",
            "t",
        )
        .unwrap();
        let ceiling = Ceiling::of(&t);
        // Through the store, as a run's record keeps it.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("wfcg.db")).unwrap();
        let mut rec = RunRecord {
            run_id: "run_t".into(),
            cgroup_path: "/x".into(),
            ..Default::default()
        };
        rec.template = Some(t.clone());
        rec.template_ceiling = Some(ceiling.into());
        store.insert_run(&rec).unwrap();
        let back = Stored::of(&store.get_run("run_t").unwrap().unwrap()).unwrap();
        assert_eq!(back.template, t);
        assert_eq!(back.ceiling, ceiling);
        // A bare template (an older record) reads too, its timeouts the ceiling.
        rec.run_id = "run_bare".into();
        rec.template_ceiling = None;
        store.insert_run(&rec).unwrap();
        let bare = Stored::of(&store.get_run("run_bare").unwrap().unwrap()).unwrap();
        assert_eq!(bare.ceiling, ceiling);
    }
}
