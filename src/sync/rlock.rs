//! [`RLock`]: a re-entrant lock shared between processes.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::shm::park::deadline_after;
use crate::shm::raw::{self, RawLock, Taken};
use crate::shm::{Kind, segment_serde};
use crate::sync::error::{LockResult, PoisonError, TryLockError, TryLockResult};
use crate::sys::proc;

/// The owning thread's token (0 when free).
const THREAD: usize = raw::END;
/// How many guards the owner holds.
const COUNT: usize = raw::END + 8;
const LEN: usize = raw::END + 16;

/// A process-wide counter that names threads; a token is never reused
/// within a process, and a pid tells processes apart.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static TOKEN: u64 = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
}

fn thread_token() -> u64 {
    TOKEN.with(|t| *t)
}

/// A re-entrant lock that any number of processes can share: Python's
/// `multiprocessing.RLock`.
///
/// It is owned by one thread of one process at a time. The owner may lock
/// it again without waiting; each lock gives a guard, and the lock is free
/// again when the owner has dropped as many guards as it took. Another
/// thread, in this process or another, waits until then.
///
/// The guard is `!Send`: it can only be dropped by the thread that took
/// it, which is what keeps the ownership honest (Python raises when
/// another thread releases; here that cannot be written). A future that
/// holds a guard across an `.await` is therefore `!Send` too; use a
/// current-thread runtime or a `LocalSet` for that, or a
/// [`Lock`](crate::Lock).
///
/// Everything else is as for [`Lock`](crate::Lock): shared memory, no
/// system call uncontended, and poisoning when a holder dies or panics.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn nested(lock: mp::RLock) -> u32 {
///     let _outer = lock.blocking_lock().unwrap();
///     let _inner = lock.blocking_lock().unwrap(); // same thread: no wait
///     lock.count()
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let lock = mp::RLock::new()?;
///     let p = mp::Process::new(nested, lock.clone());
///     p.start().await?;
///     assert_eq!(p.join().await?, 2);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct RLock {
    raw: RawLock,
}

segment_serde!(
    RLock,
    Kind::RLock,
    LEN,
    |seg| RLock {
        raw: RawLock { seg }
    },
    raw.seg
);

/// Holds an [`RLock`] once; the lock is released when its owner has
/// dropped every guard. Not `Send`: it belongs to the thread that took it.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    panicking: bool,
    _not_send: PhantomData<*const ()>,
}

impl RLock {
    /// Creates a new, unlocked re-entrant lock.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created.
    pub fn new() -> std::io::Result<RLock> {
        Ok(RLock {
            raw: RawLock::create(Kind::RLock, LEN)?,
        })
    }

    fn count_word(&self) -> &std::sync::atomic::AtomicU32 {
        self.raw.seg.u32(COUNT)
    }

    /// Whether the calling thread owns the lock.
    pub fn is_owned(&self) -> bool {
        self.raw.held_by_pid(proc::me().pid)
            && self.raw.seg.u64(THREAD).load(Ordering::Relaxed) == thread_token()
    }

    /// How many guards the owner holds (0 when the lock is free). Exact
    /// only when read by the owner.
    #[doc(alias = "_count")]
    pub fn count(&self) -> u32 {
        if self.raw.holder_pid().is_none() {
            0
        } else {
            self.count_word().load(Ordering::Relaxed)
        }
    }

    /// Re-enters if this thread owns the lock. Only the owner writes the
    /// owner's words, so plain loads and stores suffice.
    ///
    /// A count at `u32::MAX` cannot come from this thread's guards (it
    /// would hold four billion): another process wrote it. The lock is
    /// then poisoned and the guard comes in a `PoisonError`; the count
    /// stays where it is.
    fn reenter(&self) -> Option<LockResult<RLockGuard<'_>>> {
        if !self.is_owned() {
            return None;
        }
        let count = self.count_word().load(Ordering::Relaxed);
        match count.checked_add(1) {
            Some(next) => self.count_word().store(next, Ordering::Relaxed),
            None => {
                tracing::warn!("an RLock's count was at its limit; the lock is now poisoned");
                self.raw.set_poison(true);
            }
        }
        Some(self.guard(Taken::Clean))
    }

    /// Records this thread as the new owner of a lock just taken.
    fn own(&self, taken: Taken) -> LockResult<RLockGuard<'_>> {
        self.raw
            .seg
            .u64(THREAD)
            .store(thread_token(), Ordering::Relaxed);
        self.count_word().store(1, Ordering::Relaxed);
        self.guard(taken)
    }

    fn guard(&self, taken: Taken) -> LockResult<RLockGuard<'_>> {
        let guard = RLockGuard {
            lock: self,
            panicking: std::thread::panicking(),
            _not_send: PhantomData,
        };
        if taken == Taken::FromTheDead || self.raw.is_poisoned() {
            Err(PoisonError::new(guard))
        } else {
            Ok(guard)
        }
    }

    fn try_result(r: Option<LockResult<RLockGuard<'_>>>) -> TryLockResult<RLockGuard<'_>> {
        match r {
            None => Err(TryLockError::WouldBlock),
            Some(r) => r.map_err(TryLockError::Poisoned),
        }
    }

    fn acquire_blocking(&self, deadline: Option<Instant>) -> Option<LockResult<RLockGuard<'_>>> {
        if let Some(g) = self.reenter() {
            return Some(g);
        }
        let taken = self.raw.lock_blocking(proc::me(), deadline)?;
        Some(self.own(taken))
    }

    async fn acquire_async(&self, deadline: Option<Instant>) -> Option<LockResult<RLockGuard<'_>>> {
        // Ownership is decided by the thread of the poll that takes the
        // lock, which is the poll that returns the guard.
        if let Some(g) = self.reenter() {
            return Some(g);
        }
        let taken = self.raw.lock_async(deadline).await?;
        Some(self.own(taken))
    }

    /// Takes the lock, waiting while another thread or process owns it; at
    /// once if this thread already does.
    ///
    /// # Errors
    ///
    /// `Err(PoisonError)` holding the guard if the lock is poisoned (see
    /// [`Lock`](crate::Lock)). The lock is held either way.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the lock is taken only in the poll that returns the
    /// guard.
    #[doc(alias = "acquire")]
    pub async fn lock(&self) -> LockResult<RLockGuard<'_>> {
        self.acquire_async(None)
            .await
            .expect("a wait without deadline ends with the lock")
    }

    /// [`lock`](Self::lock) for synchronous code: waits on this thread.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn blocking_lock(&self) -> LockResult<RLockGuard<'_>> {
        self.acquire_blocking(None)
            .expect("a wait without deadline ends with the lock")
    }

    /// Takes the lock if this thread owns it or nobody does, without
    /// waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if another thread or process owns it;
    /// [`TryLockError::Poisoned`] with the guard if it is poisoned.
    pub fn try_lock(&self) -> TryLockResult<RLockGuard<'_>> {
        if let Some(g) = self.reenter() {
            return Self::try_result(Some(g));
        }
        let me = proc::me();
        let r = self.raw.try_lock(me).then(|| self.own(Taken::Clean));
        Self::try_result(r)
    }

    /// Waits at most `timeout` for the lock.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] after about `timeout`;
    /// [`TryLockError::Poisoned`] as in [`lock`](Self::lock).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    pub async fn lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        Self::try_result(self.acquire_async(deadline_after(timeout)).await)
    }

    /// [`lock_timeout`](Self::lock_timeout) for synchronous code.
    ///
    /// # Errors
    ///
    /// As [`lock_timeout`](Self::lock_timeout).
    pub fn blocking_lock_timeout(&self, timeout: Duration) -> TryLockResult<RLockGuard<'_>> {
        Self::try_result(self.acquire_blocking(deadline_after(timeout)))
    }

    /// Whether an owner died or panicked holding the lock since the last
    /// [`clear_poison`](Self::clear_poison).
    pub fn is_poisoned(&self) -> bool {
        self.raw.is_poisoned()
    }

    /// Clears the poison mark, for every process.
    pub fn clear_poison(&self) {
        self.raw.set_poison(false);
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        if !self.panicking && std::thread::panicking() {
            self.lock.raw.set_poison(true);
        }
        if !self.lock.is_owned() {
            // Released already, because another process lowered the count
            // under this thread's guards: the lock may be someone else's.
            return;
        }
        let word = self.lock.count_word();
        let count = word.load(Ordering::Relaxed).saturating_sub(1);
        if count == 0 {
            self.lock.raw.seg.u64(THREAD).store(0, Ordering::Relaxed);
            word.store(0, Ordering::Relaxed);
            self.lock.raw.unlock();
        } else {
            word.store(count, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for RLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLock")
            .field("holder", &self.raw.holder_pid())
            .field("count", &self.count())
            .field("poisoned", &self.is_poisoned())
            .finish()
    }
}

impl fmt::Debug for RLockGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RLockGuard").finish_non_exhaustive()
    }
}

/// Takes an RLock, lays a fuzz input over its owner's words, then locks
/// again and lets go (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static LOCK: OnceLock<RLock> = OnceLock::new();
    let lock = LOCK.get_or_init(|| RLock::new().expect("an RLock"));
    {
        let outer = lock.blocking_lock().unwrap_or_else(|p| p.into_inner());
        let thread = input.u64();
        // Often this thread's own token, so that re-entry is reached.
        let thread = if thread >> 63 == 0 {
            thread_token()
        } else {
            thread
        };
        lock.raw.seg.u64(THREAD).store(thread, Ordering::Relaxed);
        lock.count_word().store(input.u32(), Ordering::Relaxed);
        let ops = input.u8();
        let mut guards = Vec::new();
        for i in 0..4 {
            if ops >> i & 1 == 1 {
                match lock.try_lock() {
                    Ok(g) => guards.push(g),
                    Err(TryLockError::Poisoned(p)) => guards.push(p.into_inner()),
                    Err(TryLockError::WouldBlock) => {}
                }
            } else {
                guards.pop();
            }
            let _ = (lock.count(), lock.is_owned(), format!("{lock:?}"));
        }
        drop(guards);
        drop(outer);
    }
    // Free for the next input, whatever the words said.
    lock.raw.seg.u64(THREAD).store(0, Ordering::Relaxed);
    lock.count_word().store(0, Ordering::Relaxed);
    if lock.raw.holder_pid().is_some() {
        lock.raw.unlock();
    }
    lock.clear_poison();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn survives<R>(f: impl FnOnce() -> R) -> Option<R> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
    }

    #[test]
    fn a_count_at_its_limit_poisons_instead_of_panicking() {
        let lock = RLock::new().unwrap();
        let outer = lock.blocking_lock().unwrap();
        lock.count_word().store(u32::MAX, Ordering::Relaxed);
        let again = survives(|| lock.try_lock().is_err());
        assert_eq!(again, Some(true), "a panic, or a guard from a bad count");
        drop(outer);
    }

    #[test]
    fn a_count_lowered_by_another_process_never_releases_someone_elses_lock() {
        let lock = RLock::new().unwrap();
        let outer = lock.blocking_lock().unwrap();
        let inner = lock.blocking_lock().unwrap();
        // Another process says only one guard is out.
        lock.count_word().store(1, Ordering::Relaxed);
        drop(inner); // releases the lock: the count said it was the last
        let other = lock.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let _g = other.blocking_lock().unwrap();
            held_tx.send(()).unwrap();
            rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        drop(outer); // not the owner any more: must leave the lock alone
        assert!(
            lock.raw.holder_pid().is_some(),
            "released another thread's lock"
        );
        assert_eq!(lock.count(), 1);
        tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(lock.count(), 0);
    }
}
