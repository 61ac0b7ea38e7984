//! A run's TMPDIR as a tmpfs of its own: a size limit per run, off the store's
//! filesystem, so that a run filling its TMPDIR fills only that (and its pages
//! are charged to the memory cgroup of the run that writes them).
//!
//! A leaf module: `mount(2)` and `umount2(2)` of one directory the caller owns.

use std::io;
use std::path::Path;

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
    if !valid_size(size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tmpfs size {size:?}: bytes with K, M, G or T expected"),
        ));
    }
    let data = std::ffi::CString::new(format!("size={size},mode=0700,uid={uid},gid={gid}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    rustix::mount::mount(
        "tmpfs",
        dir,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )?;
    Ok(())
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
