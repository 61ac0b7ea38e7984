//! The password and group databases through NSS (`getpwuid_r(3)`,
//! `getpwnam_r(3)`, `getgrgid_r(3)`, `getgrouplist(3)`), their buffers grown on
//! ERANGE. Neither rustix nor std asks NSS (it is libc's, not the kernel's).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The largest buffer an entry may need (as nix allowed): a bigger one is an error.
const BUF_LIMIT: usize = 1 << 20;
/// The most groups a user may be in (`NGROUPS_MAX` on Linux).
const GROUPS_LIMIT: usize = 65_536;

/// A password database entry.
#[derive(Debug, Clone)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub dir: PathBuf,
}

/// A C string the database returned, as text (lossy) or bytes; empty for null.
///
/// # Safety
/// `p` is null or points at a NUL-terminated string that outlives the call.
unsafe fn c_bytes<'a>(p: *const libc::c_char) -> &'a [u8] {
    if p.is_null() {
        return &[];
    }
    // SAFETY: non-null and NUL-terminated, as the caller guarantees.
    unsafe { CStr::from_ptr(p) }.to_bytes()
}

/// Calls a `get*_r` function `lookup(entry, buf, len, result)` with a buffer that
/// grows on ERANGE, and hands the entry found to `read` while the buffer lives.
///
/// # Safety
/// `lookup` must behave as a `get*_r(3)` function: write at most `len` bytes to
/// `buf`, and when it returns 0 with a non-null `*result`, `*result` points at
/// the initialised `entry`, whose strings point into `buf`.
unsafe fn lookup_r<E, T>(
    lookup: impl Fn(*mut E, *mut libc::c_char, libc::size_t, *mut *mut E) -> libc::c_int,
    read: impl FnOnce(&E) -> T,
) -> io::Result<Option<T>> {
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    loop {
        let mut entry = MaybeUninit::<E>::uninit();
        let mut result: *mut E = std::ptr::null_mut();
        let rc = lookup(entry.as_mut_ptr(), buf.as_mut_ptr(), buf.len(), &mut result);
        match rc {
            0 if result.is_null() => return Ok(None),
            // SAFETY: as the caller guarantees, the entry is initialised when the
            // result is set, and its strings (in `buf`) live until `read` returns.
            0 => return Ok(Some(read(unsafe { entry.assume_init_ref() }))),
            libc::ERANGE if buf.len() < BUF_LIMIT => buf.resize(buf.len() * 2, 0),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

fn passwd_entry(pw: &libc::passwd) -> PasswdEntry {
    // SAFETY: the strings of an entry getpw*_r returned are null or NUL-terminated
    // in its buffer, which lives while `pw` is borrowed.
    let (name, dir) = unsafe { (c_bytes(pw.pw_name), c_bytes(pw.pw_dir)) };
    PasswdEntry {
        name: String::from_utf8_lossy(name).into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        dir: PathBuf::from(OsStr::from_bytes(dir)),
    }
}

/// `getpwuid_r(3)`: the entry of `uid`, `Ok(None)` if NSS does not know it.
pub fn passwd_by_uid(uid: u32) -> io::Result<Option<PasswdEntry>> {
    // SAFETY: getpwuid_r is a get*_r function; `uid` is a plain integer.
    unsafe {
        lookup_r(
            |pw, buf, len, res| libc::getpwuid_r(uid, pw, buf, len, res),
            passwd_entry,
        )
    }
}

/// `getpwnam_r(3)`: the entry of user `name`, `Ok(None)` if NSS does not know it
/// (or the name holds a NUL).
pub fn passwd_by_name(name: &str) -> io::Result<Option<PasswdEntry>> {
    let Ok(name) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: getpwnam_r is a get*_r function; `name` is a C string that lives
    // for the whole lookup.
    unsafe {
        lookup_r(
            |pw, buf, len, res| libc::getpwnam_r(name.as_ptr(), pw, buf, len, res),
            passwd_entry,
        )
    }
}

/// `getgrgid_r(3)`: the name of group `gid`, `Ok(None)` if NSS does not know it.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    // SAFETY: getgrgid_r is a get*_r function; `gid` is a plain integer. The
    // name is null or NUL-terminated in the buffer, which lives while `gr` is
    // borrowed.
    unsafe {
        lookup_r(
            |gr, buf, len, res| libc::getgrgid_r(gid, gr, buf, len, res),
            |gr: &libc::group| String::from_utf8_lossy(c_bytes(gr.gr_name)).into_owned(),
        )
    }
}

/// `getgrouplist(3)`: every group of user `name` whose primary group is `gid`,
/// as a login gives them (as many as there are).
pub fn group_list(name: &CStr, gid: u32) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` is writable for `n` gids; `name` is a live C string.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(usize::try_from(n).unwrap_or(0).min(groups.len()));
            return Ok(groups);
        }
        // Too small: `n` is how many there are (glibc), or at least double.
        let want = usize::try_from(n).unwrap_or(0).max(groups.len() * 2);
        if groups.len() >= GROUPS_LIMIT {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        groups.resize(want.min(GROUPS_LIMIT), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known() {
        let by_uid = passwd_by_uid(0).unwrap().expect("root is in the database");
        assert_eq!(by_uid.name, "root");
        assert_eq!(by_uid.gid, 0);
        let by_name = passwd_by_name("root").unwrap().expect("root by name");
        assert_eq!(by_name.uid, 0);
        assert_eq!(by_name.dir, by_uid.dir);
        assert_eq!(group_name(0).unwrap().as_deref(), Some("root"));
        assert!(group_list(c"root", 0).unwrap().contains(&0));
        assert!(passwd_by_name("no\0such").unwrap().is_none());
    }
}
