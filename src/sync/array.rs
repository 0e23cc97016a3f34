//! [`Array`]: a fixed number of plain values in shared memory, behind a
//! robust lock. Its layout is [`Value`](crate::Value)'s (see `value.rs`).

use std::fmt;
use std::ops::{Deref, DerefMut};

use bytemuck::Pod;

use crate::shm::Kind;
use crate::sync::error::{LockResult, PoisonError, TryLockResult};
use crate::sync::value::{Cells, Held, map_result, map_try_result};

/// A fixed-length array of plain values in shared memory, behind a lock
/// that any number of processes can share: Python's
/// `multiprocessing.Array`.
///
/// `T` is any [`Pod`] type, as for [`Value`](crate::Value). Python's
/// `Array('d', 10)` is `Array::<f64>::new(10)`, `Array('i', [1, 2, 3])` is
/// `Array::<i32>::from_slice(&[1, 2, 3])`. The length is fixed when the
/// array is made.
///
/// Cloning the handle, or sending it to a child inside a target's
/// arguments, shares the same array. [`lock`](Self::lock) (Python's
/// `get_lock()`) gives a guard that derefs to `[T]`; [`to_vec`](Self::to_vec)
/// copies the elements out under the lock. Poisoning is as for
/// [`Value`](crate::Value).
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn fill((xs, i): (mp::Array<f64>, usize)) {
///     xs.blocking_lock().unwrap()[i] = i as f64 * 0.5;
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let xs = mp::Array::<f64>::new(4)?;
///     let mut ps = Vec::new();
///     for i in 0..4 {
///         let p = mp::Process::new(fill, (xs.clone(), i));
///         p.start().await?;
///         ps.push(p);
///     }
///     for p in ps {
///         p.join().await?;
///     }
///     assert_eq!(xs.to_vec().await, [0.0, 0.5, 1.0, 1.5]);
///     Ok(())
/// }
/// ```
pub struct Array<T> {
    cells: Cells<T>,
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            cells: self.cells.clone(),
        }
    }
}

/// Holds an [`Array`]'s lock and derefs to its elements; releases the lock
/// when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ArrayGuard<'a, T: Pod> {
    held: Held<'a, T>,
}

impl<T: Pod> Array<T> {
    /// Creates an array of `len` zeroed elements in new shared memory.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created (out of memory or
    /// descriptors), or `len` elements do not fit in memory, or `T` is
    /// aligned to more than a page.
    pub fn new(len: usize) -> std::io::Result<Array<T>> {
        Ok(Array {
            cells: Cells::create(Kind::Array, len, |_| {})?,
        })
    }

    /// Creates an array holding a copy of `values` in new shared memory.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn from_slice(values: &[T]) -> std::io::Result<Array<T>> {
        Ok(Array {
            cells: Cells::create(Kind::Array, values.len(), |s| s.copy_from_slice(values))?,
        })
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.count()
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn wrap(held: Held<'_, T>) -> ArrayGuard<'_, T> {
        ArrayGuard { held }
    }

    /// Waits for the array's lock and takes it.
    ///
    /// # Errors
    ///
    /// `Err(PoisonError)` holding the guard if the array is poisoned (see
    /// [`Value`](crate::Value)). The lock is held either way.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`Lock::lock`](crate::Lock::lock).
    #[doc(alias = "get_lock")]
    pub async fn lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        map_result(self.cells.lock().await, Self::wrap)
    }

    /// Waits for the lock on this thread and takes it; for synchronous
    /// code. Do not call it on a Tokio worker thread.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub fn blocking_lock(&self) -> LockResult<ArrayGuard<'_, T>> {
        map_result(self.cells.blocking_lock(), Self::wrap)
    }

    /// Takes the lock if it is free, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Value::try_lock`](crate::Value::try_lock).
    pub fn try_lock(&self) -> TryLockResult<ArrayGuard<'_, T>> {
        map_try_result(self.cells.try_lock(), Self::wrap)
    }

    /// A copy of the elements, taken under the lock: Python's `arr[:]`.
    /// Poisoning is not reported.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`lock`](Self::lock).
    pub async fn to_vec(&self) -> Vec<T> {
        let held = self
            .cells
            .lock()
            .await
            .unwrap_or_else(PoisonError::into_inner);
        held.slice().to_vec()
    }

    /// [`to_vec`](Self::to_vec) for synchronous code: waits on this thread.
    pub fn blocking_to_vec(&self) -> Vec<T> {
        let held = self
            .cells
            .blocking_lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.slice().to_vec()
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

impl<T: Pod> serde::Serialize for Array<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.cells.serialize(serializer)
    }
}

impl<'de, T: Pod> serde::Deserialize<'de> for Array<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(Array {
            cells: Cells::deserialize(deserializer, Kind::Array, None)?,
        })
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        self.held.slice()
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.held.slice_mut()
    }
}

impl<T: Pod> fmt::Debug for Array<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Array")
            .field("type", &std::any::type_name::<T>())
            .field("len", &self.len())
            .field("holder", &self.cells.holder_pid())
            .field("poisoned", &self.cells.is_poisoned())
            .finish()
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for ArrayGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ArrayGuard").field(&&**self).finish()
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
    fn an_array_travels_with_its_length() {
        let a = Array::from_slice(&[1.5f64, 2.5, 3.5]).unwrap();
        let b: Array<f64> = round_trip(&a).unwrap();
        assert_eq!(b.len(), 3);
        b.blocking_lock().unwrap()[1] = -1.0;
        assert_eq!(a.blocking_to_vec(), [1.5, -1.0, 3.5]);
    }

    #[test]
    fn an_array_of_another_element_is_refused_and_a_value_is_not_an_array() {
        let a = Array::<u16>::new(10).unwrap();
        assert!(a.blocking_to_vec().iter().all(|&x| x == 0));
        let err = round_trip::<_, Array<u32>>(&a).unwrap_err();
        assert!(err.contains("2 bytes"), "{err}");
        let v = crate::Value::new(1u16).unwrap();
        let err = round_trip::<_, Array<u16>>(&v).unwrap_err();
        assert!(err.contains("Array"), "{err}");
    }

    #[test]
    fn empty_and_zero_sized_arrays_work() {
        let a = Array::<u64>::new(0).unwrap();
        assert!(a.is_empty());
        assert!(a.blocking_lock().unwrap().is_empty());
        let z = Array::<()>::new(5).unwrap();
        assert_eq!(z.blocking_lock().unwrap().len(), 5);
        let z2: Array<()> = round_trip(&z).unwrap();
        assert_eq!(z2.len(), 5);
    }

    #[test]
    fn a_huge_length_is_an_error() {
        let err = Array::<u64>::new(usize::MAX / 4).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    }
}
