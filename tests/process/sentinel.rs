//! `Sentinel` and `wait`, on the pidfd path (Linux's default) and on the
//! fallback path (SIGCHLD and `waitid`), with the same cases.
//!
//! The fallback is forced with `TOKIO_MULTIPROCESSING_NO_PIDFD=1`, which
//! the library reads once per process and children inherit: each fallback
//! case runs in a run of the test binary of its own with [`NO_PIDFD`] in
//! its environment (see `common::module_in_reruns`), and checks there that
//! no pidfd is in use.
//!
//! On Windows a sentinel waits on the process handle, its only path: the
//! same cases run once, without the look at pidfds.

use crate::common::Case;
use crate::sentinel_cases;

/// In the environment of the runs that take the fallback path.
#[cfg(unix)]
pub(crate) const NO_PIDFD: (&str, &str) = ("TOKIO_MULTIPROCESSING_NO_PIDFD", "1");

/// The cases on the pidfd path.
#[cfg(unix)]
pub(crate) fn pidfd_cases() -> Vec<Case> {
    sentinel_cases::all(true)
}

/// The cases on the fallback path, for runs with [`NO_PIDFD`].
#[cfg(unix)]
pub(crate) fn fallback_cases() -> Vec<Case> {
    sentinel_cases::all(false)
}

/// The cases on Windows, where no pidfd is ever in use.
#[cfg(windows)]
pub(crate) fn cases() -> Vec<Case> {
    sentinel_cases::all(false)
}
