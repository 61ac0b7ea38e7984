//! Controllers and limits: enabling a controller for a cgroup's children,
//! checking and writing `memory.max`, `pids.max`, `cpu.max`, and reading usage.

use std::collections::BTreeMap;

use super::*;

/// The limit files a template may set, each belonging to the controller its name starts with.
pub const LIMIT_FILES: [&str; 4] = [MEMORY_MAX, MEMORY_HIGH, PIDS_MAX, CPU_MAX];

/// The controllers of the limit files.
pub const LIMIT_CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The controller of a limit file wfcg writes (`memory.max` → `memory`), or
/// `None` for any other file.
pub fn limit_controller(file: &str) -> Option<&'static str> {
    match file {
        MEMORY_MAX | MEMORY_HIGH => Some("memory"),
        PIDS_MAX => Some("pids"),
        CPU_MAX => Some("cpu"),
        _ => None,
    }
}

/// Checks a limit's value the way the kernel reads it: `memory.max` (and
/// `memory.high`) bytes with
/// an optional K/M/G/T/P/E suffix, `pids.max` a count, `cpu.max` a quota and an
/// optional period in µs; each may be `max` (no limit). The error says why.
pub fn check_limit(file: &str, value: &str) -> std::result::Result<(), String> {
    let v = value.trim();
    let number = |s: &str| s.parse::<u64>().ok();
    match file {
        MEMORY_MAX | MEMORY_HIGH => {
            let digits = v.trim_end_matches(|c: char| "kKmMgGtTpPeE".contains(c));
            let suffixes = v.len() - digits.len();
            if v == "max" || (suffixes <= 1 && number(digits).is_some()) {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not a size (bytes, with K, M, G or T, or \"max\")"
                ))
            }
        }
        PIDS_MAX => match (v, number(v)) {
            ("max", _) | (_, Some(_)) => Ok(()),
            _ => Err(format!("{v:?} is not a number of processes (or \"max\")")),
        },
        CPU_MAX => {
            let mut parts = v.split_whitespace();
            let quota = parts.next().unwrap_or("");
            let period = parts.next();
            let quota_ok = quota == "max" || number(quota).is_some_and(|q| q >= 1000);
            let period_ok =
                period.is_none_or(|p| number(p).is_some_and(|p| (1000..=1_000_000).contains(&p)));
            if quota_ok && period_ok && parts.next().is_none() {
                Ok(())
            } else {
                Err(format!(
                    "{v:?} is not \"QUOTA PERIOD\" in µs (quota ≥ 1000 or \"max\", \
                     period 1000..=1000000), e.g. \"200000 100000\" for 2 CPUs"
                ))
            }
        }
        other => Err(format!(
            "unknown limit {other:?} (wfcg writes {})",
            LIMIT_FILES.join(", ")
        )),
    }
}

/// Why a controller could not be made available to a cgroup's children.
#[derive(Debug)]
pub enum Unavailable {
    /// Not in the `cgroup.controllers` of this cgroup nor of any ancestor wfcg may change.
    NotEnabled {
        /// The cgroup whose children should have had it.
        path: PathBuf,
        /// Its `cgroup.controllers` is empty, as on hybrid hosts.
        none_at_all: bool,
    },
    /// Writing `cgroup.subtree_control` failed.
    Enable(Error),
}

impl Cgroup {
    /// The controllers this cgroup may use (`cgroup.controllers`).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(words(&self.read(CGROUP_CONTROLLERS)?))
    }

    /// The controllers enabled for this cgroup's children (`cgroup.subtree_control`).
    pub fn subtree_control(&self) -> Result<Vec<String>> {
        Ok(words(&self.read(CGROUP_SUBTREE_CONTROL)?))
    }

    /// Enables `controller` for this cgroup's children: writes `+controller` to
    /// `cgroup.subtree_control`, unless it is enabled already.
    pub fn enable_controller(&self, controller: &str) -> Result<()> {
        if self.subtree_control()?.iter().any(|c| c == controller) {
            return Ok(());
        }
        self.write(CGROUP_SUBTREE_CONTROL, &format!("+{controller}"))
    }

    /// Makes `controller` available to this cgroup's children: enables it in this
    /// cgroup's `cgroup.subtree_control` when it is in its `cgroup.controllers`;
    /// when it is not, first enables it in the ancestors' (at most `levels - 1`
    /// of them) where it is available. Ancestors further up are never touched.
    pub fn enable_for_children(
        &self,
        controller: &str,
        levels: usize,
    ) -> std::result::Result<(), Unavailable> {
        let available = self.controllers().map_err(Unavailable::Enable)?;
        if !available.iter().any(|c| c == controller) {
            let parent = self.parent().filter(|_| levels > 1);
            let from_above =
                parent.is_some_and(|p| p.enable_for_children(controller, levels - 1).is_ok());
            let now = if from_above {
                self.controllers().map_err(Unavailable::Enable)?
            } else {
                available
            };
            if !now.iter().any(|c| c == controller) {
                return Err(Unavailable::NotEnabled {
                    path: self.path.clone(),
                    none_at_all: now.is_empty(),
                });
            }
        }
        self.enable_controller(controller)
            .map_err(Unavailable::Enable)
    }

    /// Writes cgroup limits (`memory.max`, `pids.max`, `cpu.max`) into this cgroup
    /// where their controller is enabled for it: in the parent's
    /// `cgroup.subtree_control`, enabled there (or in the grandparent's first)
    /// when its `cgroup.controllers` allows. Returns a one-line warning for each
    /// limit skipped and why: an unknown file, a bad value, or a controller not
    /// enabled (e.g. on hybrid hosts, whose cgroup2 mount has no controllers).
    pub fn apply_limits(&self, limits: &BTreeMap<String, String>) -> Vec<String> {
        let mut warnings = Vec::new();
        for (file, value) in limits {
            let value = value.trim();
            let skipped = |why: String| format!("{file}={value} skipped: {why}");
            let Some(controller) = limit_controller(file) else {
                warnings.push(skipped(format!(
                    "unknown limit (wfcg writes {})",
                    LIMIT_FILES.join(", ")
                )));
                continue;
            };
            if let Err(e) = check_limit(file, value) {
                warnings.push(skipped(e));
                continue;
            }
            let enabled = match self.parent() {
                Some(parent) => parent.enable_for_children(controller, 2),
                None => Err(Unavailable::NotEnabled {
                    path: self.path.clone(),
                    none_at_all: true,
                }),
            };
            match enabled {
                Ok(()) => {
                    if let Err(e) = self.write(file, value) {
                        warnings.push(format!("{file}={value} not applied: {e}"));
                    }
                    // An OOM kill in the run takes the whole run, not one process of it.
                    if controller == "memory"
                        && let Err(e) = self.write(MEMORY_OOM_GROUP, "1")
                    {
                        warnings.push(format!("{MEMORY_OOM_GROUP}=1 not applied: {e}"));
                    }
                }
                Err(Unavailable::NotEnabled { path, none_at_all }) => {
                    let hint = if none_at_all {
                        "hybrid host?"
                    } else {
                        "not delegated to it"
                    };
                    warnings.push(skipped(format!(
                        "the {controller} controller is not enabled for {} ({hint})",
                        path.display()
                    )));
                }
                Err(Unavailable::Enable(e)) => warnings.push(skipped(format!(
                    "cannot enable the {controller} controller: {e}"
                ))),
            }
        }
        warnings
    }

    /// How many processes the kernel's OOM killer killed in this cgroup and below
    /// (`oom_kill` in `memory.events`); `None` without the memory controller.
    pub fn oom_kills(&self) -> Option<u64> {
        let text = self.read(MEMORY_EVENTS).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// CPU time used by the cgroup, from `usage_usec` in `cpu.stat`.
    pub fn cpu_usage_usec(&self) -> Option<u64> {
        usage_usec(&self.read(CPU_STAT).ok()?)
    }

    /// CPU time the cgroup wanted: what it used, plus the time some of its
    /// processes were runnable but waiting for a CPU (`some total` of
    /// `cpu.pressure`, where the kernel keeps pressure stall information). On a
    /// busy host a process computing gets little CPU but waits for the rest;
    /// one sleeping between retries neither uses nor waits.
    pub fn cpu_wanted_usec(&self) -> Option<u64> {
        let used = self.cpu_usage_usec()?;
        let waited = self
            .read(CPU_PRESSURE)
            .ok()
            .and_then(|t| pressure_some_total(&t))
            .unwrap_or(0);
        Some(used.saturating_add(waited))
    }
}

/// `total` (µs) of the `some` line of a pressure file (`cpu.pressure`).
pub fn pressure_some_total(pressure: &str) -> Option<u64> {
    pressure
        .lines()
        .find_map(|l| l.strip_prefix("some "))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

/// `usage_usec` of a `cpu.stat` text.
pub fn usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}
