//! User and group names through NSS (`getpwuid_r(3)`, `getgrgid_r(3)`), and a
//! process's groups from procfs.

/// What the password database says of a user.
#[derive(Debug, Clone)]
pub struct Passwd {
    pub name: String,
    pub gid: u32,
    pub home: std::path::PathBuf,
}

/// The password database entry of `uid` (`getpwuid_r(3)`, its buffer grown on
/// ERANGE), or `None` if NSS does not know it.
pub fn passwd(uid: u32) -> Option<Passwd> {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids); it
        // is only read after getpwuid_r has filled it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `pwd` and `result` live on
        // this stack frame and `buf` is a live allocation of `buf.len()` bytes.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || result.is_null() {
            return None;
        }
        // SAFETY: on success `pw_name` and `pw_dir` point to NUL-terminated strings
        // inside `buf`, which is still alive here.
        let (name, home) = unsafe {
            (
                std::ffi::CStr::from_ptr(pwd.pw_name),
                std::ffi::CStr::from_ptr(pwd.pw_dir),
            )
        };
        use std::os::unix::ffi::OsStrExt;
        return Some(Passwd {
            name: name.to_string_lossy().into_owned(),
            gid: pwd.pw_gid,
            home: std::ffi::OsStr::from_bytes(home.to_bytes()).into(),
        });
    }
}

/// Every home directory a removal must spare: those in `/etc/passwd`, and
/// `uid`'s own from NSS (which may come from elsewhere).
pub fn home_dirs(uid: u32) -> Vec<std::path::PathBuf> {
    let mut homes: Vec<std::path::PathBuf> = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
        .collect();
    homes.extend(passwd(uid).map(|p| p.home));
    homes
}

/// The login name of `uid`, or `None` if NSS does not know it.
pub fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|p| p.name)
}

/// The primary group and every group of `uid` as a login gives them
/// (`getgrouplist(3)`, grown until all fit), or `None` if NSS does not know it.
pub fn gids_of_uid(uid: u32) -> Option<(u32, Vec<u32>)> {
    let pw = passwd(uid)?;
    let cname = std::ffi::CString::new(pw.name).ok()?;
    let mut gids: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut n = gids.len() as libc::c_int;
        // SAFETY: `gids` holds `n` elements; getgrouplist writes at most `n` and sets
        // `n` to the number there are.
        let rc = unsafe { libc::getgrouplist(cname.as_ptr(), pw.gid, gids.as_mut_ptr(), &mut n) };
        if rc < 0 {
            if n as usize <= gids.len() || n > 1 << 16 {
                return None;
            }
            gids.resize(n as usize, 0);
            continue;
        }
        gids.truncate(n.max(0) as usize);
        return Some((pw.gid, gids));
    }
}

/// [`user_name`], remembered for a minute: listing a thousand runs or
/// answering a thousand requests asks NSS once per user, not once each.
pub fn user_name_cached(uid: u32) -> Option<String> {
    cached(Id::User(uid), user_name)
}

/// [`group_name`], remembered for a minute.
pub fn group_name_cached(gid: u32) -> Option<String> {
    cached(Id::Group(gid), group_name)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Id {
    User(u32),
    Group(u32),
}

fn cached(id: Id, lookup: fn(u32) -> Option<String>) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    type Names = HashMap<Id, (Option<String>, Instant)>;
    static CACHE: Mutex<Option<Names>> = Mutex::new(None);
    const TTL: Duration = Duration::from_secs(60);
    let cache = || CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((name, at)) = cache().get_or_insert_with(HashMap::new).get(&id)
        && at.elapsed() < TTL
    {
        return name.clone();
    }
    // Asked without the lock: a slow directory service holds up only this caller.
    let (Id::User(n) | Id::Group(n)) = id;
    let name = lookup(n);
    cache()
        .get_or_insert_with(HashMap::new)
        .insert(id, (name.clone(), Instant::now()));
    name
}

/// The name of group `gid`, or `None` if NSS does not know it.
pub fn group_name(gid: u32) -> Option<String> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: all-zero bytes are a valid `group` (null pointers, zero id); it is
    // only read after getgrgid_r has filled it.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `grp` and `result` live on this
    // stack frame and `buf` is a live allocation of `buf.len()` bytes.
    let rc = unsafe {
        libc::getgrgid_r(
            gid,
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `gr_name` points to a NUL-terminated string inside `buf`,
    // which is still alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(grp.gr_name) };
    Some(name.to_string_lossy().into_owned())
}

/// The names of the groups user `name` is in (`getpwnam_r(3)`, `getgrouplist(3)`),
/// empty if NSS does not know the user.
pub fn groups_of_user(name: &str) -> Vec<String> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return Vec::new();
    };
    let mut buf = vec![0u8; 16384];
    // SAFETY: all-zero bytes are a valid `passwd`; it is only read after success.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: `cname` is NUL-terminated; the other pointers are valid for the call.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Vec::new();
    }
    let mut gids: Vec<libc::gid_t> = vec![0; 256];
    let mut n = gids.len() as libc::c_int;
    // SAFETY: `gids` holds `n` elements; getgrouplist writes at most `n` and sets `n`.
    let rc = unsafe { libc::getgrouplist(cname.as_ptr(), pwd.pw_gid, gids.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return Vec::new();
    }
    gids.truncate(n.max(0) as usize);
    gids.into_iter().filter_map(group_name).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn root_is_known() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
        assert_eq!(super::user_name(4_000_000_000), None);
        assert_eq!(super::group_name(0).as_deref(), Some("root"));
        assert_eq!(super::group_name(4_000_000_000), None);
    }
}
