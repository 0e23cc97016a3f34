//! Error types.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something went wrong on a framed channel between two processes.
///
/// Every fault on the wire maps to one of these kinds, on the side that
/// saw it; none of them panics or hangs either side. A truncated frame
/// ([`Truncated`](ChannelError::Truncated)) is reported differently from a
/// clean close between frames ([`Closed`](ChannelError::Closed)).
///
/// Converting into [`io::Error`] gives [`io::ErrorKind::InvalidData`] for a
/// bad frame and [`io::ErrorKind::UnexpectedEof`] for a close, wrapping this
/// error (reach it with `get_ref` or `into_inner`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer closed the channel cleanly, between two frames.
    #[error("channel closed by the peer")]
    Closed,
    /// The peer closed the channel in the middle of a frame.
    #[error("channel closed in the middle of a frame ({received} of {expected} bytes received)")]
    Truncated {
        /// Bytes the frame claimed, header included.
        expected: usize,
        /// Bytes that arrived before the close.
        received: usize,
    },
    /// A frame claimed, or would have needed, more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The frame's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A frame arrived whole but its bytes do not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("message failed to encode: {0}")]
    Encode(String),
    /// The operating system reported an error on the channel.
    #[error("i/o error on the channel: {0}")]
    Io(#[from] io::Error),
}

impl From<ChannelError> for io::Error {
    fn from(err: ChannelError) -> io::Error {
        match err {
            ChannelError::Io(e) => e,
            e @ (ChannelError::Closed | ChannelError::Truncated { .. }) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, e)
            }
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// Where a panic happened, as reported by the child that panicked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicInfo {
    /// The panic message (the payload, when it was a string).
    pub message: String,
    /// `file:line:column` of the panic, when the child could record it.
    pub location: Option<String>,
}

impl fmt::Display for PanicInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "'{}' at {}", self.message, loc),
            None => write!(f, "'{}'", self.message),
        }
    }
}

/// Why a child process did not hand back its target's value.
///
/// One type covers every outcome of [`Process::join`](crate::Process::join),
/// with predicates in the manner of `tokio::task::JoinError`:
/// [`is_panic`](Self::is_panic), [`panic_message`](Self::panic_message),
/// [`signal`](Self::signal), [`exit_code`](Self::exit_code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The target panicked in the child; the child exited with code 1.
    #[error("the child panicked: {0}")]
    Panicked(PanicInfo),
    /// The child was killed by a signal before it reported a value.
    #[error("the child was killed by signal {signal} ({}) before it reported", signal_name(*.signal))]
    Signaled {
        /// The signal number.
        signal: i32,
    },
    /// The child exited with this code before it reported a value.
    #[error("the child exited with code {code} before it reported")]
    Exited {
        /// The exit code.
        code: i32,
    },
    /// `join` was called before `start`.
    #[error("the process has not been started")]
    NotStarted,
    /// `start` was called twice.
    #[error("the process has already been started")]
    AlreadyStarted,
    /// The value was already taken by an earlier `join`.
    #[error("the process has already been joined")]
    AlreadyJoined,
    /// A daemonic process tried to start a child, which Python forbids too.
    #[error("daemonic processes are not allowed to have children")]
    DaemonicParent,
    /// The arguments failed to serialize; nothing was spawned.
    #[error("the arguments failed to encode: {0}")]
    EncodeArgs(String),
    /// The child could not decode its arguments.
    #[error("the child could not decode its arguments: {0}")]
    DecodeArgs(String),
    /// The child's return value failed to serialize in the child.
    #[error("the return value failed to encode in the child: {0}")]
    EncodeResult(String),
    /// The parent could not decode the value the child returned.
    #[error("the return value failed to decode: {0}")]
    DecodeResult(String),
    /// The child refused the handshake (protocol or build mismatch).
    #[error("the child refused the handshake: {0}")]
    Handshake(String),
    /// The control channel to the child broke.
    #[error("the control channel broke: {0}")]
    Channel(#[source] ChannelError),
    /// The process could not be spawned.
    #[error("failed to spawn the child process: {0}")]
    Spawn(#[source] io::Error),
}

impl ProcessError {
    /// True if the target panicked in the child.
    pub fn is_panic(&self) -> bool {
        matches!(self, ProcessError::Panicked(_))
    }

    /// The panic message, if the target panicked.
    pub fn panic_message(&self) -> Option<&str> {
        match self {
            ProcessError::Panicked(info) => Some(&info.message),
            _ => None,
        }
    }

    /// The signal that killed the child, if one did before it reported.
    pub fn signal(&self) -> Option<i32> {
        match self {
            ProcessError::Signaled { signal } => Some(*signal),
            _ => None,
        }
    }

    /// The exit code, if the child exited before it reported (1 after a panic).
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            ProcessError::Exited { code } => Some(*code),
            ProcessError::Panicked(_) => Some(1),
            _ => None,
        }
    }
}

/// The crate's general error, for operations that are not a join.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A process operation failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
    /// A channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The operating system reported an error.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Taking an item from a queue failed.
    #[error(transparent)]
    Get(#[from] crate::queue::GetError),
    /// A pool task, or starting a pool, failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// `Pool::join` was called before `close` or `terminate`.
    #[error("the pool is still running: close or terminate it before join")]
    StillRunning,
}

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
    /// A worker could not be started: its initializer failed.
    #[error("a pool worker failed to start: {0}")]
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

    /// The signal that killed the worker, if one did during the task.
    pub fn signal(&self) -> Option<i32> {
        match self {
            TaskError::WorkerDied { exitcode } if *exitcode < 0 => Some(-exitcode),
            _ => None,
        }
    }
}

fn describe_exit(code: i32) -> String {
    if code < 0 {
        format!("killed by {}", signal_name(-code))
    } else {
        format!("exit code {code}")
    }
}

/// The name of signal `signal` (`SIGTERM`), or its number as text.
pub(crate) fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {signal}"),
    }
}
