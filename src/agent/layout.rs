//! Which cgroup of a run each action uses (DESIGN.md, "One run's cgroup"):
//!
//! ```text
//! runs/<id>/             limits; the reaper watches it; removed at the end
//! runs/<id>/supervisor   `wfcg run` (relays the exit, prints why), or the keeper
//!                        of a root `wfcg run` that stayed in its own cgroup
//! runs/<id>/payload      CMD and everything it starts: frozen, scanned, signalled, killed
//! ```
//!
//! A run of the older flat layout (processes directly in `runs/<id>`, from an
//! agent before the split) and an adopted tree with no supervisor leaf are
//! handled by the same few functions, so the rest of the agent never asks.
//!
//! This file is the one place that decides which cgroup of a run holds what:
//! [`workload`] (where its processes are counted and sampled, from its record)
//! and [`payload`] (what a kill acts on, from its cgroup).

use crate::cgroup::Cgroup;
use crate::store::RunRecord;

/// The leaf `wfcg run` lives in.
pub const SUPERVISOR: &str = "supervisor";
/// The leaf the command and all it starts live in.
pub const PAYLOAD: &str = "payload";

/// `adopted` of a run whose tree was moved in (into its payload leaf).
pub const ADOPTED_TREE: &str = "pid";
/// `adopted` of a run whose cgroup was taken in place (no leaves).
pub const ADOPTED_IN_PLACE: &str = "cgroup";

/// The cgroup that holds a run's workload, where its processes are counted and
/// sampled: the run's cgroup, or the `payload` leaf below it for a tree adopted
/// from outside. Freezing and killing act on the run's cgroup, which covers it
/// (both are hierarchical in cgroup v2).
pub(crate) fn workload(rec: &RunRecord) -> Cgroup {
    let cg = Cgroup::new(&rec.cgroup_path);
    match rec.adopted.as_deref() {
        Some(ADOPTED_TREE) => cg.child(PAYLOAD),
        _ => cg,
    }
}

/// What the kill sequence freezes, scans, signals and kills: the payload leaf,
/// or the whole run when it has none (flat layout).
pub fn payload(run: &Cgroup) -> Cgroup {
    let leaf = run.child(PAYLOAD);
    if leaf.exists() { leaf } else { run.clone() }
}

/// The supervisor's leaf, when the run has one.
pub fn supervisor(run: &Cgroup) -> Option<Cgroup> {
    Some(run.child(SUPERVISOR)).filter(Cgroup::exists)
}

/// How many processes the run's payload has: its command and all it started,
/// not its supervisor (a read of the payload leaf's `cgroup.procs`; a flat or
/// adopted run's own).
pub fn process_count(run: &Cgroup) -> u32 {
    let count = |cg: &Cgroup| cg.procs().map(|p| p.len() as u32);
    // The leaf is read without asking first whether it exists (a stat, a
    // quarter of a listing of 1000 runs): a flat run has none to read.
    count(&run.child(PAYLOAD)).unwrap_or_else(|_| count(run).unwrap_or(0))
}

/// Creates the two leaves of a new run (below `run`, which holds the limits).
pub fn create_leaves(run: &Cgroup) -> crate::cgroup::Result<()> {
    run.child(SUPERVISOR).create_new()?;
    run.child(PAYLOAD).create_new()
}

/// Where a new run's caller is moved at first (a caller that starts its keeper
/// and command into the run itself is moved nowhere): the payload, so that the command
/// it forks is in the payload from its first instruction (the caller moves
/// itself to [`supervisor`] afterwards, `POST /v1/runs/{id}/supervisor`); or,
/// when it starts its command straight into the payload (`direct`, with
/// `clone3(CLONE_INTO_CGROUP)`), the supervisor leaf at once.
pub fn first_home(run: &Cgroup, direct: bool) -> Cgroup {
    if direct {
        run.child(SUPERVISOR)
    } else {
        payload(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_run_is_its_own_payload_and_has_no_supervisor_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let run = Cgroup::new(dir.path().join("r"));
        std::fs::create_dir(run.path()).unwrap();
        std::fs::write(run.path().join(crate::cgroup::CGROUP_PROCS), "").unwrap();
        assert_eq!(payload(&run), run);
        assert_eq!(supervisor(&run), None);
        create_leaves(&run).unwrap();
        for leaf in [SUPERVISOR, PAYLOAD] {
            std::fs::write(run.child(leaf).path().join(crate::cgroup::CGROUP_PROCS), "").unwrap();
        }
        assert_eq!(payload(&run), run.child(PAYLOAD));
        assert_eq!(supervisor(&run), Some(run.child(SUPERVISOR)));
    }

    #[test]
    fn the_workload_is_the_run_or_the_payload_of_an_adopted_tree() {
        let rec = |adopted: Option<&str>| RunRecord {
            cgroup_path: "/sys/fs/cgroup/wfcg/runs/run_1".into(),
            adopted: adopted.map(str::to_owned),
            ..Default::default()
        };
        let run = Cgroup::new("/sys/fs/cgroup/wfcg/runs/run_1");
        assert_eq!(workload(&rec(None)), run);
        assert_eq!(workload(&rec(Some(ADOPTED_IN_PLACE))), run);
        assert_eq!(workload(&rec(Some(ADOPTED_TREE))), run.child(PAYLOAD));
    }

    /// The count reads the payload's `cgroup.procs`, or a flat run's own.
    #[test]
    fn processes_are_counted_in_the_payload_or_in_a_flat_run() {
        let dir = tempfile::tempdir().unwrap();
        let run = Cgroup::new(dir.path().join("r"));
        std::fs::create_dir(run.path()).unwrap();
        let procs = |cg: &Cgroup, text: &str| {
            std::fs::write(cg.path().join(crate::cgroup::CGROUP_PROCS), text).unwrap()
        };
        procs(&run, "7\n8\n");
        assert_eq!(process_count(&run), 2);
        create_leaves(&run).unwrap();
        procs(&run, "");
        procs(&run.child(PAYLOAD), "10\n11\n12\n");
        assert_eq!(process_count(&run), 3);
        procs(&run.child(SUPERVISOR), "9\n");
        assert_eq!(process_count(&run), 3, "the supervisor is counted");
    }
}
