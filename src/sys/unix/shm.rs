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

/// Maps the first `len` bytes of the file behind `fd`, read-write and
/// shared, at an address of the kernel's choice. `len` must not exceed the
/// file's size (see [`size`]).
pub(crate) fn map(fd: &OwnedFd, len: usize) -> io::Result<NonNull<u8>> {
    let nz = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
    // SAFETY: we ask the kernel for a fresh mapping at an address of its
    // choice (no MAP_FIXED), so no existing memory of ours is replaced;
    // the caller unmaps it once, with [`unmap`].
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
    Ok(ptr.cast())
}

/// Unmaps what [`map`] mapped.
///
/// # Safety
///
/// `ptr` and `len` are exactly a mapping [`map`] returned, not unmapped
/// yet, and nothing refers into it any more.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: as the caller promises.
    if let Err(e) = unsafe { munmap(ptr.cast(), len) } {
        tracing::warn!(error = %e, "munmap of a shared-memory segment failed");
    }
}
