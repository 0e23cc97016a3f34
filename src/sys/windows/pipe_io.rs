//! Byte-stream I/O on one end of a Windows named pipe.
//!
//! The handle is a byte-mode pipe opened with `FILE_FLAG_OVERLAPPED`.
//! [`PipeIo`] gives it the manners of a Unix stream socket: every call can
//! be nonblocking or blocking, from any thread, and [`PipeIo::ready`]
//! waits for readiness on any Tokio runtime.
//!
//! How it works:
//!
//! - The read side keeps at most one overlapped `ReadFile` in flight, into
//!   a buffer of its own. Completed bytes wait there until `recv_into`
//!   copies them out; once the buffer is drained the next read is issued
//!   at once, so that the pipe's readiness is always known to the kernel.
//! - The write side copies up to [`WRITE_CHUNK`] bytes into a buffer of
//!   its own and issues one overlapped `WriteFile` from it. A nonblocking
//!   send counts the bytes as sent once they are copied; a blocking one
//!   waits for the write to complete.
//! - Each side has a manual-reset event named in its `OVERLAPPED`: it is
//!   reset when an operation starts and set by the kernel when it ends, so
//!   "the event is set" means "this side has something to report".
//!   Blocking calls wait on it with `WaitForSingleObject`; the async
//!   [`PipeIo::ready`] has the system thread pool wait on it once
//!   (`RegisterWaitForSingleObject`) and wake the task.
//! - Each side has its own mutex, held only to look at or change its state,
//!   never while waiting, so that a send and a receive on different
//!   threads never hold each other up.
//! - The kernel may use an `OVERLAPPED` and its buffer for as long as the
//!   operation is in flight. Both live on the heap, are never moved, and
//!   are freed only once the operation is known to be over; if that can
//!   never be known they are leaked rather than freed.

use std::ffi::c_void;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::windows::io::RawHandle;
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sharded_slab::Slab;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_BROKEN_PIPE, ERROR_HANDLE_EOF, ERROR_IO_INCOMPLETE, ERROR_IO_PENDING,
    ERROR_MORE_DATA, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_FAILED,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Threading::{
    CreateEventW, INFINITE, RegisterWaitForSingleObject, ResetEvent, UnregisterWaitEx,
    WT_EXECUTEONLYONCE, WaitForSingleObject,
};

/// The size of the read side's buffer: the most one `ReadFile` asks for.
const READ_BUFFER: usize = 64 * 1024;

/// The most bytes one send accepts (and copies) at a time.
const WRITE_CHUNK: usize = 256 * 1024;

/// How long dropping a [`PipeIo`] waits for a write in flight to complete
/// before cancelling it.
const WRITE_GRACE: Duration = Duration::from_secs(2);

/// What to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Bytes to read, the end of the stream, or an error to report.
    Readable,
    /// No write in flight, so a send would be accepted (or report an error).
    Writable,
}

/// Stream I/O on one end of a byte-mode named pipe opened for overlapped
/// I/O: nonblocking or blocking sends and receives from any thread, and
/// readiness for async code.
pub(crate) struct PipeIo {
    /// The pipe end; not ours to close.
    handle: HANDLE,
    /// The read side's event, copied out of the slot so that waiting on it
    /// needs no lock.
    read_event: HANDLE,
    /// The write side's event, likewise.
    write_event: HANDLE,
    /// The read side.
    read: Mutex<ReadSide>,
    /// The write side.
    write: Mutex<WriteSide>,
}

// SAFETY: the handles are process-wide references to kernel objects, usable
// from any thread. Everything the kernel shares with us (each `OVERLAPPED`
// and buffer) belongs to a slot inside a mutex, so only one thread at a
// time starts, polls or finishes an operation, and the memory is freed only
// when the `PipeIo` is dropped, after its operations are over.
unsafe impl Send for PipeIo {}

// SAFETY: as for `Send`: shared access goes through the mutexes, and the
// event handles are only waited on, which any number of threads may do.
unsafe impl Sync for PipeIo {}

impl fmt::Debug for PipeIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipeIo")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl PipeIo {
    /// I/O on the pipe end `handle`, which it does not own: the owner
    /// guarantees that the handle outlives the `PipeIo`, and drops the
    /// `PipeIo` before closing it.
    pub(crate) fn new(handle: RawHandle) -> io::Result<PipeIo> {
        let read = ReadSide {
            slot: Slot::new(vec![0; READ_BUFFER])?,
            start: 0,
            end: 0,
            eof: false,
            error: None,
        };
        let write = WriteSide {
            slot: Slot::new(Vec::new())?,
            len: 0,
            written: 0,
            issued: 0,
            completed: 0,
            failure: None,
        };
        Ok(PipeIo {
            handle: handle.cast(),
            read_event: read.slot.event,
            write_event: write.slot.event,
            read: Mutex::new(read),
            write: Mutex::new(write),
        })
    }

    /// Sends some of `buf`; returns how many bytes were accepted (>0 for a
    /// non-empty buf, 0 for an empty one).
    ///
    /// wait=false never blocks: if an earlier write is still in flight,
    /// `io::ErrorKind::WouldBlock`; otherwise the bytes are copied and
    /// their write completes later. wait=true blocks until the bytes are
    /// written into the pipe (the write completed), so a process may exit
    /// right after. A closed peer: `io::ErrorKind::BrokenPipe`. A failure
    /// of a write that nobody waited for is reported by the next send.
    pub(crate) fn send(&self, buf: &[u8], wait: bool) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let (seq, accepted) = loop {
            {
                let mut side = self.lock_write();
                side.harvest(self.handle);
                if !side.slot.pending {
                    if let Some(err) = side.take_unreported() {
                        return Err(err);
                    }
                    let accepted = side.start(self.handle, buf)?;
                    if !wait {
                        return Ok(accepted);
                    }
                    break (side.issued, accepted);
                }
                if !wait {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            wait_event(self.write_event, INFINITE)?;
        };
        loop {
            {
                let mut side = self.lock_write();
                side.harvest(self.handle);
                if side.completed >= seq {
                    return match side.failure_of(seq) {
                        Some(err) => Err(err),
                        None => Ok(accepted),
                    };
                }
            }
            wait_event(self.write_event, INFINITE)?;
        }
    }

    /// Appends at most `want` bytes to `buf`; returns how many. Ok(0) = end
    /// of stream (peer closed), or `want` was 0.
    ///
    /// wait=false never blocks (nothing there: WouldBlock); wait=true
    /// blocks until some bytes or the end.
    pub(crate) fn recv_into(
        &self,
        buf: &mut BytesMut,
        want: usize,
        wait: bool,
    ) -> io::Result<usize> {
        if want == 0 {
            return Ok(0);
        }
        loop {
            {
                let mut side = self.lock_read();
                if side.readable(self.handle) {
                    return side.take(self.handle, buf, want);
                }
                if !wait {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
            }
            wait_event(self.read_event, INFINITE)?;
        }
    }

    /// Blocks until ready as asked or `timeout` passes (None = no limit);
    /// returns whether ready.
    ///
    /// Readable = bytes to read, or end of stream, or an error. Writable =
    /// no write in flight (or error).
    pub(crate) fn wait(&self, what: Wait, timeout: Option<Duration>) -> io::Result<bool> {
        // A deadline past what `Instant` can hold is no deadline.
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let event = self.event_of(what);
        loop {
            if self.is_ready(what) {
                return Ok(true);
            }
            let millis = match (timeout, deadline) {
                (None, _) | (Some(_), None) => INFINITE,
                (Some(_), Some(deadline)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    millis_rounded_up(left)
                }
            };
            wait_event(event, millis)?;
        }
    }

    /// Async: resolves when ready as asked (same meaning as `wait`).
    ///
    /// Works from any executor: the waiting is done by the system thread
    /// pool, which wakes the task. Cancel safe: dropping the future
    /// withdraws its wait and consumes nothing.
    pub(crate) async fn ready(&self, what: Wait) -> io::Result<()> {
        loop {
            if self.is_ready(what) {
                return Ok(());
            }
            // The event is set once this side has news, and stays set until
            // a new operation starts; an event set before the registration
            // fires it at once.
            // (No raw handle is held across the await: the future is `Send`.)
            EventSignal::register(self.event_of(what))?.await;
        }
    }

    /// Whether the side is ready as asked, now (starting a read if none is
    /// in flight and nothing is buffered).
    fn is_ready(&self, what: Wait) -> bool {
        match what {
            Wait::Readable => self.lock_read().readable(self.handle),
            Wait::Writable => {
                let mut side = self.lock_write();
                side.harvest(self.handle);
                !side.slot.pending
            }
        }
    }

    /// The event that tells of news for `what`.
    fn event_of(&self, what: Wait) -> HANDLE {
        match what {
            Wait::Readable => self.read_event,
            Wait::Writable => self.write_event,
        }
    }

    /// The read side, locked. A panic elsewhere leaves it consistent: its
    /// `pending` flag is always set before an operation starts.
    fn lock_read(&self) -> MutexGuard<'_, ReadSide> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The write side, locked (see [`PipeIo::lock_read`]).
    fn lock_write(&self) -> MutexGuard<'_, WriteSide> {
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PipeIo {
    /// Cancels a pending read and waits for it to end; gives a pending write
    /// [`WRITE_GRACE`] to complete, then cancels it and waits for it to
    /// end. An operation whose end cannot be confirmed keeps its memory
    /// (leaked by [`Slot`]'s drop).
    fn drop(&mut self) {
        let handle = self.handle;
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        if read.slot.pending {
            read.slot.cancel(handle);
        }
        let write = self.write.get_mut().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now() + WRITE_GRACE;
        loop {
            write.harvest(handle);
            if !write.slot.pending {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                write.slot.cancel(handle);
                break;
            }
            if wait_event(write.slot.event, millis_rounded_up(left)).is_err() {
                write.slot.cancel(handle);
                break;
            }
        }
    }
}

/// One side's overlapped operation: the `OVERLAPPED`, its event and its
/// buffer, and whether the kernel is using them.
struct Slot {
    /// A manual-reset event, named in every operation's `OVERLAPPED`.
    event: HANDLE,
    /// The `OVERLAPPED` on the heap (from `Box::into_raw`), so that it never
    /// moves; only ever reached through this pointer.
    ov: NonNull<OVERLAPPED>,
    /// The bytes read into or written from. Neither read, written, resized
    /// nor freed while `pending`.
    buf: Vec<u8>,
    /// An operation is in flight: the kernel may use `ov` and `buf`.
    pending: bool,
}

impl Slot {
    /// A slot with a new event and the buffer `buf`.
    fn new(buf: Vec<u8>) -> io::Result<Slot> {
        // SAFETY: no security attributes and no name (both may be null); a
        // manual-reset event, initially unset.
        let event = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        let ov = NonNull::from(Box::leak(Box::new(OVERLAPPED::default())));
        Ok(Slot {
            event,
            ov,
            buf,
            pending: false,
        })
    }

    /// Readies the `OVERLAPPED` and the event for a new operation, marks
    /// the slot pending and returns the `OVERLAPPED` to pass to the kernel.
    /// The caller starts the operation next, and clears `pending` if it
    /// did not start.
    fn begin(&mut self) -> *mut OVERLAPPED {
        debug_assert!(!self.pending);
        // SAFETY: no operation is in flight, so the kernel does not use the
        // `OVERLAPPED`, which is ours alone and valid (from a `Box`).
        unsafe {
            self.ov.as_ptr().write(OVERLAPPED {
                hEvent: self.event,
                ..OVERLAPPED::default()
            });
        }
        // The operation resets the event as it starts anyway; doing it here
        // too costs little. A failure could only mean a spurious wake-up,
        // which every waiter tolerates.
        // SAFETY: `event` is our open event handle.
        unsafe { ResetEvent(self.event) };
        self.pending = true;
        self.ov.as_ptr()
    }

    /// The result of the operation in flight: `None` while it goes on
    /// (`block` false), else the bytes transferred or the Win32 error, and
    /// the slot is no longer pending. `block` waits for the end.
    fn result(&mut self, handle: HANDLE, block: bool) -> Option<Result<u32, u32>> {
        debug_assert!(self.pending);
        let mut transferred = 0u32;
        // SAFETY: `ov` is the valid `OVERLAPPED` of the operation in flight
        // on `handle`, with our event in it; `transferred` is a valid out
        // parameter.
        let ok = unsafe {
            GetOverlappedResult(handle, self.ov.as_ptr(), &mut transferred, block.into())
        };
        let outcome = if ok != 0 {
            Ok(transferred)
        } else {
            // SAFETY: reads this thread's last-error value; no preconditions.
            match unsafe { GetLastError() } {
                ERROR_IO_INCOMPLETE => return None,
                // A message longer than the buffer: its first part is there.
                ERROR_MORE_DATA => Ok(transferred),
                code => Err(code),
            }
        };
        self.pending = false;
        Some(outcome)
    }

    /// Cancels the operation in flight and waits for it to end.
    fn cancel(&mut self, handle: HANDLE) {
        // SAFETY: `ov` is the `OVERLAPPED` of our operation on `handle`.
        // Cancelling one that has just ended fails harmlessly
        // (ERROR_NOT_FOUND); either way the wait below sees its end.
        unsafe { CancelIoEx(handle, self.ov.as_ptr()) };
        let _ = self.result(handle, true);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.pending {
            // The kernel may still write to the `OVERLAPPED`, the buffer
            // and the event: leak all three rather than free them.
            std::mem::forget(std::mem::take(&mut self.buf));
            return;
        }
        // SAFETY: no operation is in flight, so the kernel is done with the
        // `OVERLAPPED`, which came from `Box::leak` and is freed only here.
        drop(unsafe { Box::from_raw(self.ov.as_ptr()) });
        // SAFETY: `event` is our own open handle, closed only here; nothing
        // waits on it any more (waiters borrow the `PipeIo`).
        unsafe { CloseHandle(self.event) };
    }
}

/// The read side: completed bytes not yet taken, and what ended the stream.
struct ReadSide {
    /// The read slot; its buffer's length is fixed.
    slot: Slot,
    /// Where the bytes not yet taken start in the buffer.
    start: usize,
    /// Where they end.
    end: usize,
    /// The peer closed: every receive reports the end from now on.
    eof: bool,
    /// A read failed with this Win32 error; reported by the next receive.
    error: Option<u32>,
}

impl ReadSide {
    /// Collects the read in flight, if it has completed.
    fn harvest(&mut self, handle: HANDLE) {
        if !self.slot.pending {
            return;
        }
        match self.slot.result(handle, false) {
            None => {}
            Some(Ok(n)) => {
                self.start = 0;
                self.end =
                    usize::try_from(n).map_or(self.slot.buf.len(), |n| n.min(self.slot.buf.len()));
            }
            Some(Err(code)) => self.failed(code),
        }
    }

    /// Records the failure of a read.
    fn failed(&mut self, code: u32) {
        if peer_closed(code) || code == ERROR_HANDLE_EOF {
            self.eof = true;
        } else {
            self.error = Some(code);
        }
    }

    /// Starts a read into the buffer.
    fn arm(&mut self, handle: HANDLE) {
        let capacity = u32::try_from(self.slot.buf.len()).unwrap_or(u32::MAX);
        let ov = self.slot.begin();
        // SAFETY: the buffer and the `OVERLAPPED` are on the heap and stay
        // there, untouched by us, until the slot is no longer pending, which
        // happens only once the kernel reports the read's end (or below, if
        // it never started); `capacity` is at most the buffer's length.
        let ok = unsafe {
            ReadFile(
                handle,
                self.slot.buf.as_mut_ptr(),
                capacity,
                ptr::null_mut(),
                ov,
            )
        };
        if ok == 0 {
            // SAFETY: reads this thread's last-error value; no preconditions.
            let code = unsafe { GetLastError() };
            if code != ERROR_IO_PENDING {
                self.slot.pending = false;
                self.failed(code);
            }
        }
        // Otherwise the read is in flight, or done already (then its event
        // is set and `harvest` collects it).
    }

    /// Whether a receive would return at once (bytes, the end, or an
    /// error). Starts a read if none is in flight and nothing is buffered.
    fn readable(&mut self, handle: HANDLE) -> bool {
        loop {
            self.harvest(handle);
            if self.start < self.end || self.eof || self.error.is_some() {
                return true;
            }
            if self.slot.pending {
                return false;
            }
            // Nothing buffered and nothing in flight (or an empty read came
            // back): read again.
            self.arm(handle);
        }
    }

    /// Gives what a ready side has: up to `want` bytes, the end, or the
    /// error. Starts the next read once the buffer is drained.
    fn take(&mut self, handle: HANDLE, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        if self.start < self.end {
            let n = want.min(self.end - self.start);
            buf.extend_from_slice(&self.slot.buf[self.start..self.start + n]);
            self.start += n;
            if self.start == self.end && !self.eof {
                self.readable(handle);
            }
            return Ok(n);
        }
        if self.eof {
            return Ok(0);
        }
        match self.error.take() {
            Some(code) => Err(win32_error(code)),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A failed write, kept for the sender that waits for it or, if none does,
/// for the next send.
struct Failure {
    /// The write's number ([`WriteSide::issued`] when it started).
    seq: u64,
    /// The Win32 error.
    code: u32,
    /// Some send has reported it already.
    reported: bool,
}

/// The write side: the bytes being written and the count of writes.
struct WriteSide {
    /// The write slot; its buffer holds the bytes of the current write.
    slot: Slot,
    /// How many bytes of the buffer the current write is to write.
    len: usize,
    /// How many of them are written.
    written: usize,
    /// Writes started so far; the number of the latest.
    issued: u64,
    /// The number of the latest write that ended.
    completed: u64,
    /// The latest write that failed.
    failure: Option<Failure>,
}

impl WriteSide {
    /// Copies up to [`WRITE_CHUNK`] bytes of `data` and starts writing them;
    /// returns how many were taken. Nothing in flight: the caller checked.
    fn start(&mut self, handle: HANDLE, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(WRITE_CHUNK);
        self.slot.buf.clear();
        self.slot.buf.extend_from_slice(&data[..n]);
        self.len = n;
        self.written = 0;
        self.issue(handle).map_err(win32_error)?;
        self.issued += 1;
        Ok(n)
    }

    /// Starts writing the rest of the buffer; the Win32 error if the write
    /// did not start.
    fn issue(&mut self, handle: HANDLE) -> Result<(), u32> {
        let rest = &self.slot.buf[self.written..self.len];
        let (bytes, count) = (rest.as_ptr(), u32::try_from(rest.len()).unwrap_or(u32::MAX));
        let ov = self.slot.begin();
        // SAFETY: the bytes (`count` of them at most, all within the buffer)
        // and the `OVERLAPPED` are on the heap and stay there, untouched by
        // us, until the slot is no longer pending, which happens only once
        // the kernel reports the write's end (or below, if it never started).
        let ok = unsafe { WriteFile(handle, bytes, count, ptr::null_mut(), ov) };
        if ok == 0 {
            // SAFETY: reads this thread's last-error value; no preconditions.
            let code = unsafe { GetLastError() };
            if code != ERROR_IO_PENDING {
                self.slot.pending = false;
                return Err(code);
            }
        }
        Ok(())
    }

    /// Collects the write in flight, if it has ended; writes the rest if
    /// only part was written.
    fn harvest(&mut self, handle: HANDLE) {
        while self.slot.pending {
            let outcome = match self.slot.result(handle, false) {
                None => return,
                Some(outcome) => outcome,
            };
            let outcome = outcome.and_then(|n| {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                self.written = self.written.saturating_add(n).min(self.len);
                // A byte-mode write completes whole; should one ever stop
                // short (having made progress), write the rest.
                if n > 0 && self.written < self.len {
                    self.issue(handle)
                } else {
                    Ok(())
                }
            });
            match outcome {
                Ok(()) if self.slot.pending => {}
                Ok(()) => self.completed = self.issued,
                Err(code) => {
                    self.completed = self.issued;
                    self.failure = Some(Failure {
                        seq: self.issued,
                        code,
                        reported: false,
                    });
                }
            }
        }
    }

    /// The failure of a write that no send has reported yet, now reported.
    fn take_unreported(&mut self) -> Option<io::Error> {
        match &mut self.failure {
            Some(failure) if !failure.reported => {
                failure.reported = true;
                Some(win32_error(failure.code))
            }
            _ => None,
        }
    }

    /// The failure of write `seq`, if it failed.
    fn failure_of(&mut self, seq: u64) -> Option<io::Error> {
        match &mut self.failure {
            Some(failure) if failure.seq == seq => {
                failure.reported = true;
                Some(win32_error(failure.code))
            }
            _ => None,
        }
    }
}

/// What the thread-pool callback shares with [`EventSignal`].
#[derive(Default)]
struct SignalState {
    /// The event was set.
    fired: bool,
    /// The task to wake when it is.
    waker: Option<Waker>,
}

/// The states of the registered waits, each under a key that also names
/// its generation, so that a key outlives its entry harmlessly.
///
/// The thread-pool callback is handed a key, never a pointer: it finds the
/// state only while the wait is registered. A callback that runs after its
/// wait was withdrawn (Wine's `UnregisterWaitEx` can return, even when
/// asked to wait, before a callback it has already picked starts) finds no
/// entry, or one of a later generation that its key does not open, and does
/// nothing. The slab's memory is never freed, so no callback can read
/// freed memory whatever the deregistration does.
static SIGNALS: LazyLock<Slab<Arc<Mutex<SignalState>>>> = LazyLock::new(Slab::new);

/// A one-shot wait by the system thread pool for an event to be set (or
/// any waitable handle to be signalled: a process that ends), as a
/// future. Dropping it withdraws the wait.
pub(super) struct EventSignal {
    /// The registered wait.
    wait: HANDLE,
    /// The state's key in [`SIGNALS`], which the callback is given.
    key: usize,
    /// The state, also held here so that polling needs no lookup.
    state: Arc<Mutex<SignalState>>,
}

// SAFETY: `wait` is a thread-pool wait handle, which may be withdrawn from
// any thread; the state is behind an `Arc<Mutex<_>>`.
unsafe impl Send for EventSignal {}

// SAFETY: shared, it only reads the wait handle's value (never changed
// after it is made) and locks the state's mutex; withdrawing the wait
// takes `&mut self` (drop).
unsafe impl Sync for EventSignal {}

impl EventSignal {
    /// Has the thread pool wait (once) for `event` to be set.
    fn register(event: HANDLE) -> io::Result<EventSignal> {
        // SAFETY: the events of a `PipeIo` outlive the futures that wait
        // on them (each borrows the `PipeIo`).
        unsafe { EventSignal::for_handle(event) }
    }

    /// Has the thread pool wait (once) for `handle` to be signalled.
    ///
    /// # Safety
    ///
    /// `handle` stays open as long as the returned value lives.
    pub(super) unsafe fn for_handle(event: HANDLE) -> io::Result<EventSignal> {
        let state = Arc::new(Mutex::new(SignalState::default()));
        let key = SIGNALS
            .insert(Arc::clone(&state))
            .ok_or_else(|| io::Error::other("too many waits registered at once"))?;
        let mut wait: HANDLE = ptr::null_mut();
        // SAFETY: `wait` is a valid out parameter; `event` is an open
        // handle that outlives the registration (the caller's promise);
        // the context is a key, not a pointer: the callback never
        // dereferences it.
        let ok = unsafe {
            RegisterWaitForSingleObject(
                &mut wait,
                event,
                Some(on_signal),
                ptr::without_provenance_mut(key),
                INFINITE,
                WT_EXECUTEONLYONCE,
            )
        };
        if ok == 0 {
            let err = io::Error::last_os_error();
            SIGNALS.remove(key);
            return Err(err);
        }
        Ok(EventSignal { wait, key, state })
    }
}

impl Future for EventSignal {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.fired {
            return Poll::Ready(());
        }
        match &mut state.waker {
            Some(waker) => waker.clone_from(cx.waker()),
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for EventSignal {
    fn drop(&mut self) {
        // SAFETY: `wait` is our registration, withdrawn only here. Asked to
        // wait (INVALID_HANDLE_VALUE), the call returns once a callback
        // already running has returned, so the handle waited on is no
        // longer in use. Whatever it returns, a callback that still runs
        // later finds nothing under its key once the entry is removed.
        unsafe { UnregisterWaitEx(self.wait, INVALID_HANDLE_VALUE) };
        SIGNALS.remove(self.key);
    }
}

/// The thread-pool callback of [`EventSignal`]: marks the event set and
/// wakes the task, if its wait is still registered.
///
/// `context` is the state's key in [`SIGNALS`] (an integer, never read
/// through).
unsafe extern "system" fn on_signal(context: *mut c_void, _timed_out: bool) {
    let Some(entry) = SIGNALS.get(context.addr()) else {
        // The wait was withdrawn: nobody waits any more.
        return;
    };
    let waker = {
        let mut state = entry.lock().unwrap_or_else(PoisonError::into_inner);
        state.fired = true;
        state.waker.take()
    };
    drop(entry);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// Waits up to `millis` (or INFINITE) for `event` to be set.
fn wait_event(event: HANDLE, millis: u32) -> io::Result<()> {
    // SAFETY: `event` is an open event handle of a live `PipeIo`.
    if unsafe { WaitForSingleObject(event, millis) } == WAIT_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `d` in whole milliseconds, rounded up (so that a wait never ends before
/// its deadline), below INFINITE.
fn millis_rounded_up(d: Duration) -> u32 {
    let millis = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(millis)
        .unwrap_or(INFINITE - 1)
        .min(INFINITE - 1)
}

/// Whether a Win32 error means the peer closed the pipe.
fn peer_closed(code: u32) -> bool {
    matches!(
        code,
        ERROR_BROKEN_PIPE | ERROR_NO_DATA | ERROR_PIPE_NOT_CONNECTED
    )
}

/// A Win32 error as an `io::Error`, of kind `BrokenPipe` if the peer closed.
fn win32_error(code: u32) -> io::Error {
    // Win32 error codes are stored in the `i32` of `raw_os_error` bit for
    // bit, as the standard library does.
    #[allow(clippy::cast_possible_wrap)]
    let err = io::Error::from_raw_os_error(code as i32);
    if peer_closed(code) && err.kind() != io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, err)
    } else {
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::windows::io::{AsRawHandle, FromRawHandle, IntoRawHandle, OwnedHandle};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::mpsc;
    use std::thread;

    use windows_sys::Win32::Foundation::{ERROR_PIPE_CONNECTED, GENERIC_READ, GENERIC_WRITE};
    use windows_sys::Win32::Storage::FileSystem::{
        CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
        PIPE_ACCESS_DUPLEX,
    };
    use windows_sys::Win32::System::Pipes::{
        ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
        PIPE_TYPE_BYTE, PIPE_WAIT,
    };

    /// The pipes' buffer sizes.
    const PIPE_BUFFER: u32 = 64 * 1024;

    /// One end of a test pipe: the I/O, dropped before the handle closes
    /// (fields drop in order).
    struct End {
        /// The I/O on `handle`.
        io: PipeIo,
        /// The pipe end.
        handle: OwnedHandle,
    }

    impl End {
        /// I/O on `handle`.
        fn new(handle: OwnedHandle) -> End {
            End {
                io: PipeIo::new(handle.as_raw_handle()).expect("PipeIo::new"),
                handle,
            }
        }

        /// Drops the I/O, then closes the handle, checking that it closes.
        fn close(self) {
            let End { io, handle } = self;
            drop(io);
            let raw = handle.into_raw_handle();
            // SAFETY: `raw` is the handle just given up by its owner.
            assert_ne!(unsafe { CloseHandle(raw.cast()) }, 0, "CloseHandle");
        }
    }

    /// A NUL-terminated UTF-16 copy of `s`.
    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(Some(0)).collect()
    }

    /// A connected pair of pipe ends: (server, client).
    fn pair() -> (End, End) {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = wide(&format!(
            r"\\.\pipe\winpipe-test-{}-{nanos}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        // SAFETY: `name` is NUL-terminated; no security attributes.
        let server = unsafe {
            CreateNamedPipeW(
                name.as_ptr(),
                PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                1,
                PIPE_BUFFER,
                PIPE_BUFFER,
                0,
                ptr::null(),
            )
        };
        assert_ne!(
            server,
            INVALID_HANDLE_VALUE,
            "CreateNamedPipeW: {}",
            io::Error::last_os_error()
        );
        // SAFETY: a new handle that nothing else owns.
        let server = unsafe { OwnedHandle::from_raw_handle(server.cast()) };
        // SAFETY: `name` is NUL-terminated; no security attributes, no template.
        let client = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                ptr::null_mut(),
            )
        };
        assert_ne!(
            client,
            INVALID_HANDLE_VALUE,
            "CreateFileW: {}",
            io::Error::last_os_error()
        );
        // SAFETY: a new handle that nothing else owns.
        let client = unsafe { OwnedHandle::from_raw_handle(client.cast()) };
        let mut ov = OVERLAPPED {
            // SAFETY: a manual-reset event, initially unset, no name.
            hEvent: unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) },
            ..OVERLAPPED::default()
        };
        assert!(!ov.hEvent.is_null());
        // SAFETY: `ov` lives across the call, which cannot stay in flight:
        // the client is already connected.
        let ok = unsafe { ConnectNamedPipe(server.as_raw_handle().cast(), &mut ov) };
        // SAFETY: as above.
        let code = unsafe { GetLastError() };
        assert!(
            ok == 0 && code == ERROR_PIPE_CONNECTED,
            "ConnectNamedPipe: {ok} {code}"
        );
        // SAFETY: our event, used by nothing else.
        unsafe { CloseHandle(ov.hEvent) };
        (End::new(server), End::new(client))
    }

    /// `n` bytes of a pattern that does not repeat every 256.
    fn pattern(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| u8::try_from((i % 251) ^ (i / 251 % 7)).expect("a byte"))
            .collect()
    }

    /// Sends all of `data`, blocking.
    fn send_all(io: &PipeIo, data: &[u8]) {
        let mut sent = 0;
        while sent < data.len() {
            sent += io.send(&data[sent..], true).expect("send");
        }
    }

    /// Receives exactly `n` bytes, blocking.
    fn recv_exact(io: &PipeIo, n: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while buf.len() < n {
            let want = n - buf.len();
            let got = io.recv_into(&mut buf, want, true).expect("recv");
            assert_ne!(got, 0, "unexpected end of stream");
        }
        buf.to_vec()
    }

    /// Receives a little-endian `u64`, blocking.
    fn recv_u64(io: &PipeIo) -> u64 {
        u64::from_le_bytes(recv_exact(io, 8).try_into().expect("8 bytes"))
    }

    /// Receives everything up to the end of the stream, blocking.
    fn recv_to_end(io: &PipeIo) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while io.recv_into(&mut buf, 100_000, true).expect("recv") != 0 {}
        buf.to_vec()
    }

    /// Sends all of `data` with nonblocking sends and `ready`, then waits
    /// for the last write to complete.
    async fn send_all_async(io: &PipeIo, data: &[u8]) {
        let mut sent = 0;
        while sent < data.len() {
            match io.send(&data[sent..], false) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.ready(Wait::Writable).await.expect("ready");
                }
                Err(e) => panic!("send: {e}"),
            }
        }
        io.ready(Wait::Writable).await.expect("ready");
    }

    /// Receives exactly `n` bytes with nonblocking receives and `ready`.
    async fn recv_exact_async(io: &PipeIo, n: usize) -> Vec<u8> {
        let mut buf = BytesMut::new();
        while buf.len() < n {
            let want = n - buf.len();
            match io.recv_into(&mut buf, want, false) {
                Ok(0) => panic!("unexpected end of stream"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.ready(Wait::Readable).await.expect("ready");
                }
                Err(e) => panic!("recv: {e}"),
            }
        }
        buf.to_vec()
    }

    /// Round trips of the ping-pong tests.
    const ROUNDS: u64 = 1000;

    /// Answers `ROUNDS` numbers with their successors, async.
    async fn echo_async(io: &PipeIo) {
        for _ in 0..ROUNDS {
            let bytes = recv_exact_async(io, 8).await;
            let n = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
            send_all_async(io, &(n + 1).to_le_bytes()).await;
        }
    }

    /// Sends `ROUNDS` numbers and checks each answer, async.
    async fn drive_async(io: &PipeIo) {
        for i in 0..ROUNDS {
            send_all_async(io, &(i * 3).to_le_bytes()).await;
            let bytes = recv_exact_async(io, 8).await;
            assert_eq!(
                u64::from_le_bytes(bytes.try_into().expect("8 bytes")),
                i * 3 + 1
            );
        }
    }

    #[test]
    fn nonblocking_recv_on_empty_would_block() {
        let (a, b) = pair();
        let mut buf = BytesMut::new();
        for _ in 0..3 {
            let err = a.io.recv_into(&mut buf, 10, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        }
        assert!(buf.is_empty());
        assert!(a.io.wait(Wait::Writable, Some(Duration::ZERO)).unwrap());
        a.close();
        b.close();
    }

    #[test]
    fn send_then_recv() {
        let (a, b) = pair();
        assert_eq!(a.io.send(b"hello", true).unwrap(), 5);
        assert_eq!(a.io.send(b"", false).unwrap(), 0);
        assert_eq!(b.io.send(b" world", false).unwrap(), 6);
        let mut buf = BytesMut::from(&b"<"[..]);
        assert_eq!(b.io.recv_into(&mut buf, 2, true).unwrap(), 2);
        assert!(
            b.io.wait(Wait::Readable, Some(Duration::from_secs(5)))
                .unwrap()
        );
        assert_eq!(b.io.recv_into(&mut buf, 100, false).unwrap(), 3);
        assert_eq!(&buf[..], b"<hello");
        assert_eq!(b.io.recv_into(&mut buf, 0, false).unwrap(), 0);
        assert_eq!(recv_exact(&a.io, 6), b" world");
        assert_eq!(
            a.io.recv_into(&mut buf, 1, false).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        a.close();
        b.close();
    }

    #[test]
    fn wait_readable_times_out_then_fires() {
        let (a, b) = pair();
        let started = Instant::now();
        assert!(
            !a.io
                .wait(Wait::Readable, Some(Duration::from_millis(20)))
                .unwrap()
        );
        assert!(started.elapsed() >= Duration::from_millis(20));
        // Once the write has completed, the bytes are in the pipe.
        b.io.send(b"x", true).unwrap();
        assert!(
            a.io.wait(Wait::Readable, Some(Duration::from_millis(20)))
                .unwrap()
        );
        // Readiness consumes nothing.
        assert!(a.io.wait(Wait::Readable, None).unwrap());
        assert_eq!(recv_exact(&a.io, 1), b"x");
        assert!(!a.io.wait(Wait::Readable, Some(Duration::ZERO)).unwrap());
        assert!(
            b.io.wait(Wait::Writable, Some(Duration::from_secs(5)))
                .unwrap()
        );
        a.close();
        b.close();
    }

    #[test]
    fn large_transfer_in_order() {
        const SIZE: usize = 8 * 1024 * 1024;
        let (a, b) = pair();
        let data = pattern(SIZE);
        thread::scope(|s| {
            s.spawn(|| {
                let mut sent = 0;
                while sent < SIZE {
                    match a.io.send(&data[sent..], false) {
                        Ok(n) => {
                            assert!(n > 0 && n <= WRITE_CHUNK);
                            sent += n;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            assert!(a.io.wait(Wait::Writable, None).unwrap());
                        }
                        Err(e) => panic!("send: {e}"),
                    }
                }
                assert!(a.io.wait(Wait::Writable, None).unwrap());
            });
            let got = recv_exact(&b.io, SIZE);
            assert!(got == data, "bytes differ");
        });
        a.close();
        b.close();
    }

    #[test]
    fn ping_pong_threads_send_and_recv_concurrently() {
        let (a, b) = pair();
        thread::scope(|s| {
            let (a_io, b_io) = (&a.io, &b.io);
            // B: one thread receives, another answers, on the same PipeIo.
            let (to_b_sender, b_sender) = mpsc::channel::<u64>();
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    to_b_sender.send(recv_u64(b_io)).unwrap();
                }
            });
            s.spawn(move || {
                for n in b_sender {
                    send_all(b_io, &(n + 1).to_le_bytes());
                }
            });
            // A: this thread sends while another sits in a blocking receive.
            let (to_a_main, a_main) = mpsc::channel::<u64>();
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    to_a_main.send(recv_u64(a_io)).unwrap();
                }
            });
            for i in 0..ROUNDS {
                send_all(a_io, &(i * 2).to_le_bytes());
                assert_eq!(a_main.recv().unwrap(), i * 2 + 1);
            }
        });
        a.close();
        b.close();
    }

    #[test]
    fn peer_closed_gives_end_and_broken_pipe() {
        for close_server in [false, true] {
            let (server, client) = pair();
            let (stays, goes) = if close_server {
                (client, server)
            } else {
                (server, client)
            };
            let mut buf = BytesMut::new();
            // A read is in flight when the peer goes.
            let err = stays.io.recv_into(&mut buf, 10, false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
            send_all(&goes.io, b"bye");
            goes.close();
            assert_eq!(recv_exact(&stays.io, 3), b"bye");
            assert!(
                stays
                    .io
                    .wait(Wait::Readable, Some(Duration::from_secs(5)))
                    .unwrap()
            );
            assert_eq!(stays.io.recv_into(&mut buf, 10, true).unwrap(), 0);
            assert_eq!(stays.io.recv_into(&mut buf, 10, false).unwrap(), 0);
            assert!(stays.io.wait(Wait::Readable, Some(Duration::ZERO)).unwrap());
            let err = stays.io.send(b"x", true).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err:?}");
            let err = stays.io.send(b"x", false).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err:?}");
            assert!(buf.is_empty());
            stays.close();
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_ping_pong_current_thread() {
        let (a, b) = pair();
        tokio::join!(echo_async(&b.io), drive_async(&a.io));
        a.close();
        b.close();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ready_ping_pong_multi_thread() {
        let (a, b) = pair();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let echo = tokio::spawn({
            let b = Arc::clone(&b);
            async move { echo_async(&b.io).await }
        });
        let drive = tokio::spawn({
            let a = Arc::clone(&a);
            async move { drive_async(&a.io).await }
        });
        drive.await.unwrap();
        echo.await.unwrap();
        Arc::into_inner(a).unwrap().close();
        Arc::into_inner(b).unwrap().close();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn ready_is_cancel_safe() {
        let (a, b) = pair();
        for _ in 0..20 {
            let waited =
                tokio::time::timeout(Duration::from_millis(5), a.io.ready(Wait::Readable)).await;
            assert!(waited.is_err(), "ready with nothing to read");
        }
        b.io.send(b"data", false).unwrap();
        tokio::time::timeout(Duration::from_secs(5), a.io.ready(Wait::Readable))
            .await
            .expect("ready in time")
            .unwrap();
        // Dropping a ready future loses nothing.
        drop(a.io.ready(Wait::Readable));
        assert_eq!(recv_exact_async(&a.io, 4).await, b"data");
        a.io.ready(Wait::Writable).await.unwrap();
        a.close();
        b.close();
    }

    #[test]
    fn drop_with_read_in_flight() {
        let (a, b) = pair();
        let mut buf = BytesMut::new();
        let err = a.io.recv_into(&mut buf, 10, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.close();
        assert_eq!(b.io.recv_into(&mut buf, 10, true).unwrap(), 0);
        b.close();
    }

    #[test]
    fn drop_lets_a_write_in_flight_complete() {
        let (a, b) = pair();
        let data = pattern(200 * 1024);
        thread::scope(|s| {
            let reader = s.spawn(|| recv_to_end(&b.io));
            assert_eq!(a.io.send(&data, false).unwrap(), data.len());
            a.close();
            assert!(reader.join().unwrap() == data, "bytes differ");
        });
        b.close();
    }

    #[test]
    fn drop_cancels_a_stuck_write() {
        let (a, b) = pair();
        let data = pattern(200 * 1024);
        assert_eq!(a.io.send(&data, false).unwrap(), data.len());
        // Nobody reads: the write cannot complete through the 64 KiB pipe.
        assert!(
            !a.io
                .wait(Wait::Writable, Some(Duration::from_millis(50)))
                .unwrap()
        );
        let started = Instant::now();
        a.close();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1900),
            "dropped after {took:?}"
        );
        assert!(took < Duration::from_secs(10), "dropped after {took:?}");
        b.close();
    }
}

/// The waits of [`EventSignal`] against a thread pool whose withdrawn
/// waits may still call back (Wine's does, a few times in ten thousand).
#[cfg(test)]
mod signal_tests {
    use super::*;

    use std::collections::VecDeque;
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
    use std::task::Waker;

    use windows_sys::Win32::System::Threading::SetEvent;

    /// A new manual-reset event, unset.
    fn event() -> OwnedHandle {
        // SAFETY: no security attributes and no name; manual reset, unset.
        let raw = unsafe { CreateEventW(ptr::null(), 1, 0, ptr::null()) };
        assert!(!raw.is_null(), "CreateEventW");
        // SAFETY: `raw` is a new handle that nothing else owns.
        unsafe { OwnedHandle::from_raw_handle(raw.cast()) }
    }

    /// Whether `signal` has fired, polled once.
    fn fired(signal: &mut EventSignal) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(signal).poll(&mut cx).is_ready()
    }

    /// Waits withdrawn just as their events are set must never wake a
    /// later wait: each round sets an event and drops its wait at once
    /// (racing the callback), while the waits on an event nobody sets are
    /// kept for a while, each checked to be still pending when dropped.
    /// A late callback given the freed state of a dropped wait would mark
    /// one of them fired (the freed memory is soon another wait's).
    #[test]
    fn a_withdrawn_wait_never_fires_another() {
        let never = event();
        let mut kept: VecDeque<EventSignal> = VecDeque::new();
        for round in 0..20_000u32 {
            let set = event();
            // SAFETY: `set` outlives the wait, dropped just below.
            let mut racing = unsafe { EventSignal::for_handle(set.as_raw_handle()) }.unwrap();
            let _ = fired(&mut racing);
            // SAFETY: `set` is an open event.
            assert_ne!(unsafe { SetEvent(set.as_raw_handle()) }, 0, "SetEvent");
            if round % 2 == 0 {
                std::hint::spin_loop();
            }
            drop(racing);
            drop(set);
            // SAFETY: `never` outlives every kept wait (dropped at the end).
            let mut waiting = unsafe { EventSignal::for_handle(never.as_raw_handle()) }.unwrap();
            assert!(!fired(&mut waiting), "round {round}: a new wait fired");
            kept.push_back(waiting);
            if kept.len() > 16 {
                let mut oldest = kept.pop_front().unwrap();
                assert!(
                    !fired(&mut oldest),
                    "round {round}: a wait on an event nobody set fired"
                );
            }
        }
        for mut waiting in kept.drain(..) {
            assert!(!fired(&mut waiting), "a wait on an event nobody set fired");
        }
    }

    /// A wait whose event is set fires, and wakes its task, whether the
    /// event was set before or after the registration.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wait_fires_when_its_event_is_set() {
        for round in 0..200u32 {
            let set = event();
            let raw = set.as_raw_handle() as usize;
            let before = round % 2 == 0;
            if before {
                // SAFETY: `set` is an open event.
                unsafe { SetEvent(set.as_raw_handle()) };
            }
            // SAFETY: `set` outlives the wait (awaited below).
            let signal = unsafe { EventSignal::for_handle(set.as_raw_handle()) }.unwrap();
            let setter = (!before).then(|| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_micros(200));
                    // SAFETY: the event stays open until the wait has
                    // fired, which needs this call.
                    unsafe { SetEvent(ptr::without_provenance_mut(raw)) };
                })
            });
            tokio::time::timeout(Duration::from_secs(10), signal)
                .await
                .unwrap_or_else(|_| panic!("round {round}: the wait never fired"));
            if let Some(setter) = setter {
                setter.join().unwrap();
            }
        }
    }
}
