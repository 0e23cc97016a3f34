//! [`Value`]: one plain value in shared memory, behind a robust lock; and
//! the machinery it shares with [`Array`](crate::Array).
//!
//! The segment of a `Value<T>` or an `Array<T>`:
//!
//! ```text
//!  0        16                 32       36       40       48       DATA
//! +--------+-------------------+--------+--------+--------+---....--+------------------
//! | header | the robust lock   | size   | align  | count  | padding | count elements T
//! +--------+-------------------+--------+--------+--------+---....--+------------------
//! ```
//!
//! `size` and `align` are `T`'s, `count` the number of elements (1 for a
//! `Value`); `DATA` is 48 rounded up to `T`'s alignment. A process that
//! receives the handle checks all three against its own `T` and the
//! segment's length before it maps the elements. Since `T` is
//! [`Pod`](bytemuck::Pod), every bit pattern is a valid `T`: whatever a
//! dead holder left half-written is still a value, only perhaps not the
//! one intended (which is what poisoning says).

use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;

use bytemuck::Pod;
use serde::de::Error as _;

use crate::shm::raw::{self, RawLock, Taken};
use crate::shm::{Kind, Segment};
use crate::sync::error::{LockResult, PoisonError, TryLockError, TryLockResult};
use crate::sys::proc;

/// `size_of::<T>()`, a `u32`.
const SIZE: usize = raw::END;
/// `align_of::<T>()`, a `u32`.
const ALIGN: usize = raw::END + 4;
/// The number of elements, a `u64`.
const COUNT: usize = raw::END + 8;
/// The first byte after the words, before rounding up to `T`'s alignment.
const META_END: usize = raw::END + 16;

/// The largest alignment of an element: the mapping is page aligned.
const MAX_ALIGN: usize = 4096;

/// `count` elements of `T` behind a robust lock in a shared segment: the
/// state of a [`Value`] or an [`Array`](crate::Array).
pub(crate) struct Cells<T> {
    lock: RawLock,
    /// The byte offset of the first element.
    data: usize,
    /// The number of elements, read once when the segment was made or
    /// mapped (never again from the shared words).
    count: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            lock: self.lock.clone(),
            data: self.data,
            count: self.count,
            _t: PhantomData,
        }
    }
}

fn invalid_input(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// The offset of the first element and the segment's length for `count`
/// elements of `T`.
fn layout<T>(count: usize) -> std::io::Result<(usize, usize)> {
    let align = std::mem::align_of::<T>();
    if align > MAX_ALIGN {
        return Err(invalid_input(format!(
            "an element aligned to {align} bytes (at most {MAX_ALIGN} in shared memory)"
        )));
    }
    let data = META_END.next_multiple_of(align);
    let len = std::mem::size_of::<T>()
        .checked_mul(count)
        .and_then(|bytes| bytes.checked_add(data))
        .and_then(|end| end.checked_next_multiple_of(8))
        .ok_or_else(|| invalid_input(format!("{count} elements do not fit in memory")))?;
    Ok((data, len))
}

impl<T: Pod> Cells<T> {
    /// A new segment of `count` elements, zeroed, then filled by `init`
    /// (before anyone else can see it).
    pub(crate) fn create(
        kind: Kind,
        count: usize,
        init: impl FnOnce(&mut [T]),
    ) -> std::io::Result<Cells<T>> {
        let (data, len) = layout::<T>(count)?;
        let size = u32::try_from(std::mem::size_of::<T>())
            .map_err(|_| invalid_input("an element of more than 4 GiB".to_owned()))?;
        let align = u32::try_from(std::mem::align_of::<T>()).expect("checked by layout");
        let cells = Cells {
            lock: RawLock::create(kind, len)?,
            data,
            count,
            _t: PhantomData,
        };
        let seg = &cells.lock.seg;
        seg.u32(SIZE).store(size, Ordering::Relaxed);
        seg.u32(ALIGN).store(align, Ordering::Relaxed);
        seg.u64(COUNT).store(count as u64, Ordering::Relaxed);
        // SAFETY: the segment was made just now and its descriptor has not
        // left this value, so no other thread or process can reach it.
        init(unsafe { &mut *cells.slice_ptr() });
        Ok(cells)
    }

    /// The elements of a segment received from another process, checked
    /// against `T` (and against `count`, if given).
    pub(crate) fn open(seg: Segment, count: Option<usize>) -> std::io::Result<Cells<T>> {
        let bad = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
        let size = seg.u32(SIZE).load(Ordering::Relaxed) as usize;
        let align = seg.u32(ALIGN).load(Ordering::Relaxed) as usize;
        if size != std::mem::size_of::<T>() || align != std::mem::align_of::<T>() {
            return Err(bad(format!(
                "shared elements of {size} bytes aligned to {align}, where a {} of {} bytes \
                 aligned to {} was expected",
                std::any::type_name::<T>(),
                std::mem::size_of::<T>(),
                std::mem::align_of::<T>()
            )));
        }
        let found = usize::try_from(seg.u64(COUNT).load(Ordering::Relaxed))
            .map_err(|_| bad("an element count past the address space".to_owned()))?;
        if count.is_some_and(|c| c != found) {
            return Err(bad(format!(
                "{found} shared elements where {count:?} were expected"
            )));
        }
        let (data, len) = layout::<T>(found).map_err(|e| bad(e.to_string()))?;
        if len > seg.len() {
            return Err(bad(format!(
                "{found} elements need {len} bytes, the segment has {}",
                seg.len()
            )));
        }
        Ok(Cells {
            lock: RawLock { seg },
            data,
            count: found,
            _t: PhantomData,
        })
    }

    /// The elements, as a raw slice.
    fn slice_ptr(&self) -> *mut [T] {
        let bytes = self.count * std::mem::size_of::<T>();
        let ptr = self.lock.seg.region(self.data, bytes).cast::<T>();
        std::ptr::slice_from_raw_parts_mut(ptr, self.count)
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn guard(&self, taken: Taken) -> LockResult<Held<'_, T>> {
        let held = Held {
            cells: self,
            panicking: std::thread::panicking(),
        };
        if taken == Taken::FromTheDead || self.lock.is_poisoned() {
            Err(PoisonError::new(held))
        } else {
            Ok(held)
        }
    }

    pub(crate) async fn lock(&self) -> LockResult<Held<'_, T>> {
        let taken = self.lock.lock_async(None).await;
        self.guard(taken.unwrap_or(Taken::Clean))
    }

    pub(crate) fn blocking_lock(&self) -> LockResult<Held<'_, T>> {
        let me = proc::me();
        if self.lock.try_lock(me) {
            return self.guard(Taken::Clean);
        }
        let taken = self.lock.lock_blocking(me, None);
        self.guard(taken.unwrap_or(Taken::Clean))
    }

    pub(crate) fn try_lock(&self) -> TryLockResult<Held<'_, T>> {
        if self.lock.try_lock(proc::me()) {
            self.guard(Taken::Clean).map_err(TryLockError::Poisoned)
        } else {
            Err(TryLockError::WouldBlock)
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.lock.is_poisoned()
    }

    pub(crate) fn clear_poison(&self) {
        self.lock.set_poison(false);
    }

    pub(crate) fn holder_pid(&self) -> Option<u32> {
        self.lock.holder_pid()
    }

    pub(crate) fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.lock.seg.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
        kind: Kind,
        count: Option<usize>,
    ) -> Result<Cells<T>, D::Error> {
        let seg = Segment::deserialize_whole(deserializer, kind, META_END)?;
        Cells::open(seg, count).map_err(D::Error::custom)
    }
}

/// The lock of a [`Cells`], held: gives access to the elements, releases
/// the lock when dropped (poisoning it if the thread is panicking).
pub(crate) struct Held<'a, T: Pod> {
    cells: &'a Cells<T>,
    panicking: bool,
}

impl<T: Pod> Held<'_, T> {
    pub(crate) fn slice(&self) -> &[T] {
        // SAFETY: the elements lie inside the mapping (checked by `region`),
        // aligned for `T` (the mapping is page aligned and `data` a
        // multiple of `T`'s alignment, at most a page), and hold a valid `T`
        // whatever their bits (`T: Pod`). We hold the lock, which every
        // access to them takes, in every process; the lock word holds our
        // pid, so no other thread of ours takes it either, and it is taken
        // from a holder only once that process is dead. The shared borrow
        // of `self` keeps `&mut` access out meanwhile.
        unsafe { &*self.cells.slice_ptr() }
    }

    pub(crate) fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `slice`; the exclusive borrow of the guard makes
        // this the only reference to the elements.
        unsafe { &mut *self.cells.slice_ptr() }
    }
}

impl<T: Pod> Drop for Held<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if !self.panicking && std::thread::panicking() {
            self.cells.lock.set_poison(true);
        }
        self.cells.lock.unlock();
    }
}

/// Maps a lock result of [`Held`] to one of another guard.
pub(crate) fn map_result<'a, T: Pod, G>(
    r: LockResult<Held<'a, T>>,
    f: impl FnOnce(Held<'a, T>) -> G,
) -> LockResult<G> {
    match r {
        Ok(h) => Ok(f(h)),
        Err(p) => Err(PoisonError::new(f(p.into_inner()))),
    }
}

/// As [`map_result`], for `try_lock`.
pub(crate) fn map_try_result<'a, T: Pod, G>(
    r: TryLockResult<Held<'a, T>>,
    f: impl FnOnce(Held<'a, T>) -> G,
) -> TryLockResult<G> {
    match r {
        Ok(h) => Ok(f(h)),
        Err(TryLockError::WouldBlock) => Err(TryLockError::WouldBlock),
        Err(TryLockError::Poisoned(p)) => {
            Err(TryLockError::Poisoned(PoisonError::new(f(p.into_inner()))))
        }
    }
}

/// One plain value in shared memory, behind a lock that any number of
/// processes can share: Python's `multiprocessing.Value`.
///
/// `T` is any [`Pod`] type: numbers, arrays of them, `#[repr(C)]` structs of
/// them (with `#[derive(Pod, Zeroable)]`, bytemuck's `derive` feature).
/// Python's `Value('Q', 0)` is `Value::<u64>::new(0)`, `Value('d', 1.5)` is
/// `Value::<f64>::new(1.5)`.
///
/// Cloning the handle, or sending it to a child inside a target's
/// arguments, shares the same value. [`lock`](Self::lock) (Python's
/// `get_lock()`, used as `with v.get_lock():`) gives a guard that derefs
/// to the value; [`get`](Self::get) and [`set`](Self::set) (Python's
/// `v.value`) take the lock for one copy. The lock is the robust lock of
/// [`Lock`](crate::Lock): free, it costs a few atomic operations; a
/// contended locker sleeps on a futex.
///
/// # Poisoning
///
/// As with [`Lock`](crate::Lock): a process that dies holding the guard,
/// or a thread that panics holding it, poisons the value, and every later
/// [`lock`](Self::lock) returns `Err(PoisonError)` holding the guard
/// (a waiter notices a dead holder within about 50 ms) until
/// [`clear_poison`](Self::clear_poison). The value may be half-updated,
/// but it is always a valid `T`. [`get`](Self::get) and
/// [`set`](Self::set) do not report poisoning.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn add(counter: mp::Value<u64>) {
///     for _ in 0..1000 {
///         *counter.blocking_lock().unwrap() += 1;
///     }
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let counter = mp::Value::new(0u64)?;
///     let p = mp::Process::new(add, counter.clone());
///     p.start().await?;
///     p.join().await?;
///     assert_eq!(counter.get().await, 1000);
///     Ok(())
/// }
/// ```
pub struct Value<T> {
    cells: Cells<T>,
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cells: self.cells.clone(),
        }
    }
}

/// Holds a [`Value`]'s lock and derefs to the value; releases the lock
/// when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ValueGuard<'a, T: Pod> {
    held: Held<'a, T>,
}

impl<T: Pod> Value<T> {
    /// Creates a value in new shared memory.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created (out of memory or
    /// descriptors), or `T` is aligned to more than a page.
    pub fn new(value: T) -> std::io::Result<Value<T>> {
        Ok(Value {
            cells: Cells::create(Kind::Value, 1, |s| s[0] = value)?,
        })
    }

    fn wrap(held: Held<'_, T>) -> ValueGuard<'_, T> {
        ValueGuard { held }
    }

    /// Waits for the value's lock and takes it.
    ///
    /// # Errors
    ///
    /// `Err(PoisonError)` holding the guard if the value is poisoned (see
    /// the type's docs). The lock is held either way.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Lock::lock`](crate::Lock::lock): the lock is taken
    /// only in the poll that returns the guard.
    #[doc(alias = "get_lock")]
    pub async fn lock(&self) -> LockResult<ValueGuard<'_, T>> {
        map_result(self.cells.lock().await, Self::wrap)
    }

    /// Waits for the lock on this thread and takes it; for synchronous
    /// code such as a target without a runtime. Do not call it on a Tokio
    /// worker thread.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn blocking_lock(&self) -> LockResult<ValueGuard<'_, T>> {
        map_result(self.cells.blocking_lock(), Self::wrap)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Errors
    ///
    /// [`TryLockError::WouldBlock`] if another holder has it,
    /// [`TryLockError::Poisoned`] with the guard if it was free but the
    /// value is poisoned.
    pub fn try_lock(&self) -> TryLockResult<ValueGuard<'_, T>> {
        map_try_result(self.cells.try_lock(), Self::wrap)
    }

    /// A copy of the value, taken under the lock: Python's `v.value`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    #[doc(alias = "value")]
    pub async fn get(&self) -> T {
        let held = self
            .cells
            .lock()
            .await
            .unwrap_or_else(PoisonError::into_inner);
        held.slice()[0]
    }

    /// Stores `value` under the lock: Python's `v.value = x`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the value is stored in the poll that takes the lock, or
    /// not at all.
    pub async fn set(&self, value: T) {
        let mut held = self
            .cells
            .lock()
            .await
            .unwrap_or_else(PoisonError::into_inner);
        held.slice_mut()[0] = value;
    }

    /// [`get`](Self::get) for synchronous code: waits on this thread.
    pub fn blocking_get(&self) -> T {
        let held = self
            .cells
            .blocking_lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.slice()[0]
    }

    /// [`set`](Self::set) for synchronous code: waits on this thread.
    pub fn blocking_set(&self, value: T) {
        let mut held = self
            .cells
            .blocking_lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.slice_mut()[0] = value;
    }

    /// Whether a holder died or panicked holding the lock since the last
    /// [`clear_poison`](Self::clear_poison). Seen by every process.
    pub fn is_poisoned(&self) -> bool {
        self.cells.is_poisoned()
    }

    /// Clears the poison mark, for every process.
    pub fn clear_poison(&self) {
        self.cells.clear_poison();
    }
}

impl<T: Pod> serde::Serialize for Value<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.cells.serialize(serializer)
    }
}

impl<'de, T: Pod> serde::Deserialize<'de> for Value<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Value {
            cells: Cells::deserialize(deserializer, Kind::Value, Some(1))?,
        })
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.held.slice()[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.held.slice_mut()[0]
    }
}

impl<T: Pod> fmt::Debug for Value<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Value")
            .field("type", &std::any::type_name::<T>())
            .field("holder", &self.cells.holder_pid())
            .field("poisoned", &self.cells.is_poisoned())
            .finish()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ValueGuard").field(&**self).finish()
    }
}

impl<T: Pod + fmt::Display> fmt::Display for ValueGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<X: serde::Serialize, Y: serde::de::DeserializeOwned>(x: &X) -> Result<Y, String> {
        let (bytes, fds) = crate::transport::handle::collect_handles(|| rmp_serde::to_vec(x));
        let bytes = bytes.map_err(|e| e.to_string())?;
        crate::transport::handle::provide_handles(fds, || rmp_serde::from_slice(&bytes))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_value_travels_and_shares_its_memory() {
        let v = Value::new(7u64).unwrap();
        let w: Value<u64> = round_trip(&v).unwrap();
        *w.blocking_lock().unwrap() += 1;
        assert_eq!(v.blocking_get(), 8);
        v.blocking_set(40);
        assert_eq!(*w.try_lock().unwrap(), 40);
    }

    #[test]
    fn a_value_of_another_type_is_refused() {
        let v = Value::new(7u64).unwrap();
        let err = round_trip::<_, Value<u32>>(&Value::new(1u64).unwrap()).unwrap_err();
        assert!(err.contains("4 bytes"), "{err}");
        let err = round_trip::<_, Value<[u64; 2]>>(&v).unwrap_err();
        assert!(err.contains("16 bytes"), "{err}");
    }

    #[test]
    fn an_over_aligned_value_is_laid_out_at_its_alignment() {
        #[derive(Clone, Copy, Debug, PartialEq)]
        #[repr(C, align(64))]
        struct Line([u8; 64]);
        // SAFETY: 64 bytes with no padding, any bits valid.
        unsafe impl bytemuck::Zeroable for Line {}
        // SAFETY: as above.
        unsafe impl Pod for Line {}
        let v = Value::new(Line([3; 64])).unwrap();
        let g = v.blocking_lock().unwrap();
        assert_eq!((&*g as *const Line as usize) % 64, 0);
        assert_eq!(*g, Line([3; 64]));
    }

    #[test]
    fn a_panicking_holder_poisons_the_value() {
        let v = Value::new(1i32).unwrap();
        let w = v.clone();
        let _ = std::thread::spawn(move || {
            let _g = w.blocking_lock().unwrap();
            panic!("holding it");
        })
        .join();
        assert!(v.is_poisoned());
        let g = v.blocking_lock().unwrap_err().into_inner();
        assert_eq!(*g, 1);
        drop(g);
        v.clear_poison();
        assert!(v.blocking_lock().is_ok());
    }

    #[test]
    fn a_held_value_would_block_other_threads() {
        let v = Value::new(0u8).unwrap();
        let g = v.blocking_lock().unwrap();
        let w = v.clone();
        let r = std::thread::spawn(move || matches!(w.try_lock(), Err(TryLockError::WouldBlock)))
            .join()
            .unwrap();
        assert!(r);
        drop(g);
    }
}
