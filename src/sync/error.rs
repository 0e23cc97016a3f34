//! Errors of the synchronization primitives.
//!
//! The locks use the standard library's shapes, re-exported here:
//! [`LockResult`] and [`PoisonError`] for `lock`, [`TryLockResult`] and
//! [`TryLockError`] for `try_lock` and `lock_timeout` (whose
//! [`WouldBlock`](TryLockError::WouldBlock) means "held by someone else" or
//! "timed out"). A lock is poisoned when its holder died holding it, or
//! panicked holding it, as a `std::sync::Mutex` is.

pub use std::sync::{LockResult, PoisonError, TryLockError, TryLockResult};

/// [`Barrier::wait`](crate::Barrier::wait) failed: the barrier is broken.
///
/// A barrier breaks when a waiter times out, when
/// [`abort`](crate::Barrier::abort) is called, when
/// [`reset`](crate::Barrier::reset) is called while parties wait, or when
/// its action panics. Every party waiting at that moment, and every one
/// that arrives until the barrier is reset, gets this error. Python's
/// `BrokenBarrierError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the barrier is broken")]
#[non_exhaustive]
pub struct BrokenBarrier;

/// A semaphore was released more times than it allows.
///
/// A [`BoundedSemaphore`](crate::BoundedSemaphore) refuses to go above its
/// initial value; a [`Semaphore`](crate::Semaphore) refuses to go above
/// `u32::MAX`. Python's `ValueError: semaphore or lock released too many
/// times`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("semaphore released too many times (its limit is {limit})")]
#[non_exhaustive]
pub struct ReleaseError {
    /// The value the semaphore may not exceed.
    pub limit: u32,
}
