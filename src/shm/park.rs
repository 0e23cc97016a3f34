//! Sleeping on a shared word, from a thread or from a task.
//!
//! A synchronous waiter sleeps in `futex::wait` on its own thread. An
//! asynchronous one must not sleep on a Tokio worker, so it sends the same
//! sleep to a blocking thread (`spawn_blocking`) and awaits it. Every sleep
//! lasts at most [`INTERVAL`]: the waiter then looks around (is the holder
//! of a lock still alive? has the deadline passed?) and sleeps again. The
//! blocking thread never takes anything: it only sleeps and returns, so a
//! waiting future that is dropped leaves nothing behind but a sleep that
//! ends within one interval.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::shm::Segment;
use crate::sys::futex::{self, Wait};

/// The longest single sleep: how often a waiter checks on a lock's holder,
/// and the longest a wake-up lost to a dropped waiter can delay another.
pub(crate) const INTERVAL: Duration = Duration::from_millis(50);

/// The length of the next sleep before `deadline`, or `None` if it has
/// passed.
pub(crate) fn slice(deadline: Option<Instant>) -> Option<Duration> {
    match deadline {
        None => Some(INTERVAL),
        Some(d) => {
            let left = d.checked_duration_since(Instant::now())?;
            if left.is_zero() {
                None
            } else {
                Some(left.min(INTERVAL))
            }
        }
    }
}

/// `now + d`, or `None` (no deadline) when that is too far to represent.
pub(crate) fn deadline_after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

/// What to sleep on: a word of a segment, while it holds `expected`,
/// counted in the waiters word `waiters` (if any) for the time of the
/// sleep, so that wakers can skip the system call when nobody sleeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Park {
    pub(crate) word: usize,
    pub(crate) expected: u32,
    pub(crate) waiters: Option<usize>,
}

impl Park {
    /// Sleeps on this thread for at most `timeout`.
    pub(crate) fn blocking(self, seg: &Segment, timeout: Duration) -> Wait {
        if let Some(w) = self.waiters {
            seg.u32(w).fetch_add(1, Ordering::SeqCst);
        }
        // With the count raised first (and both sides sequentially
        // consistent), a waker that changes the word either sees the count
        // or we see the new value here; and the kernel compares again.
        let word = seg.u32(self.word);
        let outcome = if word.load(Ordering::SeqCst) == self.expected {
            futex::wait(word, self.expected, Some(timeout))
        } else {
            Wait::Changed
        };
        if let Some(w) = self.waiters {
            seg.u32(w).fetch_sub(1, Ordering::SeqCst);
        }
        outcome
    }

    /// Sleeps on a blocking thread for at most `timeout`, without blocking
    /// the task's thread.
    ///
    /// Inside a Tokio runtime the sleep runs on its blocking pool; outside
    /// one (another executor), on a thread of its own.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the sleep takes nothing. A dropped future leaves the
    /// sleep running to its end, at most `timeout` later.
    pub(crate) async fn sleep(self, seg: &Segment, timeout: Duration) -> Wait {
        let seg = seg.clone();
        let job = move || self.blocking(&seg, timeout);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => rt.spawn_blocking(job).await.unwrap_or(Wait::Woken),
            Err(_) => {
                let (tx, rx) = futures::channel::oneshot::channel();
                let spawned = std::thread::Builder::new()
                    .name("tokio-multiprocessing-park".to_owned())
                    .spawn(move || {
                        let _ = tx.send(job());
                    });
                match spawned {
                    Ok(_) => rx.await.unwrap_or(Wait::Woken),
                    // No thread to sleep on: let the caller spin once more
                    // after a yield rather than fail.
                    Err(_) => {
                        let mut yielded = false;
                        std::future::poll_fn(|cx| {
                            if yielded {
                                return std::task::Poll::Ready(Wait::Woken);
                            }
                            yielded = true;
                            cx.waker().wake_by_ref();
                            std::task::Poll::Pending
                        })
                        .await
                    }
                }
            }
        }
    }
}
