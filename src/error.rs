//! The crate's aggregate [`Error`], for users who want one error type.
//!
//! Each API returns its own, narrowest error, defined beside it; this
//! module only gathers them, and nothing in the crate below the facade
//! names it.

use std::io;

use crate::pool::{BuildError, StillRunning, TaskError};
use crate::process::ProcessError;
use crate::queue::GetError;
use crate::wire::ChannelError;

/// A `Result` whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    Get(#[from] GetError),
    /// A pool task failed.
    #[error(transparent)]
    Task(#[from] TaskError),
    /// A pool did not start.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// `Pool::join` was called before `close` or `terminate`.
    #[error("{}", StillRunning)]
    StillRunning,
}

impl From<StillRunning> for Error {
    fn from(StillRunning: StillRunning) -> Error {
        Error::StillRunning
    }
}
