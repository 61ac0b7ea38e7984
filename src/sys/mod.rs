//! Every `unsafe` of the crate, behind safe functions: the calls into libc that
//! rustix does not wrap (or wraps only as `unsafe`), each block with a
//! `// SAFETY:` comment (clippy's `undocumented_unsafe_blocks` denies one
//! without). The crate root denies `unsafe_code`; this module alone allows it.
//!
//! By topic:
//! - [`socket`], `SO_PEERPIDFD`, `SO_PASSPIDFD`, `SO_PASSRIGHTS`, `SO_LINGER`;
//! - [`cmsg`], `recvmsg(2)` with the sender's credentials, pidfd and descriptors;
//! - [`pidfd`], `ioctl(PIDFD_GET_INFO)`;
//! - [`fd`], `open_by_handle_at(2)`;
//! - [`fanotify`], `fanotify_init(2)`, `fanotify_mark(2)`;
//! - [`mount`], `statmount(2)`;
//! - [`creds`], filesystem ids of a thread (`setfsuid(2)`), a process's ids for good;
//! - [`nss`], the password and group databases (`getpwuid_r(3)` and kin);
//! - [`signal`], signal sets, masks and `sigwaitinfo(2)`;
//! - [`process`], fork, `clone3(CLONE_INTO_CGROUP)`, `_exit(2)`, hooks run
//!   between fork and exec, the allocator's arenas.

pub mod cmsg;
pub mod creds;
pub mod fanotify;
pub mod fd;
pub mod mount;
pub mod nss;
pub mod pidfd;
pub mod process;
pub mod signal;
pub mod socket;

/// The error of a call that returned -1 and set errno.
fn last_error() -> std::io::Error {
    std::io::Error::last_os_error()
}
