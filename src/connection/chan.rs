//! The machinery under every pipe end: one end of a socketpair, a send
//! queue that coalesces writes, and a receive buffer that splits frames.
//!
//! # Writing
//!
//! A message is encoded as a whole frame straight into the end's send queue
//! (under a mutex), so frames never interleave. Bytes leave the queue only
//! through the *flush token*: whoever takes it moves everything queued into
//! its hands, writes it with nonblocking `send` calls while others go on
//! queueing, and gives back what the socket would not take. Nobody holds the
//! token across an `.await` or while waiting for the socket, so a flusher
//! that is cancelled, or a runtime that shuts down, never strands it.
//!
//! An async `send` only queues. The first `send` of a burst spawns a *flush
//! task* on the current runtime; it runs once the sending task yields and
//! writes the whole burst in one system call. A backlog past [`HIGH_WATER`]
//! makes `send` itself write until the backlog is below the mark again
//! (backpressure). `recv` and `poll` flush before they wait, so a request
//! and its reply cost no task switch; the blocking forms write directly.
//!
//! # Closing
//!
//! When the user's handle goes (drop or `close`), whatever is queued is
//! written: at once if the socket takes it, else by a flush task, else (no
//! runtime, or a runtime that is shutting down) by a blocking write. The
//! descriptor closes when the last owner lets go, so the peer sees the end
//! of the stream only after the last byte.

use std::collections::VecDeque;
use std::io;
#[cfg(test)]
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime;
use tokio::sync::Notify;
use tokio_util::codec::Decoder;

use crate::sys;
use crate::sys::OwnedHandle;
use crate::sys::stream::{Registration, Wait};
use crate::transport::handle::{self, provide_handles};
use crate::wire::ChannelError;
use crate::wire::frame::{
    FrameCodec, HEADER_LEN, decode_message, encode_message, insert_fds_prefix, split_fds_prefix,
};

/// A backlog of this many bytes makes `send` write before it returns.
pub(crate) const HIGH_WATER: usize = 256 * 1024;

/// How much one read asks for, unless a large frame is on its way.
const READ_CHUNK: usize = 64 * 1024;

/// How long bytes nobody waits on may wait for the peer to read any of
/// them before they are given up.
const STALL_LIMIT: Duration = Duration::from_secs(2);

/// Buffers that grew past this are released after use rather than kept.
const KEEP_BUF: usize = 1024 * 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A failure that stays: once seen, every later call reports it.
#[derive(Debug, Clone)]
enum Broken {
    /// The peer is gone.
    Closed,
    /// Some other error from the operating system.
    Io(io::ErrorKind, String),
}

impl Broken {
    fn from_io(e: &io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted => Broken::Closed,
            kind => Broken::Io(kind, e.to_string()),
        }
    }

    fn error(&self) -> ChannelError {
        match self {
            Broken::Closed => ChannelError::Closed,
            Broken::Io(kind, msg) => ChannelError::Io(io::Error::new(*kind, msg.clone())),
        }
    }
}

/// The error for any use of an end after `close()`.
pub(crate) fn closed_here() -> ChannelError {
    ChannelError::Io(io::Error::new(
        io::ErrorKind::NotConnected,
        "this end of the pipe was closed by close()",
    ))
}

/// The state of one end that flush tasks share with the user's handle.
struct Shared {
    /// One registration per runtime that awaited on this socket.
    regs: Mutex<Vec<(runtime::Id, Arc<Registration>)>>,
    /// The socket. It closes when the last owner of `Shared` goes (the
    /// registrations hold it too, and go with `Shared`).
    fd: Arc<OwnedHandle>,
    /// The largest frame body sent or accepted.
    max: usize,
    write: Mutex<WriteState>,
    /// Wakes async waiters for the flush token.
    released: Notify,
    /// Wakes blocking waiters for the flush token; pairs with `write`.
    released_cv: Condvar,
    /// The last call on this end was a receive (or there was none yet):
    /// the next async send writes at once instead of waiting to coalesce.
    eager: AtomicBool,
    /// How long a receive right after a send watches the socket before it
    /// parks (zero: it parks at once). See `PipeBuilder::spin`.
    spin: Duration,
    /// A send (of any kind) came since the last receive.
    sent: AtomicBool,
    /// How many `send` system calls carried bytes, for the coalescing tests.
    #[cfg(test)]
    writes: AtomicUsize,
}

#[derive(Default)]
struct WriteState {
    /// What a flusher could not write; goes out before `queued`.
    head: BytesMut,
    /// Whole frames waiting to be written.
    queued: BytesMut,
    /// Descriptors of the frames in `head` and `queued` (handles inside
    /// messages), oldest first: they go out with the next bytes written,
    /// so each arrives no later than its frame's last byte.
    fds: VecDeque<OwnedHandle>,
    /// An empty buffer kept for reuse as the next `queued`.
    spare: BytesMut,
    /// The flush token is taken.
    flushing: bool,
    /// Someone waits for the token.
    contended: bool,
    /// A flush task is scheduled or running.
    task: bool,
    /// The user's handle is gone; no one else will flush.
    orphaned: bool,
    /// A write failed; nothing more will be written.
    broken: Option<Broken>,
}

impl WriteState {
    fn backlog(&self) -> usize {
        self.head.len() + self.queued.len()
    }

    /// The next bytes to write, in order, or `None` when all is written;
    /// the descriptors queued so far move to `fds`, after those already
    /// there.
    fn take_chunk(&mut self, fds: &mut VecDeque<OwnedHandle>) -> Option<BytesMut> {
        if !self.fds.is_empty() {
            fds.append(&mut self.fds);
        }
        if !self.head.is_empty() {
            return Some(std::mem::take(&mut self.head));
        }
        if !self.queued.is_empty() {
            let spare = std::mem::take(&mut self.spare);
            return Some(std::mem::replace(&mut self.queued, spare));
        }
        None
    }

    /// Keeps a written-out chunk of `len` bytes for reuse, unless it is big.
    fn recycle(&mut self, mut chunk: BytesMut, len: usize) {
        if len <= KEEP_BUF && self.spare.capacity() == 0 {
            chunk.clear();
            self.spare = chunk;
        }
    }

    fn fail(&mut self, e: &io::Error) -> Broken {
        let broken = Broken::from_io(e);
        self.broken = Some(broken.clone());
        self.head = BytesMut::new();
        self.queued = BytesMut::new();
        self.fds.clear();
        broken
    }
}

/// Puts descriptors a flusher took, and could not send, back in front of
/// those queued since.
fn put_back(w: &mut WriteState, mut fds: VecDeque<OwnedHandle>) {
    if !fds.is_empty() {
        fds.append(&mut w.fds);
        w.fds = fds;
    }
}

/// What one nonblocking flush attempt achieved.
enum Step {
    /// Nothing is left to write.
    Done,
    /// The socket is full; bytes remain queued.
    WouldBlock,
    /// Someone else holds the flush token.
    Busy,
}

impl Shared {
    /// The registration of the socket with the current runtime's reactor.
    fn registration(&self) -> Result<Arc<Registration>, ChannelError> {
        let handle = runtime::Handle::try_current().map_err(|_| {
            ChannelError::Io(io::Error::other(
                "the async methods of a pipe must run within a Tokio runtime; \
                 use the blocking_* forms elsewhere",
            ))
        })?;
        let id = handle.id();
        let mut regs = lock(&self.regs);
        if let Some((_, reg)) = regs.iter().find(|(rt, _)| *rt == id) {
            return Ok(reg.clone());
        }
        let reg = Arc::new(sys::stream::register(self.fd.clone())?);
        regs.push((id, reg.clone()));
        Ok(reg)
    }

    /// Encodes `msg` onto the queue. Returns the backlog, and whether the
    /// caller must schedule a flush task (when `want_task` and none is).
    fn enqueue<T: Serialize + ?Sized>(
        &self,
        msg: &T,
        want_task: bool,
    ) -> Result<(usize, bool), ChannelError> {
        let mut w = lock(&self.write);
        if let Some(b) = &w.broken {
            return Err(b.error());
        }
        let start = w.queued.len();
        let queued = &mut w.queued;
        let (encoded, fds) = handle::encode(|| encode_message(msg, queued, self.max));
        let encoded = encoded.and_then(|()| {
            if fds.is_empty() {
                return Ok(());
            }
            // At most one `SCM_RIGHTS` message's worth per frame: then the
            // frame's own bytes always suffice to carry its descriptors.
            if fds.len() > sys::scm::MAX_FDS_PER_MSG {
                w.queued.truncate(start);
                return Err(ChannelError::Encode(format!(
                    "a pipe message carries at most {} handles, not {}",
                    sys::scm::MAX_FDS_PER_MSG,
                    fds.len()
                )));
            }
            let count = u32::try_from(fds.len()).unwrap_or(u32::MAX);
            insert_fds_prefix(&mut w.queued, start, count, self.max)
        });
        if let Err(e) = encoded {
            // A refused message may have grown the queue's buffer up to the
            // limit before it was measured; do not keep that memory.
            if w.queued.capacity() > KEEP_BUF && w.queued.len() <= KEEP_BUF {
                w.queued = BytesMut::from(&w.queued[..]);
            }
            return Err(e);
        }
        w.fds.extend(fds);
        let spawn = want_task && !w.task;
        if spawn {
            w.task = true;
        }
        Ok((w.backlog(), spawn))
    }

    /// Gives the flush token back, waking whoever waits for it.
    fn release(&self, mut w: MutexGuard<'_, WriteState>) {
        w.flushing = false;
        let wake = std::mem::take(&mut w.contended);
        drop(w);
        if wake {
            self.released.notify_waiters();
            self.released_cv.notify_all();
        }
    }

    /// Writes as much as the socket takes without blocking.
    fn try_flush(&self) -> Result<Step, ChannelError> {
        let mut fds = VecDeque::new();
        let mut chunk = {
            let mut w = lock(&self.write);
            if let Some(b) = &w.broken {
                return Err(b.error());
            }
            if w.flushing {
                return Ok(Step::Busy);
            }
            match w.take_chunk(&mut fds) {
                None => return Ok(Step::Done),
                Some(chunk) => {
                    w.flushing = true;
                    chunk
                }
            }
        };
        let mut len = chunk.len();
        loop {
            if chunk.is_empty() {
                let mut w = lock(&self.write);
                w.recycle(chunk, len);
                match w.take_chunk(&mut fds) {
                    Some(next) => {
                        drop(w);
                        chunk = next;
                        len = chunk.len();
                        continue;
                    }
                    None => {
                        self.release(w);
                        return Ok(Step::Done);
                    }
                }
            }
            let err = match sys::stream::send_with_fds(&self.fd, &chunk, &mut fds, false) {
                Ok(n) => {
                    self.count_write();
                    let whole = n == chunk.len();
                    chunk.advance(n);
                    if whole {
                        continue;
                    }
                    // The socket took part: it is full now. Writing the
                    // rest as the reader frees room would take many small
                    // writes; wait until the kernel says it is writable
                    // (three quarters free, on Linux) and write it in one go.
                    io::ErrorKind::WouldBlock.into()
                }
                Err(e) => e,
            };
            let mut w = lock(&self.write);
            if err.kind() == io::ErrorKind::WouldBlock {
                // `head` is empty: this chunk was it, or came after it.
                w.head = chunk;
                put_back(&mut w, fds);
                self.release(w);
                return Ok(Step::WouldBlock);
            }
            let broken = w.fail(&err);
            self.release(w);
            return Err(broken.error());
        }
    }

    /// Waits until the flush token is free (it may be taken again at once).
    async fn token_released(&self) {
        let notified = self.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut w = lock(&self.write);
            if !w.flushing {
                return;
            }
            w.contended = true;
        }
        notified.await;
    }

    /// Writes until the backlog is at most `limit` bytes (0: everything).
    async fn flush_to(self: &Arc<Self>, limit: usize) -> Result<(), ChannelError> {
        let mut reg: Option<Arc<Registration>> = None;
        loop {
            let guard = match &reg {
                Some(r) => Some(r.writable().await?),
                None => None,
            };
            match self.try_flush()? {
                Step::Done => return Ok(()),
                step => {
                    if limit > 0 && lock(&self.write).backlog() < limit {
                        self.ensure_task();
                        return Ok(());
                    }
                    match step {
                        Step::WouldBlock => match guard {
                            Some(mut g) => g.clear_ready(),
                            None => reg = Some(self.registration()?),
                        },
                        _ => self.token_released().await,
                    }
                }
            }
        }
    }

    /// Writes everything queued, blocking the thread as needed.
    fn blocking_flush(&self) -> Result<(), ChannelError> {
        self.blocking_flush_within(None, true)
    }

    /// [`blocking_flush`](Self::blocking_flush) for bytes nobody waits on
    /// (an end dropped with messages queued): if the peer takes nothing
    /// for [`STALL_LIMIT`], the rest is given up and the end is broken,
    /// rather than block the thread (a runtime shutting down, or the exit
    /// rule) for good.
    fn stranded_flush(&self) -> Result<(), ChannelError> {
        self.blocking_flush_within(Some(STALL_LIMIT), true)
    }

    /// [`blocking_flush`](Self::blocking_flush) for the bytes of an end
    /// still in use whose flush task was lost with its runtime: if the peer
    /// takes nothing for [`STALL_LIMIT`], the rest stays queued for the
    /// owner's next call, and the end is not broken.
    fn patient_flush(&self) -> Result<(), ChannelError> {
        self.blocking_flush_within(Some(STALL_LIMIT), false)
    }

    /// Writes everything queued, blocking. With `stall` set, gives up once
    /// the peer has taken nothing for that long: the end is then broken if
    /// `give_up`, else the unwritten bytes stay queued.
    fn blocking_flush_within(
        &self,
        stall: Option<Duration>,
        give_up: bool,
    ) -> Result<(), ChannelError> {
        let mut fds = VecDeque::new();
        loop {
            let mut chunk = {
                let mut w = lock(&self.write);
                loop {
                    if let Some(b) = &w.broken {
                        return Err(b.error());
                    }
                    if !w.flushing {
                        break;
                    }
                    w.contended = true;
                    w = self
                        .released_cv
                        .wait(w)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                match w.take_chunk(&mut fds) {
                    None => return Ok(()),
                    Some(chunk) => {
                        w.flushing = true;
                        chunk
                    }
                }
            };
            let len = chunk.len();
            let result = self.write_all_blocking(&mut chunk, &mut fds, stall);
            let mut w = lock(&self.write);
            match result {
                Ok(()) => {
                    w.recycle(chunk, len);
                    self.release(w);
                }
                Err(e) if !give_up && e.kind() == io::ErrorKind::TimedOut => {
                    // `head` is empty while the token is held: the rest of
                    // this chunk goes out first, next time.
                    w.head = chunk;
                    put_back(&mut w, std::mem::take(&mut fds));
                    self.release(w);
                    return Err(ChannelError::Io(e));
                }
                Err(e) => {
                    let broken = w.fail(&e);
                    self.release(w);
                    return Err(broken.error());
                }
            }
        }
    }

    /// Writes all of `chunk`; with `stall` set, fails with
    /// [`io::ErrorKind::TimedOut`] once the peer has taken nothing for
    /// that long.
    fn write_all_blocking(
        &self,
        chunk: &mut BytesMut,
        fds: &mut VecDeque<OwnedHandle>,
        stall: Option<Duration>,
    ) -> io::Result<()> {
        while !chunk.is_empty() {
            match sys::stream::send_with_fds(&self.fd, chunk, fds, stall.is_none()) {
                Ok(n) => {
                    self.count_write();
                    chunk.advance(n);
                }
                // A full socket (never blocking, or someone made it
                // nonblocking): wait for room.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !sys::stream::wait(&self.fd, Wait::Writable, stall)? {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the peer read nothing while the rest waited to be written",
                        ));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what the socket takes now and leaves the rest to a flush task.
    fn flush_soon(self: &Arc<Self>) {
        if let Ok(Step::WouldBlock | Step::Busy) = self.try_flush() {
            self.ensure_task();
        }
    }

    /// Schedules a flush task if bytes wait and none is scheduled.
    fn ensure_task(self: &Arc<Self>) {
        {
            let mut w = lock(&self.write);
            if w.task || w.backlog() == 0 || w.broken.is_some() {
                return;
            }
            w.task = true;
        }
        self.spawn_task();
    }

    /// Starts the flush task whose flag the caller has just set. Without a
    /// runtime, writes here instead.
    fn spawn_task(self: &Arc<Self>) {
        match runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(flush_task(TaskGuard {
                    shared: self.clone(),
                    done: false,
                }));
            }
            Err(_) => {
                lock(&self.write).task = false;
                // A failure is kept and reported by the next call.
                let _ = self.blocking_flush();
            }
        }
    }

    #[cfg(test)]
    fn count_write(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(not(test))]
    fn count_write(&self) {}
}

/// Owned by a flush task. If the task is dropped before it finished (its
/// runtime shut down), the flag is cleared and the bytes it was to write
/// are written here: what the socket takes at once, then the rest by a
/// blocking write, on this thread for an end whose handle is gone (the
/// runtime's shutdown waits at most [`STALL_LIMIT`] without progress), or
/// on a thread of its own for an end still in use (its owner may be about
/// to wait for an answer to these very bytes).
struct TaskGuard {
    shared: Arc<Shared>,
    done: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let orphaned = {
            let mut w = lock(&self.shared.write);
            w.task = false;
            if w.backlog() == 0 || w.broken.is_some() {
                return;
            }
            w.orphaned
        };
        if !matches!(self.shared.try_flush(), Ok(Step::WouldBlock | Step::Busy)) {
            return;
        }
        if orphaned {
            let _ = self.shared.stranded_flush();
            return;
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("tokio-multiprocessing-flush".to_owned())
            .spawn(move || {
                // A failure is kept and reported by the owner's next call.
                let _ = shared.patient_flush();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread to write a pipe's queued messages; the next call on it will");
        }
    }
}

/// Writes until the queue is empty, then clears the task flag (checking
/// for emptiness under the same lock, so a message queued meanwhile is
/// never left without a task).
async fn flush_task(mut guard: TaskGuard) {
    loop {
        if guard.shared.flush_to(0).await.is_err() {
            // A write error is kept for the user; a reactor error leaves
            // the bytes to the guard or to the handle's next call.
            if lock(&guard.shared.write).broken.is_some() {
                lock(&guard.shared.write).task = false;
                guard.done = true;
            }
            return;
        }
        let mut w = lock(&guard.shared.write);
        if w.backlog() == 0 {
            w.task = false;
            drop(w);
            guard.done = true;
            return;
        }
    }
}

/// What one read brought.
enum Fill {
    /// Some bytes; `short` when fewer came than were asked for (the socket
    /// is probably drained).
    Data { short: bool },
    /// The end of the stream, or an error (kept in the read state).
    End,
    /// Nothing to read yet.
    WouldBlock,
}

/// Bytes received and not yet taken, and how the stream ended.
#[derive(Default)]
struct ReadState {
    buf: BytesMut,
    /// Descriptors received and not yet claimed by a frame, oldest first.
    fds: VecDeque<OwnedHandle>,
    eof: bool,
    broken: Option<Broken>,
}

impl ReadState {
    /// Whether a `recv` would return without waiting for the socket.
    fn ready(&self) -> bool {
        !self.buf.is_empty() || self.eof || self.broken.is_some()
    }

    /// The body length the buffered header claims, if a header is there.
    fn claimed(&self) -> Option<usize> {
        FrameCodec::claimed(&self.buf)
    }

    /// Takes the next whole message, if it is buffered, through the wire's
    /// one frame decoder.
    fn take<T: DeserializeOwned>(&mut self, max: usize) -> Result<Option<T>, ChannelError> {
        let mut codec = FrameCodec::new(max);
        // The body is decoded where it lies, not split off the buffer (which
        // would make the buffer shared, at a cost on every message).
        if let Some(total) = codec.frame_len(&self.buf)? {
            let msg = match split_fds_prefix(&self.buf[HEADER_LEN..total]) {
                Ok((0, body)) => decode_message(body),
                Ok((count, body)) if count <= self.fds.len() => {
                    // The handles in the message take their descriptors as
                    // they decode; a message that fails to decode, or that
                    // leaves some unclaimed, closes them.
                    let fds: Vec<OwnedHandle> = self.fds.drain(..count).collect();
                    provide_handles(fds, || decode_message(body))
                }
                Ok((count, _)) => {
                    let e = format!(
                        "a message says {count} descriptors travel with it, but {} arrived",
                        self.fds.len()
                    );
                    return Err(self.desync(e));
                }
                Err(e) => Err(e),
            };
            self.buf.advance(total);
            if total > KEEP_BUF && self.buf.len() <= KEEP_BUF {
                // Let the big frame's memory go; keep what follows it.
                self.buf = BytesMut::from(&self.buf[..]);
            }
            return msg.map(Some);
        }
        if let Some(b) = &self.broken {
            return Err(b.error());
        }
        if self.eof {
            // An incomplete frame is `Truncated`; nothing left, `Closed`.
            codec.decode_eof(&mut self.buf)?;
            return Err(ChannelError::Closed);
        }
        Ok(None)
    }

    /// The peer broke the rule that matches descriptors to frames: nothing
    /// it sends can be trusted any more. Closes what was received and
    /// breaks the end.
    fn desync(&mut self, why: String) -> ChannelError {
        self.fds.clear();
        self.buf = BytesMut::new();
        let broken = Broken::Io(io::ErrorKind::InvalidData, why);
        let e = broken.error();
        self.broken = Some(broken);
        e
    }

    /// Reads once from `fd` into the buffer.
    fn fill(&mut self, fd: &OwnedHandle, wait: bool) -> Fill {
        // Ask for more than a chunk only for a frame whose bytes keep
        // coming, and never more than we already hold: the header is the
        // peer's word, the bytes are its deeds.
        let want = match self.claimed() {
            Some(len) if HEADER_LEN + len > self.buf.len() + READ_CHUNK => {
                (HEADER_LEN + len - self.buf.len()).min(self.buf.len().max(READ_CHUNK))
            }
            _ => READ_CHUNK,
        };
        let fds_before = self.fds.len();
        match sys::stream::recv_into_with_fds(fd, &mut self.buf, want, wait, &mut self.fds) {
            Ok(0) => {
                self.eof = true;
                Fill::End
            }
            // A read ends where descriptors came in, so a short one with
            // descriptors says nothing about what is left.
            Ok(n) => Fill::Data {
                short: n < want && self.fds.len() == fds_before,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Fill::WouldBlock,
            Err(e) => {
                match Broken::from_io(&e) {
                    Broken::Closed => self.eof = true,
                    other => self.broken = Some(other),
                }
                Fill::End
            }
        }
    }
}

/// Reads the socket without waiting, again and again, for up to the end's
/// spin time: a reply that comes within it is taken without parking (and
/// without the wake-up that parking costs). True once something came (or
/// the stream ended); false if nothing did, or the end does not spin.
fn watch(read: &mut ReadState, shared: &Shared) -> bool {
    if shared.spin.is_zero() {
        return false;
    }
    let until = Instant::now() + shared.spin;
    loop {
        match read.fill(&shared.fd, false) {
            Fill::Data { .. } | Fill::End => return true,
            Fill::WouldBlock if Instant::now() >= until => return false,
            Fill::WouldBlock => std::hint::spin_loop(),
        }
    }
}

/// One open end of a pipe, as its user holds it.
pub(crate) struct Chan {
    shared: Arc<Shared>,
    /// Only `recv` takes and only `ready` peeks; `recv` has `&mut self`, so
    /// it reaches the state without locking.
    read: Mutex<ReadState>,
}

impl Chan {
    /// A connected pair of ends, each refusing frames over `max` bytes.
    #[cfg(test)]
    pub(crate) fn pair(max: usize) -> io::Result<(Chan, Chan)> {
        Chan::pair_spinning(max, Duration::ZERO)
    }

    /// A connected pair of ends, each refusing frames over `max` bytes and
    /// watching its socket for `spin` after a send before a receive parks.
    pub(crate) fn pair_spinning(max: usize, spin: Duration) -> io::Result<(Chan, Chan)> {
        let (a, b) = sys::socketpair()?;
        Ok((
            Chan::from_fd_spinning(a, max, spin),
            Chan::from_fd_spinning(b, max, spin),
        ))
    }

    /// An end around `fd`, which must be a connected stream socket.
    pub(crate) fn from_fd(fd: OwnedHandle, max: usize) -> Chan {
        Chan::from_fd_spinning(fd, max, Duration::ZERO)
    }

    /// An end around `fd`, which must be a connected stream socket,
    /// watching it for `spin` after a send before a receive parks.
    pub(crate) fn from_fd_spinning(fd: OwnedHandle, max: usize, spin: Duration) -> Chan {
        Chan {
            shared: Arc::new(Shared {
                regs: Mutex::new(Vec::new()),
                fd: Arc::new(fd),
                max: max.min(u32::MAX as usize),
                write: Mutex::new(WriteState::default()),
                released: Notify::new(),
                released_cv: Condvar::new(),
                eager: AtomicBool::new(true),
                spin,
                sent: AtomicBool::new(false),
                #[cfg(test)]
                writes: AtomicUsize::new(0),
            }),
            read: Mutex::new(ReadState::default()),
        }
    }

    pub(crate) fn fd(&self) -> &OwnedHandle {
        &self.shared.fd
    }

    pub(crate) fn max(&self) -> usize {
        self.shared.max
    }

    pub(crate) fn spin(&self) -> Duration {
        self.shared.spin
    }

    /// Whether bytes were received that no `recv` has taken yet.
    pub(crate) fn holds_unread(&self) -> bool {
        !lock(&self.read).buf.is_empty()
    }

    pub(crate) async fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), ChannelError> {
        self.shared.sent.store(true, Ordering::Relaxed);
        // A send right after a receive (a reply, or the next request) goes
        // out at once; a send after a send waits to be coalesced.
        if self.shared.eager.swap(false, Ordering::Relaxed) {
            let (backlog, _) = self.shared.enqueue(msg, false)?;
            self.shared.flush_soon();
            if backlog >= HIGH_WATER {
                self.shared.flush_to(HIGH_WATER).await?;
            }
            return Ok(());
        }
        let (backlog, spawn) = self.shared.enqueue(msg, true)?;
        if spawn {
            self.shared.spawn_task();
        }
        if backlog >= HIGH_WATER {
            self.shared.flush_to(HIGH_WATER).await?;
        }
        Ok(())
    }

    /// Queues a message without writing it or scheduling a write: the
    /// caller flushes when its batch is complete.
    pub(crate) fn feed<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), ChannelError> {
        self.shared.enqueue(msg, false).map(|_| ())
    }

    /// Writes what is queued as far as the socket takes it now, and leaves
    /// the rest to a background flush; never waits.
    pub(crate) fn flush_soon(&self) {
        self.shared.flush_soon();
    }

    /// A whole message already read from the socket, if there is one; no
    /// system call.
    pub(crate) fn take_buffered<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        read.take(self.shared.max)
    }

    pub(crate) fn blocking_send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), ChannelError> {
        self.shared.sent.store(true, Ordering::Relaxed);
        self.shared.enqueue(msg, false)?;
        self.shared.blocking_flush()
    }

    pub(crate) async fn flush(&self) -> Result<(), ChannelError> {
        self.shared.flush_to(0).await
    }

    #[cfg(unix)]
    pub(crate) fn blocking_flush(&self) -> Result<(), ChannelError> {
        self.shared.blocking_flush()
    }

    pub(crate) async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        self.shared.eager.store(true, Ordering::Relaxed);
        let mut spin = self.shared.sent.swap(false, Ordering::Relaxed);
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(msg) = read.take(self.shared.max)? {
                return Ok(msg);
            }
            self.shared.flush_soon();
            if std::mem::take(&mut spin) && watch(read, &self.shared) {
                continue;
            }
            let reg = self.shared.registration()?;
            loop {
                let mut guard = reg.readable().await?;
                match read.fill(&self.shared.fd, false) {
                    Fill::WouldBlock => guard.clear_ready(),
                    Fill::Data { short } => {
                        if short {
                            guard.clear_ready();
                        }
                        break;
                    }
                    Fill::End => break,
                }
            }
        }
    }

    pub(crate) fn try_recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        self.shared.eager.store(true, Ordering::Relaxed);
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(msg) = read.take(self.shared.max)? {
            return Ok(Some(msg));
        }
        self.shared.flush_soon();
        loop {
            match read.fill(&self.shared.fd, false) {
                Fill::WouldBlock => return Ok(None),
                Fill::Data { .. } | Fill::End => {
                    if let Some(msg) = read.take(self.shared.max)? {
                        return Ok(Some(msg));
                    }
                }
            }
        }
    }

    pub(crate) fn blocking_recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        self.shared.eager.store(true, Ordering::Relaxed);
        let mut spin = self.shared.sent.swap(false, Ordering::Relaxed);
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(msg) = read.take(self.shared.max)? {
                return Ok(msg);
            }
            // A failed write is kept for the next send; reading goes on.
            let _ = self.shared.blocking_flush();
            if std::mem::take(&mut spin) && watch(read, &self.shared) {
                continue;
            }
            if let Fill::WouldBlock = read.fill(&self.shared.fd, true) {
                sys::stream::wait(&self.shared.fd, Wait::Readable, None)?;
            }
        }
    }

    /// Resolves once a `recv` would not wait for the socket: bytes are
    /// buffered or readable, or the stream has ended. Stays resolved until
    /// a `recv` takes the bytes.
    pub(crate) async fn readable(&self) {
        loop {
            if lock(&self.read).ready() {
                return;
            }
            // Without a runtime nothing could wake us: say ready, and let
            // `recv` report the problem.
            let Ok(reg) = self.shared.registration() else {
                return;
            };
            let Ok(mut guard) = reg.readable().await else {
                return;
            };
            let fill = lock(&self.read).fill(&self.shared.fd, false);
            match fill {
                Fill::WouldBlock => guard.clear_ready(),
                Fill::Data { short } => {
                    if short {
                        guard.clear_ready();
                    }
                    return;
                }
                Fill::End => return,
            }
        }
    }

    pub(crate) async fn poll(&mut self, timeout: Duration) -> bool {
        self.shared.flush_soon();
        tokio::time::timeout(timeout, self.readable()).await.is_ok()
    }

    pub(crate) fn blocking_poll(&mut self, timeout: Duration) -> bool {
        let _ = self.shared.blocking_flush();
        let read = self.read.get_mut().unwrap_or_else(PoisonError::into_inner);
        let deadline = Instant::now().checked_add(timeout);
        loop {
            if read.ready() {
                return true;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match sys::stream::wait(&self.shared.fd, Wait::Readable, left) {
                Ok(true) => {
                    // Take the bytes in, so that readiness is not lost if
                    // someone reads the socket elsewhere; a spurious wake-up
                    // goes round again.
                    read.fill(&self.shared.fd, false);
                }
                Ok(false) => return false,
                Err(_) => return true,
            }
        }
    }

    #[cfg(test)]
    fn writes(&self) -> usize {
        self.shared.writes.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Chan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chan")
            .field("fd", &self.shared.fd)
            .field("max", &self.shared.max)
            .finish_non_exhaustive()
    }
}

impl Drop for Chan {
    fn drop(&mut self) {
        let shared = &self.shared;
        let pending = {
            let mut w = lock(&shared.write);
            w.orphaned = true;
            w.backlog() > 0 && w.broken.is_none()
        };
        // Write what the socket takes now, even if a flush task is
        // scheduled: its thread may be about to block (in the exit rule,
        // say) and never run it.
        if !pending || !matches!(shared.try_flush(), Ok(Step::WouldBlock | Step::Busy)) {
            return;
        }
        if runtime::Handle::try_current().is_ok() {
            // A flush task writes the rest (its guard does, if its runtime
            // shuts down first); the exit rule does, if the program leaves
            // before either could.
            shared.ensure_task();
            remember_orphan(shared);
        } else {
            let _ = shared.blocking_flush();
        }
    }
}

/// Ends dropped with bytes still queued, which tasks are writing out.
static ORPHANS: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

fn remember_orphan(shared: &Arc<Shared>) {
    let mut orphans = lock(&ORPHANS);
    orphans.retain(|o| o.strong_count() > 0);
    orphans.push(Arc::downgrade(shared));
}

/// Writes out, blocking, what dropped ends still have queued. Called by
/// the exit rule before it waits for children, which may be waiting for
/// these very bytes while the thread that would run the flush tasks is
/// the one about to block.
pub(crate) fn flush_orphans() {
    let orphans = std::mem::take(&mut *lock(&ORPHANS));
    for shared in orphans.iter().filter_map(Weak::upgrade) {
        // A failure (the peer is gone, or reads nothing) leaves nothing
        // to wait for.
        let _ = shared.stranded_flush();
    }
}

#[cfg(test)]
mod tests;
