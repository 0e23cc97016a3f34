//! The queue's errors: [`PutError`] (the item comes back), [`GetError`],
//! [`TaskDoneError`].

use std::fmt;

/// Why a `put` failed; the item comes back.
#[non_exhaustive]
pub enum PutError<T> {
    /// A bounded queue is full (`try_put`, or `put_timeout` timed out).
    Full(T),
    /// This process closed the queue.
    Closed(T),
    /// The item could not be encoded, or is larger than the whole buffer.
    Encode(T, String),
    /// The item holds a handle (a Pipe end, a `Queue`, a `Lock` or another
    /// primitive): a queue's items live in shared memory, which cannot
    /// carry the handle's descriptor. Send the handle through a `Pipe`, or
    /// as a `Process`'s or a `Pool` task's argument.
    Handle(T),
    /// The queue's shared memory holds values no put or get leaves:
    /// another process wrote over it. The queue cannot be used any more;
    /// other queues are not affected.
    Corrupt(T, String),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t)
            | PutError::Closed(t)
            | PutError::Encode(t, _)
            | PutError::Handle(t)
            | PutError::Corrupt(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(_, e) => f.debug_tuple("Encode").field(&"..").field(e).finish(),
            PutError::Handle(_) => f.write_str("Handle(..)"),
            PutError::Corrupt(_, e) => f.debug_tuple("Corrupt").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::Encode(_, e) => write!(f, "the item failed to encode: {e}"),
            PutError::Handle(_) => f.write_str(
                "a Queue item cannot carry a handle (a Pipe end, a Queue, a Lock or another \
                 primitive): its items live in shared memory; send the handle through a Pipe, \
                 or as a Process's or a Pool task's argument",
            ),
            PutError::Corrupt(_, e) => write!(f, "the queue's shared memory is corrupt: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

/// Why a `get` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Nothing arrived (`try_get`, or `get_timeout` timed out).
    #[error("the queue is empty")]
    Empty,
    /// This process closed the queue and it is empty.
    #[error("the queue is closed")]
    Closed,
    /// An item did not decode as `T`.
    #[error("an item failed to decode: {0}")]
    Decode(String),
    /// The queue's shared memory holds values no put or get leaves (a
    /// record longer than the ring, cursors out of order): another
    /// process wrote over it. Nothing is taken, and every later `get`
    /// fails alike; other queues are not affected.
    #[error("the queue's shared memory is corrupt: {0}")]
    Corrupt(String),
}

/// `JoinableQueue::task_done` was called more times than items were put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than there were items")]
pub struct TaskDoneError;
