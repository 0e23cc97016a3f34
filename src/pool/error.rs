//! [`TaskError`]: why a pool task did not give its value.

use std::io;

use crate::process::{ProcessError, signal_name};
use crate::wire::PanicInfo;

/// Why a pool did not start ([`PoolBuilder::build`](crate::PoolBuilder::build),
/// [`Pool::new`](crate::Pool::new)). The workers started before the
/// failure are killed and reaped first.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting is out of range.
    #[error("invalid pool setting: {0}")]
    InvalidSetting(&'static str),
    /// The initializer's arguments failed to encode.
    #[error("the initializer's arguments failed to encode: {0}")]
    EncodeInit(String),
    /// A worker process could not be started (the program never called
    /// [`init`](crate::init), say).
    #[error("a pool worker could not be started: {0}")]
    Start(#[source] ProcessError),
    /// A worker's initializer did not return: it panicked, or its
    /// arguments did not decode.
    #[error("a pool worker's initializer failed: {0}")]
    Initializer(String),
    /// A worker exited before it was ready.
    #[error("a pool worker exited while it started ({})", describe_exit(*exitcode))]
    WorkerExited {
        /// Its exit code, `-N` if signal N killed it.
        exitcode: i32,
    },
    /// The operating system refused something a worker needs (its pipe,
    /// its shared page).
    #[error("a pool worker could not be set up: {0}")]
    Io(#[source] io::Error),
    /// The pool could not listen for remote workers.
    #[error("the pool could not listen for remote workers: {0}")]
    Listen(#[source] crate::connection::NetError),
}

impl BuildError {
    /// Whether a new try would fail the same way (no use retrying).
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            BuildError::InvalidSetting(_)
                | BuildError::EncodeInit(_)
                | BuildError::Initializer(_)
                | BuildError::Start(
                    ProcessError::InitNotCalled
                        | ProcessError::NoRuntime
                        | ProcessError::Exiting
                        | ProcessError::CurrentDir { .. }
                        | ProcessError::InvalidEnv(_)
                )
        )
    }
}

/// [`Pool::join`](crate::Pool::join) was called before
/// [`close`](crate::Pool::close) or [`terminate`](crate::Pool::terminate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool is still running: close or terminate it before join")]
pub struct StillRunning;

/// Why a pool task did not give its value.
///
/// `Debug` names the kind plainly (`WorkerDied`, `TimedOut`, `Cancelled`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// The target panicked in the worker; the worker goes on.
    #[error("the task panicked: {0}")]
    Panicked(PanicInfo),
    /// The worker died while running the task (`-N`: killed by signal N).
    #[error("the worker died while running the task ({})", describe_exit(*exitcode))]
    WorkerDied {
        /// The worker's exit code, `-N` if signal N killed it.
        exitcode: i32,
    },
    /// The remote worker running the task vanished: its connection broke,
    /// or it said nothing for longer than the heartbeat timeout.
    #[error("the remote worker {worker} running the task was lost: {reason}")]
    WorkerLost {
        /// The worker, as `host:pid`.
        worker: String,
        /// How it was lost.
        reason: String,
    },
    /// The task ran past the pool's task timeout; its worker was replaced.
    #[error("the task timed out")]
    TimedOut,
    /// The task was cancelled before it finished (the pool was terminated
    /// or dropped).
    #[error("the task was cancelled")]
    Cancelled,
    /// The arguments failed to encode; nothing was submitted.
    #[error("the arguments failed to encode: {0}")]
    Encode(String),
    /// The value the task returned failed to encode in the worker.
    #[error("the return value failed to encode in the worker: {0}")]
    EncodeResult(String),
    /// A value failed to decode (the arguments in the worker, or the
    /// return value in the parent).
    #[error("decoding failed: {0}")]
    Decode(String),
    /// The pool is closed or terminated and takes no more tasks.
    #[error("the pool is closed")]
    Closed,
    /// No worker could be started to run the task: the pool's last worker
    /// could not be replaced (its initializer failed, say); the reason
    /// follows.
    #[error("no pool worker could be started: {0}")]
    Initializer(String),
    /// The Tokio runtime that built the pool shut down: its workers were
    /// killed and reaped with it, and the pool takes no more tasks.
    #[error("the Tokio runtime that ran the pool has shut down")]
    RuntimeShutdown,
}

impl TaskError {
    /// True if the target panicked.
    pub fn is_panic(&self) -> bool {
        matches!(self, TaskError::Panicked(_))
    }

    /// Whether the task ran and was lost there (its worker died, or it
    /// timed out), not ended by the pool's own end: such a failure is a
    /// warning in the crate's `tracing` events.
    pub(crate) fn is_lost(&self) -> bool {
        matches!(
            self,
            TaskError::Panicked(_)
                | TaskError::WorkerDied { .. }
                | TaskError::WorkerLost { .. }
                | TaskError::TimedOut
                | TaskError::EncodeResult(_)
                | TaskError::Decode(_)
        )
    }

    /// The signal that killed the worker, if one did during the task.
    pub fn signal(&self) -> Option<i32> {
        match self {
            TaskError::WorkerDied { exitcode } if *exitcode < 0 => Some(-exitcode),
            _ => None,
        }
    }
}

pub(super) fn describe_exit(code: i32) -> String {
    if code < 0 {
        format!("killed by {}", signal_name(-code))
    } else {
        format!("exit code {code}")
    }
}
