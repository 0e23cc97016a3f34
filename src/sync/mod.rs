//! Locks, semaphores, events, conditions, barriers, and values guarded by
//! a lock, shared between processes.
//!
//! Python's `multiprocessing` synchronization primitives, with the
//! vocabulary of `std::sync` and the shapes of `tokio::sync`:
//!
//! | Python | here |
//! |---|---|
//! | `Lock()`, `with lock:` | [`Lock::new()`](Lock::new), `let _g = lock.lock().await?;` |
//! | `lock.acquire(False)` | [`lock.try_lock()`](Lock::try_lock) |
//! | `lock.acquire(timeout=t)` | [`lock.lock_timeout(t).await`](Lock::lock_timeout) |
//! | `RLock()` | [`RLock`] (its guard is `!Send`) |
//! | `Semaphore(n)`, `BoundedSemaphore(n)` | [`Semaphore::new(n)`](Semaphore::new), [`BoundedSemaphore::new(n)`](BoundedSemaphore::new) |
//! | `sem.acquire()` / `sem.release()` | [`sem.acquire().await`](Semaphore::acquire) (a permit, given back on drop) / [`sem.release()`](Semaphore::release) |
//! | `Event()`, `set`, `clear`, `is_set`, `wait(t)` | [`Event`]: [`set`](Event::set), [`clear`](Event::clear), [`is_set`](Event::is_set), [`wait_timeout(t)`](Event::wait_timeout) |
//! | `Condition()`, `wait`, `notify(n)`, `notify_all` | [`Condition`]: [`wait(guard)`](Condition::wait), [`notify(n)`](Condition::notify), [`notify_all`](Condition::notify_all) |
//! | `Barrier(n, action)`, `wait`, `abort`, `reset` | [`Barrier::with_action(n, f)`](Barrier::with_action), [`wait`](Barrier::wait), [`abort`](Barrier::abort), [`reset`](Barrier::reset) |
//! | `BrokenBarrierError` | [`BrokenBarrier`] |
//! | `Value('Q', 0)`, `v.value`, `with v.get_lock():` | [`Value::<u64>::new(0)`](Value::new), [`v.get().await`](Value::get) / [`v.set(x).await`](Value::set), `*v.lock().await? += 1` |
//! | `Array('d', 10)`, `Array('i', [1, 2])`, `arr[:]` | [`Array::<f64>::new(10)`](Array::new), [`Array::from_slice(&[1, 2])`](Array::from_slice), [`arr.to_vec().await`](Array::to_vec) or `arr.lock().await?[i]` |
//!
//! Each primitive lives in a small shared-memory segment (a `memfd`, mapped
//! in every process that has a handle). Cloning a handle shares the
//! primitive in this process; putting a handle in a target's arguments
//! shares it with the child. Every async method has a `blocking_` twin for
//! synchronous code, such as a synchronous target, which runs with no
//! runtime.
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn add_one(lock: mp::Lock) {
//!     let _guard = lock.blocking_lock().unwrap();
//!     // ... touch something shared ...
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     let _init = mp::init();
//!     let lock = mp::Lock::new()?;
//!     let p = mp::Process::new(add_one, lock.clone());
//!     p.start().await?;
//!     {
//!         let _guard = lock.lock().await.unwrap();
//!         // ... the child waits meanwhile ...
//!     }
//!     p.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! # How they wait
//!
//! The fast paths are atomic operations on shared words, with no system
//! call: taking a free lock, giving it back with nobody waiting, taking a
//! free permit, checking or setting an event nobody waits for. A thread
//! that must wait sleeps on a futex. An `async` waiter never sleeps on a
//! Tokio worker thread: each sleep (at most 50 ms) runs on the blocking
//! pool, and the waiter takes the lock or permit in its own poll, so a
//! dropped future never leaves one taken. Outside a Tokio runtime the
//! sleeps run on threads of their own.
//!
//! # Caveats
//!
//! A process that dies holding a [`Lock`], an [`RLock`] or the lock of a
//! [`Value`] or an [`Array`] is noticed within
//! about 50 ms by the next waiter, which takes the lock over and gets it
//! poisoned. Nothing of the kind exists for the other primitives, as in
//! Python: permits held by a dead process are lost, and a dead party never
//! arrives at a barrier (use [`Barrier::wait_timeout`]). `docs/sync.md`
//! tells how each primitive is built and what happens when a process
//! dies in it.

mod array;
mod barrier;
mod condition;
pub mod error;
mod event;
mod lock;
mod rlock;
mod semaphore;
mod value;

/// Lays a fuzz input over one primitive's words and works it
/// (`crate::fuzz::shm`); `which` picks the primitive.
#[cfg(fuzzing)]
pub(crate) fn fuzz(which: u8, input: crate::shm::fuzz_input::Input<'_>) {
    match which {
        3 => barrier::fuzz(input),
        4 => condition::fuzz(input),
        5 => semaphore::fuzz(input),
        6 => event::fuzz(input),
        _ => rlock::fuzz(input),
    }
}

pub use array::{Array, ArrayGuard};
pub use barrier::Barrier;
pub use condition::{Condition, WaitTimeoutResult};
pub use error::{
    BrokenBarrier, LockResult, PoisonError, ReleaseError, TryLockError, TryLockResult,
};
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphorePermit};
pub use value::{Value, ValueGuard};
