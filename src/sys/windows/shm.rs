//! Shared memory on Windows: sections backed by the paging file
//! (`CreateFileMapping` of `INVALID_HANDLE_VALUE`), mapped with
//! `MapViewOfFile`.
//!
//! A section's size is fixed when it is made: nobody can shrink it under
//! another process's view, so every section counts as sealed. Its size, as
//! Windows tells it, is that of a whole view: rounded up to the page (as
//! Python's `SharedMemory(name).size` is on Windows). A section lives as
//! long as some process holds a handle or a view; a named one has no name
//! left to remove, and `unlink` does nothing (as in Python on Windows).

use std::ffi::CStr;
use std::io;
use std::os::windows::io::{FromRawHandle, OwnedHandle as StdHandle};
use std::ptr::NonNull;

use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GetLastError, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, FILE_MAP_READ, FILE_MAP_WRITE, MEMORY_BASIC_INFORMATION,
    MEMORY_MAPPED_VIEW_ADDRESS, MapViewOfFile, OpenFileMappingW, PAGE_READWRITE, UnmapViewOfFile,
    VirtualQuery,
};

use super::OwnedHandle;

/// The name Windows knows a named block by: Python's name as it is (the
/// crate passes the POSIX form, `/NAME`).
fn wide_name(name: &CStr) -> io::Result<Vec<u16>> {
    let name = name
        .to_str()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a name that is not UTF-8"))?;
    let name = name.strip_prefix('/').unwrap_or(name);
    Ok(name.encode_utf16().chain(Some(0)).collect())
}

/// Makes a section of `len` zero bytes, named `name` (NUL-terminated
/// UTF-16) or not (`None`).
fn section(name: Option<&[u16]>, len: usize) -> io::Result<OwnedHandle> {
    if len == 0 {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let len = u64::try_from(len).map_err(io::Error::other)?;
    let high = u32::try_from(len >> 32).map_err(io::Error::other)?;
    let low = u32::try_from(len & 0xffff_ffff).map_err(io::Error::other)?;
    // SAFETY: no file behind it (the paging file); null attributes give
    // the default security; the name, if any, is NUL-terminated and alive
    // for the call. A failure returns null.
    let raw = unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_READWRITE,
            high,
            low,
            name.map_or(std::ptr::null(), <[u16]>::as_ptr),
        )
    };
    // Read at once: the next call may change it.
    // SAFETY: no arguments.
    let last = unsafe { GetLastError() };
    if raw.is_null() {
        return Err(io::Error::from_raw_os_error(last as i32));
    }
    // SAFETY: a handle we just made (or opened) and own alone.
    let handle = unsafe { StdHandle::from_raw_handle(raw) };
    if name.is_some() && last == ERROR_ALREADY_EXISTS {
        // An existing section of that name: not ours to create.
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a shared-memory block of that name exists",
        ));
    }
    Ok(OwnedHandle::from_std(handle))
}

/// Makes an anonymous section of `len` zero bytes. `_name` is for
/// diagnostics on Linux; a section without a name has none.
pub(crate) fn create(_name: &CStr, len: usize) -> io::Result<OwnedHandle> {
    section(None, len)
}

/// Makes the named section `name` (Python's name, as `/NAME`) of `len`
/// zero bytes, failing if it exists.
pub(crate) fn create_named(name: &CStr, len: usize) -> io::Result<OwnedHandle> {
    section(Some(&wide_name(name)?), len)
}

/// Opens the existing named section `name` read-write.
pub(crate) fn open_named(name: &CStr) -> io::Result<OwnedHandle> {
    let wide = wide_name(name)?;
    // SAFETY: the name is NUL-terminated and alive for the call; a
    // failure returns null.
    let raw = unsafe { OpenFileMappingW(FILE_MAP_READ | FILE_MAP_WRITE, 0, wide.as_ptr()) };
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just opened and own alone.
    Ok(OwnedHandle::from_std(unsafe {
        StdHandle::from_raw_handle(raw)
    }))
}

/// Nothing to remove: a section goes with its last handle and view.
pub(crate) fn unlink_named(_name: &CStr) -> io::Result<()> {
    Ok(())
}

/// Whether an error is "the name exists already".
pub(crate) fn is_exists(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
}

/// Makes an anonymous section of `len` zero bytes, for a block handed to
/// children.
pub(crate) fn create_anonymous(len: usize) -> io::Result<OwnedHandle> {
    section(None, len)
}

/// A section cannot be resized: always sealed.
pub(crate) fn is_sealed(_fd: &OwnedHandle) -> io::Result<bool> {
    Ok(true)
}

/// The size of the section behind `fd`: that of a view of all of it,
/// rounded up to the page.
pub(crate) fn size(fd: &OwnedHandle) -> io::Result<usize> {
    let view = map(fd, 0)?;
    // SAFETY: plain data, valid when zeroed.
    let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: `view` is a live view of ours; `info` is a valid place for
    // the answer, of the size given.
    let got = unsafe {
        VirtualQuery(
            view.as_ptr().cast(),
            &mut info,
            std::mem::size_of::<MEMORY_BASIC_INFORMATION>(),
        )
    };
    let size = info.RegionSize;
    // SAFETY: the view was made just above and nothing refers into it.
    unsafe { unmap(view, size) };
    if got == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(size)
}

/// Maps the first `len` bytes (0: all) of the section behind `fd`,
/// read-write.
pub(crate) fn map(fd: &OwnedHandle, len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: the handle is open for the call; a failure returns null.
    let view = unsafe { MapViewOfFile(fd.as_raw(), FILE_MAP_READ | FILE_MAP_WRITE, 0, 0, len) };
    let ptr = NonNull::new(view.Value.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
    super::futex::view_mapped(ptr, len);
    Ok(ptr)
}

/// Unmaps what [`map`] mapped.
///
/// # Safety
///
/// `ptr` is a view [`map`] returned, not unmapped yet, and nothing refers
/// into it any more.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, _len: usize) {
    super::futex::view_unmapped(ptr);
    let view = MEMORY_MAPPED_VIEW_ADDRESS {
        Value: ptr.as_ptr().cast(),
    };
    // SAFETY: as the caller promises.
    if unsafe { UnmapViewOfFile(view) } == 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "unmapping a shared-memory view failed");
    }
}
