//! User and group names through NSS (`getpwuid_r(3)`, `getpwnam_r(3)`,
//! `getgrgid_r(3)`, `getgrouplist(3)`, their buffers grown on ERANGE: see
//! [`crate::sys::nss`]), and the home directories a removal must spare.

use std::path::PathBuf;

use crate::sys::nss::{self, PasswdEntry};

/// What the password database says of a user.
#[derive(Debug, Clone)]
pub struct Passwd {
    pub name: String,
    pub gid: u32,
    pub home: PathBuf,
}

impl From<PasswdEntry> for Passwd {
    fn from(u: PasswdEntry) -> Passwd {
        Passwd {
            name: u.name,
            gid: u.gid,
            home: u.dir,
        }
    }
}

/// The password database entry of `uid`, or `None` if NSS does not know it.
pub fn passwd(uid: u32) -> Option<Passwd> {
    nss::passwd_by_uid(uid).ok()?.map(Passwd::from)
}

/// The uid of user `name`, or `None` if NSS does not know it.
pub fn uid_of_name(name: &str) -> Option<u32> {
    Some(nss::passwd_by_name(name).ok()??.uid)
}

/// Every home directory a removal must spare: those in `/etc/passwd`, and
/// `uid`'s own from NSS (which may come from elsewhere).
pub fn home_dirs(uid: u32) -> Vec<PathBuf> {
    let mut homes: Vec<PathBuf> = std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(5))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .collect();
    homes.extend(passwd(uid).map(|p| p.home));
    homes
}

/// The login name of `uid`, or `None` if NSS does not know it.
pub fn user_name(uid: u32) -> Option<String> {
    passwd(uid).map(|p| p.name)
}

/// The groups of user `name` with primary group `gid`, as a login gives them
/// (`getgrouplist(3)`: as many as there are).
fn group_list(name: &str, gid: u32) -> Option<Vec<u32>> {
    let cname = std::ffi::CString::new(name).ok()?;
    nss::group_list(&cname, gid).ok()
}

/// The primary group and every group of `uid` as a login gives them, or `None`
/// if NSS does not know it.
pub fn gids_of_uid(uid: u32) -> Option<(u32, Vec<u32>)> {
    let pw = passwd(uid)?;
    Some((pw.gid, group_list(&pw.name, pw.gid)?))
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
    use std::time::{Duration, Instant};
    type Names = HashMap<Id, (Option<String>, Instant)>;
    static CACHE: parking_lot::Mutex<Option<Names>> = parking_lot::Mutex::new(None);
    const TTL: Duration = Duration::from_secs(60);
    let cache = || CACHE.lock();
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
    nss::group_name(gid).ok()?
}

/// The names of the groups user `name` is in, empty if NSS does not know the user.
pub fn groups_of_user(name: &str) -> Vec<String> {
    let Some(user) = nss::passwd_by_name(name).ok().flatten() else {
        return Vec::new();
    };
    group_list(name, user.gid)
        .unwrap_or_default()
        .into_iter()
        .filter_map(group_name)
        .collect()
}

#[cfg(test)]
mod tests {
    /// A user in 300 groups gets all of them: NSS sees, in a mount namespace of
    /// this thread's own, an `/etc/group` with root added to 300 more groups
    /// (the old lookup stopped at 256 and then gave none). Needs root.
    #[test]
    fn a_user_in_300_groups_has_them_all() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test needs root (it bind-mounts over /etc/group in a mount namespace)"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group");
        let mut text = std::fs::read_to_string("/etc/group").unwrap();
        for n in 0..300 {
            text.push_str(&format!("wfcg-many-{n}:x:{}:root\n", 4_100_000 + n));
        }
        std::fs::write(&file, text).unwrap();
        let found = std::thread::spawn(move || {
            use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
            crate::sys::process::unshare_mounts().unwrap();
            // Nothing mounted here reaches the host's namespace.
            mount_change(
                "/",
                MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
            )
            .unwrap();
            mount_bind(&file, "/etc/group").unwrap();
            (super::groups_of_user("root"), super::gids_of_uid(0))
        })
        .join()
        .unwrap();
        let (names, gids) = found;
        let (primary, gids) = gids.expect("root has groups");
        assert_eq!(primary, 0);
        for n in [0, 255, 256, 299] {
            assert!(
                gids.contains(&(4_100_000 + n)),
                "gid of wfcg-many-{n} missing"
            );
            let name = format!("wfcg-many-{n}");
            assert!(
                names.contains(&name),
                "{name} missing from {} names",
                names.len()
            );
        }
        assert!(gids.len() > 300, "{} groups", gids.len());
    }

    #[test]
    fn root_is_known() {
        assert_eq!(super::user_name(0).as_deref(), Some("root"));
        assert_eq!(super::user_name(4_000_000_000), None);
        assert_eq!(super::group_name(0).as_deref(), Some("root"));
        assert_eq!(super::group_name(4_000_000_000), None);
    }
}
