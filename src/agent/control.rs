//! The agent itself, seen from outside: what `GET /v1/health` says of it
//! (`wfcg agent status`), and the request to stop it (`wfcg agent stop`).
//!
//! A stop ends the agent only: runs are not its children, their supervisors
//! (`wfcg run`) go on, and the next agent takes them over from the cgroup tree
//! and the store (see [`Agent::start`]). Under systemd the service manager owns
//! the agent's life, so a stop is refused there with the command to use.

use std::path::Path;
use std::time::Instant;

use super::time::now;
use super::{Agent, Caller, Failure, Result};
use crate::api::{AgentStopping, AuditEntry, ErrorKind, Health};
use crate::api::{AuditAction, Decision};

/// How the agent was started, found once at its start.
#[derive(Debug, Clone)]
pub(super) struct About {
    started: Instant,
    started_at: String,
    log: String,
    service: Option<String>,
}

impl About {
    /// This process, now (before it moves into its own leaf cgroup, so that the
    /// cgroup systemd started it in is still its own).
    pub(super) fn now(proc_root: &Path) -> About {
        let systemd = Path::new("/run/systemd/system").is_dir();
        let own =
            crate::cgroup::process_cgroup(proc_root, std::process::id() as i32).unwrap_or_default();
        let invoked = std::env::var_os("INVOCATION_ID").is_some();
        let service = service_unit(systemd && invoked, &own);
        let stderr = std::io::stderr();
        let target = std::fs::read_link(proc_root.join("self/fd/2"))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "-".into());
        let regular = rustix::fs::fstat(&stderr)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file());
        About {
            started: Instant::now(),
            started_at: now(),
            log: log_destination(&target, regular, service.is_some()),
            service,
        }
    }
}

/// The systemd service the agent runs as: the innermost `*.service` of its
/// cgroup, when systemd started it (`systemd` is PID 1 and set INVOCATION_ID).
fn service_unit(systemd: bool, own_cgroup: &str) -> Option<String> {
    if !systemd {
        return None;
    }
    own_cgroup
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service"))
        .map(str::to_owned)
}

/// Where the agent's log goes, from what its stderr is: the file (a regular
/// file's path), `journal` (a service's stderr that is no file), or the target
/// itself (`/dev/pts/3`, `pipe:[123]`).
fn log_destination(stderr_target: &str, regular: bool, service: bool) -> String {
    if regular {
        stderr_target.to_owned()
    } else if service {
        "journal".to_owned()
    } else {
        stderr_target.to_owned()
    }
}

impl Agent {
    /// What `GET /v1/health` answers; with `kill_course`, also the longest kill
    /// course its templates allow (which reads them).
    pub fn health(&self, kill_course: bool) -> Health {
        Health {
            ok: true,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: Some(self.about.started_at.clone()),
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
    pub fn request_stop(&self, caller: &Caller) -> Result<AgentStopping> {
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
        self.audit_event(AuditEntry {
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
            return Err(f);
        }
        tracing::info!(uid = caller.uid, pid = caller.pid, "stop requested");
        Ok(AgentStopping {
            pid: std::process::id(),
            live_runs,
        })
    }

    /// Tells the server to stop (after a [`Agent::request_stop`] it answered).
    pub fn stop(&self) {
        self.stop.notify_one();
    }

    /// Resolves once a stop was asked for ([`Agent::stop`]).
    pub async fn stop_requested(&self) {
        self.stop.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_the_innermost_service_of_the_cgroup_under_systemd_only() {
        assert_eq!(
            service_unit(true, "/system.slice/wfcg.service/agent").as_deref(),
            Some("wfcg.service")
        );
        assert_eq!(
            service_unit(true, "/system.slice/wfcg.service").as_deref(),
            Some("wfcg.service")
        );
        assert_eq!(
            service_unit(true, "/user.slice/user-0.slice/session-3.scope"),
            None
        );
        assert_eq!(
            service_unit(false, "/system.slice/wfcg.service/agent"),
            None
        );
    }

    #[test]
    fn the_log_is_the_file_the_journal_or_what_stderr_is() {
        assert_eq!(
            log_destination("/var/lib/wfcg/agent.log", true, false),
            "/var/lib/wfcg/agent.log"
        );
        assert_eq!(log_destination("socket:[4242]", false, true), "journal");
        assert_eq!(log_destination("/dev/pts/3", false, false), "/dev/pts/3");
    }
}
