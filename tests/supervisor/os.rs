//! What the cases expect on each platform of how the supervisor reports
//! a child it stopped, or one killed from outside.
//!
//! On Windows (see docs/windows.md) a supervised child's group is a Job
//! Object, and a stop ends the job: there is no graceful stop signal, so
//! a child never runs its stop handler, and one stopped by its supervisor
//! is reported as terminated (`-15`, as Python reports `terminate()`),
//! whatever its `Shutdown` rule.

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

/// How a child killed from outside by `common::kill_hard` is reported:
/// `SIGKILL` on Unix; on Windows the exit code the kill gives it.
pub(crate) fn killed() -> ExitKind {
    #[cfg(unix)]
    {
        ExitKind::Signal(9)
    }
    #[cfg(windows)]
    {
        ExitKind::Code(crate::common::KILLED_EXITCODE)
    }
}
