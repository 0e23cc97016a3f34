//! A stream socket that async code of any runtime can use: each runtime
//! that waits on it registers its own duplicate with its reactor, so the
//! socket outlives the runtime that first used it. Every wait has a
//! deadline.

use std::io;
#[cfg(unix)]
use std::io::IoSlice;
#[cfg(unix)]
use std::os::fd::AsFd;
use std::time::Instant;

use bytes::BytesMut;
#[cfg(unix)]
use tokio::io::Interest;
#[cfg(unix)]
use tokio::net::UnixStream;

use crate::sys::{self, OwnedHandle};

/// A connected stream socket, nonblocking, registered per runtime.
#[cfg(unix)]
#[derive(Debug)]
pub(crate) struct AsyncSocket {
    handle: OwnedHandle,
    reg: Option<(tokio::runtime::Id, UnixStream)>,
}

#[cfg(unix)]
impl AsyncSocket {
    /// Takes charge of `handle`, a connected stream socket, and makes it
    /// nonblocking (for every copy of it: the mode belongs to the open
    /// socket, not to one descriptor).
    pub(crate) fn new(handle: OwnedHandle) -> io::Result<AsyncSocket> {
        let sock = std::os::unix::net::UnixStream::from(handle);
        sock.set_nonblocking(true)?;
        Ok(AsyncSocket {
            handle: sock.into(),
            reg: None,
        })
    }

    /// The socket, registered with the current runtime.
    fn registered(&mut self) -> io::Result<&UnixStream> {
        let id = tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(e.to_string()))?
            .id();
        if self.reg.as_ref().is_none_or(|(rt, _)| *rt != id) {
            let dup = std::os::unix::net::UnixStream::from(self.handle.try_clone()?);
            self.reg = Some((id, UnixStream::from_std(dup)?));
        }
        Ok(&self.reg.as_ref().expect("registered above").1)
    }

    /// Writes all of `bytes`, with `handle` (if any) attached to the first
    /// of them, by `deadline`.
    ///
    /// # Errors
    ///
    /// `TimedOut` at the deadline; what the socket reports otherwise.
    pub(crate) async fn send(
        &mut self,
        bytes: &[u8],
        handle: Option<&OwnedHandle>,
        deadline: Instant,
    ) -> io::Result<()> {
        let sock = self.registered()?;
        let mut sent = 0;
        while sent < bytes.len() {
            by(deadline, sock.writable()).await??;
            let fds: Vec<_> = match handle {
                Some(h) if sent == 0 => vec![h.as_fd()],
                _ => Vec::new(),
            };
            match sock.try_io(Interest::WRITABLE, || {
                sys::scm::send_with_fds(sock.as_fd(), &[IoSlice::new(&bytes[sent..])], &fds)
            }) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has arrived into `buf`, waiting for something until
    /// `deadline`; 0 at the end of the stream.
    ///
    /// # Errors
    ///
    /// `TimedOut` at the deadline; what the socket reports otherwise.
    pub(crate) async fn recv(
        &mut self,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> io::Result<usize> {
        let sock = self.registered()?;
        loop {
            by(deadline, sock.readable()).await??;
            buf.reserve(256);
            match sock.try_read_buf(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `bytes`, with `handle` (if any) attached to the first
    /// of them, at once, without waiting. Needs no runtime.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if the socket cannot take all of them now; what the
    /// socket reports otherwise. After an error, part of `bytes` may have
    /// been written: the stream is no longer usable.
    pub(crate) fn try_send(&self, bytes: &[u8], handle: Option<&OwnedHandle>) -> io::Result<()> {
        let fds: Vec<_> = handle.map(AsFd::as_fd).into_iter().collect();
        let n = sys::scm::send_with_fds(self.handle.as_fd(), &[IoSlice::new(bytes)], &fds)?;
        if n < bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the socket took only part of the frame",
            ));
        }
        Ok(())
    }

    /// Reads what has arrived into `buf` (at most `max` bytes), without
    /// waiting: `WouldBlock` when nothing has; 0 at the end of the stream.
    /// Needs no runtime.
    pub(crate) fn try_recv(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        sys::stream::recv_into(&self.handle, buf, max, false)
    }
}

/// A connected pipe end, usable from any runtime.
#[cfg(windows)]
#[derive(Debug)]
pub(crate) struct AsyncSocket {
    handle: OwnedHandle,
}

#[cfg(windows)]
impl AsyncSocket {
    /// Takes charge of `handle`, a connected pipe end.
    pub(crate) fn new(handle: OwnedHandle) -> io::Result<AsyncSocket> {
        handle.io()?;
        Ok(AsyncSocket { handle })
    }

    /// Writes all of `bytes` by `deadline`; no handle can go with them.
    ///
    /// # Errors
    ///
    /// `TimedOut` at the deadline; `Unsupported` with a handle; what the
    /// pipe reports otherwise.
    pub(crate) async fn send(
        &mut self,
        bytes: &[u8],
        handle: Option<&OwnedHandle>,
        deadline: Instant,
    ) -> io::Result<()> {
        if handle.is_some() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut sent = 0;
        while sent < bytes.len() {
            match sys::stream::send(&self.handle, &bytes[sent..], false) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    by(
                        deadline,
                        self.handle.io()?.ready(sys::stream::Wait::Writable),
                    )
                    .await??;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has arrived into `buf`, waiting for something until
    /// `deadline`; 0 at the end of the stream.
    ///
    /// # Errors
    ///
    /// `TimedOut` at the deadline; what the pipe reports otherwise.
    pub(crate) async fn recv(
        &mut self,
        buf: &mut BytesMut,
        deadline: Instant,
    ) -> io::Result<usize> {
        loop {
            match sys::stream::recv_into(&self.handle, buf, 64 * 1024, false) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    by(
                        deadline,
                        self.handle.io()?.ready(sys::stream::Wait::Readable),
                    )
                    .await??;
                }
                other => return other,
            }
        }
    }

    /// Writes all of `bytes` at once, without waiting.
    ///
    /// # Errors
    ///
    /// `WouldBlock` if the pipe cannot take all of them now.
    pub(crate) fn try_send(&self, bytes: &[u8], handle: Option<&OwnedHandle>) -> io::Result<()> {
        if handle.is_some() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let n = sys::stream::send(&self.handle, bytes, false)?;
        if n < bytes.len() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "the pipe took only part of the frame",
            ));
        }
        Ok(())
    }

    /// Reads what has arrived into `buf` (at most `max` bytes), without
    /// waiting: `WouldBlock` when nothing has; 0 at the end of the stream.
    pub(crate) fn try_recv(&self, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
        sys::stream::recv_into(&self.handle, buf, max, false)
    }
}

/// `f` by `deadline`, or a `TimedOut` error.
async fn by<F: std::future::Future>(deadline: Instant, f: F) -> io::Result<F::Output> {
    tokio::time::timeout_at(deadline.into(), f)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer did not answer in time"))
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn one_socket_serves_one_runtime_after_another() {
        let (a, b) = sys::socketpair().unwrap();
        let mut a = AsyncSocket::new(a).unwrap();
        let mut b = AsyncSocket::new(b).unwrap();
        for round in 0..3u8 {
            // A new runtime each round: the registration of the last one
            // is gone with it.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let deadline = Instant::now() + Duration::from_secs(5);
                a.send(&[round; 3], None, deadline).await.unwrap();
                let mut buf = BytesMut::new();
                while buf.len() < 3 {
                    assert!(b.recv(&mut buf, deadline).await.unwrap() > 0);
                }
                assert_eq!(&buf[..], &[round; 3]);
                let soon = Instant::now() + Duration::from_millis(20);
                let err = b.recv(&mut buf, soon).await.unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            });
        }
        let mut buf = BytesMut::new();
        let err = b.try_recv(&mut buf, 16).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        assert_eq!(b.try_recv(&mut buf, 16).unwrap(), 0);
    }
}
