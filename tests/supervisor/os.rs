//! What the cases do to processes from outside, and what they expect of
//! them, on each platform: a kill from outside, whether a process runs,
//! and how the supervisor reports a child it stopped.
//!
//! On Windows (see docs/windows.md) a supervised child's group is a Job
//! Object, and a stop ends the job: there is no graceful stop signal, so
//! a child never runs its stop handler, and one stopped by its supervisor
//! is reported as terminated (`-15`, as Python reports `terminate()`),
//! whatever its `Shutdown` rule.

use libtest_mimic::Failed;
use mp::supervisor::ExitKind;
use tokio_multiprocessing as mp;

/// How a child that returns once asked to stop is reported when its
/// supervisor stops it: `Normal` on Unix; on Windows the stop ends it.
pub(crate) const STOPPED: ExitKind = if cfg!(windows) {
    ExitKind::Signal(15)
} else {
    ExitKind::Normal
};

/// How a child its supervisor kills (`BrutalKill`, or a stop timeout that
/// ran out) is reported: `SIGKILL` on Unix; on Windows, terminated.
pub(crate) const KILLED_BY_SUPERVISOR: ExitKind = if cfg!(windows) {
    ExitKind::Signal(15)
} else {
    ExitKind::Signal(9)
};

/// How a child killed from outside by [`kill`] is reported: `SIGKILL` on
/// Unix; on Windows the exit code the kill gives it.
pub(crate) fn killed() -> ExitKind {
    #[cfg(unix)]
    {
        ExitKind::Signal(9)
    }
    #[cfg(windows)]
    {
        ExitKind::Code(crate::common::KILLED_CODE as i32)
    }
}

/// Kills process `pid` (not its group) from outside, as a crash would.
pub(crate) fn kill(pid: u32) -> Result<(), Failed> {
    crate::common::kill_hard(pid)
}

/// Whether process `pid` runs (not gone, not a zombie).
pub(crate) fn is_running(pid: u32) -> bool {
    crate::common::is_running(pid)
}

/// Whether process `pid` is gone for good: on Unix reaped too (no zombie
/// left); on Windows, where nothing is left to reap, no longer running.
pub(crate) fn is_gone(pid: u32) -> bool {
    if cfg!(windows) {
        !is_running(pid)
    } else {
        crate::common::stat_of(pid).is_none()
    }
}
