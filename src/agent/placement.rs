//! Where the agent's cgroup tree goes.
//!
//! - `--cgroup-root` (or `WFCG_CGROUP_ROOT`) given: there, always.
//! - systemd is PID 1: a subtree systemd delegated to wfcg.service (`Delegate=yes`).
//!   Creating cgroups anywhere else breaks systemd's single-writer rule (systemd may
//!   move or kill what it finds there), so the agent refuses to start when its own
//!   cgroup is not delegated.
//!   - With systemd ≥ 254 (`DelegateSubgroup=agent`) the agent starts in the leaf
//!     `wfcg.service/agent`: the tree is `wfcg.service` itself.
//!   - Before 254 systemd starts the agent in `wfcg.service` itself, and will start
//!     it there again on `systemctl restart`, which the kernel refuses (EBUSY, the
//!     no-internal-processes rule) once controllers are enabled in that cgroup for
//!     the runs' limits. So the runs go into a delegated scope beside the service,
//!     `wfcg-runs.scope` (created with `systemd-run --scope -p Delegate=yes`, held
//!     open by `wfcg hold` in its leaf `holder`), and the agent stays where systemd
//!     put it.
//! - otherwise (no systemd, or systemd installed but not PID 1): `<cgroup2 mount>/wfcg`.
//!
//! systemd marks a delegated cgroup with the extended attribute
//! `trusted.delegate=1` (and `user.delegate=1` from systemd 253 on).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroup;

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

/// The scope that holds the runs when systemd starts the agent in its service's cgroup.
pub const RUNS_SCOPE: &str = "wfcg-runs.scope";

/// Where the tree goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// A cgroup of the agent's own: the agent moves into its leaf `agent`.
    Own(PathBuf),
    /// The delegated scope `unit` at `path`, in `slice`; the agent stays where it is.
    Scope {
        path: PathBuf,
        unit: String,
        slice: String,
    },
}

/// Where the agent's tree goes, or why it will not create one.
pub fn decide(
    explicit: Option<&Path>,
    host: &Host,
    delegated: impl Fn(&Path) -> bool,
) -> Result<Placement, String> {
    if let Some(root) = explicit {
        return Ok(Placement::Own(root.to_path_buf()));
    }
    if !host.systemd {
        return Ok(Placement::Own(host.mount.join("wfcg")));
    }
    let own = host.mount.join(host.own.trim_start_matches('/'));
    if own.file_name().is_some_and(|n| n == "agent")
        && let Some(parent) = own.parent().filter(|p| delegated(p))
    {
        return Ok(Placement::Own(parent.to_path_buf()));
    }
    if host.own != "/"
        && delegated(&own)
        && let Some(slice_dir) = own.parent()
    {
        let slice = match slice_dir.file_name().and_then(|n| n.to_str()) {
            Some(name) if name.ends_with(".slice") => name.to_owned(),
            _ => "-.slice".to_owned(),
        };
        return Ok(Placement::Scope {
            path: slice_dir.join(RUNS_SCOPE),
            unit: RUNS_SCOPE.into(),
            slice,
        });
    }
    Err(format!(
        "systemd is PID 1 and this agent's cgroup {} is not delegated to it: wfcg will not \
         create cgroups outside a delegated subtree (systemd owns the rest of the tree). \
         Run the agent as wfcg.service (Delegate=yes; see `wfcg install-service`), or give \
         --cgroup-root/WFCG_CGROUP_ROOT to choose a place yourself",
        host.own
    ))
}

/// How long the agent waits for systemd to create the runs' scope.
const SCOPE_TIMEOUT: Duration = Duration::from_secs(15);

/// The holder's leaf in the runs' scope.
const HOLDER: &str = "holder";

/// Makes sure the delegated scope that holds the runs exists, with nothing but
/// cgroups in it (its holder in the leaf `holder`): creates it with
/// `systemd-run --scope -p Delegate=yes -- wfcg hold` when it does not.
pub fn ensure_scope(path: &Path, unit: &str, slice: &str) -> Result<(), String> {
    let ready = || {
        is_delegated(path)
            && Cgroup::new(path).procs().is_ok_and(|p| p.is_empty())
            && Cgroup::new(path.join(HOLDER))
                .procs()
                .is_ok_and(|p| !p.is_empty())
    };
    if ready() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find wfcg itself: {e}"))?;
    let mut cmd = Command::new("systemd-run");
    cmd.args(["--scope", "--quiet", "--unit", unit, "--slice", slice])
        .args(["--description", "wfcg runs (held open by wfcg hold)"])
        .args(["--property", "Delegate=yes", "--"])
        .arg(exe)
        .arg("hold")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::process::setsid_before_exec(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run systemd-run to create {unit}: {e}"))?;
    let deadline = Instant::now() + SCOPE_TIMEOUT;
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "systemd-run --scope --unit {unit} exited ({status}) before the scope was ready"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the scope {unit} was not ready at {} within {}s",
                path.display(),
                SCOPE_TIMEOUT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The holder lives on; reap it should it ever end (the agent never waits on -1).
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// `wfcg hold`: keeps the runs' scope open. Moves itself into the scope's leaf
/// `holder` (no process may stay in a cgroup whose controllers are enabled for
/// its children), then sleeps until killed.
pub fn hold() -> Result<(), String> {
    let host = Host::current().map_err(|e| e.to_string())?;
    let leaf = Cgroup::new(
        host.mount
            .join(host.own.trim_start_matches('/'))
            .join(HOLDER),
    );
    leaf.create().map_err(|e| e.to_string())?;
    leaf.add_process(std::process::id() as i32)
        .map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
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
            Ok(Placement::Own("/x/y".into()))
        );
    }

    #[test]
    fn without_systemd_as_pid_1_the_root_is_below_the_mount() {
        let h = host("/", false);
        assert_eq!(
            decide(None, &h, |_| false),
            Ok(Placement::Own("/sys/fs/cgroup/wfcg".into()))
        );
    }

    #[test]
    fn with_delegate_subgroup_the_root_is_the_service_cgroup() {
        let h = host("/system.slice/wfcg.service/agent", true);
        assert_eq!(
            decide(None, &h, |p| p == Path::new(SERVICE)),
            Ok(Placement::Own(SERVICE.into()))
        );
    }

    #[test]
    fn started_in_the_service_cgroup_itself_the_runs_go_to_a_scope_beside_it() {
        let h = host("/system.slice/wfcg.service", true);
        assert_eq!(
            decide(None, &h, |p| p == Path::new(SERVICE)),
            Ok(Placement::Scope {
                path: "/sys/fs/cgroup/system.slice/wfcg-runs.scope".into(),
                unit: RUNS_SCOPE.into(),
                slice: "system.slice".into(),
            })
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
