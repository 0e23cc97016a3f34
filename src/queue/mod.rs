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

mod error;
mod ring;

pub use error::{GetError, PutError, TaskDoneError};

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::shm::park::{INTERVAL, Park, deadline_after, slice};
use crate::shm::raw::{self, RawLock, Taken};
use crate::shm::{Kind, ReceivedFd, Segment, SegmentFd};
use crate::sys::futex;
use crate::sys::proc;
use crate::target::{decode_value, encode_value};
use ring::{Corrupt, Memory, PushError, Ring};

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

/// The smallest ring a queue has: a smaller `buffer` is raised to it.
const MIN_BUFFER: usize = 64;

/// What every handle to one queue shares in this process.
///
/// The queue's size limits are kept here, not read back from the shared
/// words, which another process could rewrite.
struct Local {
    lock: RawLock,
    closed: AtomicBool,
    /// The most items (`0`: unbounded).
    maxsize: u64,
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

    /// The ring's size in bytes: what this process mapped.
    fn capacity(&self) -> usize {
        self.seg().len() - RING
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
    fn try_push(&self, bytes: &[u8], joinable: bool) -> Result<(), PushError> {
        let ring = self.ring();
        if self.maxsize != 0 && ring.count()? >= self.maxsize {
            return Err(PushError::Full);
        }
        let unfinished = self.word64(UNFINISHED);
        if joinable {
            // Counted before the item becomes visible, so `join` never
            // sees zero while an item is in flight.
            unfinished.fetch_add(1, Ordering::AcqRel);
        }
        let pushed = ring.push(bytes);
        if pushed.is_err() && joinable {
            let _ = unfinished.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
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

/// Why a put under the lock did not go ahead.
enum Blocked {
    /// No room: sleep here until a get makes some.
    Full(Park),
    Corrupt(Corrupt),
}

impl Blocked {
    fn of(e: PushError, l: &Local) -> Blocked {
        match e {
            PushError::Full => Blocked::Full(l.park(GETS, PUT_WAITERS)),
            PushError::Corrupt(c) => Blocked::Corrupt(c),
        }
    }
}

/// Why a get under the lock found no item.
enum NoItem {
    /// This process closed the queue and it is empty.
    Closed,
    /// Empty: sleep here until a put.
    Empty(Park),
    Corrupt(Corrupt),
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
        // holds no atomic word (they all lie before `RING`). `Ring` checks
        // every position and length it reads from shared memory before it
        // uses one, so the range is inside the buffer whatever another
        // process wrote; `read_bytes` asserts it all the same.
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

/// The ring size for a requested `buffer`: at least [`MIN_BUFFER`],
/// rounded up to 8.
fn ring_size(buffer: usize) -> std::io::Result<usize> {
    if buffer > MAX_BUFFER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a queue buffer holds at most {MAX_BUFFER} bytes, not {buffer}"),
        ));
    }
    // At most `MAX_BUFFER`, far from overflowing.
    Ok(buffer.max(MIN_BUFFER).next_multiple_of(8))
}

impl Core {
    fn create(kind: Kind, maxsize: usize, buffer: usize) -> std::io::Result<Core> {
        let buffer = ring_size(buffer)?;
        let lock = RawLock::create(kind, RING + buffer)?;
        let local = Local {
            lock,
            closed: AtomicBool::new(false),
            maxsize: maxsize as u64,
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
                        .map_err(|e| Blocked::of(e, l))
                })
                .await;
            match attempt {
                Some(Ok(())) => {
                    self.pushed();
                    return Ok(());
                }
                Some(Err(Blocked::Corrupt(e))) => return Err(PutError::Corrupt(item, e.0)),
                Some(Err(Blocked::Full(park))) if wait => match slice(deadline) {
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
                    .map_err(|e| Blocked::of(e, l))
            });
            match attempt {
                Some(Ok(())) => {
                    self.pushed();
                    return Ok(());
                }
                Some(Err(Blocked::Corrupt(e))) => return Err(PutError::Corrupt(item, e.0)),
                Some(Err(Blocked::Full(park))) if wait => match slice(deadline) {
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
    fn try_pop(&self, l: &Local) -> Result<Vec<u8>, NoItem> {
        match l.ring().pop() {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) if l.closed.load(Ordering::Acquire) => Err(NoItem::Closed),
            Ok(None) => Err(NoItem::Empty(l.park(PUTS, GET_WAITERS))),
            Err(Corrupt(e)) => Err(NoItem::Corrupt(Corrupt(e))),
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
                Some(Err(NoItem::Closed)) => return Err(GetError::Closed),
                Some(Err(NoItem::Corrupt(e))) => return Err(GetError::Corrupt(e.0)),
                Some(Err(NoItem::Empty(park))) if wait => match slice(deadline) {
                    Some(_) if self.local.spin_until_changed(&park) => {}
                    Some(t) => {
                        park.sleep(self.local.seg(), t).await;
                    }
                    None => return Err(GetError::Empty),
                },
                Some(Err(NoItem::Empty(_))) | None => return Err(GetError::Empty),
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
                Some(Err(NoItem::Closed)) => return Err(GetError::Closed),
                Some(Err(NoItem::Corrupt(e))) => return Err(GetError::Corrupt(e.0)),
                Some(Err(NoItem::Empty(park))) if wait => match slice(deadline) {
                    Some(_) if self.local.spin_until_changed(&park) => {}
                    Some(t) => {
                        park.blocking(self.local.seg(), t);
                    }
                    None => return Err(GetError::Empty),
                },
                Some(Err(NoItem::Empty(_))) | None => return Err(GetError::Empty),
            }
        }
    }

    /// The count word, read without the lock, clamped to the most
    /// records the ring can hold.
    fn len(&self) -> usize {
        let count = self.local.word64(COUNT).load(Ordering::Acquire);
        let most = ring::max_records(self.local.capacity());
        usize::try_from(count.min(most)).unwrap_or(usize::MAX)
    }

    fn is_full(&self) -> bool {
        let max = self.local.maxsize;
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
        let (fd, capacity): (ReceivedFd, u64) = Deserialize::deserialize(deserializer)?;
        let capacity = usize::try_from(capacity)
            .ok()
            .filter(|&c| ring_size(c).is_ok_and(|r| r == c))
            .ok_or_else(|| D::Error::custom(format!("a queue buffer of {capacity} bytes")))?;
        let seg = Segment::open(fd.0, kind, RING + capacity).map_err(D::Error::custom)?;
        if seg.u64(CAPACITY).load(Ordering::Acquire) != capacity as u64 {
            return Err(D::Error::custom(
                "queue segment does not match its stated capacity",
            ));
        }
        // Read once, here: from now on this process keeps its own copy.
        let maxsize = seg.u64(MAXSIZE).load(Ordering::Acquire);
        let local = Local {
            lock: RawLock { seg },
            closed: AtomicBool::new(false),
            maxsize,
        };
        Ok(Core {
            local: Arc::new(local),
            joinable: kind == Kind::JoinableQueue,
        })
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

/// Runs the ring over plain memory on a fuzz input (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz_ring(input: crate::shm::fuzz_input::Input<'_>) {
    ring::fuzz(input);
}

/// Lays a fuzz input over every word and the ring of a real queue segment
/// (the lock's words excepted), then takes, puts and counts items
/// (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz_segment(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static QUEUE: OnceLock<JoinableQueue<serde_bytes::ByteBuf>> = OnceLock::new();
    const BUFFER: usize = 256;
    let q = QUEUE.get_or_init(|| JoinableQueue::with_buffer(3, BUFFER).expect("a queue"));
    let l = &q.core.local;
    let head = input.u64();
    l.word64(HEAD).store(head, Ordering::Relaxed);
    let tail = input.near(head, 2 * BUFFER as u64);
    l.word64(TAIL).store(tail, Ordering::Relaxed);
    for word in [COUNT, MAXSIZE, CAPACITY, UNFINISHED] {
        l.word64(word).store(input.u64(), Ordering::Relaxed);
    }
    let ops = input.u8();
    let mut ring = input.rest().to_vec();
    ring.resize(BUFFER, 0);
    // SAFETY: the fuzzer runs one input at a time on one thread, and no
    // other process maps this segment, so nothing else touches the ring.
    unsafe { l.seg().write_bytes(RING, &ring) };
    for i in 0..8u32 {
        match ops >> i & 3 {
            0 | 1 => match q.try_get() {
                Ok(item) => assert!(item.len() <= BUFFER),
                Err(GetError::Empty | GetError::Decode(_) | GetError::Corrupt(_)) => {}
                Err(e) => panic!("untyped get error {e:?}"),
            },
            2 => {
                let item = serde_bytes::ByteBuf::from(vec![i as u8; usize::from(ops) % 300]);
                match q.try_put(item) {
                    Ok(()) => {}
                    Err(PutError::Full(_) | PutError::Encode(..) | PutError::Corrupt(..)) => {}
                    Err(e) => panic!("untyped put error {e:?}"),
                }
            }
            _ => {
                let _ = q.task_done();
                let _ = format!("{q:?}");
            }
        }
        assert!(q.len() <= BUFFER / 8, "len {}", q.len());
        let _ = q.is_full();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(q: &Queue<u32>, at: usize) -> &AtomicU64 {
        q.core.local.word64(at)
    }

    #[test]
    fn a_buffer_past_the_limit_is_invalid_input() {
        for buffer in [usize::MAX, usize::MAX - 100, MAX_BUFFER + 1] {
            let err = Queue::<u32>::with_buffer(0, buffer).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{buffer}");
            assert!(err.to_string().contains(&MAX_BUFFER.to_string()), "{err}");
            let err = JoinableQueue::<u32>::with_buffer(3, buffer).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{buffer}");
        }
    }

    #[test]
    fn the_largest_buffer_is_made_and_used() {
        // Reserved, not committed: only the pages items touch are used.
        let q = Queue::<u32>::with_buffer(0, MAX_BUFFER).unwrap();
        assert_eq!(q.core.local.capacity(), MAX_BUFFER);
        q.try_put(7).unwrap();
        assert_eq!(q.try_get(), Ok(7));
    }

    #[test]
    fn the_smallest_buffers_are_raised_and_still_work() {
        for buffer in [0, 1, 63, 65] {
            let q = Queue::<u32>::with_buffer(0, buffer).unwrap();
            q.try_put(7).unwrap();
            assert_eq!(q.try_get(), Ok(7), "{buffer}");
        }
    }

    #[test]
    fn a_corrupt_record_is_an_error_for_that_queue_alone() {
        let q = Queue::<u32>::new().unwrap();
        let other = Queue::<u32>::new().unwrap();
        q.try_put(1).unwrap();
        // Another process claims the record is nearly 2 GiB long.
        // SAFETY: no other thread touches this queue's ring.
        unsafe {
            q.core
                .local
                .seg()
                .write_bytes(RING, &0x7fff_fff0u32.to_le_bytes())
        };
        for _ in 0..3 {
            assert!(matches!(q.try_get(), Err(GetError::Corrupt(_))));
            assert!(matches!(
                q.blocking_get_timeout(Duration::from_secs(5)),
                Err(GetError::Corrupt(_))
            ));
        }
        let err = q.try_get().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the queue's shared memory is corrupt: "),
            "{err}"
        );
        other.try_put(2).unwrap();
        assert_eq!(other.try_get(), Ok(2));
    }

    #[test]
    fn cursors_out_of_order_fail_puts_and_gets_with_the_item_back() {
        let q = Queue::<u32>::new().unwrap();
        word(&q, HEAD).store(4096, Ordering::Relaxed);
        match q.try_put(5) {
            Err(e @ PutError::Corrupt(..)) => assert_eq!(e.into_inner(), 5),
            other => panic!("{other:?}"),
        }
        assert!(matches!(q.try_get(), Err(GetError::Corrupt(_))));
    }

    #[test]
    fn len_never_wraps_and_never_passes_what_the_ring_holds() {
        let q = Queue::<u32>::with_buffer(0, 4096).unwrap();
        q.try_put(1).unwrap();
        word(&q, COUNT).store(0, Ordering::Relaxed);
        assert_eq!(q.try_get(), Ok(1));
        assert_eq!(q.len(), 0, "not 2^64 - 1");
        assert!(q.is_empty());
        word(&q, COUNT).store(u64::MAX, Ordering::Relaxed);
        assert!(q.len() <= 4096 / 8, "{}", q.len());
        // The next look under the lock sets it right.
        assert_eq!(q.try_get(), Err(GetError::Empty));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn size_words_rewritten_by_another_process_change_nothing_here() {
        let q = Queue::<u32>::with_buffer(1, 4096).unwrap();
        word(&q, MAXSIZE).store(0, Ordering::Relaxed);
        word(&q, CAPACITY).store(u64::MAX, Ordering::Relaxed);
        q.try_put(1).unwrap();
        assert!(
            matches!(q.try_put(2), Err(PutError::Full(2))),
            "still bounded"
        );
        assert!(q.is_full());
        let big = Queue::<Vec<u8>>::with_buffer(0, 64).unwrap();
        big.core
            .local
            .word64(CAPACITY)
            .store(u64::MAX, Ordering::Relaxed);
        match big.try_put(vec![0; 100]) {
            Err(PutError::Encode(_, msg)) => assert!(msg.contains("buffer of 64 bytes"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_joinable_put_never_wraps_the_unfinished_count() {
        let q = JoinableQueue::<Vec<u8>>::with_buffer(0, 64).unwrap();
        q.try_put(vec![0; 40]).unwrap();
        q.core.local.word64(UNFINISHED).store(0, Ordering::Relaxed);
        // Too big for the room left: counted, then uncounted.
        assert!(matches!(q.try_put(vec![0; 40]), Err(PutError::Full(_))));
        assert_eq!(q.core.local.word64(UNFINISHED).load(Ordering::Relaxed), 0);
    }
}
