//! Where the agent's cgroup tree goes.
//!
//! - `--cgroup-root` (or `WFCG_CGROUP_ROOT`) given: there, always.
//! - systemd is PID 1: the agent's own cgroup, which systemd must have delegated
//!   to it (`Delegate=yes` in wfcg.service). Creating cgroups anywhere else breaks
//!   systemd's single-writer rule (systemd may move or kill what it finds there),
//!   so the agent refuses to start. A cgroup named `agent` whose parent is
//!   delegated (`DelegateSubgroup=agent`) places the tree in that parent.
//! - otherwise (no systemd, or systemd installed but not PID 1): `<cgroup2 mount>/wfcg`.
//!
//! systemd marks a delegated cgroup with the extended attribute
//! `trusted.delegate=1` (and `user.delegate=1` from systemd 253 on).

use std::path::{Path, PathBuf};

/// What the decision needs to know about the host.
#[derive(Debug, Clone)]
pub struct Host {
    /// The cgroup2 mount point.
    pub mount: PathBuf,
    /// This process's cgroup relative to the mount (the `0::` line of /proc/self/cgroup).
    pub own: String,
    /// systemd is PID 1 (`/run/systemd/system` exists, as sd_booted(3) checks).
    pub systemd: bool,
}

impl Host {
    /// This host, as seen by this process.
    pub fn current() -> Result<Host, crate::cgroup::Error> {
        let mount = crate::cgroup::cgroup2_mount()?;
        let own = crate::cgroup::process_cgroup(Path::new("/proc"), std::process::id() as i32)
            .unwrap_or_else(|| "/".into());
        Ok(Host {
            mount,
            own,
            systemd: Path::new("/run/systemd/system").is_dir(),
        })
    }
}

/// Whether systemd delegated the cgroup at `path` (its `trusted.delegate` or
/// `user.delegate` extended attribute is `1`).
pub fn is_delegated(path: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut buf = [0u8; 8];
        rustix::fs::getxattr(path, *name, &mut buf).is_ok_and(|n| &buf[..n] == b"1")
    })
}

/// The cgroup the agent owns, or why it will not create one.
pub fn decide(
    explicit: Option<&Path>,
    host: &Host,
    delegated: impl Fn(&Path) -> bool,
) -> Result<PathBuf, String> {
    if let Some(root) = explicit {
        return Ok(root.to_path_buf());
    }
    if !host.systemd {
        return Ok(host.mount.join("wfcg"));
    }
    let own = host.mount.join(host.own.trim_start_matches('/'));
    if host.own != "/" && delegated(&own) {
        return Ok(own);
    }
    if own.file_name().is_some_and(|n| n == "agent")
        && let Some(parent) = own.parent().filter(|p| delegated(p))
    {
        return Ok(parent.to_path_buf());
    }
    Err(format!(
        "systemd is PID 1 and this agent's cgroup {} is not delegated to it: wfcg will not \
         create cgroups outside a delegated subtree (systemd owns the rest of the tree). \
         Run the agent as wfcg.service (Delegate=yes; see `wfcg install-service`), or give \
         --cgroup-root/WFCG_CGROUP_ROOT to choose a place yourself",
        host.own
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(own: &str, systemd: bool) -> Host {
        Host {
            mount: "/sys/fs/cgroup".into(),
            own: own.into(),
            systemd,
        }
    }

    const SERVICE: &str = "/sys/fs/cgroup/system.slice/wfcg.service";

    #[test]
    fn an_explicit_root_always_wins() {
        let h = host("/user.slice/session-1.scope", true);
        assert_eq!(
            decide(Some(Path::new("/x/y")), &h, |_| false),
            Ok(PathBuf::from("/x/y"))
        );
    }

    #[test]
    fn without_systemd_as_pid_1_the_root_is_below_the_mount() {
        let h = host("/", false);
        assert_eq!(
            decide(None, &h, |_| false),
            Ok(PathBuf::from("/sys/fs/cgroup/wfcg"))
        );
    }

    #[test]
    fn under_systemd_the_root_is_the_delegated_service_cgroup() {
        let h = host("/system.slice/wfcg.service", true);
        assert_eq!(
            decide(None, &h, |p| p == Path::new(SERVICE)),
            Ok(PathBuf::from(SERVICE))
        );
        // DelegateSubgroup=agent: the agent starts in the leaf, the tree is its parent.
        let h = host("/system.slice/wfcg.service/agent", true);
        assert_eq!(
            decide(None, &h, |p| p == Path::new(SERVICE)),
            Ok(PathBuf::from(SERVICE))
        );
    }

    #[test]
    fn under_systemd_an_undelegated_cgroup_is_refused_with_a_clear_line() {
        for own in ["/user.slice/user-0.slice/session-3.scope", "/", "/x/agent"] {
            let err = decide(None, &host(own, true), |_| false).unwrap_err();
            assert!(
                err.contains(&format!("cgroup {own} is not delegated"))
                    && err.contains("--cgroup-root"),
                "{err}"
            );
        }
    }
}
