//! An async byte stream on a pipe end, for Windows: what
//! [`FdStream`](super::fdstream) is on Unix, without descriptors (a handle
//! travels inside the bytes on Windows, so none is ever queued or
//! received beside them).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::sys::{self, OwnedHandle};

/// The most bytes one read asks the pipe for.
const READ_CHUNK: usize = 64 * 1024;

type Readiness = Pin<Box<dyn Future<Output = io::Result<()>> + Send + Sync>>;

/// A pipe end as an `AsyncRead` and `AsyncWrite`.
pub(crate) struct FdStream {
    handle: Arc<OwnedHandle>,
    /// Bytes read from the pipe and not yet given to a reader.
    buf: BytesMut,
    /// The wait for the pipe to become readable, while one is on.
    reading: Option<Readiness>,
    /// The wait for the pipe to become writable, while one is on.
    writing: Option<Readiness>,
}

impl std::fmt::Debug for FdStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdStream")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

/// A future that resolves when `handle` is ready as asked.
fn readiness(handle: &Arc<OwnedHandle>, what: sys::stream::Wait) -> Readiness {
    let handle = handle.clone();
    Box::pin(async move { handle.io()?.ready(what).await })
}

impl FdStream {
    /// Wraps a connected pipe end.
    ///
    /// # Errors
    ///
    /// If its byte stream cannot be set up.
    pub(crate) fn from_owned_fd(handle: OwnedHandle) -> io::Result<Self> {
        handle.io()?;
        Ok(FdStream {
            handle: Arc::new(handle),
            buf: BytesMut::new(),
            reading: None,
            writing: None,
        })
    }

    /// Nothing travels beside the bytes on Windows: `fds` is empty (a
    /// handle travels inside them).
    pub(crate) fn queue_fds(&mut self, fds: impl IntoIterator<Item = OwnedHandle>) {
        debug_assert!(
            fds.into_iter().next().is_none(),
            "no handles travel on Windows"
        );
    }

    /// The pipe end, for a pipe end of the crate's (the handshakes of
    /// `Listener` and `Client` are done). No byte read from it is left
    /// behind: reads never ask for more than the reader wants.
    ///
    /// # Errors
    ///
    /// If a wait on it is still on (none is, once a read or write has
    /// returned).
    pub(crate) fn into_handle(self) -> io::Result<OwnedHandle> {
        debug_assert!(self.buf.is_empty(), "reads are never ahead of the reader");
        drop(self.reading);
        drop(self.writing);
        Arc::try_unwrap(self.handle).map_err(|_| io::Error::other("the pipe end is still in use"))
    }

    /// Writes as much of `buf` as the pipe takes at once; `Ok(0)` when it
    /// takes nothing now.
    pub(crate) fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match sys::stream::send(&self.handle, buf, false) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            // No more than the reader asks for: what is not taken stays
            // with the pipe end, for whoever has it next (see
            // `into_handle`).
            let want = out.remaining().min(READ_CHUNK);
            match sys::stream::recv_into(&this.handle, &mut this.buf, want, false) {
                Ok(0) => return Poll::Ready(Ok(())),
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let wait = this
                .reading
                .get_or_insert_with(|| readiness(&this.handle, sys::stream::Wait::Readable));
            let ready = ready!(wait.as_mut().poll(cx));
            this.reading = None;
            ready?;
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            match sys::stream::send(&this.handle, buf, false) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            let wait = this
                .writing
                .get_or_insert_with(|| readiness(&this.handle, sys::stream::Wait::Writable));
            let ready = ready!(wait.as_mut().poll(cx));
            this.writing = None;
            ready?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Accepted bytes are the pipe's once the write in flight is done.
        let this = self.get_mut();
        let wait = this
            .writing
            .get_or_insert_with(|| readiness(&this.handle, sys::stream::Wait::Writable));
        let ready = ready!(wait.as_mut().poll(cx));
        this.writing = None;
        Poll::Ready(ready)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
