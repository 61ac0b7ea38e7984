//! Files on paths a user can influence (a run's directory, its TMPDIR, its
//! workspace), touched by the root agent the way SECURITY.md requires:
//!
//! - with the user's own filesystem credentials ([`as_user`]: setfsuid(2),
//!   setfsgid(2) and the user's supplementary groups, on the calling thread only),
//!   so nothing can be done through such a path that the user could not do;
//! - without following a symlink anywhere in the user's part of the path
//!   (`openat2(2)` with `RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, and
//!   `O_NOFOLLOW` for the last component, relative to a directory fd);
//! - non-blocking and size-limited (`O_NONBLOCK`, regular files only), so a FIFO or
//!   `/dev/zero` planted by the user cannot hang or exhaust the agent;
//! - a file read or written by name never on another mount (`RESOLVE_NO_XDEV`), so
//!   a file system the user mounted over it (FUSE, with `fusermount3`) is refused
//!   before it is asked anything.
//!
//! A leaf: it knows nothing of runs or the agent.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

/// Filesystem credentials to act with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cred {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Cred {
    /// A user's credentials as a login would give them: the uid, its primary group
    /// and its supplementary groups from the group database (`getgrouplist(3)`).
    /// A uid NSS does not know gets `nogroup` (65534) and no other group.
    pub fn of_uid(uid: u32) -> Cred {
        match crate::users::gids_of_uid(uid) {
            Some((gid, groups)) => Cred { uid, gid, groups },
            None => Cred {
                uid,
                gid: 65534,
                groups: Vec::new(),
            },
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }
}

/// Puts the thread's filesystem credentials back, also when the closure panics.
struct Restore {
    groups: Vec<rustix::process::Gid>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        crate::sys::creds::restore_root_fs_ids();
        if let Err(e) = rustix::thread::set_thread_groups(&self.groups) {
            // Leaving the thread with the user's groups would be wrong on later work.
            panic!("cannot restore the agent thread's groups: {e}");
        }
    }
}

/// Runs `f` on this thread with `cred` as its filesystem credentials (fsuid, fsgid,
/// supplementary groups), then restores root's. Root's own credentials are used
/// as they are. `f` must not hand work to other threads: they keep root's.
pub fn as_user<T>(cred: &Cred, f: impl FnOnce() -> T) -> io::Result<T> {
    if cred.is_root() {
        return Ok(f());
    }
    let groups = rustix::process::getgroups()?;
    let user_groups: Vec<_> = cred
        .groups
        .iter()
        .map(|&g| rustix::process::Gid::from_raw(g))
        .collect();
    rustix::thread::set_thread_groups(&user_groups)?;
    let restore = Restore { groups };
    // Only this thread's filesystem ids change, and `restore` puts them back on
    // every path out.
    let (gid_now, uid_now) = crate::sys::creds::set_fs_ids(cred.uid, cred.gid);
    if uid_now != cred.uid || gid_now != cred.gid {
        return Err(io::Error::other(format!(
            "cannot take the filesystem credentials of uid {} gid {}",
            cred.uid, cred.gid
        )));
    }
    let out = f();
    drop(restore);
    Ok(out)
}

const NO_LINKS: ResolveFlags = ResolveFlags::NO_SYMLINKS.union(ResolveFlags::NO_MAGICLINKS);
/// A name in a directory: no symlink, no `..` out of it, no other mount.
const ONE_NAME: ResolveFlags = NO_LINKS
    .union(ResolveFlags::BENEATH)
    .union(ResolveFlags::NO_XDEV);

/// Opens the directory `path` (absolute) without following a symlink in any of its
/// components (`openat2(2)` with `RESOLVE_NO_SYMLINKS`).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        rustix::fs::CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        NO_LINKS,
    )?)
}

/// Opens the directory `rel` below the directory `dir`, staying beneath it and
/// following no symlink (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`).
#[cfg(test)]
pub fn open_dir_beneath(dir: impl AsFd, rel: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat2(
        dir,
        rel,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        NO_LINKS | ResolveFlags::BENEATH,
    )?)
}

fn regular(fd: &OwnedFd, name: &str) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name} is not a regular file"),
        ));
    }
    Ok(())
}

/// Opens the regular file `name` in `dir` for reading: never through a symlink
/// or onto another mount, never a FIFO or device (opened non-blocking, then
/// refused).
fn open_regular(dir: impl AsFd, name: &str) -> io::Result<std::fs::File> {
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
        ONE_NAME,
    )?;
    regular(&fd, name)?;
    Ok(fd.into())
}

/// Reads the regular file `name` in `dir` (see [`open_regular`]), at most `max`
/// bytes: a larger file is an error.
pub fn read_at(dir: impl AsFd, name: &str, max: usize) -> io::Result<Vec<u8>> {
    let out = read_head_at(dir, name, max + 1)?;
    if out.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{name} is larger than {max} bytes"),
        ));
    }
    Ok(out)
}

/// The first `n` bytes (or fewer) of the regular file `name` in `dir`.
pub fn read_head_at(dir: impl AsFd, name: &str, n: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    open_regular(dir, name)?
        .take(n as u64)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Writes `bytes` to the file `name` in `dir`, created with `mode` or truncated;
/// never through a symlink or onto another mount, never into a FIFO, device or
/// other non-regular file.
pub fn write_at(dir: impl AsFd, name: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
    // No O_TRUNC at open: a non-regular file is refused before anything is changed.
    let fd = rustix::fs::openat2(
        dir,
        name,
        OFlags::WRONLY
            | OFlags::CREATE
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC
            | OFlags::NOCTTY,
        Mode::from_raw_mode(mode),
        ONE_NAME,
    )?;
    regular(&fd, name)?;
    rustix::fs::ftruncate(&fd, 0)?;
    std::fs::File::from(fd).write_all(bytes)
}

/// Whether the directory open as `dir` is a mount point: its mount differs from its
/// parent's (`statx(2)` mount ids), or it is `/`.
pub fn is_mount_point(dir: impl AsFd) -> io::Result<bool> {
    let here = rustix::fs::statx(&dir, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?;
    let parent = rustix::fs::statx(&dir, "..", AtFlags::SYMLINK_NOFOLLOW, StatxFlags::MNT_ID)?;
    let same_inode = here.stx_ino == parent.stx_ino
        && here.stx_dev_major == parent.stx_dev_major
        && here.stx_dev_minor == parent.stx_dev_minor;
    Ok(same_inode || here.stx_mnt_id != parent.stx_mnt_id)
}

/// The owner of the open file `fd`.
pub fn owner(fd: impl AsFd) -> io::Result<u32> {
    Ok(rustix::fs::fstat(fd)?.st_uid)
}

/// Why the directory at `path` may not be removed on behalf of `cred`, if it may
/// not: it must be reached without symlinks, be a directory `cred` owns (root may
/// remove any), and be neither `/`, a mount point nor a home directory (`homes`).
pub fn removal_problem(path: &Path, cred: &Cred, homes: &[std::path::PathBuf]) -> Option<String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Some(format!("{shown} is not an absolute path"));
    }
    if path.parent().is_none() {
        return Some("the root directory is never removed".into());
    }
    let dir = match open_dir(path) {
        Ok(d) => d,
        Err(e) => {
            return Some(format!(
                "{shown}: {e} (a directory reached without symlinks is needed)"
            ));
        }
    };
    match owner(&dir) {
        Ok(uid) if uid == cred.uid || cred.is_root() => {}
        Ok(uid) => {
            return Some(format!(
                "{shown} belongs to uid {uid}, not to the run's owner (uid {})",
                cred.uid
            ));
        }
        Err(e) => return Some(format!("{shown}: {e}")),
    }
    match is_mount_point(&dir) {
        Ok(false) => {}
        Ok(true) => return Some(format!("{shown} is a mount point")),
        Err(e) => return Some(format!("{shown}: {e}")),
    }
    if homes.iter().any(|h| h == path) {
        return Some(format!("{shown} is a home directory"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_only_regular_files_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let fd = open_dir(dir.path()).unwrap();
        write_at(&fd, "a", b"hello", 0o600).unwrap();
        assert_eq!(read_at(&fd, "a", 5).unwrap(), b"hello");
        assert!(read_at(&fd, "a", 4).is_err(), "over the size limit");
        write_at(&fd, "a", b"hi", 0o600).unwrap();
        assert_eq!(read_at(&fd, "a", 100).unwrap(), b"hi", "truncated first");

        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("link")).unwrap();
        assert!(write_at(&fd, "link", b"x", 0o600).is_err());
        assert!(read_at(&fd, "link", 100).is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");

        rustix::fs::mknodat(&fd, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let err = read_at(&fd, "fifo", 100).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(write_at(&fd, "fifo", b"x", 0o600).is_err());
    }

    #[test]
    fn symlinked_directories_are_not_entered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        assert!(open_dir(&dir.path().join("link")).is_err());
        assert!(open_dir(&dir.path().join("link/.")).is_err());
        let top = open_dir(dir.path()).unwrap();
        assert!(open_dir_beneath(&top, Path::new("link")).is_err());
        assert!(open_dir_beneath(&top, Path::new("../")).is_err());
        assert!(open_dir_beneath(&top, Path::new("real")).is_ok());
    }

    #[test]
    fn removal_refuses_the_root_mounts_homes_and_others_directories() {
        let root = Cred::of_uid(0);
        assert!(removal_problem(Path::new("/"), &root, &[]).is_some());
        assert!(
            removal_problem(Path::new("/proc"), &root, &[]).is_some(),
            "a mount point"
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(removal_problem(dir.path(), &root, &[]), None);
        let homes = vec![dir.path().to_path_buf()];
        assert!(removal_problem(dir.path(), &root, &homes).is_some());
        let nobody = Cred::of_uid(65534);
        let problem = removal_problem(dir.path(), &nobody, &[]).unwrap();
        assert!(problem.contains("belongs to uid 0"), "{problem}");
    }
}
