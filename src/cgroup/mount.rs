//! Where cgroup2 is mounted, and which cgroup a process is in.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// Finds the cgroup2 mount point in the text of `/proc/self/mountinfo`.
///
/// On hybrid hosts it is `/sys/fs/cgroup/unified`, on pure v2 hosts `/sys/fs/cgroup`.
pub fn parse_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "36 35 98:0 / /sys/fs/cgroup rw,relatime shared:1 - cgroup2 cgroup2 rw"
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup2 mount of this host, from `/proc/self/mountinfo`, read until
/// found once. The mount table grows with every mount on the host (each live
/// run's TMPDIR is one): at 10,000 runs one read costs milliseconds, so it is
/// not read again for every start.
pub fn cgroup2_mount() -> Result<PathBuf> {
    static MOUNT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(mount) = MOUNT.get() {
        return Ok(mount.clone());
    }
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.into(),
        source,
    })?;
    let mount = parse_cgroup2_mount(&text).ok_or(Error::NoCgroup2)?;
    Ok(MOUNT.get_or_init(|| mount).clone())
}

/// The cgroup2 mount of this host, read once.
pub(super) fn host_mount() -> Option<&'static Path> {
    static MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    MOUNT.get_or_init(|| cgroup2_mount().ok()).as_deref()
}

/// Whether the cgroup `rel` (relative to the cgroup2 mount `mount`, as
/// `/proc/<pid>/cgroup` names it) is `cg` or below it. The whole path is
/// compared, component by component: a run named `user.slice` does not hold
/// the processes of `/user.slice`.
pub fn within(mount: &Path, rel: &str, cg: &Path) -> bool {
    mount.join(rel.trim_start_matches('/')).starts_with(cg)
}

/// The cgroup path of a process relative to the cgroup2 mount, from `/proc/<pid>/cgroup`
/// (the `0::` line). `None` when the process is gone.
pub fn process_cgroup(proc_root: &Path, pid: i32) -> Option<String> {
    let text =
        crate::procfs::read_small_string(&proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}
