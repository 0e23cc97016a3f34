//! The machinery under both queues: the segment's layout, the ring inside
//! it, the lock around both, and the waits for items and room.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ring::{Corrupt, Memory, PushError, Ring};
use super::{GetError, MAX_BUFFER, PutError, TaskDoneError};
use crate::shm::park::{INTERVAL, Park, slice};
use crate::shm::raw::{self, RawLock, Taken};
use crate::shm::{Kind, ReceivedFd, Segment, SegmentFd};
use crate::sys::futex;
use crate::sys::proc;
use crate::target::{decode_value, encode_value};
use crate::transport::handle;

// The queue's words, after the lock's.
pub(super) const HEAD: usize = raw::END;
pub(super) const TAIL: usize = raw::END + 8;
pub(super) const COUNT: usize = raw::END + 16;
pub(super) const MAXSIZE: usize = raw::END + 24;
pub(super) const CAPACITY: usize = raw::END + 32;
pub(super) const UNFINISHED: usize = raw::END + 40;
/// Bumped by every put; consumers sleep on it.
pub(super) const PUTS: usize = raw::END + 48;
/// Bumped by every get; producers waiting for room sleep on it.
pub(super) const GETS: usize = raw::END + 52;
pub(super) const GET_WAITERS: usize = raw::END + 56;
pub(super) const PUT_WAITERS: usize = raw::END + 60;
/// Bumped whenever the unfinished count reaches zero; `join` sleeps on it.
pub(super) const DONE: usize = raw::END + 64;
pub(super) const JOIN_WAITERS: usize = raw::END + 68;
/// Where the ring's bytes start.
pub(super) const RING: usize = 128;

const _: () = assert!(JOIN_WAITERS + 4 <= RING);

/// How long a consumer watches for an item before it goes to sleep.
const SPIN: Duration = Duration::from_micros(20);

/// The smallest ring a queue has: a smaller `buffer` is raised to it.
pub(super) const MIN_BUFFER: usize = 64;

/// What every handle to one queue shares in this process.
///
/// The queue's size limits are kept here, not read back from the shared
/// words, which another process could rewrite.
pub(super) struct Local {
    pub(super) lock: RawLock,
    closed: AtomicBool,
    /// The most items (`0`: unbounded).
    maxsize: u64,
}

impl Local {
    pub(super) fn seg(&self) -> &Segment {
        &self.lock.seg
    }

    pub(super) fn word32(&self, at: usize) -> &AtomicU32 {
        self.seg().u32(at)
    }

    pub(super) fn word64(&self, at: usize) -> &AtomicU64 {
        self.seg().u64(at)
    }

    /// The ring's size in bytes: what this process mapped.
    pub(super) fn capacity(&self) -> usize {
        self.seg().len() - RING
    }

    pub(super) fn ring(&self) -> Ring<'_, RingMemory<'_>> {
        Ring {
            mem: RingMemory(self.seg()),
            head: self.word64(HEAD),
            tail: self.word64(TAIL),
            count: self.word64(COUNT),
        }
    }

    /// Runs `f` under the queue's lock, taken on this thread.
    pub(super) fn locked_blocking<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&Self) -> R,
    ) -> Option<R> {
        let taken = self.lock.lock_blocking(proc::me(), deadline)?;
        Some(self.run_locked(taken, f))
    }

    /// Runs `f` under the queue's lock, waiting for it without blocking
    /// the task's thread. The lock is held only within one poll.
    pub(super) async fn locked<R>(
        &self,
        deadline: Option<Instant>,
        f: impl FnOnce(&Self) -> R,
    ) -> Option<R> {
        let taken = self.lock.lock_async(deadline).await?;
        Some(self.run_locked(taken, f))
    }

    pub(super) fn run_locked<R>(&self, taken: Taken, f: impl FnOnce(&Self) -> R) -> R {
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
    pub(super) fn try_push(&self, bytes: &[u8], joinable: bool) -> Result<(), PushError> {
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

    pub(super) fn bump_and_wake(&self, seq: usize, waiters: usize) {
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
    pub(super) fn spin_until_changed(&self, park: &Park) -> bool {
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

    pub(super) fn park(&self, word: usize, waiters: usize) -> Park {
        Park {
            word,
            expected: self.word32(word).load(Ordering::SeqCst),
            waiters: Some(waiters),
        }
    }
}

/// Why a put under the lock did not go ahead.
pub(super) enum Blocked {
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
pub(super) enum NoItem {
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
pub(super) struct RingMemory<'a>(&'a Segment);

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
pub(super) struct Core {
    pub(super) local: Arc<Local>,
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
    /// Closes the queue in this process: puts fail from now on, and gets
    /// drain what is left, then fail.
    pub(super) fn close(&self) {
        self.local.closed.store(true, Ordering::Release);
        // Wake this process's sleeping getters so they see the close.
        self.local.bump_and_wake(PUTS, GET_WAITERS);
        futex::wake_all(self.local.word32(PUTS));
    }

    /// The unfinished count of a joinable queue, as the segment says.
    pub(super) fn unfinished(&self) -> u64 {
        self.local.word64(UNFINISHED).load(Ordering::Relaxed)
    }

    pub(super) fn create(kind: Kind, maxsize: usize, buffer: usize) -> std::io::Result<Core> {
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

    pub(super) fn encode<T: Serialize>(&self, item: T) -> Result<(T, Vec<u8>), PutError<T>> {
        if self.local.closed.load(Ordering::Acquire) {
            return Err(PutError::Closed(item));
        }
        // A handle's descriptor cannot live in shared memory: the handles
        // are caught while the item encodes, and their duplicates closed.
        let (encoded, _fds, carried) = handle::encode_noting(|| encode_value(&item));
        if carried {
            return Err(PutError::Handle(item));
        }
        match encoded {
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

    pub(super) fn pushed(&self) {
        self.local.bump_and_wake(PUTS, GET_WAITERS);
    }

    pub(super) fn popped(&self) {
        self.local.bump_and_wake(GETS, PUT_WAITERS);
    }

    pub(super) async fn put<T: Serialize>(
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

    pub(super) fn blocking_put<T: Serialize>(
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
    pub(super) fn try_pop(&self, l: &Local) -> Result<Vec<u8>, NoItem> {
        match l.ring().pop() {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) if l.closed.load(Ordering::Acquire) => Err(NoItem::Closed),
            Ok(None) => Err(NoItem::Empty(l.park(PUTS, GET_WAITERS))),
            Err(Corrupt(e)) => Err(NoItem::Corrupt(Corrupt(e))),
        }
    }

    pub(super) fn decode<T: DeserializeOwned>(&self, bytes: Vec<u8>) -> Result<T, GetError> {
        self.popped();
        decode_value(&bytes).map_err(GetError::Decode)
    }

    pub(super) async fn get<T: DeserializeOwned>(
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

    pub(super) fn blocking_get<T: DeserializeOwned>(
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
    pub(super) fn len(&self) -> usize {
        let count = self.local.word64(COUNT).load(Ordering::Acquire);
        let most = super::ring::max_records(self.local.capacity());
        usize::try_from(count.min(most)).unwrap_or(usize::MAX)
    }

    pub(super) fn is_full(&self) -> bool {
        let max = self.local.maxsize;
        max != 0 && self.len() as u64 >= max
    }

    /// Resolves once an item is available or this process closed the queue.
    pub(super) async fn ready(&self) {
        loop {
            let park = self.local.park(PUTS, GET_WAITERS);
            if self.len() > 0 || self.local.closed.load(Ordering::Acquire) {
                return;
            }
            park.sleep(self.local.seg(), INTERVAL).await;
        }
    }

    pub(super) fn task_done(&self) -> Result<(), TaskDoneError> {
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

    pub(super) fn all_done_or_park(&self) -> Result<(), Park> {
        let park = self.local.park(DONE, JOIN_WAITERS);
        if self.local.word64(UNFINISHED).load(Ordering::Acquire) == 0 {
            Ok(())
        } else {
            Err(park)
        }
    }

    pub(super) async fn join(&self) {
        while let Err(park) = self.all_done_or_park() {
            park.sleep(self.local.seg(), INTERVAL).await;
        }
    }

    pub(super) fn blocking_join(&self) {
        while let Err(park) = self.all_done_or_park() {
            park.blocking(self.local.seg(), INTERVAL);
        }
    }

    pub(super) fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = serializer.serialize_tuple(2)?;
        t.serialize_element(&SegmentFd(self.local.seg()))?;
        t.serialize_element(&(self.local.capacity() as u64))?;
        t.end()
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
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

/// Runs the ring over plain memory on a fuzz input (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz_ring(input: crate::shm::fuzz_input::Input<'_>) {
    super::ring::fuzz(input);
}

/// Lays a fuzz input over every word and the ring of a real queue segment
/// (the lock's words excepted), then takes, puts and counts items
/// (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz_segment(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static QUEUE: OnceLock<super::JoinableQueue<serde_bytes::ByteBuf>> = OnceLock::new();
    const BUFFER: usize = 256;
    let q = QUEUE.get_or_init(|| super::JoinableQueue::with_buffer(3, BUFFER).expect("a queue"));
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
                let item =
                    serde_bytes::ByteBuf::from(vec![i.to_le_bytes()[0]; usize::from(ops) % 300]);
                match q.try_put(item) {
                    Ok(()) => {}
                    Err(
                        PutError::Full(_)
                        | PutError::Encode(..)
                        | PutError::Handle(_)
                        | PutError::Corrupt(..),
                    ) => {}
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
