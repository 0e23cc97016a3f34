//! A read-write shared mapping of a whole shared-memory object, the same
//! on every backend: the backend maps and unmaps (`imp::shm::map` and
//! `unmap`), this type owns the mapping and gives out its words.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use super::OwnedHandle;
use super::imp::shm as backend;

/// A read-write shared mapping of a whole shared-memory object.
///
/// The mapping stays valid until the value is dropped, independently of the
/// handle it was made from.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; every access
// through it is atomic (`u32_at`/`u64_at`), or goes through the raw
// pointer (`as_ptr`), whose users hold a lock over their range or access
// it as atomics (`Value`, `Array`, `SharedMemory`), so sharing or sending
// it between threads is as safe as sharing atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps the first `len` bytes of the object behind `fd`, read-write and
    /// shared. `len` must not exceed the object's size (see `shm::size`).
    pub(crate) fn new(fd: &OwnedHandle, len: usize) -> io::Result<Mapping> {
        let ptr = backend::map(fd, len)?;
        Ok(Mapping { ptr, len })
    }

    /// The mapping's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The first byte of the mapping, page aligned; valid for
    /// [`len`](Self::len) bytes while `self` lives. Other processes may
    /// write the memory at any time: whoever dereferences it says why no
    /// other access races with its own.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The 32-bit atomic word at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the word is not inside the mapping or `offset` is not a multiple
    /// of 4.
    #[inline]
    pub(crate) fn u32_at(&self, offset: usize) -> &AtomicU32 {
        assert!(
            offset % 4 == 0 && offset + 4 <= self.len,
            "bad u32 offset {offset}"
        );
        // SAFETY: the word lies inside the mapping (checked above), which is
        // page aligned, so `offset % 4 == 0` makes the pointer aligned for
        // `AtomicU32`; the memory stays mapped for as long as `self` is
        // borrowed; and this crate only ever touches these words through
        // atomics of the same size at the same offsets (every layout is
        // fixed in `crate::shm`, the primitives and the queue), in every
        // process; plain bytes are only copied in a queue's ring region,
        // which holds no atomic word.
        unsafe { AtomicU32::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// The 64-bit atomic word at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the word is not inside the mapping or `offset` is not a multiple
    /// of 8.
    #[inline]
    pub(crate) fn u64_at(&self, offset: usize) -> &AtomicU64 {
        assert!(
            offset % 8 == 0 && offset + 8 <= self.len,
            "bad u64 offset {offset}"
        );
        // SAFETY: as in `u32_at`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.ptr.as_ptr().add(offset).cast()) }
    }

    /// Copies `bytes` into the mapping at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the mapping.
    ///
    /// # Safety
    ///
    /// No other thread or process may access the range meanwhile, and the
    /// range must hold no word that is accessed atomically: the caller
    /// holds a lock that every access to the range takes (a queue's lock
    /// over its ring region).
    pub(crate) unsafe fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        assert!(
            offset
                .checked_add(bytes.len())
                .is_some_and(|end| end <= self.len),
            "bad range"
        );
        // SAFETY: the range is inside the mapping (checked above) and,
        // by the caller's guarantee, nobody else touches it meanwhile;
        // `bytes` is ordinary memory of ours, which cannot overlap a
        // shared mapping we are writing.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(offset),
                bytes.len(),
            )
        };
    }

    /// Copies `out.len()` bytes from the mapping at byte `offset`.
    ///
    /// # Panics
    ///
    /// If the range is not inside the mapping.
    ///
    /// # Safety
    ///
    /// As for [`write_bytes`](Self::write_bytes).
    pub(crate) unsafe fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        assert!(
            offset
                .checked_add(out.len())
                .is_some_and(|end| end <= self.len),
            "bad range"
        );
        // SAFETY: as in `write_bytes`, reading into our own buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr` and `len` describe exactly the mapping `new` made,
        // which nothing else unmaps; no reference into it outlives `self`
        // (every accessor borrows `self`).
        unsafe { backend::unmap(self.ptr, self.len) };
    }
}
