//! The agent itself, seen from outside: what `GET /v1/health` says of it
//! (`wfcg agent status`), and the request to stop it (`wfcg agent stop`).
//!
//! A stop ends the agent only: runs are not its children, their supervisors
//! (`wfcg run`) go on, and the next agent takes them over from the cgroup tree
//! and the store (see [`Agent::start`]). Under systemd the service manager owns
//! the agent's life, so a stop is refused there with the command to use.

use super::audit::Audited;
use super::{Agent, Caller, Failure, Result};
use crate::api::{AgentStopping, AuditEntry, ErrorKind, Health};
use crate::api::{AuditAction, Decision};

impl Agent {
    /// What `GET /v1/health` answers; with `kill_course`, also the longest kill
    /// course its templates allow (which reads them).
    pub fn health(&self, kill_course: bool) -> Health {
        Health {
            ok: true,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(self.about.started_at),
            uptime_secs: Some(self.about.started.elapsed().as_secs_f64()),
            socket: Some(self.cfg.socket.display().to_string()),
            state_dir: Some(self.cfg.state_dir.display().to_string()),
            log: Some(self.about.log.clone()),
            live_runs: Some(self.watched_runs() as u64),
            service: self.about.service.clone(),
            templates_dir: Some(self.cfg.templates_dir.display().to_string()),
            kill_course: kill_course.then(|| self.kill_course()),
            git_lock_creators: Some(self.lock_creators_status()),
        }
    }

    /// Root asks the agent to stop: allowed (and audited), the agent stops once
    /// the answer is sent ([`Agent::stop_requested`]). Anyone else is refused,
    /// and so is a stop of the service (systemd would not know it stopped).
    pub fn request_stop(&self, caller: &Caller) -> Result<Audited<AgentStopping>> {
        let refusal = if !caller.is_root() {
            Some(Failure::new(
                ErrorKind::Forbidden,
                "not permitted: only root may stop the agent",
            ))
        } else {
            self.about.service.as_ref().map(|unit| {
                Failure::new(
                    ErrorKind::Conflict,
                    format!(
                        "the agent runs as the systemd service {unit}: stop it with \
                         `systemctl stop {unit}` (its runs go on)"
                    ),
                )
            })
        };
        let live_runs = self.watched_runs() as u64;
        let receipt = self.audit_event(AuditEntry {
            actor_uid: Some(caller.uid),
            actor_name: crate::users::user_name_cached(caller.uid)
                .unwrap_or_else(|| caller.uid.to_string()),
            caller_pid: Some(caller.pid),
            action: AuditAction::AgentStop,
            reason: refusal
                .is_none()
                .then(|| format!("{live_runs} live runs go on")),
            decision: Decision::of(caller.is_root()),
            outcome: match &refusal {
                None => "stopping".into(),
                Some(f) if f.kind == ErrorKind::Forbidden => "denied".into(),
                Some(_) => "refused: the agent is a systemd service".into(),
            },
            ..Default::default()
        });
        if let Some(f) = refusal {
            return Err(f.recorded(receipt));
        }
        tracing::info!(uid = caller.uid, pid = caller.pid, "stop requested");
        Ok(Audited::new(
            AgentStopping {
                pid: std::process::id(),
                live_runs,
            },
            receipt,
        ))
    }

    /// Tells the server to stop (after a [`Agent::request_stop`] it answered).
    pub fn stop(&self) {
        self.watch.stop.notify_one();
    }

    /// Resolves once a stop was asked for ([`Agent::stop`]).
    pub async fn stop_requested(&self) {
        self.watch.stop.notified().await
    }
}
