//! Bookkeeping of children that knows nothing of what a child is: a
//! registry of live ones, and the rule that no child starts once the exit
//! rule has begun.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A set of live records, by key.
pub(crate) struct Registry<T> {
    map: Mutex<Option<HashMap<u64, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new() -> Registry<T> {
        Registry {
            map: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<u64, Arc<T>>>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, key: u64, value: &Arc<T>) {
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(key, value.clone());
    }

    pub(crate) fn remove(&self, key: u64) {
        if let Some(map) = self.lock().as_mut() {
            map.remove(&key);
        }
    }

    /// Every live record, in no order.
    pub(crate) fn all(&self) -> Vec<Arc<T>> {
        self.lock()
            .as_ref()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Set once the exit rule has begun: no new child may start after it.
static EXITING: AtomicBool = AtomicBool::new(false);

/// Starts that passed the [`EXITING`] check and have not registered their
/// child (or failed) yet.
static STARTING: AtomicUsize = AtomicUsize::new(0);

/// Held by a start from its check of the exit rule until its child is
/// registered or the start failed.
pub(crate) struct StartPermit(());

impl StartPermit {
    /// `None` once the exit rule has begun.
    pub(crate) fn take() -> Option<StartPermit> {
        STARTING.fetch_add(1, Ordering::SeqCst);
        if EXITING.load(Ordering::SeqCst) {
            STARTING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(StartPermit(()))
    }
}

impl Drop for StartPermit {
    fn drop(&mut self) {
        STARTING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks the exit rule begun (no permit is given from now on), then waits
/// up to `grace` for the starts already under way to register their
/// children or fail.
pub(crate) fn begin_exit(grace: Duration) {
    EXITING.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + grace;
    while STARTING.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}
