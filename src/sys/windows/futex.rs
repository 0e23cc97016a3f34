//! Park and wake on a word in shared memory, across processes.
//!
//! Windows has no futex that reaches into other processes (`WaitOnAddress`
//! stays inside one), so each word of a shared view that someone waits on
//! gets a named semaphore: `Local\tokio-multiprocessing-ID-OFFSET`, where
//! `ID` is the 64-bit value at byte 8 of the view (a segment's random id,
//! written before the segment is shared) and `OFFSET` the word's place in
//! it, the same in every process. A wait checks the word, then waits on
//! the semaphore; a wake releases it. A release that comes between the
//! check and the wait is kept by the semaphore, so no wake-up is lost;
//! releases nobody takes are left over and make later waits return at
//! once, which the contract allows (the caller looks at the word again).
//! Leftovers are bounded: a semaphore holds at most [`MAX_COUNT`].
//!
//! A word outside every shared view (this process's own memory) is
//! waited on with `WaitOnAddress`.

use std::collections::HashMap;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use windows_sys::Win32::Foundation::{ERROR_TIMEOUT, GetLastError, WAIT_OBJECT_0, WAIT_TIMEOUT};
use windows_sys::Win32::System::Threading::{
    CreateSemaphoreW, INFINITE, ReleaseSemaphore, WaitForSingleObject, WaitOnAddress,
    WakeByAddressAll, WakeByAddressSingle,
};

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A wake-up arrived (or a leftover one): look at the word again.
    Woken,
    /// The word did not hold the expected value when the wait began.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// The most releases a word's semaphore keeps.
const MAX_COUNT: i32 = 1024;

/// A shared view of this process, and the semaphores of its words.
struct View {
    base: usize,
    len: usize,
    semaphores: Mutex<HashMap<usize, Arc<StdHandle>>>,
}

/// The shared views this process has mapped (see `shm::map`).
static VIEWS: Mutex<Vec<Arc<View>>> = Mutex::new(Vec::new());

/// Records a view `shm::map` made.
pub(crate) fn view_mapped(ptr: NonNull<u8>, len: usize) {
    let view = Arc::new(View {
        base: ptr.as_ptr() as usize,
        len,
        semaphores: Mutex::new(HashMap::new()),
    });
    VIEWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(view);
}

/// Forgets a view `shm::unmap` is about to unmap (its semaphores close
/// once no wait holds them).
pub(crate) fn view_unmapped(ptr: NonNull<u8>) {
    let base = ptr.as_ptr() as usize;
    VIEWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|v| v.base != base);
}

/// The semaphore of `word`, if it lies in a shared view of ours.
fn semaphore(word: &AtomicU32) -> Option<io::Result<Arc<StdHandle>>> {
    let at = std::ptr::from_ref(word) as usize;
    let view = VIEWS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|v| at >= v.base && at + 4 <= v.base + v.len)
        .cloned()?;
    if view.len < 16 {
        return None;
    }
    let offset = at - view.base;
    let mut semaphores = view
        .semaphores
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(s) = semaphores.get(&offset) {
        return Some(Ok(s.clone()));
    }
    // SAFETY: the view is mapped (it is listed), at least 16 bytes long and
    // page aligned, so its second 8-byte word is in bounds and aligned;
    // the crate only ever reads that word atomically (it is a segment's
    // id, written once before the segment is shared).
    let id = unsafe { AtomicU64::from_ptr((view.base + 8) as *mut u64) }.load(Ordering::Relaxed);
    let name = format!("Local\\tokio-multiprocessing-{id:016x}-{offset}");
    let wide: Vec<u16> = name.encode_utf16().chain(Some(0)).collect();
    // SAFETY: null attributes give the default security; the name is
    // NUL-terminated and alive for the call. It opens the semaphore if
    // another process made it first. A failure returns null.
    let raw = unsafe { CreateSemaphoreW(std::ptr::null(), 0, MAX_COUNT, wide.as_ptr()) };
    if raw.is_null() {
        return Some(Err(io::Error::last_os_error()));
    }
    // SAFETY: a handle we just made or opened, owned by us alone.
    let made = Arc::new(unsafe { StdHandle::from_raw_handle(raw) });
    semaphores.insert(offset, made.clone());
    Some(Ok(made))
}

/// Milliseconds for a Windows wait: rounded up, so a short wait is not a
/// busy loop; `INFINITE` for none.
fn millis(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => INFINITE,
        Some(t) => u32::try_from(t.as_nanos().div_ceil(1_000_000))
            .map_or(INFINITE - 1, |ms| ms.min(INFINITE - 1)),
    }
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (forever
/// with `None`).
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait {
    if word.load(Ordering::SeqCst) != expected {
        return Wait::Changed;
    }
    match semaphore(word) {
        Some(Ok(sem)) => {
            // SAFETY: the semaphore is open while `sem` lives.
            match unsafe { WaitForSingleObject(sem.as_raw_handle(), millis(timeout)) } {
                WAIT_OBJECT_0 => Wait::Woken,
                WAIT_TIMEOUT => Wait::TimedOut,
                _ => {
                    // Cannot wait: nap, and let the caller look again.
                    std::thread::sleep(Duration::from_millis(1));
                    Wait::Woken
                }
            }
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "no semaphore for a shared word; napping instead");
            std::thread::sleep(Duration::from_millis(1));
            Wait::Woken
        }
        None => {
            // SAFETY: `word` and `expected` are valid for the call, and
            // 4 bytes is the size of both.
            let woke = unsafe {
                WaitOnAddress(
                    std::ptr::from_ref(word).cast(),
                    std::ptr::from_ref(&expected).cast(),
                    4,
                    millis(timeout),
                )
            };
            // SAFETY: no arguments.
            if woke == 0 && unsafe { GetLastError() } == ERROR_TIMEOUT {
                Wait::TimedOut
            } else {
                Wait::Woken
            }
        }
    }
}

/// Releases `sem` `n` times, or as many as it still holds room for.
fn release(sem: &StdHandle, n: u32) {
    let mut n = i32::try_from(n).unwrap_or(MAX_COUNT).min(MAX_COUNT);
    while n > 0 {
        // SAFETY: the semaphore is open while `sem` lives; the previous
        // count is not asked for.
        if unsafe { ReleaseSemaphore(sem.as_raw_handle(), n, std::ptr::null_mut()) } != 0 {
            return;
        }
        // Too many would pass its maximum: fewer are left to give.
        n /= 2;
    }
}

/// Wakes up to `n` waiters on `word`. Returns 0: Windows does not tell how
/// many were waiting.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    match semaphore(word) {
        Some(Ok(sem)) => release(&sem, n),
        Some(Err(_)) => {}
        None => {
            for _ in 0..n.min(64) {
                // SAFETY: `word` is valid for the call.
                unsafe { WakeByAddressSingle(std::ptr::from_ref(word).cast()) };
            }
        }
    }
    0
}

/// Wakes every waiter on `word` (up to [`MAX_COUNT`] at once). Returns 0,
/// as [`wake`].
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    match semaphore(word) {
        Some(Ok(sem)) => release(&sem, u32::MAX),
        Some(Err(_)) => {}
        // SAFETY: `word` is valid for the call.
        None => unsafe { WakeByAddressAll(std::ptr::from_ref(word).cast()) },
    }
    0
}
