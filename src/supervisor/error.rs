//! [`SupervisorError`]: why a supervisor, or a call on it, failed.

use std::time::Duration;

use super::event::ExitKind;

/// Why a supervisor stopped abnormally, or a call on it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// More restarts than the intensity allows happened within the
    /// period: every child was stopped and the supervisor ended.
    #[error(
        "child {child} exited ({last_exit}) and took the restarts to {restarts} within {period:?}, \
         past the supervisor's intensity: every child was stopped"
    )]
    IntensityExceeded {
        /// The path of the child whose exit went past the limit
        /// (`"root/db"`, as in events).
        child: String,
        /// Restarts counted within the period.
        restarts: u32,
        /// The period.
        period: Duration,
        /// How that child's last incarnation ended.
        last_exit: ExitKind,
    },
    /// A child failed to start (or to be ready in time): the children
    /// started before it were stopped.
    #[error("child {child} failed to start: it {exit}")]
    StartFailed {
        /// The child's path (`"root/db"`, as in events).
        child: String,
        /// How its start ended.
        exit: ExitKind,
    },
    /// No child has this name.
    #[error("no child is named {0:?}")]
    NoSuchChild(String),
    /// A child has this name already.
    #[error("a child is named {0:?} already")]
    DuplicateChild(String),
    /// The child runs (to restart or delete a child, terminate it first).
    #[error("child {0:?} is running: terminate it first")]
    ChildRunning(String),
    /// The supervisor has stopped (or has not started).
    #[error("the supervisor is not running")]
    Stopped,
    /// `start` was called on a supervisor that runs.
    #[error("the supervisor is running already")]
    AlreadyStarted,
    /// The supervisor was started outside a Tokio runtime.
    #[error("a supervisor must be started within a Tokio runtime")]
    NoRuntime,
}
