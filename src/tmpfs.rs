//! A run's TMPDIR as a tmpfs of its own: a size limit per run, off the store's
//! filesystem, so that a run filling its TMPDIR fills only that (and its pages
//! are charged to the memory cgroup of the run that writes them).
//!
//! The run directory is a (small) tmpfs of its own too, so that a run filling it
//! fills only that, never the file system of the agent's socket (`/run`).
//!
//! At a run's end its tmpfs is [`shrink`]ed to what it holds (nothing can be
//! added to it any more), emptied by its owner, and shrunk again: a tmpfs
//! that is then empty is detached; one that still holds pages (a file deleted
//! but held open, or mapped, by a process outside the run) stays mounted
//! where it was, and what it holds ([`usage`]) is counted against its owner.
//!
//! A leaf module: `mount(2)`, `umount2(2)` and `statfs(2)` of one directory the
//! caller owns.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

/// Whether `size` is one `mount -t tmpfs -o size=` takes: bytes, with an
/// optional K, M, G or T, more than 0 (tmpfs reads `size=0` as no limit at all).
pub fn valid_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.bytes().any(|b| b != b'0')
        && size.len() - digits.len() <= 1
}

/// The bytes a [`valid_size`] stands for (K, M, G, T are powers of 1024, as
/// tmpfs reads them); `None` for anything else or what overflows a `u64`.
pub fn size_bytes(size: &str) -> Option<u64> {
    if !valid_size(size) {
        return None;
    }
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', 't', 'T']);
    let shift = match size[digits.len()..].to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        _ => 40,
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// Mounts a tmpfs of `size` on `dir` (`mount(2)`), nosuid and nodev, its root
/// owned by `uid`:`gid` with mode 0700. `dir` must be a directory no user can
/// replace (it is resolved by path).
pub fn mount(dir: &Path, size: &str, uid: u32, gid: u32) -> io::Result<()> {
    mount_with(dir, size, uid, gid, MountFlags::NOSUID | MountFlags::NODEV)
}

/// [`mount`] with the mount flags `flags` (e.g. NOEXEC as well).
pub fn mount_with(dir: &Path, size: &str, uid: u32, gid: u32, flags: MountFlags) -> io::Result<()> {
    if !valid_size(size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tmpfs size {size:?}: bytes with K, M, G or T expected"),
        ));
    }
    let data = std::ffi::CString::new(format!("size={size},mode=0700,uid={uid},gid={gid}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount("tmpfs", dir, "tmpfs", flags, Some(data.as_c_str()))?;
    Ok(())
}

/// What a tmpfs holds: the bytes of its pages, and its inodes (its root is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
    /// What it may hold: its size, and its inodes (both set at the mount or a remount).
    pub capacity: u64,
    pub inode_capacity: u64,
}

impl Usage {
    /// Nothing but its root directory.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0 && self.inodes <= 1
    }
}

/// `tmpfs` in `statfs(2)`'s `f_type`.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// What the tmpfs mounted on `dir` holds (`statfs(2)`); an error when `dir` is
/// not a tmpfs.
pub fn usage(dir: &Path) -> io::Result<Usage> {
    let st = rustix::fs::statfs(dir)?;
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    if st.f_type as i64 != TMPFS_MAGIC {
        return Err(io::Error::other(format!(
            "{} is not a tmpfs",
            dir.display()
        )));
    }
    let blocks = (st.f_blocks as u64).saturating_sub(st.f_bfree as u64);
    Ok(Usage {
        bytes: blocks.saturating_mul(st.f_bsize as u64),
        inodes: (st.f_files as u64).saturating_sub(st.f_ffree as u64),
        capacity: (st.f_blocks as u64).saturating_mul(st.f_bsize as u64),
        inode_capacity: st.f_files as u64,
    })
}

/// Whether `dir` is the root of a mount (`statx(2)`'s STATX_ATTR_MOUNT_ROOT),
/// without following a symlink or asking any file system to sync.
pub fn is_mount_root(dir: &Path) -> bool {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    rustix::fs::statx(
        rustix::fs::CWD,
        dir,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC,
        StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|st| {
        st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
            && st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
    })
}

/// Shrinks the tmpfs on `dir` to what it holds now (`mount(2)` with MS_REMOUNT:
/// its size to its pages, at least one, its inodes to those in use), so that
/// nothing can be added to it any more, by anyone holding it. Its mount flags
/// (nosuid, nodev, noexec) are kept. Returns what it holds.
/// A write racing with the remount makes the kernel refuse a size below the
/// new use: it is tried again a few times with the use read again.
pub fn shrink(dir: &Path) -> io::Result<Usage> {
    use rustix::fs::StatVfsMountFlags as St;
    let kept = rustix::fs::statvfs(dir)?.f_flag;
    let mut flags = MountFlags::empty();
    for (st, mf) in [
        (St::NOSUID, MountFlags::NOSUID),
        (St::NODEV, MountFlags::NODEV),
        (St::NOEXEC, MountFlags::NOEXEC),
        (St::RDONLY, MountFlags::RDONLY),
    ] {
        if kept.contains(st) {
            flags |= mf;
        }
    }
    let mut tries = 0;
    loop {
        let held = usage(dir)?;
        let data = std::ffi::CString::new(format!(
            "size={},nr_inodes={}",
            held.bytes.max(4096),
            held.inodes.max(1)
        ))
        .map_err(io::Error::other)?;
        match rustix::mount::mount_remount(dir, flags, data.as_c_str()) {
            Ok(()) => return Ok(held),
            Err(rustix::io::Errno::INVAL) if tries < 5 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Those of `dirs` over which a mount other than a tmpfs is stacked now. Each
/// is asked of the kernel by itself ([`stacked_over`]); those it cannot tell
/// are looked up in one read of `/proc/self/mountinfo` for all, made after this
/// call and shared with the calls at once ([`detach_stacked`] reads it again,
/// for these only).
pub fn with_stacked(dirs: &[&Path]) -> Vec<PathBuf> {
    let mut stacked = Vec::new();
    let mut unsure = Vec::new();
    for d in dirs {
        match stacked_over(d) {
            Some(false) => {}
            Some(true) => stacked.push(d.to_path_buf()),
            None => unsure.push(*d),
        }
    }
    if unsure.is_empty() {
        return stacked;
    }
    // The table has two lines a run: cleanups at once share their reads of it.
    static TOPS: crate::parallel::Fresh<HashMap<String, String>> = crate::parallel::Fresh::new();
    let top = TOPS.get(|| {
        let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
        top_mounts(&String::from_utf8_lossy(&info))
    });
    stacked.extend(
        unsure
            .into_iter()
            .filter(|d| {
                top.get(mountinfo_escaped(d).as_str())
                    .is_some_and(|fstype| fstype != "tmpfs")
            })
            .map(Path::to_path_buf),
    );
    stacked
}

/// Whether what is mounted on top at `dir` is other than a tmpfs (`Some(false)`
/// when nothing is mounted there), from a `statx(2)` of it that asks its file system
/// nothing (AT_STATX_DONT_SYNC; the mount's unique id and whether `dir` is a
/// mount root come from the VFS) and a `statmount(2)` of that mount (its
/// superblock's magic). `None` when the kernel cannot tell this way: before
/// Linux 6.8, or a file system that refuses even that to root (FUSE without
/// `allow_other` does, without asking its server).
fn stacked_over(dir: &Path) -> Option<bool> {
    stacked_at(rustix::fs::CWD, dir)
}

/// [`stacked_over`] for `path` relative to the directory `at` (`""`: `at`
/// itself, a descriptor opened with `O_PATH`).
fn stacked_at(at: impl std::os::fd::AsFd, path: &Path) -> Option<bool> {
    use rustix::fs::{AtFlags, StatxAttributes, StatxFlags};
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let empty = if path.as_os_str().is_empty() {
        AtFlags::EMPTY_PATH
    } else {
        AtFlags::empty()
    };
    let st = rustix::fs::statx(
        at,
        path,
        AtFlags::SYMLINK_NOFOLLOW | AtFlags::STATX_DONT_SYNC | empty,
        StatxFlags::from_bits_retain(libc::STATX_MNT_ID_UNIQUE),
    )
    .ok()?;
    if st.stx_mask & libc::STATX_MNT_ID_UNIQUE == 0
        || !st.stx_attributes_mask.contains(StatxAttributes::MOUNT_ROOT)
    {
        return None;
    }
    if !st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT) {
        return Some(false);
    }
    crate::sys::mount::sb_magic(st.stx_mnt_id)
        .ok()
        .map(|magic| magic != TMPFS_MAGIC)
}

/// The type of the file system mounted last (on top) at each mount point of a
/// mount table (`/proc/self/mountinfo`).
fn top_mounts(info: &str) -> HashMap<String, String> {
    let mut top = HashMap::new();
    for l in info.lines() {
        if let (Some(point), Some(fstype)) = (
            l.split(' ').nth(4),
            l.split_once(" - ").and_then(|(_, r)| r.split(' ').next()),
        ) {
            top.insert(point.to_owned(), fstype.to_owned());
        }
    }
    top
}

/// The most mounts [`detach_stacked`] detaches from one directory: a user can
/// stack one a FUSE server of theirs; past this many, what is left stays, and
/// the directory is not opened ([`open_unstacked`] refuses it).
const MAX_DETACHED: usize = 4096;

/// Detaches what is mounted over the tmpfs on `dir` (`umount2(2)` with
/// MNT_DETACH, which asks the file system nothing), one mount after the other
/// until a tmpfs (or nothing) is on top, at most [`MAX_DETACHED`]: a mount a
/// user stacked on the directory they own (a FUSE file system, with
/// `fusermount3`) would otherwise take every later look at `dir`, and one that
/// never answers would hold the looker for good. Each time the kernel is asked
/// as [`with_stacked`] does. How many were detached; `None` when another file
/// system stays on top (past [`MAX_DETACHED`], or one that cannot be detached):
/// the directory must then not be asked anything.
pub fn detach_stacked(dir: &Path) -> Option<usize> {
    let mut detached = 0;
    while !with_stacked(&[dir]).is_empty() {
        if detached == MAX_DETACHED || unmount(dir).is_err() {
            return None;
        }
        detached += 1;
    }
    Some(detached)
}

/// Opens the directory `dir` (as [`crate::userfs::open_dir`] does: no symlink
/// followed) only when what is on top of it is a tmpfs or no mount at all, and
/// without a question to any other file system: first as a path only
/// (`O_PATH`, which calls no file system's open), then the mount that path
/// reached is asked of the kernel ([`stacked_over`], for that descriptor),
/// then the directory is opened again through the descriptor (`"."`: a mount
/// stacked since is not entered). Refused when another file system is on top
/// (a user's FUSE mount over a run's directory, detached or not). Where the
/// kernel cannot tell this way, the mount table is read instead.
pub fn open_unstacked(dir: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let path = rustix::fs::openat2(
        rustix::fs::CWD,
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?;
    let stacked = match stacked_at(&path, "".as_ref()) {
        Some(stacked) => stacked,
        None => !with_stacked(&[dir]).is_empty(),
    };
    if stacked {
        return Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!(
                "a file system other than the run's tmpfs is mounted over {}",
                dir.display()
            ),
        ));
    }
    Ok(rustix::fs::openat(
        &path,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `path` as `/proc/self/mountinfo` writes it (space, tab, newline and
/// backslash as octal escapes).
fn mountinfo_escaped(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => out.extend(format!("\\{b:03o}").bytes()),
            _ => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches the tmpfs on `dir` (`umount2(2)` with MNT_DETACH: it goes at once,
/// even while a file in it is still open). Not mounted is fine.
pub fn unmount(dir: &Path) -> io::Result<()> {
    match rustix::mount::unmount(dir, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(()),
        // Not a mount point (EINVAL), or gone (ENOENT).
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_with_one_unit() {
        for ok in ["1G", "512M", "100k", "4096", "2T"] {
            assert!(valid_size(ok), "{ok}");
        }
        for bad in [
            "", "G", "1GG", "1.5G", "-1", "1G,uid=0", "50%", "max", "0", "00G",
        ] {
            assert!(!valid_size(bad), "{bad}");
            assert_eq!(size_bytes(bad), None, "{bad}");
        }
    }

    #[test]
    fn mount_points_are_escaped_as_mountinfo_writes_them() {
        assert_eq!(mountinfo_escaped(Path::new("/a b\\c")), "/a\\040b\\134c");
        assert_eq!(mountinfo_escaped(Path::new("/run/wfcg")), "/run/wfcg");
    }

    /// Needs root (mounts): a plain directory, a tmpfs, and a bind mount of
    /// another file system stacked over the tmpfs, told apart by the kernel's
    /// answer for the mount at each path, and the same as the mount table says.
    #[test]
    fn a_mount_stacked_over_a_tmpfs_is_told_without_the_mount_table() {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("t");
        std::fs::create_dir(&dir).unwrap();
        let from_table = |d: &Path| {
            let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
            top_mounts(&info)
                .get(mountinfo_escaped(d).as_str())
                .is_some_and(|fstype| fstype != "tmpfs")
        };
        assert_eq!(stacked_over(&dir), Some(false), "a plain directory");
        assert!(with_stacked(&[&dir]).is_empty());
        mount(&dir, "1M", 0, 0).unwrap();
        assert_eq!(stacked_over(&dir), Some(false), "a tmpfs");
        assert!(!from_table(&dir));
        // Another file system over it: the directory this test runs in.
        let other = std::env::current_dir().unwrap();
        rustix::mount::mount_bind(&other, &dir).unwrap();
        assert_eq!(
            stacked_over(&dir),
            Some(true),
            "a bind mount over the tmpfs"
        );
        assert!(from_table(&dir));
        assert_eq!(with_stacked(&[&dir, top.path()]), vec![dir.clone()]);
        let refused = open_unstacked(&dir).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ResourceBusy, "{refused}");
        assert_eq!(detach_stacked(&dir), Some(1));
        assert_eq!(stacked_over(&dir), Some(false), "the tmpfs again");
        open_unstacked(&dir).expect("the tmpfs opened");
        // More than a few stacked one over the other: all go.
        for _ in 0..12 {
            rustix::mount::mount_bind(&other, &dir).unwrap();
        }
        assert_eq!(detach_stacked(&dir), Some(12));
        assert_eq!(stacked_over(&dir), Some(false));
        unmount(&dir).unwrap();
        // A plain directory opens.
        open_unstacked(&dir).expect("a plain directory opened");
    }

    #[test]
    fn sizes_in_bytes_use_powers_of_1024_and_never_overflow() {
        assert_eq!(size_bytes("4096"), Some(4096));
        assert_eq!(size_bytes("1k"), Some(1024));
        assert_eq!(size_bytes("2M"), Some(2 << 20));
        assert_eq!(size_bytes("1G"), Some(1 << 30));
        assert_eq!(size_bytes("3T"), Some(3 << 40));
        assert_eq!(size_bytes("99999999999999999999"), None);
        assert_eq!(size_bytes("16777216T"), None);
    }
}
