//! How the agent was started, found once at its start: when, where its log
//! goes, and the systemd service it runs as (`GET /v1/health`).

use std::path::Path;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// How the agent was started, found once at its start.
#[derive(Debug, Clone)]
pub(super) struct About {
    pub(super) started: Instant,
    pub(super) started_at: DateTime<Utc>,
    pub(super) log: String,
    pub(super) service: Option<String>,
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
            started_at: Utc::now(),
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
