//! [`Condition`]: a condition variable over its own lock, shared between
//! processes.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shm::Kind;
use crate::shm::park::{Park, deadline_after, slice};
use crate::shm::raw;
use crate::sync::error::{LockResult, PoisonError, TryLockResult};
use crate::sync::lock::{Lock, LockGuard};
use crate::sys::futex;

/// Waiters that no notification has picked yet.
const WAITERS: usize = raw::END;
/// Notifications given and not yet taken by a waiter.
const TOKENS: usize = raw::END + 4;
/// Bumped by every notification; waiters sleep on it (the futex word).
const SEQ: usize = raw::END + 8;
const LEN: usize = raw::END + 16;

/// How long a waiter that stops waiting gives a notifier, caught between
/// its two steps, to finish; past that, another process zeroed the counts
/// and there is nothing to take down.
const LEAVE_PATIENCE: Duration = Duration::from_secs(1);

/// A condition variable that any number of processes can share: Python's
/// `multiprocessing.Condition`, in the shape of `std::sync::Condvar` with
/// its lock built in.
///
/// Take the lock with [`lock`](Self::lock), check the shared state, and if
/// it is not ready, hand the guard to [`wait`](Self::wait), which releases
/// the lock, sleeps until a notification, and takes the lock back.
///
/// Notifications are counted exactly, as in Python:
/// [`notify(n)`](Self::notify) wakes `n` of the parties waiting at that
/// moment (all of them if fewer wait), [`notify_one`](Self::notify_one)
/// one and [`notify_all`](Self::notify_all) every one. A notification with
/// nobody waiting is lost, not saved for later. There are no spurious
/// wake-ups; still, re-check the condition after waking, since another
/// party may have changed the state first.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// async fn wait_for_go(cond: mp::Condition) {
///     let guard = cond.lock().await.unwrap();
///     let _guard = cond.wait(guard).await.unwrap();
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let cond = mp::Condition::new()?;
///     let p = mp::Process::new(wait_for_go, cond.clone());
///     p.start().await?;
///     while cond.waiters() == 0 {
///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
///     }
///     cond.notify_one();
///     p.join().await?;
///     Ok(())
/// }
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Condition {
    #[serde(with = "condition_lock")]
    lock: Lock,
}

/// The condition's lock travels as a lock of kind `Condition`, whose
/// segment also holds the condition's words.
mod condition_lock {
    use super::*;
    use crate::shm::Segment;
    use crate::shm::raw::RawLock;

    pub(super) fn serialize<S: serde::Serializer>(lock: &Lock, s: S) -> Result<S::Ok, S::Error> {
        lock.raw.seg.serialize(s)
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Lock, D::Error> {
        let seg = Segment::deserialize(d, Kind::Condition, LEN)?;
        Ok(Lock {
            raw: RawLock { seg },
        })
    }
}

/// Whether a timed wait on a [`Condition`] ended by timing out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitTimeoutResult(bool);

impl WaitTimeoutResult {
    /// True if the wait ended because its time ran out, with no
    /// notification taken (Python's `wait(timeout)` returning `False`).
    pub fn timed_out(&self) -> bool {
        self.0
    }
}

/// Takes the waiter's place out of the count when a waiting future is
/// dropped before it was notified.
struct Registration<'a> {
    cond: &'a Condition,
    active: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.active {
            // Dropped mid-wait: leave a pending notification to the others.
            self.cond.leave(false);
        }
    }
}

impl Condition {
    /// Creates a condition variable with a new lock.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created.
    pub fn new() -> std::io::Result<Condition> {
        Ok(Condition {
            lock: Lock::with_kind(Kind::Condition, LEN)?,
        })
    }

    fn word(&self, offset: usize) -> &AtomicU32 {
        self.lock.raw.seg.u32(offset)
    }

    /// Waits for the condition's lock and takes it.
    ///
    /// # Errors
    ///
    /// As [`Lock::lock`]: `Err` holding the guard when poisoned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Lock::lock`].
    #[doc(alias = "acquire")]
    pub async fn lock(&self) -> LockResult<LockGuard<'_>> {
        self.lock.lock().await
    }

    /// [`lock`](Self::lock) for synchronous code.
    ///
    /// # Errors
    ///
    /// As [`Lock::blocking_lock`].
    pub fn blocking_lock(&self) -> LockResult<LockGuard<'_>> {
        self.lock.blocking_lock()
    }

    /// Takes the condition's lock if it is free.
    ///
    /// # Errors
    ///
    /// As [`Lock::try_lock`].
    pub fn try_lock(&self) -> TryLockResult<LockGuard<'_>> {
        self.lock.try_lock()
    }

    /// The condition's lock, for its other methods.
    pub fn as_lock(&self) -> &Lock {
        &self.lock
    }

    /// How many parties wait and have not been picked by a notification.
    pub fn waiters(&self) -> u32 {
        self.word(WAITERS).load(Ordering::SeqCst)
    }

    fn check_guard(&self, guard: &LockGuard<'_>) {
        assert!(
            self.lock.owns(guard),
            "Condition::wait was given the guard of another lock"
        );
    }

    /// Counts this party as a waiter, then releases the lock.
    fn enter(&self, guard: LockGuard<'_>) -> u32 {
        self.check_guard(&guard);
        // Saturating: a count another process set to `u32::MAX` must not
        // wrap to 0, where this waiter could not take itself down again.
        let _ = self
            .word(WAITERS)
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(1))
            });
        let seq = self.word(SEQ).load(Ordering::SeqCst);
        drop(guard);
        seq
    }

    /// Takes a notification if one is pending.
    fn take_token(&self) -> bool {
        let tokens = self.word(TOKENS);
        let mut cur = tokens.load(Ordering::SeqCst);
        while cur > 0 {
            match tokens.compare_exchange_weak(cur, cur - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    /// Stops waiting without a notification of our own. Each waiter is
    /// counted once, either among the waiters or, once a notification
    /// picked it, among the tokens; so one of the two can always be taken
    /// down (after a notifier finishes moving a count from one to the
    /// other). With `prefer_token`, a pending notification is taken first
    /// and reported (a timed-out waiter that was notified in the meantime
    /// counts as notified); otherwise the waiter count goes first, which
    /// leaves a pending notification to another waiter.
    ///
    /// If neither count can be taken down for [`LEAVE_PATIENCE`], another
    /// process wrote over them: the waiter leaves anyway, not notified.
    fn leave(&self, prefer_token: bool) -> bool {
        let since = Instant::now();
        loop {
            if prefer_token && self.take_token() {
                return true;
            }
            let waiters = self.word(WAITERS);
            let mut cur = waiters.load(Ordering::SeqCst);
            while cur > 0 {
                match waiters.compare_exchange_weak(
                    cur,
                    cur - 1,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => return false,
                    Err(now) => cur = now,
                }
            }
            if !prefer_token && self.take_token() {
                return true;
            }
            if since.elapsed() > LEAVE_PATIENCE {
                tracing::warn!(
                    "a condition's waiter and notification counts were both zero \
                     while a waiter left; another process wrote over them"
                );
                return false;
            }
            // A notifier is between its two steps: let it finish.
            std::thread::yield_now();
        }
    }

    fn park(seq: u32) -> Park {
        Park {
            word: SEQ,
            expected: seq,
            waiters: None,
        }
    }

    fn relock<'a, T>(
        &'a self,
        notified: bool,
        wrap: impl FnOnce(LockGuard<'a>, bool) -> T,
        guard: LockResult<LockGuard<'a>>,
    ) -> LockResult<T> {
        match guard {
            Ok(g) => Ok(wrap(g, notified)),
            Err(p) => Err(PoisonError::new(wrap(p.into_inner(), notified))),
        }
    }

    fn wait_blocking_until<'a>(
        &'a self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        let mut seq = self.enter(guard);
        let notified = loop {
            if self.take_token() {
                break true;
            }
            let Some(timeout) = slice(deadline) else {
                break self.leave(true);
            };
            Self::park(seq).blocking(&self.lock.raw.seg, timeout);
            seq = self.word(SEQ).load(Ordering::SeqCst);
        };
        let relocked = self.lock.blocking_lock();
        self.relock(notified, |g, n| (g, WaitTimeoutResult(!n)), relocked)
    }

    async fn wait_until<'a>(
        &'a self,
        guard: LockGuard<'a>,
        deadline: Option<Instant>,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        let mut seq = self.enter(guard);
        let mut registration = Registration {
            cond: self,
            active: true,
        };
        let notified = loop {
            if self.take_token() {
                break true;
            }
            let Some(timeout) = slice(deadline) else {
                break self.leave(true);
            };
            Self::park(seq).sleep(&self.lock.raw.seg, timeout).await;
            seq = self.word(SEQ).load(Ordering::SeqCst);
        };
        registration.active = false;
        let relocked = self.lock.lock().await;
        self.relock(notified, |g, n| (g, WaitTimeoutResult(!n)), relocked)
    }

    /// Releases the lock held by `guard`, waits for a notification, and
    /// takes the lock back.
    ///
    /// # Errors
    ///
    /// `Err` holding the new guard if the lock is poisoned when it is
    /// taken back.
    ///
    /// # Panics
    ///
    /// If `guard` holds a lock other than this condition's.
    ///
    /// # Cancel safety
    ///
    /// The lock is released on the first poll (or when the future is
    /// dropped unpolled), so a future dropped before it completes leaves
    /// the lock released, not held: the caller has given up its guard. A
    /// dropped waiter does not swallow a notification: one that picked it
    /// goes to another waiter.
    pub async fn wait<'a>(&'a self, guard: LockGuard<'a>) -> LockResult<LockGuard<'a>> {
        self.wait_until(guard, None)
            .await
            .map(|(g, _)| g)
            .map_err(|p| PoisonError::new(p.into_inner().0))
    }

    /// [`wait`](Self::wait) for synchronous code: waits on this thread.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn blocking_wait<'a>(&'a self, guard: LockGuard<'a>) -> LockResult<LockGuard<'a>> {
        self.wait_blocking_until(guard, None)
            .map(|(g, _)| g)
            .map_err(|p| PoisonError::new(p.into_inner().0))
    }

    /// Like [`wait`](Self::wait), but stops waiting after about `timeout`;
    /// the lock is taken back either way. The second value tells whether
    /// the wait timed out.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        self.wait_until(guard, deadline_after(timeout)).await
    }

    /// [`wait_timeout`](Self::wait_timeout) for synchronous code.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn blocking_wait_timeout<'a>(
        &'a self,
        guard: LockGuard<'a>,
        timeout: Duration,
    ) -> LockResult<(LockGuard<'a>, WaitTimeoutResult)> {
        self.wait_blocking_until(guard, deadline_after(timeout))
    }

    /// Wakes `n` of the parties waiting now (all of them if fewer wait).
    /// Returns how many it picked.
    ///
    /// Python requires the lock to be held for this; here it need not be,
    /// but holding it is what makes "the parties waiting now" well
    /// defined for the caller.
    pub fn notify(&self, n: u32) -> u32 {
        let waiters = self.word(WAITERS);
        let mut cur = waiters.load(Ordering::SeqCst);
        let picked = loop {
            if cur == 0 || n == 0 {
                return 0;
            }
            let k = cur.min(n);
            match waiters.compare_exchange_weak(cur, cur - k, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break k,
                Err(now) => cur = now,
            }
        };
        self.word(TOKENS).fetch_add(picked, Ordering::SeqCst);
        self.word(SEQ).fetch_add(1, Ordering::SeqCst);
        futex::wake(self.word(SEQ), picked);
        picked
    }

    /// Wakes one waiting party, if any.
    pub fn notify_one(&self) -> u32 {
        self.notify(1)
    }

    /// Wakes every party waiting now.
    pub fn notify_all(&self) -> u32 {
        self.notify(u32::MAX)
    }
}

impl fmt::Debug for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Condition")
            .field("lock", &self.lock)
            .field("waiters", &self.waiters())
            .finish()
    }
}

/// Lays a fuzz input over a condition's counts, then notifies and waits
/// without sleeping (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static COND: OnceLock<Condition> = OnceLock::new();
    let c = COND.get_or_init(|| Condition::new().expect("a condition"));
    for word in [WAITERS, TOKENS, SEQ] {
        c.word(word).store(input.u32(), Ordering::SeqCst);
    }
    let ops = input.u8();
    for i in 0..4 {
        match ops >> (2 * i) & 3 {
            0 => {
                let _ = c.notify(input.u32());
            }
            1 => {
                let _ = c.notify_all();
            }
            _ => {
                let guard = c.blocking_lock().unwrap_or_else(|p| p.into_inner());
                let relocked = c.blocking_wait_timeout(guard, Duration::ZERO);
                drop(relocked);
            }
        }
        let _ = c.waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread; `None` if it did not finish within `limit`
    /// (the thread is left behind).
    fn within<R: Send + 'static>(
        limit: Duration,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(limit).ok()
    }

    #[test]
    fn a_waiter_whose_counts_were_zeroed_still_times_out() {
        let cond = Condition::new().unwrap();
        let waiter = cond.clone();
        let (entered_tx, entered_rx) = std::sync::mpsc::channel();
        let done = std::thread::spawn(move || {
            let guard = waiter.blocking_lock().unwrap();
            entered_tx.send(()).unwrap();
            let (_guard, timeout) = waiter
                .blocking_wait_timeout(guard, Duration::from_millis(300))
                .unwrap();
            timeout.timed_out()
        });
        entered_rx.recv().unwrap();
        // Once it waits, another process zeroes both counts.
        while cond.waiters() == 0 {
            std::thread::yield_now();
        }
        cond.word(WAITERS).store(0, Ordering::SeqCst);
        cond.word(TOKENS).store(0, Ordering::SeqCst);
        let r = within(Duration::from_secs(10), move || done.join().unwrap());
        assert_eq!(r, Some(true), "the waiter never came back");
    }

    #[test]
    fn counts_at_their_limit_do_not_panic() {
        let cond = Condition::new().unwrap();
        cond.word(WAITERS).store(u32::MAX, Ordering::SeqCst);
        cond.word(TOKENS).store(u32::MAX, Ordering::SeqCst);
        let c = cond.clone();
        let r = within(Duration::from_secs(10), move || {
            let n = c.notify_all();
            let guard = c.blocking_lock().unwrap();
            let (_g, t) = c
                .blocking_wait_timeout(guard, Duration::from_millis(10))
                .unwrap();
            (n, t.timed_out())
        });
        assert_eq!(r, Some((u32::MAX, false)), "a stale token is taken");
    }

    #[test]
    fn a_waiter_count_at_its_limit_does_not_wrap() {
        let cond = Condition::new().unwrap();
        cond.word(WAITERS).store(u32::MAX, Ordering::SeqCst);
        let c = cond.clone();
        let r = within(Duration::from_secs(10), move || {
            let guard = c.blocking_lock().unwrap();
            let t0 = Instant::now();
            let (_g, t) = c
                .blocking_wait_timeout(guard, Duration::from_millis(10))
                .unwrap();
            (t.timed_out(), t0.elapsed())
        });
        let (timed_out, took) = r.expect("the waiter never came back");
        assert!(timed_out);
        assert!(took < Duration::from_millis(500), "{took:?}");
    }
}
