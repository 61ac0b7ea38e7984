//! What the kernel says of one mount by its id (`statmount(2)`, Linux ≥ 6.8),
//! without reading the whole mount table and without asking its file system.

use std::io;

/// `statmount(2)`'s number: new system calls share one number on every
/// architecture but alpha.
const SYS_STATMOUNT: libc::c_long = 457;
/// `STATMOUNT_SB_BASIC`: the superblock's device, magic and flags.
const STATMOUNT_SB_BASIC: u64 = 0x1;

/// The magic number of the file system of the mount whose unique id is
/// `mnt_id` (`statx(2)`'s `STATX_MNT_ID_UNIQUE`). ENOSYS before Linux 6.8.
pub fn sb_magic(mnt_id: u64) -> io::Result<u64> {
    /// `struct mnt_id_req` as Linux 6.8 first defined it (`MNT_ID_REQ_SIZE_VER0`).
    #[repr(C)]
    struct MntIdReq {
        size: u32,
        spare: u32,
        mnt_id: u64,
        param: u64,
    }
    let req = MntIdReq {
        size: std::mem::size_of::<MntIdReq>() as u32,
        spare: 0,
        mnt_id,
        param: STATMOUNT_SB_BASIC,
    };
    // `struct statmount` is 512 bytes before its strings; room for it, aligned.
    let mut buf = [0u64; 64];
    // SAFETY: `req` is a live struct of the size it states, read by the kernel;
    // `buf` is a live, writable, 8-byte aligned buffer of the length passed, into
    // which the kernel writes at most that length.
    let rc = unsafe {
        libc::syscall(
            SYS_STATMOUNT,
            &req as *const MntIdReq,
            buf.as_mut_ptr(),
            std::mem::size_of_val(&buf),
            0u32,
        )
    };
    if rc != 0 {
        return Err(super::last_error());
    }
    // `size` (u32) and a spare u32, then `mask` (u64), the device's major and
    // minor (u32 each), then `sb_magic` (u64).
    let (mask, magic) = (buf[1], buf[3]);
    if mask & STATMOUNT_SB_BASIC == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(magic)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_magic_of_the_proc_mount() {
        use rustix::fs::{AtFlags, StatxFlags};
        const PROC_SUPER_MAGIC: u64 = 0x9fa0;
        let st = rustix::fs::statx(
            rustix::fs::CWD,
            "/proc",
            AtFlags::empty(),
            StatxFlags::from_bits_retain(libc::STATX_MNT_ID_UNIQUE),
        )
        .unwrap();
        assert_ne!(
            st.stx_mask & libc::STATX_MNT_ID_UNIQUE,
            0,
            "Linux 6.8 or later needed"
        );
        assert_eq!(super::sb_magic(st.stx_mnt_id).unwrap(), PROC_SUPER_MAGIC);
        assert!(super::sb_magic(u64::MAX).is_err());
    }
}
