//! Who created each git lock: a fanotify group reporting `FAN_CREATE` and
//! `FAN_MOVED_TO` with the directory's file handle and the entry's name
//! (`FAN_REPORT_DFID_NAME`, Linux ≥ 5.9) on every filesystem an owner (a run)
//! registered, from before the owner's processes start. For each lock-named
//! entry (see [`gitlocks::is_lock_name`]) the creating process's cgroup is read
//! at once (`/proc/<pid>/cgroup`) and mapped to an owner by the caller's
//! function; the last creation of each name in each directory is remembered.
//! A lock is then [`Creator::Run`] when the owner's own process created it,
//! [`Creator::Other`] when the creation was watched and was someone else's (or
//! no creation of it was seen since the owner registered), and
//! [`Creator::Unknown`] when the evidence is missing: the filesystem not
//! watched for that owner, events lost (queue overflow), or the creator gone
//! before its cgroup could be read.
//!
//! fanotify needs CAP_SYS_ADMIN; marks are per filesystem (`FAN_MARK_FILESYSTEM`)
//! and removed when no owner uses the filesystem any more. Nothing here acts on
//! a file: it only reads. A leaf module: owners are names it is given.
//!
//! See fanotify(7), fanotify_init(2), fanotify_mark(2), open_by_handle_at(2).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use rustix::fs::{AtFlags, FileType};

use crate::gitlocks::{self, Creator, LockFile};
use crate::sys::fd::MAX_HANDLE_SZ;

/// At most this many creations are remembered; past it the evidence is
/// dropped and counted as lost (every owner registered falls back).
const MAX_ENTRIES: usize = 65_536;

/// The filesystems watched (`statfs` f_type, from linux/magic.h): local ones,
/// whose file handles the kernel decodes without asking anyone. A FUSE server or
/// a network filesystem could make a lookup by handle wait: never watched.
const WATCHED_FILESYSTEMS: [(i64, &str); 7] = [
    (0xEF53, "ext2/3/4"),
    (0x5846_5342, "xfs"),
    (0x9123_683E, "btrfs"),
    (0x0102_1994, "tmpfs"),
    (0xF2F5_2010, "f2fs"),
    (0x794C_7630, "overlayfs"),
    (0x2FC1_2FC1, "zfs"),
];

/// Maps a cgroup (as `/proc/<pid>/cgroup` names it) to the owner it belongs to.
pub type OwnerOf = Box<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The watch: one fanotify group for the whole agent.
pub struct LockWatch {
    group: OwnedFd,
    proc_root: PathBuf,
    owner_of: OwnerOf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The filesystems marked, by fsid.
    mounts: HashMap<u64, Mount>,
    owners: HashMap<String, Registration>,
    entries: HashMap<Key, Entry>,
    /// How many times events were lost (queue overflow, too many entries).
    losses: u64,
    buf: Vec<u8>,
}

/// A marked filesystem: a directory on it (for `open_by_handle_at`), its
/// device, and how many owners use it.
struct Mount {
    fd: OwnedFd,
    dev: u64,
    users: usize,
}

struct Registration {
    fsids: Vec<u64>,
    devs: Vec<u64>,
    /// [`State::losses`] when the owner registered.
    losses: u64,
}

/// A directory (device, inode) and a name in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    dev: u64,
    dir: u64,
    name: Vec<u8>,
}

/// The last creation of a lock: by an owner's process, or by one that could
/// not be looked at (`None`). A creation by anyone else leaves no entry.
#[derive(Debug, Clone)]
struct Entry {
    owner: Option<String>,
    path: PathBuf,
    ino: u64,
}

/// One fanotify event with its directory handle and name.
#[derive(Debug, PartialEq, Eq)]
struct Event<'a> {
    mask: u64,
    pid: i32,
    fsid: u64,
    /// `struct file_handle`: `handle_bytes`, `handle_type` and the handle.
    handle: &'a [u8],
    name: &'a [u8],
}

/// The events in one read of a `FAN_REPORT_DFID_NAME` group; malformed ones skipped.
fn parse(buf: &[u8]) -> Vec<Event<'_>> {
    let u16_at = |b: &[u8], at: usize| {
        b.get(at..at + 2)
            .map(|s| u16::from_ne_bytes([s[0], s[1]]) as usize)
    };
    let u32_at = |b: &[u8], at: usize| {
        b.get(at..at + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let mut out = Vec::new();
    let mut rest = buf;
    while let Some(len) = u32_at(rest, 0).map(|l| l as usize) {
        let (Some(event), Some(meta_len)) = (rest.get(..len), u16_at(rest, 6)) else {
            break;
        };
        if len < 24 {
            break;
        }
        rest = &rest[len..];
        let mask = event
            .get(8..16)
            .map_or(0, |s| u64::from_ne_bytes(s.try_into().unwrap_or_default()));
        let pid = u32_at(event, 20).unwrap_or(0) as i32;
        let info = event.get(meta_len..).unwrap_or_default();
        // header (type, pad, len), fsid (2 × i32), struct file_handle, name.
        let parsed = (|| {
            if *info.first()? != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
                return None;
            }
            let info = info.get(..u16_at(info, 2)?)?;
            let fsid = u64::from(u32_at(info, 4)?) | (u64::from(u32_at(info, 8)?) << 32);
            let bytes = u32_at(info, 12)? as usize;
            if bytes > MAX_HANDLE_SZ {
                return None;
            }
            let handle = info.get(12..20 + bytes)?;
            let name = info.get(20 + bytes..)?;
            let name = &name[..name.iter().position(|&b| b == 0)?];
            Some((fsid, handle, name))
        })();
        match parsed {
            Some((fsid, handle, name)) => out.push(Event {
                mask,
                pid,
                fsid,
                handle,
                name,
            }),
            // An overflow carries no information record.
            None => out.push(Event {
                mask,
                pid,
                fsid: 0,
                handle: &[],
                name: &[],
            }),
        }
    }
    out
}

/// Opens the directory a file handle names, `O_PATH`, on the filesystem of `mount`.
fn open_by_handle(mount: &OwnedFd, handle: &[u8]) -> Option<OwnedFd> {
    crate::sys::fd::open_dir_by_handle(mount, handle)
}

/// The path of an open fd, as this process sees it.
fn fd_path(fd: &OwnedFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

impl LockWatch {
    /// A new fanotify group (CAP_SYS_ADMIN, Linux ≥ 5.9 for `FAN_REPORT_DFID_NAME`).
    pub fn new(proc_root: &Path, owner_of: OwnerOf) -> Result<LockWatch, String> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        let group = crate::sys::fanotify::init(flags, libc::O_RDONLY as libc::c_uint)
            .map_err(|e| format!("fanotify_init(FAN_REPORT_DFID_NAME): {e}"))?;
        Ok(LockWatch {
            group,
            proc_root: proc_root.to_path_buf(),
            owner_of,
            state: Mutex::new(State::default()),
        })
    }

    /// Reads events as they come, on a thread of its own, for as long as the
    /// process lives: a creator's cgroup is read while it is still alive.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<()> {
        let watch = Arc::clone(self);
        std::thread::Builder::new()
            .name("lockwatch".into())
            .spawn(move || {
                loop {
                    let mut fds = [rustix::event::PollFd::new(
                        &watch.group,
                        rustix::event::PollFlags::IN,
                    )];
                    if rustix::event::poll(&mut fds, None).is_ok() {
                        watch.sync();
                    }
                }
            })
            .map(drop)
    }

    /// Starts watching for `owner` the filesystems of the directories `dirs`
    /// (opened by the caller, read-only): from now on, the locks its processes
    /// create there are known as its. The filesystems that cannot be watched
    /// (no file handles: some FUSE and network filesystems) are named in the error;
    /// the others are watched all the same.
    pub fn register(&self, owner: &str, dirs: &[OwnedFd]) -> Result<(), String> {
        let mut st = self.state.lock();
        let mut reg = Registration {
            fsids: Vec::new(),
            devs: Vec::new(),
            losses: st.losses,
        };
        let mut errors = Vec::new();
        for dir in dirs {
            let ids = rustix::fs::fstatvfs(dir)
                .and_then(|vfs| Ok((vfs.f_fsid, rustix::fs::fstat(dir)?.st_dev)));
            let (fsid, dev) = match ids {
                Ok(ids) => ids,
                Err(e) => {
                    errors.push(e.to_string());
                    continue;
                }
            };
            if reg.fsids.contains(&fsid) {
                continue;
            }
            #[allow(clippy::unnecessary_cast)] // c_long elsewhere
            let kind = rustix::fs::fstatfs(dir).map(|f| f.f_type as i64);
            if !kind.is_ok_and(|k| WATCHED_FILESYSTEMS.iter().any(|(m, _)| *m == k)) {
                errors.push(format!(
                    "a filesystem of type {:#x} (watched: {})",
                    kind.unwrap_or(0),
                    WATCHED_FILESYSTEMS.map(|(_, n)| n).join(", ")
                ));
                continue;
            }
            if let Some(m) = st.mounts.get_mut(&fsid) {
                m.users += 1;
            } else {
                if let Err(e) = self.mark(libc::FAN_MARK_ADD, dir) {
                    errors.push(format!("fanotify_mark: {e}"));
                    continue;
                }
                let Ok(fd) = rustix::io::fcntl_dupfd_cloexec(dir, 0) else {
                    continue;
                };
                st.mounts.insert(fsid, Mount { fd, dev, users: 1 });
            }
            reg.fsids.push(fsid);
            reg.devs.push(dev);
        }
        if let Some(old) = st.owners.insert(owner.to_string(), reg) {
            self.release(&mut st, &old);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn mark(&self, flags: libc::c_uint, dir: &OwnedFd) -> std::io::Result<()> {
        crate::sys::fanotify::mark(
            &self.group,
            flags | libc::FAN_MARK_FILESYSTEM,
            libc::FAN_CREATE | libc::FAN_MOVED_TO,
            dir,
        )
    }

    /// The filesystems of a registration no longer used for it: unmarked when
    /// no owner uses them any more.
    fn release(&self, st: &mut State, reg: &Registration) {
        for fsid in &reg.fsids {
            let Some(m) = st.mounts.get_mut(fsid) else {
                continue;
            };
            m.users -= 1;
            if m.users == 0
                && let Some(m) = st.mounts.remove(fsid)
            {
                let _ = self.mark(libc::FAN_MARK_REMOVE, &m.fd);
                st.entries.retain(|k, _| k.dev != m.dev);
            }
        }
    }

    /// Forgets `owner` (its run ended and its locks were dealt with).
    pub fn forget(&self, owner: &str) {
        let mut st = self.state.lock();
        if let Some(reg) = st.owners.remove(owner) {
            self.release(&mut st, &reg);
        }
        st.entries.retain(|_, e| e.owner.as_deref() != Some(owner));
    }

    /// Reads the events queued so far.
    pub fn sync(&self) {
        let mut st = self.state.lock();
        self.drain(&mut st);
    }

    fn drain(&self, st: &mut State) {
        let mut buf = std::mem::take(&mut st.buf);
        buf.resize(64 * 1024, 0);
        loop {
            match rustix::io::read(self.group.as_fd(), &mut buf[..]) {
                Ok(0) => break,
                Ok(n) => {
                    for event in parse(&buf[..n]) {
                        self.take(st, &event);
                    }
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => {
                    tracing::warn!("reading lock creations (fanotify): {e}");
                    break;
                }
            }
        }
        st.buf = buf;
    }

    /// Records one event.
    fn take(&self, st: &mut State, event: &Event) {
        if event.mask & libc::FAN_Q_OVERFLOW != 0 {
            tracing::warn!(
                "lock creations lost (fanotify queue overflow): the runs now live fall back \
                 to the working-directory rule for their git locks"
            );
            st.losses += 1;
            st.entries.clear();
            return;
        }
        let Ok(name) = std::str::from_utf8(event.name) else {
            return;
        };
        if !gitlocks::is_lock_name(name) {
            return;
        }
        let Some(mount) = st.mounts.get(&event.fsid) else {
            return;
        };
        let Some(dir) = open_by_handle(&mount.fd, event.handle) else {
            return;
        };
        let Ok(dir_st) = rustix::fs::fstat(&dir) else {
            return;
        };
        let key = Key {
            dev: dir_st.st_dev,
            dir: dir_st.st_ino,
            name: event.name.to_vec(),
        };
        // Read first: the creator may exit at any moment.
        let creator = (event.pid > 0)
            .then(|| crate::cgroup::process_cgroup(&self.proc_root, event.pid))
            .flatten()
            .map(|cg| (self.owner_of)(&cg));
        let file = rustix::fs::statat(&dir, event.name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .filter(|s| FileType::from_raw_mode(s.st_mode) == FileType::RegularFile);
        let (Some(file), Some(path)) = (file, fd_path(&dir)) else {
            // Gone already (git status takes and drops index.lock in a moment).
            st.entries.remove(&key);
            return;
        };
        let owner = match creator {
            // Someone outside every owner: no entry.
            Some(None) => {
                st.entries.remove(&key);
                return;
            }
            Some(Some(owner)) => Some(owner),
            None => None,
        };
        if st.entries.len() >= MAX_ENTRIES && !st.entries.contains_key(&key) {
            tracing::warn!(
                "more than {MAX_ENTRIES} lock creations remembered: forgotten; the runs now \
                 live fall back to the working-directory rule for their git locks"
            );
            st.losses += 1;
            st.entries.clear();
        }
        st.entries.insert(
            key,
            Entry {
                owner,
                path: path.join(name),
                ino: file.st_ino,
            },
        );
    }

    /// Who created each of `locks`, for `owner`, from the events up to now.
    pub fn creators(&self, owner: &str, locks: &[LockFile]) -> Vec<Creator> {
        let mut st = self.state.lock();
        self.drain(&mut st);
        locks.iter().map(|l| st.creator(owner, l)).collect()
    }

    /// The locks `owner`'s processes created that are still there (the same
    /// file: device and inode).
    pub fn created_by(&self, owner: &str) -> Vec<LockFile> {
        let mut st = self.state.lock();
        self.drain(&mut st);
        st.entries
            .iter()
            .filter(|(_, e)| e.owner.as_deref() == Some(owner))
            .filter_map(|(k, e)| {
                let s =
                    rustix::fs::statat(rustix::fs::CWD, &e.path, AtFlags::SYMLINK_NOFOLLOW).ok()?;
                (s.st_dev == k.dev && s.st_ino == e.ino).then(|| LockFile {
                    path: e.path.clone(),
                    dev: s.st_dev,
                    ino: s.st_ino,
                    ctime: std::time::SystemTime::UNIX_EPOCH,
                })
            })
            .collect()
    }
}

impl State {
    fn creator(&self, owner: &str, lock: &LockFile) -> Creator {
        let Some(reg) = self.owners.get(owner) else {
            return Creator::Unknown;
        };
        if reg.losses != self.losses || !reg.devs.contains(&lock.dev) {
            return Creator::Unknown;
        }
        let (Some(parent), Some(name)) = (lock.path.parent(), lock.path.file_name()) else {
            return Creator::Unknown;
        };
        let Some(dir) = gitlocks::open_dir(parent)
            .ok()
            .and_then(|d| rustix::fs::fstat(d).ok())
        else {
            return Creator::Unknown;
        };
        let key = Key {
            dev: dir.st_dev,
            dir: dir.st_ino,
            name: std::os::unix::ffi::OsStrExt::as_bytes(name).to_vec(),
        };
        match self.entries.get(&key) {
            // No creation by an owner's process seen since `owner` registered.
            None => Creator::Other,
            Some(e) if e.ino != lock.ino => Creator::Unknown,
            Some(Entry { owner: None, .. }) => Creator::Unknown,
            Some(Entry { owner: Some(o), .. }) if o == owner => Creator::Run,
            Some(_) => Creator::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A watch whose every process belongs to `owner` (`Some`) or to nobody.
    fn watch(owner: Option<&'static str>) -> LockWatch {
        LockWatch::new(
            Path::new("/proc"),
            Box::new(move |_| owner.map(str::to_string)),
        )
        .unwrap()
    }

    fn lock(path: &Path) -> LockFile {
        let st = rustix::fs::stat(path).unwrap();
        LockFile {
            path: path.to_path_buf(),
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn parses_an_event_with_its_directory_handle_and_name() {
        let mut buf = Vec::new();
        let info_len: u16 = 4 + 8 + 8 + 8 + 11;
        buf.extend(((24 + info_len) as u32).to_ne_bytes());
        buf.extend([3u8, 0]);
        buf.extend(24u16.to_ne_bytes());
        buf.extend(libc::FAN_CREATE.to_ne_bytes());
        buf.extend((-1i32).to_ne_bytes());
        buf.extend(4242i32.to_ne_bytes());
        buf.extend([libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0]);
        buf.extend(info_len.to_ne_bytes());
        buf.extend(7u32.to_ne_bytes());
        buf.extend(9u32.to_ne_bytes());
        buf.extend(8u32.to_ne_bytes());
        buf.extend(1i32.to_ne_bytes());
        buf.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        buf.extend(b"index.lock\0");
        let events = parse(&buf);
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(
            (e.pid, e.fsid, e.name),
            (4242, 7 | (9 << 32), &b"index.lock"[..])
        );
        assert_eq!(e.handle.len(), 16);
        // Cut anywhere: never a panic, never an event read past the end.
        for cut in 0..buf.len() {
            assert!(parse(&buf[..cut]).len() <= 1);
        }
        assert!(parse(&[0xff; 40]).is_empty());
    }

    /// The owner's process creates a lock: it is the owner's; for another
    /// owner, and for a watch that sees nobody's process, it is not.
    #[test]
    fn a_lock_is_its_creators() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let git = tmp.path().join(".git");
        std::fs::create_dir_all(&git).unwrap();
        let mine = watch(Some("r1"));
        let nobody = watch(None);
        let dir = || gitlocks::open_dir(tmp.path()).unwrap();
        mine.register("r1", &[dir()]).unwrap();
        mine.register("r2", &[dir()]).unwrap();
        nobody.register("r1", &[dir()]).unwrap();
        let path = git.join("index.lock");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(": > {}; exec sleep 100", path.display()))
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let l = lock(&path);
        assert_eq!(
            mine.creators("r1", std::slice::from_ref(&l)),
            [Creator::Run]
        );
        assert_eq!(
            mine.creators("r2", std::slice::from_ref(&l)),
            [Creator::Other]
        );
        assert_eq!(
            mine.creators("r3", std::slice::from_ref(&l)),
            [Creator::Unknown]
        );
        assert_eq!(
            nobody.creators("r1", std::slice::from_ref(&l)),
            [Creator::Other]
        );
        assert_eq!(mine.created_by("r1"), std::slice::from_ref(&l));
        // Replaced by someone else's: no longer the owner's.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, "").unwrap();
        let replaced = lock(&path);
        assert_eq!(
            nobody.creators("r1", std::slice::from_ref(&replaced)),
            [Creator::Other]
        );
        mine.forget("r1");
        assert_eq!(mine.creators("r1", &[replaced]), [Creator::Unknown]);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
