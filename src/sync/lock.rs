//! [`Lock`]: a mutual-exclusion lock shared between processes.

use std::fmt;
use std::time::Duration;

use crate::shm::park::deadline_after;
use crate::shm::raw::{self, RawLock, Taken};
use crate::shm::{Kind, segment_serde};
use crate::sync::error::{LockResult, PoisonError, TryLockError, TryLockResult};
use crate::sys::proc;

const LEN: usize = raw::END;

/// A lock that any number of processes can share: Python's
/// `multiprocessing.Lock`, with the shapes of `std::sync::Mutex` and
/// `tokio::sync::Mutex`.
///
/// The lock lives in shared memory. Cloning the handle, or sending it to a
/// child inside a target's arguments, shares the same lock. Locking and
/// unlocking a free lock is a few atomic operations, with no system call;
/// a contended locker sleeps on a futex (an `async` one on a blocking
/// thread, never on a Tokio worker).
///
/// The guard releases the lock when dropped, in whichever thread that
/// happens. Unlike Python's lock, this one cannot be released by a process
/// that does not hold its guard.
///
/// # Poisoning
///
/// A process that dies holding the lock (killed, exited, crashed) does not
/// deadlock the others: a waiter notices within about 50 ms that the
/// holder is gone (by its pid and start time), takes the lock over and
/// receives it as `Err(PoisonError)`, whose
/// [`into_inner`](PoisonError::into_inner) is the guard. A holder that
/// panics poisons the lock too, as with `std::sync::Mutex`. Every later
/// locker gets `Err` as well, until [`clear_poison`](Self::clear_poison).
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn count(lock: mp::Lock) {
///     let _guard = lock.blocking_lock().unwrap();
///     println!("{} has the lock", std::process::id());
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let lock = mp::Lock::new()?;
///     let guard = lock.lock().await.unwrap();
///     let p = mp::Process::new(count, lock.clone());
///     p.start().await?;
///     // The child waits until we let go.
///     drop(guard);
///     p.join().await?;
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Lock {
    pub(crate) raw: RawLock,
}

segment_serde!(
    Lock,
    Kind::Lock,
    LEN,
    |seg| Lock {
        raw: RawLock { seg }
    },
    raw.seg
);

/// Holds a [`Lock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    pub(crate) lock: &'a Lock,
    panicking: bool,
}

impl Lock {
    /// Creates a new, unlocked lock.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created (out of memory or
    /// descriptors).
    pub fn new() -> std::io::Result<Lock> {
        Self::with_kind(Kind::Lock, LEN)
    }

    pub(crate) fn with_kind(kind: Kind, len: usize) -> std::io::Result<Lock> {
        Ok(Lock {
            raw: RawLock::create(kind, len)?,
        })
    }

    fn guard(&self, taken: Taken) -> LockResult<LockGuard<'_>> {
        let guard = LockGuard {
            lock: self,
            panicking: std::thread::panicking(),
        };
        if taken == Taken::FromTheDead || self.raw.is_poisoned() {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    fn try_guard(&self, taken: Option<Taken>) -> TryLockResult<LockGuard<'_>> {
        match taken {
            None => Err(TryLockError::WouldBlock),
            Some(taken) => self.guard(taken).map_err(TryLockError::Poisoned),
        }
    }

    /// Waits for the lock and takes it.
    ///
    /// # Errors
    ///
    /// `Err(PoisonError)` holding the guard if the lock is poisoned: its
    /// previous holder died or panicked holding it (see the type's docs).
    /// The lock is held either way.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the lock is taken only in the poll that returns the
    /// guard, so a dropped future holds nothing. Its sleep on a blocking
    /// thread ends by itself within about 50 ms.
    #[doc(alias = "acquire")]
    pub async fn lock(&self) -> LockResult<LockGuard<'_>> {
        let taken = self.raw.lock_async(None).await;
        self.guard(taken.unwrap_or(Taken::Clean))
    }

    /// Waits for the lock on this thread and takes it; for synchronous
    /// code such as a target without a runtime.
    ///
    /// Do not call it on a Tokio worker thread: it blocks the thread.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn blocking_lock(&self) -> LockResult<LockGuard<'_>> {
        let me = proc::me();
        if self.raw.try_lock(me) {
            return self.guard(Taken::Clean);
        }
        let taken = self.raw.lock_blocking(me, None);
        self.guard(taken.unwrap_or(Taken::Clean))
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if another holder has it (Python's
    /// `acquire(False)` returning `False`), [`TryLockError::Poisoned`] with
    /// the guard if it was free but is poisoned.
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        let me = proc::me();
        if self.raw.try_lock(me) {
            self.try_guard(Some(Taken::Clean))
        } else {
            self.try_guard(None)
        }
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] after about `timeout` if the lock is
    /// still held; [`TryLockError::Poisoned`] with the guard as in
    /// [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        let taken = self.raw.lock_async(deadline_after(timeout)).await;
        self.try_guard(taken)
    }

    /// [`lock_timeout`](Self::lock_timeout) for synchronous code: waits on
    /// this thread.
    ///
    /// # Errors
    ///
    /// As [`lock_timeout`](Self::lock_timeout).
    pub fn blocking_lock_timeout(&self, timeout: Duration) -> TryLockResult<LockGuard<'_>> {
        let taken = self.raw.lock_blocking(proc::me(), deadline_after(timeout));
        self.try_guard(taken)
    }

    /// Whether a holder died or panicked holding the lock since the last
    /// [`clear_poison`](Self::clear_poison). Seen by every process.
    pub fn is_poisoned(&self) -> bool {
        self.raw.is_poisoned()
    }

    /// Clears the poison mark, for every process.
    pub fn clear_poison(&self) {
        self.raw.set_poison(false);
    }

    /// Whether some process holds the lock right now (it may be released
    /// the next instant).
    pub fn is_locked(&self) -> bool {
        self.raw.holder_pid().is_some()
    }

    /// Whether `guard` holds this lock (the same shared lock, through any
    /// handle).
    pub(crate) fn owns(&self, guard: &LockGuard<'_>) -> bool {
        guard.lock.raw.seg.id() == self.raw.seg.id()
    }
}

impl Drop for LockGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if !self.panicking && std::thread::panicking() {
            self.lock.raw.set_poison(true);
        }
        self.lock.raw.unlock();
    }
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("holder", &self.raw.holder_pid())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard").finish_non_exhaustive()
    }
}
