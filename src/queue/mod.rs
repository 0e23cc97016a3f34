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

mod ring;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::shm::{Kind, Segment};
use crate::sync::park::{INTERVAL, Park, deadline_after, slice};
use crate::sync::raw::{self, RawLock, Taken};
use crate::sys::futex;
use crate::sys::proc;
use crate::target::{decode_value, encode_value};
use ring::{Full, Memory, Ring};

// The queue's words, after the lock's.
const HEAD: usize = raw::END;
const TAIL: usize = raw::END + 8;
const COUNT: usize = raw::END + 16;
const MAXSIZE: usize = raw::END + 24;
const CAPACITY: usize = raw::END + 32;
const UNFINISHED: usize = raw::END + 40;
/// Bumped by every put; consumers sleep on it.
const PUTS: usize = raw::END + 48;
/// Bumped by every get; producers waiting for room sleep on it.
const GETS: usize = raw::END + 52;
const GET_WAITERS: usize = raw::END + 56;
const PUT_WAITERS: usize = raw::END + 60;
/// Bumped whenever the unfinished count reaches zero; `join` sleeps on it.
const DONE: usize = raw::END + 64;
const JOIN_WAITERS: usize = raw::END + 68;
/// Where the ring's bytes start.
const RING: usize = 128;

const _: () = assert!(JOIN_WAITERS + 4 <= RING);

/// How long a consumer watches for an item before it goes to sleep.
const SPIN: Duration = Duration::from_micros(20);

/// The default ring size of a queue, in bytes of encoded items.
pub const DEFAULT_BUFFER: usize = 64 * 1024 * 1024;

/// Why a `put` failed; the item comes back.
#[non_exhaustive]
pub enum PutError<T> {
    /// A bounded queue is full (`try_put`, or `put_timeout` timed out).
    Full(T),
    /// This process closed the queue.
    Closed(T),
    /// The item could not be encoded, or is larger than the whole buffer.
    Encode(T, String),
}

impl<T> PutError<T> {
    /// The item that was not put.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(t) | PutError::Closed(t) | PutError::Encode(t, _) => t,
        }
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("Full(..)"),
            PutError::Closed(_) => f.write_str("Closed(..)"),
            PutError::Encode(_, e) => f.debug_tuple("Encode").field(&"..").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PutError::Full(_) => f.write_str("the queue is full"),
            PutError::Closed(_) => f.write_str("the queue is closed"),
            PutError::Encode(_, e) => write!(f, "the item failed to encode: {e}"),
        }
    }
}

impl<T> std::error::Error for PutError<T> {}

/// Why a `get` failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GetError {
    /// Nothing arrived (`try_get`, or `get_timeout` timed out).
    #[error("the queue is empty")]
    Empty,
    /// This process closed the queue and it is empty.
    #[error("the queue is closed")]
    Closed,
    /// An item did not decode as `T`.
    #[error("an item failed to decode: {0}")]
    Decode(String),
}

/// `JoinableQueue::task_done` was called more times than items were put.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than there were items")]
pub struct TaskDoneError;

/// What every handle to one queue shares in this process.
struct Local {
    lock: RawLock,
    closed: AtomicBool,
}

impl Local {
    fn seg(&self) -> &Segment {
        &self.lock.seg
    }

    fn word32(&self, at: usize) -> &AtomicU32 {
        self.seg().u32(at)
    }

    fn word64(&self, at: usize) -> &AtomicU64 {
        self.seg().u64(at)
    }

    fn capacity(&self) -> usize {
        self.word64(CAPACITY).load(Ordering::Relaxed) as usize
    }

    fn maxsize(&self) -> u64 {
        self.word64(MAXSIZE).load(Ordering::Relaxed)
    }

    fn ring(&self) -> Ring<'_, RingMemory<'_>> {
        Ring {
            mem: RingMemory(self.seg()),
            head: self.word64(HEAD),
            tail: self.word64(TAIL),
            count: self.word64(COUNT),
        }
    }

    /// Runs `f` under the queue's lock, taken on this thread.
    fn locked_blocking<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&Self) -> R,
    ) -> Option<R> {
        let taken = self.lock.lock_blocking(proc::me(), deadline)?;
        Some(self.run_locked(taken, f))
    }

    /// Runs `f` under the queue's lock, waiting for it without blocking
    /// the task's thread. The lock is held only within one poll.
    async fn locked<R>(&self, deadline: Option<Instant>, f: impl FnOnce(&Self) -> R) -> Option<R> {
        let taken = self.lock.lock_async(deadline).await?;
        Some(self.run_locked(taken, f))
    }

    fn run_locked<R>(&self, taken: Taken, f: impl FnOnce(&Self) -> R) -> R {
        if taken == Taken::FromTheDead {
            // The ring is consistent whatever the dead holder was doing
            // (see `ring`), so the queue carries on.
            self.lock.set_poison(false);
        }
        let guard = Unlock(&self.lock);
        let r = f(self);
        drop(guard);
        r
    }

    /// Under the lock: pushes `bytes` if there is room.
    fn try_push(&self, bytes: &[u8], joinable: bool) -> Result<(), Full> {
        let max = self.maxsize();
        if max != 0 && self.word64(COUNT).load(Ordering::Relaxed) >= max {
            return Err(Full);
        }
        if joinable {
            // Counted before the item becomes visible, so `join` never
            // sees zero while an item is in flight.
            self.word64(UNFINISHED).fetch_add(1, Ordering::AcqRel);
        }
        let pushed = self.ring().push(bytes);
        if pushed.is_err() && joinable {
            self.word64(UNFINISHED).fetch_sub(1, Ordering::AcqRel);
        }
        pushed
    }

    fn bump_and_wake(&self, seq: usize, waiters: usize) {
        let word = self.word32(seq);
        word.fetch_add(1, Ordering::SeqCst);
        if self.word32(waiters).load(Ordering::SeqCst) > 0 {
            futex::wake(word, 1);
        }
    }

    /// Watches the word `park` would sleep on for a few microseconds, and
    /// says whether it changed. A reply in a request-response exchange
    /// usually comes within that time, and catching it here saves the
    /// hand-off to a sleeping thread and back (two thread wake-ups).
    fn spin_until_changed(&self, park: &Park) -> bool {
        let word = self.word32(park.word);
        let until = Instant::now() + SPIN;
        loop {
            for _ in 0..64 {
                if word.load(Ordering::Acquire) != park.expected {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    fn park(&self, word: usize, waiters: usize) -> Park {
        Park {
            word,
            expected: self.word32(word).load(Ordering::SeqCst),
            waiters: Some(waiters),
        }
    }
}

/// Releases the lock when dropped, also if the closure panics.
struct Unlock<'a>(&'a RawLock);

impl Drop for Unlock<'_> {
    fn drop(&mut self) {
        self.0.unlock();
    }
}

/// The ring's bytes inside a queue's segment.
#[derive(Clone, Copy)]
struct RingMemory<'a>(&'a Segment);

impl Memory for RingMemory<'_> {
    fn capacity(&self) -> usize {
        self.0.len() - RING
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        // SAFETY: the ring is only touched by `Ring`, which runs under the
        // queue's lock (every caller of `Local::ring` holds it), and it
        // holds no atomic word (they all lie before `RING`).
        unsafe { self.0.write_bytes(RING + at, bytes) }
    }

    fn read(&self, at: usize, out: &mut [u8]) {
        // SAFETY: as in `write`.
        unsafe { self.0.read_bytes(RING + at, out) }
    }
}

/// The part of a queue that `Queue` and `JoinableQueue` share.
#[derive(Clone)]
struct Core {
    local: Arc<Local>,
    joinable: bool,
}

impl Core {
    fn create(kind: Kind, maxsize: usize, buffer: usize) -> crate::Result<Core> {
        let buffer = buffer.max(64).div_ceil(8) * 8;
        let lock = RawLock::create(kind, RING + buffer)?;
        let local = Local {
            lock,
            closed: AtomicBool::new(false),
        };
        local
            .word64(MAXSIZE)
            .store(maxsize as u64, Ordering::Relaxed);
        local
            .word64(CAPACITY)
            .store(buffer as u64, Ordering::Release);
        Ok(Core {
            local: Arc::new(local),
            joinable: kind == Kind::JoinableQueue,
        })
    }

    fn encode<T: Serialize>(&self, item: T) -> Result<(T, Vec<u8>), PutError<T>> {
        if self.local.closed.load(Ordering::Acquire) {
            return Err(PutError::Closed(item));
        }
        match encode_value(&item) {
            Ok(bytes) if bytes.len() > self.local.ring().max_payload() => {
                let msg = format!(
                    "an item of {} bytes does not fit a queue buffer of {} bytes",
                    bytes.len(),
                    self.local.capacity()
                );
                Err(PutError::Encode(item, msg))
            }
            Ok(bytes) => Ok((item, bytes)),
            Err(e) => Err(PutError::Encode(item, e)),
        }
    }

    fn pushed(&self) {
        self.local.bump_and_wake(PUTS, GET_WAITERS);
    }

    fn popped(&self) {
        self.local.bump_and_wake(GETS, PUT_WAITERS);
    }

    async fn put<T: Serialize>(
        &self,
        item: T,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<(), PutError<T>> {
        let (item, bytes) = self.encode(item)?;
        loop {
            let attempt = self
                .local
                .locked(deadline, |l| {
                    l.try_push(&bytes, self.joinable)
                        .map_err(|Full| l.park(GETS, PUT_WAITERS))
                })
                .await;
            match attempt {
                Some(Ok(())) => {
                    self.pushed();
                    return Ok(());
                }
                Some(Err(park)) if wait => match slice(deadline) {
                    Some(t) => {
                        park.sleep(self.local.seg(), t).await;
                    }
                    None => return Err(PutError::Full(item)),
                },
                Some(Err(_)) | None => return Err(PutError::Full(item)),
            }
        }
    }

    fn blocking_put<T: Serialize>(
        &self,
        item: T,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<(), PutError<T>> {
        let (item, bytes) = self.encode(item)?;
        loop {
            let attempt = self.local.locked_blocking(deadline, |l| {
                l.try_push(&bytes, self.joinable)
                    .map_err(|Full| l.park(GETS, PUT_WAITERS))
            });
            match attempt {
                Some(Ok(())) => {
                    self.pushed();
                    return Ok(());
                }
                Some(Err(park)) if wait => match slice(deadline) {
                    Some(t) => {
                        park.blocking(self.local.seg(), t);
                    }
                    None => return Err(PutError::Full(item)),
                },
                Some(Err(_)) | None => return Err(PutError::Full(item)),
            }
        }
    }

    /// Under the lock: the next item, or where to sleep for one.
    fn try_pop(&self, l: &Local) -> Result<Vec<u8>, Option<Park>> {
        match l.ring().pop() {
            Some(bytes) => Ok(bytes),
            None if l.closed.load(Ordering::Acquire) => Err(None),
            None => Err(Some(l.park(PUTS, GET_WAITERS))),
        }
    }

    fn decode<T: DeserializeOwned>(&self, bytes: Vec<u8>) -> Result<T, GetError> {
        self.popped();
        decode_value(&bytes).map_err(GetError::Decode)
    }

    async fn get<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<T, GetError> {
        loop {
            match self.local.locked(deadline, |l| self.try_pop(l)).await {
                Some(Ok(bytes)) => return self.decode(bytes),
                Some(Err(None)) => return Err(GetError::Closed),
                Some(Err(Some(park))) if wait => match slice(deadline) {
                    Some(_) if self.local.spin_until_changed(&park) => {}
                    Some(t) => {
                        park.sleep(self.local.seg(), t).await;
                    }
                    None => return Err(GetError::Empty),
                },
                Some(Err(Some(_))) | None => return Err(GetError::Empty),
            }
        }
    }

    fn blocking_get<T: DeserializeOwned>(
        &self,
        deadline: Option<Instant>,
        wait: bool,
    ) -> Result<T, GetError> {
        loop {
            match self.local.locked_blocking(deadline, |l| self.try_pop(l)) {
                Some(Ok(bytes)) => return self.decode(bytes),
                Some(Err(None)) => return Err(GetError::Closed),
                Some(Err(Some(park))) if wait => match slice(deadline) {
                    Some(_) if self.local.spin_until_changed(&park) => {}
                    Some(t) => {
                        park.blocking(self.local.seg(), t);
                    }
                    None => return Err(GetError::Empty),
                },
                Some(Err(Some(_))) | None => return Err(GetError::Empty),
            }
        }
    }

    fn len(&self) -> usize {
        self.local.word64(COUNT).load(Ordering::Acquire) as usize
    }

    fn is_full(&self) -> bool {
        let max = self.local.maxsize();
        max != 0 && self.len() as u64 >= max
    }

    /// Resolves once an item is available or this process closed the queue.
    async fn ready(&self) {
        loop {
            let park = self.local.park(PUTS, GET_WAITERS);
            if self.len() > 0 || self.local.closed.load(Ordering::Acquire) {
                return;
            }
            park.sleep(self.local.seg(), INTERVAL).await;
        }
    }

    fn task_done(&self) -> Result<(), TaskDoneError> {
        let unfinished = self.local.word64(UNFINISHED);
        let mut cur = unfinished.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return Err(TaskDoneError);
            }
            match unfinished.compare_exchange(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        if cur == 1 {
            let done = self.local.word32(DONE);
            done.fetch_add(1, Ordering::SeqCst);
            if self.local.word32(JOIN_WAITERS).load(Ordering::SeqCst) > 0 {
                futex::wake_all(done);
            }
        }
        Ok(())
    }

    fn all_done_or_park(&self) -> Result<(), Park> {
        let park = self.local.park(DONE, JOIN_WAITERS);
        if self.local.word64(UNFINISHED).load(Ordering::Acquire) == 0 {
            Ok(())
        } else {
            Err(park)
        }
    }

    async fn join(&self) {
        while let Err(park) = self.all_done_or_park() {
            park.sleep(self.local.seg(), INTERVAL).await;
        }
    }

    fn blocking_join(&self) {
        while let Err(park) = self.all_done_or_park() {
            park.blocking(self.local.seg(), INTERVAL);
        }
    }

    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&SegmentFd(self.local.seg()))?;
        t.serialize_element(&(self.local.capacity() as u64))?;
        t.end()
    }

    fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        kind: Kind,
    ) -> Result<Core, D::Error> {
        use serde::de::Error as _;
        let (fd, capacity): (FdIndex, u64) = Deserialize::deserialize(deserializer)?;
        let capacity = usize::try_from(capacity).map_err(D::Error::custom)?;
        let seg = Segment::open(fd.0, kind, RING + capacity).map_err(D::Error::custom)?;
        if seg.u64(CAPACITY).load(Ordering::Acquire) != capacity as u64 {
            return Err(D::Error::custom(
                "queue segment does not match its stated capacity",
            ));
        }
        let local = Local {
            lock: RawLock { seg },
            closed: AtomicBool::new(false),
        };
        Ok(Core {
            local: Arc::new(local),
            joinable: kind == Kind::JoinableQueue,
        })
    }
}

/// Serializes a segment as its descriptor.
struct SegmentFd<'a>(&'a Segment);

impl Serialize for SegmentFd<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A descriptor received in a child, not yet checked.
struct FdIndex(std::os::fd::OwnedFd);

impl<'de> Deserialize<'de> for FdIndex {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::handle::deserialize_fd(deserializer).map(FdIndex)
    }
}

macro_rules! queue_methods {
    () => {
        /// Puts an item, waiting for room if the queue is full.
        ///
        /// # Errors
        ///
        /// [`PutError::Closed`] after [`close`](Self::close),
        /// [`PutError::Encode`] if the item does not encode (the queue stays
        /// healthy). The item comes back in the error.
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
        /// `T` (it is consumed).
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
            self.core.local.closed.store(true, Ordering::Release);
            // Wake this process's sleeping getters so they see the close.
            self.core.local.bump_and_wake(PUTS, GET_WAITERS);
            futex::wake_all(self.core.local.word32(PUTS));
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
    pub fn new() -> crate::Result<Self> {
        Self::with_buffer(0, DEFAULT_BUFFER)
    }

    /// A queue that holds at most `maxsize` items (Python's
    /// `Queue(maxsize)`); `0` means unbounded.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn bounded(maxsize: usize) -> crate::Result<Self> {
        Self::with_buffer(maxsize, DEFAULT_BUFFER)
    }

    /// A queue of at most `maxsize` items (`0`: unbounded) whose buffer
    /// holds `buffer` bytes of encoded items. The buffer is reserved, not
    /// committed: memory is used only as items fill it.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn with_buffer(maxsize: usize, buffer: usize) -> crate::Result<Self> {
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
    pub fn new() -> crate::Result<Self> {
        Self::with_buffer(0, DEFAULT_BUFFER)
    }

    /// A joinable queue of at most `maxsize` items.
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn bounded(maxsize: usize) -> crate::Result<Self> {
        Self::with_buffer(maxsize, DEFAULT_BUFFER)
    }

    /// As [`Queue::with_buffer`].
    ///
    /// # Errors
    ///
    /// If the shared memory cannot be created.
    pub fn with_buffer(maxsize: usize, buffer: usize) -> crate::Result<Self> {
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
            .field(
                "unfinished",
                &self.core.local.word64(UNFINISHED).load(Ordering::Relaxed),
            )
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
