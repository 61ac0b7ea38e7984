//! A run's deadlines: those it starts with ([`Agent::initial_deadlines`]), what
//! happens when one passes ([`Agent::on_deadline`]: the automatic kill as
//! `timed_out`, a stuck run marked for its breaker), and when a live run counts
//! as stuck ([`Agent::stuck_reason`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::agent::Agent;
use crate::agent::monitor::Kind;
use crate::agent::time::rfc3339;
use crate::api::{KillRequest, RunStatus};
use crate::store::RunRecord;

impl Agent {
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
        let status = rec.status;
        if !status.is_live() || self.kill_in_flight(run_id) {
            return;
        }
        let template = self.run_template(&rec);
        let now_t = Utc::now();
        let since = |t: &Option<DateTime<Utc>>| {
            t.map(|t| t.format("%H:%M:%S").to_string())
                .unwrap_or_else(|| "?".into())
        };
        let last_status = rec
            .status_text
            .as_deref()
            .map(|s| format!(", last status '{s}'"))
            .unwrap_or_default();
        let fmt = |d: Duration| crate::duration::format(d);
        let reason = match kind {
            Kind::Stall | Kind::Probe => match stalled {
                Some(reason) => reason,
                None => return,
            },
            Kind::Output => match self.output_overdue(&rec) {
                Some(reason) => reason,
                None => return,
            },
            Kind::Init => {
                if status != RunStatus::Initializing || rec.init_deadline.is_none_or(|d| d > now_t)
                {
                    return;
                }
                format!(
                    "initialization timeout {} exceeded: still initializing since {}{last_status}",
                    fmt(template.timeouts.init),
                    since(&rec.started_at)
                )
            }
            Kind::Total => {
                if rec.total_deadline.is_none_or(|d| d > now_t) {
                    return;
                }
                format!(
                    "total timeout {} exceeded: started at {}{last_status}",
                    fmt(template.timeouts.total),
                    since(&rec.started_at)
                )
            }
            Kind::Watchdog => {
                let last = self
                    .life
                    .beats
                    .lock()
                    .get(run_id)
                    .map(|b| b.at)
                    .or(rec.last_heartbeat);
                let threshold = self.life.lives.lock().get(run_id).and_then(|l| l.threshold);
                format!(
                    "heartbeat missed: no WATCHDOG=1 for {} (last at {}){last_status}",
                    threshold.map(fmt).unwrap_or_else(|| "?".into()),
                    if last.is_some() {
                        since(&last)
                    } else {
                        "never".into()
                    }
                )
            }
        };
        tracing::warn!(run_id, "{reason}; killing it");
        if kind != Kind::Total && kind != Kind::Watchdog {
            self.mark_stuck(run_id, &reason);
        }
        self.alert("stuck", &rec, &reason);
        let req = KillRequest {
            reason: Some(reason),
            ..Default::default()
        };
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
                Some(Utc::now() + chrono::Duration::seconds(1)),
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
        let template = self.run_template(rec);
        let now_t = Utc::now();
        let near = |deadline: Option<DateTime<Utc>>, span: Duration| {
            let d = deadline?;
            let margin = chrono::Duration::from_std(span / 5).unwrap_or_default();
            (now_t >= d - margin).then_some(d)
        };
        if status == RunStatus::Initializing
            && let Some(d) = near(rec.init_deadline, template.timeouts.init)
        {
            return Some(format!(
                "initializing since {} (init deadline {})",
                rec.started_at.map_or("?".into(), rfc3339),
                rfc3339(d)
            ));
        }
        let watchdog = match self.life.beats.lock().get(&rec.run_id) {
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

    /// The deadlines and status a new run starts with, from its template.
    pub(in crate::agent) fn initial_deadlines(
        template: &crate::template::Template,
        rec: &mut RunRecord,
    ) {
        let start = Utc::now();
        let after = |d: Duration| {
            (!d.is_zero()).then(|| start + chrono::Duration::from_std(d).unwrap_or_default())
        };
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
        rec.watchdog_deadline = after(2 * template.timeouts.watchdog);
    }
}
