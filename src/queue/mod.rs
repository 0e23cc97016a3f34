//! Cross-process queues: [`Queue`] and [`JoinableQueue`].
//!
//! Python's `multiprocessing.Queue`: any number of processes put items and
//! any number take them; each item is taken exactly once, and the items of
//! each producer arrive in the order it put them.
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! async fn produce(q: mp::Queue<Vec<Option<String>>>) {
//!     q.put(vec![Some("42".into()), None, Some("hello".into())]).await.unwrap();
//! }
//!
//! # async fn demo() -> mp::Result<()> {
//! let q = mp::Queue::new()?;
//! let p = mp::Process::new(produce, q.clone());
//! p.start().await?;
//! println!("{:?}", q.get().await?);
//! p.join().await?;
//! # Ok(()) }
//! ```
//!
//! # How it is built
//!
//! A queue is one shared-memory segment (a `memfd`) that every process
//! holding the queue maps: a lock (the same robust lock as [`Lock`]), a few
//! counters, and a ring of encoded items. `put` encodes the item, takes the
//! lock, copies the record into the ring, releases the lock and wakes a
//! sleeping consumer (a futex wake, made only when someone sleeps); `get`
//! does the reverse. Items never pass through another process, and a `put`
//! that returned has its item in shared memory, where it outlives the
//! producer. There is no feeder thread: an item put just before a process
//! exits is never lost.
//!
//! # Caveats
//!
//! - An unbounded queue holds up to its buffer's worth of encoded items
//!   (64 MiB by default, see [`Queue::with_buffer`]); past that, `put`
//!   waits for room as a bounded queue does.
//! - Items cannot carry handles that own OS resources (a `Connection`, a
//!   `Lock`); send those to a child in its arguments instead.
//! - A process killed while holding the queue's lock leaves the queue
//!   consistent: the next process to lock it finds every item that was
//!   fully put, and none that was not. A consumer killed while taking an
//!   item leaves that item in place for the next consumer.
//!
//! [`Lock`]: crate::Lock

mod core;
mod error;
mod ring;

use self::core::Core;
#[cfg(fuzzing)]
pub(crate) use self::core::{fuzz_ring, fuzz_segment};
pub use error::{GetError, PutError, TaskDoneError};

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::shm::Kind;
use crate::shm::park::deadline_after;

/// The default ring size of a queue, in bytes of encoded items.
pub const DEFAULT_BUFFER: usize = 64 * 1024 * 1024;

/// The largest ring a queue can have, in bytes of encoded items: 4 GiB
/// (1 GiB where pointers have 32 bits). Records carry a 32-bit length,
/// so no single item could use more, and the whole segment must fit the
/// address space of every process that maps it.
#[cfg(target_pointer_width = "64")]
pub const MAX_BUFFER: usize = 1 << 32;
/// The largest ring a queue can have, in bytes of encoded items: 4 GiB
/// (1 GiB where pointers have 32 bits). Records carry a 32-bit length,
/// so no single item could use more, and the whole segment must fit the
/// address space of every process that maps it.
#[cfg(not(target_pointer_width = "64"))]
pub const MAX_BUFFER: usize = 1 << 30;

macro_rules! queue_methods {
    () => {
        /// Puts an item, waiting for room if the queue is full.
        ///
        /// # Errors
        ///
        /// [`PutError::Closed`] after [`close`](Self::close),
        /// [`PutError::Handle`] if the item holds a handle (its descriptor
        /// cannot live in the queue's shared memory; send it through a
        /// [`Pipe`](crate::Pipe) instead).
        /// [`PutError::Encode`] if the item does not encode (the queue stays
        /// healthy), [`PutError::Corrupt`] if another process wrote over
        /// the queue's shared memory. The item comes back in the error.
        ///
        /// # Cancel safety
        ///
        /// Cancel safe: the item is put in the poll that returns `Ok`, or
        /// not at all.
        pub async fn put(&self, item: T) -> Result<(), PutError<T>> {
            self.core.put(item, None, true).await
        }

        /// Puts an item if there is room now.
        ///
        /// # Errors
        ///
        /// [`PutError::Full`] at once on a full bounded queue; otherwise as
        /// [`put`](Self::put).
        pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
            self.core.blocking_put(item, Some(Instant::now()), false)
        }

        /// Puts an item, waiting at most `timeout` for room.
        ///
        /// # Errors
        ///
        /// [`PutError::Full`] after about `timeout`; otherwise as
        /// [`put`](Self::put).
        ///
        /// # Cancel safety
        ///
        /// Cancel safe, as [`put`](Self::put).
        pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
            self.core.put(item, deadline_after(timeout), true).await
        }

        /// [`put`](Self::put) for synchronous code: blocks the thread.
        pub fn blocking_put(&self, item: T) -> Result<(), PutError<T>> {
            self.core.blocking_put(item, None, true)
        }

        /// Takes the next item, waiting for one.
        ///
        /// # Errors
        ///
        /// [`GetError::Closed`] once this process closed the queue and it
        /// is empty; [`GetError::Decode`] if the item does not decode as
        /// `T` (it is consumed); [`GetError::Corrupt`] if another process
        /// wrote over the queue's shared memory (nothing is consumed).
        ///
        /// # Cancel safety
        ///
        /// Cancel safe: an item is taken only in the poll that returns it.
        pub async fn get(&self) -> Result<T, GetError> {
            self.core.get(None, true).await
        }

        /// Takes the next item if there is one now.
        ///
        /// # Errors
        ///
        /// [`GetError::Empty`] at once when there is none.
        pub fn try_get(&self) -> Result<T, GetError> {
            self.core.blocking_get(Some(Instant::now()), false)
        }

        /// Takes the next item, waiting at most `timeout`.
        ///
        /// # Errors
        ///
        /// [`GetError::Empty`] after about `timeout`; otherwise as
        /// [`get`](Self::get).
        ///
        /// # Cancel safety
        ///
        /// Cancel safe, as [`get`](Self::get).
        pub async fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
            self.core.get(deadline_after(timeout), true).await
        }

        /// [`get`](Self::get) for synchronous code: blocks the thread.
        pub fn blocking_get(&self) -> Result<T, GetError> {
            self.core.blocking_get(None, true)
        }

        /// [`get_timeout`](Self::get_timeout) for synchronous code.
        pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
            self.core.blocking_get(deadline_after(timeout), true)
        }

        /// How many items the queue holds (Python's `qsize`), across every
        /// process; approximate while others put and get.
        #[doc(alias = "qsize")]
        pub fn len(&self) -> usize {
            self.core.len()
        }

        /// Whether the queue holds no item.
        #[doc(alias = "empty")]
        pub fn is_empty(&self) -> bool {
            self.core.len() == 0
        }

        /// Whether a bounded queue holds `maxsize` items.
        #[doc(alias = "full")]
        pub fn is_full(&self) -> bool {
            self.core.is_full()
        }

        /// Closes the queue in this process (every clone of this handle):
        /// puts fail from now on, and gets take what is left, then fail
        /// with [`GetError::Closed`]. Other processes are not affected.
        pub fn close(&self) {
            self.core.close();
        }
    };
}

/// A queue that many processes put to and get from.
///
/// Create it with [`Queue::new`] or [`Queue::bounded`], clone it, and pass
/// it to children inside their targets' arguments. See the
/// [module docs](self).
pub struct Queue<T> {
    core: Core,
    _items: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue (up to [`DEFAULT_BUFFER`] bytes of items).
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn new() -> std::io::Result<Self> {
        Self::with_buffer(0, DEFAULT_BUFFER)
    }

    /// A queue that holds at most `maxsize` items (Python's
    /// `Queue(maxsize)`); `0` means unbounded.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn bounded(maxsize: usize) -> std::io::Result<Self> {
        Self::with_buffer(maxsize, DEFAULT_BUFFER)
    }

    /// A queue of at most `maxsize` items (`0`: unbounded) whose buffer
    /// holds `buffer` bytes of encoded items. The buffer is reserved, not
    /// committed: memory is used only as items fill it.
    ///
    /// `buffer` may be at most [`MAX_BUFFER`] (4 GiB on 64-bit targets);
    /// below 64 it is raised to 64, and it is rounded up to a multiple of
    /// 8. An item whose encoding is larger than the buffer, less 8 bytes,
    /// is refused by `put` with [`PutError::Encode`].
    ///
    /// # Examples
    ///
    /// ```
    /// use tokio_multiprocessing as mp;
    ///
    /// let small: mp::Queue<u32> = mp::Queue::with_buffer(10, 4096)?;
    /// let err = mp::Queue::<u32>::with_buffer(0, usize::MAX).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// # drop(small);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`InvalidInput`](std::io::ErrorKind::InvalidInput) if `buffer` is
    /// over [`MAX_BUFFER`]; otherwise if the shared memory cannot be
    /// created.
    pub fn with_buffer(maxsize: usize, buffer: usize) -> std::io::Result<Self> {
        Ok(Queue {
            core: Core::create(Kind::Queue, maxsize, buffer)?,
            _items: PhantomData,
        })
    }

    queue_methods!();
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.core.len())
            .finish_non_exhaustive()
    }
}

/// A [`Queue`] that counts unfinished items: each `put` adds one,
/// [`task_done`](Self::task_done) removes one, and [`join`](Self::join)
/// waits until none is left (Python's `JoinableQueue`).
pub struct JoinableQueue<T> {
    core: Core,
    _items: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn new() -> std::io::Result<Self> {
        Self::with_buffer(0, DEFAULT_BUFFER)
    }

    /// A joinable queue of at most `maxsize` items.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn bounded(maxsize: usize) -> std::io::Result<Self> {
        Self::with_buffer(maxsize, DEFAULT_BUFFER)
    }

    /// As [`Queue::with_buffer`].
    ///
    /// # Errors
    ///
    /// As [`Queue::with_buffer`]: `InvalidInput` if `buffer` is over
    /// [`MAX_BUFFER`].
    pub fn with_buffer(maxsize: usize, buffer: usize) -> std::io::Result<Self> {
        Ok(JoinableQueue {
            core: Core::create(Kind::JoinableQueue, maxsize, buffer)?,
            _items: PhantomData,
        })
    }

    queue_methods!();

    /// Marks one item taken with `get` as processed.
    ///
    /// # Errors
    ///
    /// [`TaskDoneError`] if called more times than items were put.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        self.core.task_done()
    }

    /// Waits until every item put has been marked done, in any process.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn join(&self) {
        self.core.join().await;
    }

    /// [`join`](Self::join) for synchronous code: blocks the thread.
    pub fn blocking_join(&self) {
        self.core.blocking_join();
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("len", &self.core.len())
            .field("unfinished", &self.core.unfinished())
            .finish_non_exhaustive()
    }
}

/// The trait impls `Queue` and `JoinableQueue` share: both are a `Core`
/// and a marker, differing only in the segment kind.
macro_rules! queue_impls {
    ($ty:ident, $kind:expr) => {
        impl<T> Clone for $ty<T> {
            fn clone(&self) -> Self {
                $ty {
                    core: self.core.clone(),
                    _items: PhantomData,
                }
            }
        }

        impl<T> Serialize for $ty<T> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.core.serialize(serializer)
            }
        }

        impl<'de, T> Deserialize<'de> for $ty<T> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Ok($ty {
                    core: Core::deserialize(deserializer, $kind)?,
                    _items: PhantomData,
                })
            }
        }

        impl<T> crate::sentinel::private::Sealed for $ty<T> {}

        impl<T> crate::sentinel::Waitable for $ty<T> {
            fn ready(
                &self,
            ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
                Box::pin(self.core.ready())
            }
        }
    };
}

queue_impls!(Queue, Kind::Queue);
queue_impls!(JoinableQueue, Kind::JoinableQueue);

#[cfg(test)]
mod tests;
