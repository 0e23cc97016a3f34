//! [`ProcessError`]: why a child process did not hand back its value.

use std::io;
use std::path::PathBuf;

use crate::wire::{ChannelError, PanicInfo};

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
    /// The child refused to run: its handshake did not match (protocol or
    /// build mismatch), or it could not enter its
    /// [`current_dir`](crate::ProcessBuilder::current_dir) or set its
    /// environment. The reason says which.
    #[error("the child refused to run: {0}")]
    Handshake(String),
    /// The control channel to the child broke.
    #[error("the control channel broke: {0}")]
    Channel(#[source] ChannelError),
    /// The process could not be spawned.
    #[error("failed to spawn the child process: {0}")]
    Spawn(#[source] io::Error),
    /// This program never called [`init`](crate::init), so a copy of it
    /// would run its whole `main` again instead of the target.
    #[error(
        "tokio_multiprocessing::init() was never called: call it first thing in main, \
         before the Tokio runtime is built and before anything else runs (a child is a \
         copy of the program that starts from main)"
    )]
    InitNotCalled,
    /// `start` was called outside a Tokio runtime.
    #[error(
        "Process::start must be called within a Tokio runtime \
         (inside #[tokio::main], Runtime::block_on or a task)"
    )]
    NoRuntime,
    /// The program is exiting: its exit rule has begun, and no child may
    /// start after that (it would not be joined).
    #[error("the program is exiting (its exit rule has begun): no child may start now")]
    Exiting,
    /// The arguments, encoded, are larger than the control channel's
    /// frame limit ([`ProcessBuilder::max_frame`](crate::ProcessBuilder::max_frame));
    /// nothing was spawned. A `Vec<u8>` encodes as an array of integers,
    /// up to two bytes each: wrapped in `serde_bytes::ByteBuf` it takes
    /// one byte each.
    #[error(
        "the arguments are oversized: they encode to {len} bytes, over the max_frame of {max}; \
         raise it with ProcessBuilder::max_frame, or send large data through a Pipe or shared \
         memory (a Vec<u8> encodes as an array of integers, up to 2 bytes each, unless wrapped \
         in serde_bytes::ByteBuf)"
    )]
    Oversized {
        /// The encoded length of the orders, in bytes.
        len: usize,
        /// The frame limit.
        max: usize,
    },
    /// The [`current_dir`](crate::ProcessBuilder::current_dir) set for the
    /// child is not a directory this process can see; nothing was spawned.
    #[error("the child's current_dir {} is not usable: {source}", dir.display())]
    CurrentDir {
        /// The directory, as it was given.
        dir: PathBuf,
        /// Why it is not usable.
        #[source]
        source: io::Error,
    },
    /// An environment variable set for the child (by
    /// [`env`](crate::ProcessBuilder::env)) has a name or value no
    /// environment can hold; nothing was spawned.
    #[error("invalid environment variable for the child: {0}")]
    InvalidEnv(String),
    /// A signal could not be sent to the child.
    #[error("could not signal the child process: {0}")]
    Signal(#[source] io::Error),
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

pub(crate) use crate::sys::signal_name;
