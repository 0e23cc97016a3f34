//! A value that is set once and then stays set, with any number of waiters.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

/// A write-once cell whose readers can wait for the write.
///
/// Each waiter holds a key (`Option<u64>`, `None` until its first poll) that
/// names its slot; a waiter that is polled again replaces its waker, and one
/// that is dropped frees its slot with [`forget`](Latch::forget). Waking
/// happens once, on [`set`](Latch::set), for every slot.
#[derive(Debug)]
pub(crate) struct Latch<T> {
    value: OnceLock<T>,
    waiters: Mutex<Waiters>,
}

#[derive(Debug, Default)]
struct Waiters {
    next: u64,
    slots: HashMap<u64, Waker>,
}

impl<T: Clone> Latch<T> {
    pub(crate) fn new() -> Self {
        Latch {
            value: OnceLock::new(),
            waiters: Mutex::new(Waiters::default()),
        }
    }

    fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value, if it has been set.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.get()
    }

    /// Sets the value and wakes every waiter. Only the first call has an
    /// effect; it returns whether this call was it.
    pub(crate) fn set(&self, value: T) -> bool {
        if self.value.set(value).is_err() {
            return false;
        }
        let wakers: Vec<Waker> = self.waiters().slots.drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
        true
    }

    /// Polls for the value on behalf of the waiter whose slot is `key`.
    pub(crate) fn poll_get(&self, key: &mut Option<u64>, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(v) = self.value.get() {
            self.forget(key);
            return Poll::Ready(v.clone());
        }
        let mut waiters = self.waiters();
        // Re-check under the lock: `set` stores the value before it takes
        // the lock to drain the slots, so either we see the value here or
        // `set` sees our waker.
        if let Some(v) = self.value.get() {
            drop(waiters);
            self.forget(key);
            return Poll::Ready(v.clone());
        }
        let k = *key.get_or_insert_with(|| {
            waiters.next += 1;
            waiters.next
        });
        match waiters.slots.get_mut(&k) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                waiters.slots.insert(k, cx.waker().clone());
            }
        }
        Poll::Pending
    }

    /// Frees the slot of a waiter that stops waiting.
    pub(crate) fn forget(&self, key: &mut Option<u64>) {
        if let Some(k) = key.take() {
            self.waiters().slots.remove(&k);
        }
    }

    /// Waits for the value.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future frees its slot and loses nothing.
    pub(crate) fn wait(&self) -> impl Future<Output = T> + '_ {
        let mut guard = SlotGuard {
            latch: self,
            key: None,
        };
        poll_fn(move |cx| {
            let SlotGuard { latch, key } = &mut guard;
            latch.poll_get(key, cx)
        })
    }

    #[cfg(test)]
    fn waiter_count(&self) -> usize {
        self.waiters().slots.len()
    }
}

struct SlotGuard<'a, T: Clone> {
    latch: &'a Latch<T>,
    key: Option<u64>,
}

impl<T: Clone> Drop for SlotGuard<'_, T> {
    fn drop(&mut self) {
        self.latch.forget(&mut self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_once_set_and_stay_ready() {
        let latch = Arc::new(Latch::<u32>::new());
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let l = latch.clone();
                tokio::spawn(async move { l.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(latch.set(7));
        assert!(!latch.set(8), "only the first set counts");
        for w in waiters {
            assert_eq!(w.await.unwrap(), 7);
        }
        assert_eq!(latch.wait().await, 7, "a set latch stays ready");
        assert_eq!(latch.waiter_count(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_free_their_slot() {
        let latch = Latch::<()>::new();
        for _ in 0..100 {
            let r = tokio::time::timeout(Duration::from_millis(1), latch.wait()).await;
            assert!(r.is_err());
        }
        assert_eq!(latch.waiter_count(), 0);
    }
}
