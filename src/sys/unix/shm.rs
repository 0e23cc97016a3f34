//! Shared memory: an anonymous file (`memfd`) mapped `MAP_SHARED`.
//!
//! The file has no name in any filesystem; it lives as long as some process
//! holds a descriptor or a mapping of it. A child receives the descriptor
//! (by `SCM_RIGHTS`) and maps it too, and both see the same bytes.
//!
//! The file is sealed at its size as soon as it is made: no process that
//! holds the descriptor can shrink it (which would make every other
//! process's next access to the lost pages die of `SIGBUS`) or grow it.
//!
//! Named blocks (`SharedMemory::create`, Python's `shared_memory`) are POSIX
//! shared-memory objects instead: `shm_open` of `/NAME` (a file in
//! `/dev/shm` on Linux), mode `0o600`, sized by `ftruncate`. They cannot be
//! sealed.

use std::ffi::CStr;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap, shm_open, shm_unlink};
use nix::sys::stat::Mode;

/// The seals every segment carries: its size is fixed for good.
const SEALS: SealFlag = SealFlag::F_SEAL_SHRINK
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_SEAL);

/// Creates an anonymous shared-memory file of `len` zero bytes,
/// close-on-exec, sealed at that size. `name` shows in `/proc/PID/fd` (as
/// `memfd:NAME`).
pub(crate) fn create(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    nix::unistd::ftruncate(&fd, len)?;
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SEALS))?;
    Ok(fd)
}

/// Creates the POSIX shared-memory object `name` (which starts with `/`),
/// failing if it exists, with mode `0o600` (less the umask) and `len` zero
/// bytes: what Python's `SharedMemory(name, create=True, size=len)` does.
/// The object is removed again if it cannot be sized.
pub(crate) fn create_named(name: &CStr, len: usize) -> io::Result<OwnedFd> {
    let len =
        libc::off_t::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let fd = shm_open(
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )?;
    if let Err(e) = nix::unistd::ftruncate(&fd, len) {
        let _ = shm_unlink(name);
        return Err(e.into());
    }
    Ok(fd)
}

/// Opens the existing POSIX shared-memory object `name` read-write, as
/// Python's `SharedMemory(name)` does.
pub(crate) fn open_named(name: &CStr) -> io::Result<OwnedFd> {
    Ok(shm_open(
        name,
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        Mode::S_IRUSR | Mode::S_IWUSR,
    )?)
}

/// Removes the name of a POSIX shared-memory object; the memory lives on
/// while some process maps it or holds a descriptor.
pub(crate) fn unlink_named(name: &CStr) -> io::Result<()> {
    shm_unlink(name).map_err(io::Error::from)
}

/// Whether an error is "the name exists already" (`EEXIST`).
pub(crate) fn is_exists(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::EEXIST as i32)
}

/// Creates an anonymous shared-memory file of `len` zero bytes,
/// close-on-exec, sealed at that size, for a block handed to children.
pub(crate) fn create_anonymous(len: usize) -> io::Result<OwnedFd> {
    create(c"tokio-mp-shared-memory", len)
}

/// Whether the file behind `fd` is sealed against resizing, as [`create`]
/// leaves it.
pub(crate) fn is_sealed(fd: &OwnedFd) -> io::Result<bool> {
    let seals = SealFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GET_SEALS)?);
    Ok(seals.contains(SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW))
}

/// The size in bytes of the file behind `fd`.
pub(crate) fn size(fd: &OwnedFd) -> io::Result<usize> {
    let st = nix::sys::stat::fstat(fd)?;
    usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// A read-write `MAP_SHARED` mapping of a whole shared-memory file.
///
/// The mapping stays valid until the value is dropped, independently of the
/// descriptor it was made from.
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
    /// Maps the first `len` bytes of the file behind `fd`, read-write and
    /// shared. `len` must not exceed the file's size (see [`size`]).
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<Mapping> {
        let nz = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: we ask the kernel for a fresh mapping at an address of its
        // choice (no MAP_FIXED), so no existing memory of ours is replaced;
        // the pointer is only used through this value, which unmaps it once.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
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
}

impl Mapping {
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
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            tracing::warn!(error = %e, "munmap of a shared-memory segment failed");
        }
    }
}
