//! Signal sets and masks (`sigset_t`, `pthread_sigmask(3)`, `sigprocmask(2)`,
//! `sigwaitinfo(2)`), which rustix leaves to libc.

/// A signal taken from the queue.
pub struct Received {
    pub signo: i32,
    /// `si_code`: ≤ 0 when a process sent it with kill(2) and the like, > 0 when
    /// the kernel did (a terminal's Ctrl-C is SI_KERNEL).
    pub code: i32,
}

pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    pub fn new(signals: &[i32]) -> SignalSet {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &sig in signals {
            // SAFETY: as above; an invalid signal number only makes the call fail.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        SignalSet(set)
    }

    /// Every signal (those that cannot be blocked are left out by the kernel).
    pub fn all() -> SignalSet {
        // SAFETY: sigset_t is plain data; sigfillset initialises it fully.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigfillset(&mut set) };
        SignalSet(set)
    }

    /// `pthread_sigmask(SIG_BLOCK)`: from now on these signals queue up until taken.
    /// The mask is inherited across fork and exec: see [`clear_mask`].
    pub fn block(&self) {
        // SAFETY: `self.0` is an initialised sigset_t; the old mask is not asked for.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
    }

    /// `sigwaitinfo(2)`: waits for one of the signals of the set.
    pub fn wait(&self) -> Received {
        loop {
            // SAFETY: siginfo_t is plain data, filled by the kernel before it is read.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid for the duration of the call.
            let signo = unsafe { libc::sigwaitinfo(&self.0, &mut info) };
            if signo > 0 {
                return Received {
                    signo,
                    code: info.si_code,
                };
            }
            // EINTR: a signal outside the set was handled; wait again.
        }
    }
}

/// `sigprocmask(SIG_SETMASK, {})`: unblocks every signal. Async-signal-safe: it
/// is called in a child between fork and exec (see
/// [`super::process::clear_signal_mask_before_exec`]).
pub fn clear_mask() -> std::io::Result<()> {
    let empty = SignalSet::new(&[]);
    // SAFETY: `empty.0` is an initialised sigset_t; sigprocmask is async-signal-safe.
    match unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty.0, std::ptr::null_mut()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}
