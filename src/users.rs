//! User and group names through NSS (`getpwuid_r(3)`, `getgrgid_r(3)`), and a
//! process's groups from procfs.

/// The login name of `uid`, or `None` if NSS does not know it.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: all-zero bytes are a valid `passwd` (null pointers, zero ids); it is
    // only read after getpwuid_r has filled it.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `pwd` and `result` live on this
    // stack frame and `buf` is a live allocation of `buf.len()` bytes.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `pw_name` points to a NUL-terminated string inside `buf`,
    // which is still alive here.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
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

/// The supplementary group ids of a process, from the `Groups:` line of
/// `/proc/<pid>/status`.
pub fn process_groups(proc_root: &std::path::Path, pid: i32) -> Vec<u32> {
    let text =
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default()
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

    #[test]
    fn groups_come_from_the_status_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("42")).unwrap();
        std::fs::write(
            dir.path().join("42/status"),
            "Name:\tsh\nUid:\t1000\t1000\t1000\t1000\nGroups:\t4 27 1000 \nNgid:\t0\n",
        )
        .unwrap();
        assert_eq!(super::process_groups(dir.path(), 42), vec![4, 27, 1000]);
        assert!(super::process_groups(dir.path(), 43).is_empty());
    }
}
