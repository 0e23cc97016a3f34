//! The Linux fast path: a pidfd becomes readable when its process exits.
//!
//! Used when the kernel has `pidfd_open` (Linux 5.3) and the environment
//! variable `TOKIO_MULTIPROCESSING_NO_PIDFD` is unset. Otherwise the
//! portable fallback in `child.rs` (SIGCHLD plus `waitid(WNOHANG)`) runs.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

/// The environment switch that forces the fallback, for tests and for
/// kernels that misbehave.
pub(crate) const NO_PIDFD_ENV: &str = "TOKIO_MULTIPROCESSING_NO_PIDFD";

/// Whether pidfds may be used in this process (decided once).
pub(crate) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os(NO_PIDFD_ENV).is_none_or(|v| v.is_empty()))
}

/// Opens a pidfd for `pid`, close-on-exec. `ENOSYS` (an old kernel) and
/// any other failure are reported; the caller falls back.
pub(crate) fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new
    // descriptor or -1; it reads and writes no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: the kernel returned a fresh descriptor (pidfd_open always sets
    // O_CLOEXEC) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
