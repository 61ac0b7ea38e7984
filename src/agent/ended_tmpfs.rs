//! The end of a run's tmpfs (its TMPDIR and its run directory), so that no
//! memory of a run outlives it uncounted.
//!
//! A tmpfs detached at once (`umount -l`) lives on, with its pages, as long as
//! anything holds it: an open file or a working directory of a process outside
//! the run, a mapping, a copy in another mount namespace. So at a run's end its
//! tmpfs is first shrunk to what it holds (nothing can be added to it any more,
//! by anyone, whatever holds it), then emptied by a short-lived process of its
//! owner's (src/walk.rs), then shrunk again. Empty, it is detached and its
//! directory removed: what still holds it holds an empty file system that cannot
//! grow. Not empty (a file deleted but held open or mapped, a directory that is
//! still someone's working directory, what the walk could not remove within its
//! budget), it stays mounted where it was, and what it holds counts against its
//! owner's `[limits] max_tmpdir_total` ([`Agent::held_tmpfs_of`]) until it is
//! empty: each look at the owner's budget lets go of those that emptied. A
//! restart of the agent takes up those it finds ([`Agent::end_left_tmpfs`]).

use std::path::{Path, PathBuf};

use super::Agent;
use crate::api::RunStatus;
use crate::userfs::Cred;
use crate::walk::{self, Budget, Removal};

/// Removes the files wfcg itself writes into the run directory `dir` (the stop
/// reason a kill wrote, the exit its supervisor left, both read by now), as its
/// `owner`, in the directory opened without following a symlink (whatever the
/// run left under those names: a directory stays, for the walk). They are all
/// such a directory usually holds, and a tmpfs left empty needs no removal
/// process.
fn drop_ended_run_files(dir: &Path, owner: &Cred) {
    let _ = crate::userfs::as_user(owner, || {
        let dir = crate::tmpfs::open_unstacked(dir)?;
        for name in [crate::api::STOP_REASON_FILE, crate::api::EXIT_STATUS_FILE] {
            let _ = rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty());
        }
        Ok::<_, std::io::Error>(())
    });
}

/// Detaches every mount a user stacked over the run's tmpfs at `path` (said
/// when there were any); `Err` when another file system stays on top: the
/// directory is then left in place and never asked anything (it may never answer).
fn uncover(run_id: &str, path: &Path) -> Result<(), String> {
    match crate::tmpfs::detach_stacked(path) {
        Some(0) => Ok(()),
        Some(n) => {
            tracing::warn!(run_id, "detached {n} mount(s) made over {}", path.display());
            Ok(())
        }
        None => Err(format!(
            "{} stays covered by a file system mounted over it that could not be \
             detached: left in place",
            path.display()
        )),
    }
}

/// What an inode of a tmpfs counts for against a budget: about what the
/// kernel keeps for it and its name.
const INODE_BYTES: u64 = 1024;

/// An ended run's tmpfs that still holds something.
#[derive(Debug, Clone)]
pub struct Held {
    pub run_id: String,
    pub path: PathBuf,
    pub bytes: u64,
}

impl Agent {
    /// Ends the tmpfs of run `run_id` at `path` (see the module's doc), owned by
    /// `owner`. A plain directory (its tmpfs could not be mounted) is removed as
    /// the owner. `Err` says what is left and why.
    pub(super) fn end_tmpfs(
        &self,
        run_id: &str,
        path: &Path,
        owner: &Cred,
        budget: &Budget,
    ) -> Result<(), String> {
        // A user's mount over it (FUSE) goes first: what follows asks the tmpfs.
        uncover(run_id, path)?;
        self.end_unstacked_tmpfs(run_id, path, owner, budget)
    }

    /// Ends a run's TMPDIR and run directory (`None`: it has none) as
    /// [`Agent::end_tmpfs`] does, the files wfcg wrote into the run directory
    /// removed first. Whether each was removed, or why not.
    pub(super) fn end_run_tmpfs(
        &self,
        run_id: &str,
        tmpdir: Option<&Path>,
        run_dir: Option<&Path>,
        owner: &Cred,
        budget: &Budget,
    ) -> [Result<(), String>; 2] {
        if let Some(dir) = run_dir
            && uncover(run_id, dir).is_ok()
        {
            drop_ended_run_files(dir, owner);
        }
        [tmpdir, run_dir].map(|dir| match dir {
            Some(d) => self.end_tmpfs(run_id, d, owner, budget),
            None => Ok(()),
        })
    }

    /// [`Agent::end_tmpfs`] once nothing is stacked over `path`.
    fn end_unstacked_tmpfs(
        &self,
        run_id: &str,
        path: &Path,
        owner: &Cred,
        budget: &Budget,
    ) -> Result<(), String> {
        if !crate::tmpfs::is_mount_root(path) {
            return walk::remove_agent_dir(path, owner, budget);
        }
        let shown = path.display();
        // First: nothing is added while it is emptied. An empty one (the usual
        // TMPDIR) needs no walk.
        let walked = match crate::tmpfs::shrink(path) {
            Ok(u) if u.is_empty() => Ok(()),
            first => {
                if let Err(e) = first {
                    tracing::warn!(run_id, "cannot shrink the tmpfs {shown}: {e}");
                }
                walk::remove_in_child(path, owner, Removal::Contents, budget)
            }
        };
        // Again: what was freed cannot be filled again.
        let held = crate::tmpfs::shrink(path).or_else(|_| crate::tmpfs::usage(path));
        match held {
            Ok(u) if !u.is_empty() => {
                self.runs
                    .budgets
                    .held
                    .lock()
                    .insert(path.to_path_buf(), (owner.uid, run_id.to_owned()));
                let why = walked.err().map(|e| format!(" ({e})")).unwrap_or_default();
                Err(format!(
                    "{shown} still holds {} bytes in {} inode(s) after its owner emptied \
                     it{why}: a file deleted but open or mapped, or a working directory, of a \
                     process outside the run; it stays mounted, shrunk so that nothing can be \
                     added, and counts against uid {}'s [limits] max_tmpdir_total until it is \
                     empty",
                    u.bytes, u.inodes, owner.uid
                ))
            }
            held => {
                if let Err(e) = &held {
                    tracing::warn!(run_id, "cannot read what the tmpfs {shown} holds: {e}");
                }
                if let Err(e) = crate::tmpfs::unmount(path) {
                    return Err(format!("cannot unmount the tmpfs {shown}: {e}"));
                }
                self.runs.budgets.held.lock().remove(path);
                // Its directory goes whether or not the walk emptied it all.
                let removed = walk::remove_agent_dir(path, owner, budget);
                walked.and(removed)
            }
        }
    }

    /// The ended runs' tmpfs of user `uid` that still hold something, and how
    /// much (an inode counts as [`INODE_BYTES`]). Those found empty now are let
    /// go (detached, their directory removed).
    pub(super) fn held_tmpfs_of(&self, uid: u32) -> Vec<Held> {
        let mine: Vec<(PathBuf, String)> = self
            .runs
            .budgets
            .held
            .lock()
            .iter()
            .filter(|(_, (owner, _))| *owner == uid)
            .map(|(p, (_, id))| (p.clone(), id.clone()))
            .collect();
        if mine.is_empty() {
            // Every start asks: nothing to look at.
            return Vec::new();
        }
        let mut held = Vec::new();
        // Its root is the user's: a mount they stacked over it since goes first.
        for (path, run_id) in mine {
            if uncover(&run_id, &path).is_err() {
                continue; // never asked: it may never answer
            }
            match crate::tmpfs::usage(&path) {
                // Counted at what it may hold, not what it holds now: a holder
                // could empty it before a start and fill it again after.
                Ok(u) if !u.is_empty() => held.push(Held {
                    run_id,
                    bytes: u.capacity.max(u.bytes).saturating_add(
                        u.inode_capacity
                            .max(u.inodes)
                            .saturating_sub(1)
                            .saturating_mul(INODE_BYTES),
                    ),
                    path,
                }),
                _ => {
                    let _ = crate::tmpfs::unmount(&path);
                    let _ = std::fs::remove_dir(&path);
                    tracing::info!(
                        run_id,
                        "the tmpfs {} of the ended run is let go",
                        path.display()
                    );
                    self.runs.budgets.held.lock().remove(&path);
                }
            }
        }
        held
    }

    /// At a start of the agent: the tmpfs mounted below its TMPDIR and run
    /// directory parents whose run is not live (ended while it was away, or
    /// still held when it stopped) are ended again ([`Agent::end_tmpfs`]), as
    /// their owner (the owner of the tmpfs's root).
    pub(super) fn end_left_tmpfs(&self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let left: Vec<PathBuf> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .map(PathBuf::from)
            .filter(|m| {
                m.parent()
                    .is_some_and(|p| p == self.runs.tmp_dirs || p == self.runs.run_dirs)
            })
            .collect();
        let budget = Budget::from_env();
        for path in left {
            let Some(run_id) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let live = self
                .store()
                .get_run(run_id)
                .ok()
                .flatten()
                .is_some_and(|r| RunStatus::live().contains(&r.status));
            if live {
                continue;
            }
            if let Err(e) = uncover(run_id, &path) {
                tracing::warn!(run_id, "{e}");
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let owner = Cred::of_uid(std::os::unix::fs::MetadataExt::uid(&meta));
            if let Err(e) = self.end_tmpfs(run_id, &path, &owner, &budget) {
                tracing::warn!(run_id, "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{EXIT_STATUS_FILE, STOP_REASON_FILE};

    /// What wfcg wrote into a run directory goes, what the run made stays (a
    /// directory under one of those names, another file), and a symlink under
    /// one of them is removed as a name, never followed.
    #[test]
    fn the_files_wfcg_wrote_into_a_run_directory_go_and_nothing_else() {
        let run_dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("kept");
        std::fs::write(&target, "x").unwrap();
        std::fs::write(run_dir.path().join(STOP_REASON_FILE), "{}").unwrap();
        std::os::unix::fs::symlink(&target, run_dir.path().join(EXIT_STATUS_FILE)).unwrap();
        std::fs::write(run_dir.path().join("made-by-the-run"), "x").unwrap();
        drop_ended_run_files(
            run_dir.path(),
            &Cred::of_uid(rustix::process::getuid().as_raw()),
        );
        let mut left: Vec<String> = std::fs::read_dir(run_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["made-by-the-run"]);
        assert!(target.exists(), "the symlink was followed");

        std::fs::create_dir(run_dir.path().join(STOP_REASON_FILE)).unwrap();
        drop_ended_run_files(
            run_dir.path(),
            &Cred::of_uid(rustix::process::getuid().as_raw()),
        );
        assert!(run_dir.path().join(STOP_REASON_FILE).is_dir());
    }
}
