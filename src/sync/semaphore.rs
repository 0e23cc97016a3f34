//! [`Semaphore`] and [`BoundedSemaphore`]: counters of permits shared
//! between processes.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::shm::park::{Park, deadline_after, slice};
use crate::shm::{HEADER, Kind, Segment, segment_serde};
use crate::sync::error::ReleaseError;
use crate::sys::futex;

/// The number of free permits (the futex word).
const VALUE: usize = HEADER;
/// How many threads sleep waiting for a permit.
const WAITERS: usize = HEADER + 4;
/// The bound of a bounded semaphore, `u32::MAX` for an unbounded one.
const LIMIT: usize = HEADER + 8;
const LEN: usize = HEADER + 16;

/// The machinery both semaphores share.
#[derive(Clone)]
struct Core {
    seg: Segment,
    /// The bound, kept here: another process could rewrite the segment's
    /// copy, which only a child receiving the semaphore reads.
    limit: u32,
}

impl Core {
    fn create(kind: Kind, value: u32, limit: u32) -> std::io::Result<Core> {
        let seg = Segment::create(kind, LEN)?;
        seg.u32(LIMIT).store(limit, Ordering::Relaxed);
        seg.u32(VALUE).store(value, Ordering::Release);
        Ok(Core { seg, limit })
    }

    /// The handle of a segment received from the parent.
    fn received(seg: Segment, unbounded: bool) -> Core {
        let limit = if unbounded {
            u32::MAX
        } else {
            seg.u32(LIMIT).load(Ordering::Acquire)
        };
        Core { seg, limit }
    }

    #[inline]
    fn value(&self) -> &AtomicU32 {
        self.seg.u32(VALUE)
    }

    fn limit(&self) -> u32 {
        self.limit
    }

    /// Takes a permit if one is free.
    #[inline]
    fn try_take(&self) -> bool {
        let value = self.value();
        let mut cur = value.load(Ordering::Relaxed);
        while cur > 0 {
            match value.compare_exchange_weak(cur, cur - 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
        false
    }

    fn park() -> Park {
        Park {
            word: VALUE,
            expected: 0,
            waiters: Some(WAITERS),
        }
    }

    fn take_blocking(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.try_take() {
                return true;
            }
            let Some(timeout) = slice(deadline) else {
                return false;
            };
            Self::park().blocking(&self.seg, timeout);
        }
    }

    async fn take_async(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.try_take() {
                return true;
            }
            let Some(timeout) = slice(deadline) else {
                return false;
            };
            Self::park().sleep(&self.seg, timeout).await;
        }
    }

    /// Adds a permit unless that would pass the limit.
    fn give(&self) -> Result<(), ReleaseError> {
        let limit = self.limit();
        let value = self.value();
        let mut cur = value.load(Ordering::Relaxed);
        loop {
            if cur >= limit {
                return Err(ReleaseError { limit });
            }
            match value.compare_exchange_weak(cur, cur + 1, Ordering::SeqCst, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if self.seg.u32(WAITERS).load(Ordering::SeqCst) > 0 {
            futex::wake(value, 1);
        }
        Ok(())
    }

    fn debug(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("value", &self.value().load(Ordering::Relaxed))
            .finish()
    }
}

/// A permit taken from a [`Semaphore`] or [`BoundedSemaphore`]; given back
/// when dropped.
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct SemaphorePermit<'a> {
    core: &'a Core,
}

impl SemaphorePermit<'_> {
    /// Keeps the permit taken for good: dropping it no longer gives it
    /// back (Python's `acquire()` without a matching `release()`).
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphorePermit<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.core.give() {
            // Only possible when `release()` was called while permits
            // were out, past the bound: the bound wins.
            tracing::warn!(error = %e, "a semaphore permit was not given back");
        }
    }
}

impl fmt::Debug for SemaphorePermit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SemaphorePermit").finish_non_exhaustive()
    }
}

macro_rules! semaphore_methods {
    () => {
        /// Waits for a permit and takes it.
        ///
        /// # Cancel safety
        ///
        /// Cancel safe: a permit is taken only in the poll that returns
        /// it. A dropped future's sleep on a blocking thread ends by itself
        /// within about 50 ms; if a wake-up was meant for it, another
        /// waiter gets the permit within that time.
        pub async fn acquire(&self) -> SemaphorePermit<'_> {
            self.core.take_async(None).await;
            SemaphorePermit { core: &self.core }
        }

        /// [`acquire`](Self::acquire) for synchronous code: waits on this
        /// thread.
        pub fn blocking_acquire(&self) -> SemaphorePermit<'_> {
            self.core.take_blocking(None);
            SemaphorePermit { core: &self.core }
        }

        /// Takes a permit if one is free, without waiting.
        pub fn try_acquire(&self) -> Option<SemaphorePermit<'_>> {
            self.core
                .try_take()
                .then(|| SemaphorePermit { core: &self.core })
        }

        /// Waits at most `timeout` for a permit; `None` after about
        /// `timeout` if none came free.
        ///
        /// # Cancel safety
        ///
        /// Cancel safe, as [`acquire`](Self::acquire).
        pub async fn acquire_timeout(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
            self.core
                .take_async(deadline_after(timeout))
                .await
                .then(|| SemaphorePermit { core: &self.core })
        }

        /// [`acquire_timeout`](Self::acquire_timeout) for synchronous code.
        pub fn blocking_acquire_timeout(&self, timeout: Duration) -> Option<SemaphorePermit<'_>> {
            self.core
                .take_blocking(deadline_after(timeout))
                .then(|| SemaphorePermit { core: &self.core })
        }

        /// The number of free permits right now (Python's `get_value()`).
        #[doc(alias = "get_value")]
        pub fn value(&self) -> u32 {
            self.core.value().load(Ordering::Relaxed)
        }
    };
}

/// A counter of permits that any number of processes can share: Python's
/// `multiprocessing.Semaphore`.
///
/// [`acquire`](Self::acquire) takes a permit, waiting while there is none;
/// the permit goes back when dropped. [`release`](Self::release) adds a
/// permit without having taken one, as Python's `release()` does. Free
/// permits are counted in shared memory; taking and giving back make no
/// system call unless someone waits.
///
/// A process that dies holding permits does not give them back (Python's
/// semaphores behave the same): see `docs/sync.md`.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// async fn worker(slots: mp::Semaphore) {
///     let _permit = slots.acquire().await; // at most 2 workers at a time
///     tokio::time::sleep(std::time::Duration::from_millis(100)).await;
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let slots = mp::Semaphore::new(2)?;
///     let mut ps = Vec::new();
///     for _ in 0..5 {
///         ps.push(mp::Process::builder().spawn(worker, slots.clone()).await?);
///     }
///     for p in ps {
///         p.join().await?;
///     }
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Semaphore {
    core: Core,
}

segment_serde!(
    Semaphore,
    Kind::Semaphore,
    LEN,
    |seg| Semaphore {
        core: Core::received(seg, true)
    },
    core.seg
);

impl Semaphore {
    /// Creates a semaphore with `permits` free permits.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created.
    pub fn new(permits: u32) -> std::io::Result<Semaphore> {
        Ok(Semaphore {
            core: Core::create(Kind::Semaphore, permits, u32::MAX)?,
        })
    }

    semaphore_methods!();

    /// Adds a permit, waking one waiter if any.
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] if the count is at `u32::MAX`.
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.core.give()
    }
}

/// A [`Semaphore`] that refuses to be released past its initial value:
/// Python's `multiprocessing.BoundedSemaphore`.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing as mp;
///
/// # fn main() -> mp::Result<()> {
/// let sem = mp::BoundedSemaphore::new(1)?;
/// let permit = sem.try_acquire().expect("a free permit");
/// assert!(sem.try_acquire().is_none());
/// drop(permit);
/// assert!(sem.release().is_err(), "already at its bound");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct BoundedSemaphore {
    core: Core,
}

segment_serde!(
    BoundedSemaphore,
    Kind::BoundedSemaphore,
    LEN,
    |seg| BoundedSemaphore {
        core: Core::received(seg, false)
    },
    core.seg
);

impl BoundedSemaphore {
    /// Creates a semaphore with `permits` free permits, which is also its
    /// bound.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created.
    pub fn new(permits: u32) -> std::io::Result<BoundedSemaphore> {
        Ok(BoundedSemaphore {
            core: Core::create(Kind::BoundedSemaphore, permits, permits)?,
        })
    }

    semaphore_methods!();

    /// Adds a permit, waking one waiter if any.
    ///
    /// # Errors
    ///
    /// [`ReleaseError`] if that would take the count past the initial
    /// value; the count is left as it was.
    pub fn release(&self) -> Result<(), ReleaseError> {
        self.core.give()
    }

    /// The bound: the initial number of permits.
    pub fn max_value(&self) -> u32 {
        self.core.limit()
    }
}

impl fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug("Semaphore", f)
    }
}

impl fmt::Debug for BoundedSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.core.debug("BoundedSemaphore", f)
    }
}

/// Lays a fuzz input over a semaphore's words (the bound's too), then
/// takes and gives permits without sleeping (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static SEMS: OnceLock<(Semaphore, BoundedSemaphore)> = OnceLock::new();
    let (plain, bounded) = SEMS.get_or_init(|| {
        (
            Semaphore::new(1).expect("a semaphore"),
            BoundedSemaphore::new(2).expect("a semaphore"),
        )
    });
    let core = if input.u8() & 1 == 0 {
        &plain.core
    } else {
        &bounded.core
    };
    for word in [VALUE, WAITERS, LIMIT] {
        core.seg.u32(word).store(input.u32(), Ordering::SeqCst);
    }
    let ops = input.u8();
    for i in 0..4 {
        match ops >> (2 * i) & 3 {
            0 => {
                if core.try_take() {
                    let _ = core.give();
                }
            }
            1 => {
                let _ = core.take_blocking(Some(Instant::now()));
            }
            2 => {
                if core.give().is_ok() {
                    assert!(core.value().load(Ordering::SeqCst) >= 1);
                }
            }
            _ => {
                let _ = format!("{plain:?} {bounded:?}");
            }
        }
    }
    assert_eq!(bounded.max_value(), 2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_rewritten_by_another_process_changes_nothing_here() {
        let sem = BoundedSemaphore::new(1).unwrap();
        sem.core.seg.u32(LIMIT).store(u32::MAX, Ordering::Relaxed);
        assert!(sem.release().is_err(), "released past the bound");
        assert_eq!(sem.max_value(), 1);
        let plain = Semaphore::new(0).unwrap();
        plain.core.seg.u32(LIMIT).store(0, Ordering::Relaxed);
        assert!(
            plain.release().is_ok(),
            "an unbounded semaphore got a bound"
        );
    }

    #[test]
    fn the_extremes_of_the_permit_count_work() {
        let sem = Semaphore::new(u32::MAX).unwrap();
        assert!(sem.release().is_err());
        sem.try_acquire().unwrap().forget();
        assert!(sem.release().is_ok());
        let none = BoundedSemaphore::new(0).unwrap();
        assert!(none.try_acquire().is_none());
        assert!(none.release().is_err());
    }
}
