//! Other processes, looked at and killed by pid, on either platform (see
//! `common::is_running` and `common::kill_hard`): on Unix from `/proc`
//! and with `SIGKILL`, on Windows through the process API.

use libtest_mimic::Failed;

/// Whether `exitcode` is the one a process killed by [`kill`] ends with,
/// as the pool reports it: `-SIGKILL` on Unix; on Windows the exit code
/// the kill gives it.
pub(crate) fn killed(exitcode: i32) -> bool {
    #[cfg(unix)]
    {
        exitcode == -9
    }
    #[cfg(windows)]
    {
        i64::from(exitcode) == i64::from(crate::common::KILLED_CODE)
    }
}

/// Whether process `pid` is running: not gone, and on Unix not a zombie.
pub(crate) fn is_running(pid: u32) -> bool {
    crate::common::is_running(pid)
}

/// Whether process `pid` is gone: on Unix, reaped (no longer in `/proc`,
/// not even as a zombie); on Windows, no longer running (a process that
/// has exited has no zombie to reap there).
pub(crate) fn is_gone(pid: u32) -> bool {
    #[cfg(unix)]
    {
        crate::common::stat_of(pid).is_none()
    }
    #[cfg(windows)]
    {
        !is_running(pid)
    }
}

/// Those of `pids` that are running.
#[cfg(windows)]
pub(crate) fn running_of(pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|&p| is_running(p)).collect()
}

/// Kills process `pid` from outside, as a crash would.
pub(crate) fn kill(pid: u32) -> Result<(), Failed> {
    crate::common::kill_hard(pid)
}
