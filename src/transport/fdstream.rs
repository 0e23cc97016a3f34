//! An async Unix stream that carries file descriptors alongside its bytes.
//!
//! [`FdStream`] is a byte stream like `tokio::net::UnixStream`, plus two
//! queues of descriptors: `outgoing` descriptors are attached (`SCM_RIGHTS`)
//! to the next bytes written, and descriptors that arrive with bytes read are
//! appended to `incoming`. It is meant to sit under
//! `tokio_util::codec::Framed` with [`FrameCodec`](super::frame::FrameCodec).
//!
//! # The rule for frames that carry descriptors
//!
//! - **Sender:** queue a frame's descriptors with [`FdStream::queue_fds`]
//!   *before* writing (or feeding to the sink) that frame, and say in the
//!   frame itself how many it carries. The descriptors then travel with bytes
//!   at or before the frame's own bytes: with the frame's first byte, or with
//!   an earlier frame's bytes still waiting in the write buffer. A batch larger
//!   than [`MAX_FDS_PER_MSG`] is spread over several writes of at least one
//!   byte each, which still lands inside the frame as long as the frame has at
//!   least one byte per [`MAX_FDS_PER_MSG`] descriptors (its 4-byte header
//!   alone covers 1012).
//! - **Receiver:** a frame is decoded only once all its bytes are in, so by
//!   then all its descriptors are in `incoming`, possibly followed by those of
//!   later frames. On decoding a frame that says it carries `k` descriptors,
//!   take exactly `k` with [`FdStream::take_fd`], in FIFO order. Fewer than
//!   `k` available means the peer broke the rule.
//!
//! Descriptors still queued when the stream is dropped or shut down are
//! closed without being sent. Received descriptors are close-on-exec.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::UnixStream;

use crate::sys::scm::{MAX_FDS_PER_MSG, recv_with_fds, send_with_fds};

/// The most bytes one read asks the socket for.
const READ_CHUNK: usize = 64 * 1024;

/// A Unix stream socket whose writes carry queued descriptors and whose reads
/// collect the descriptors that arrive. See the [module docs](self) for the
/// rule that keeps descriptors matched to frames.
#[derive(Debug)]
pub(crate) struct FdStream {
    /// The socket.
    inner: UnixStream,
    /// Descriptors received and not yet taken, oldest first.
    incoming: VecDeque<OwnedFd>,
    /// Descriptors waiting to go out with the next bytes written, oldest first.
    outgoing: VecDeque<OwnedFd>,
}

impl FdStream {
    /// Wraps a connected Tokio Unix stream.
    pub(crate) fn new(inner: UnixStream) -> Self {
        Self {
            inner,
            incoming: VecDeque::new(),
            outgoing: VecDeque::new(),
        }
    }

    /// Wraps a connected std Unix stream, switching it to nonblocking mode.
    ///
    /// # Errors
    ///
    /// If the socket cannot be made nonblocking or registered with the
    /// runtime. Must be called within a Tokio runtime.
    pub(crate) fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::new(UnixStream::from_std(stream)?))
    }

    /// Wraps an owned descriptor that must be a connected Unix stream socket
    /// (one end of a `socketpair`, say), switching it to nonblocking mode.
    ///
    /// # Errors
    ///
    /// As for [`from_std`](Self::from_std).
    pub(crate) fn from_owned_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::from_std(std::os::unix::net::UnixStream::from(fd))
    }

    /// A connected pair of streams.
    ///
    /// # Errors
    ///
    /// If the socket pair cannot be created. Must be called within a Tokio
    /// runtime.
    pub(crate) fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = UnixStream::pair()?;
        Ok((Self::new(a), Self::new(b)))
    }

    /// The underlying socket.
    pub(crate) fn get_ref(&self) -> &UnixStream {
        &self.inner
    }

    /// Queues descriptors to go out with the next bytes written, after any
    /// already queued.
    pub(crate) fn queue_fds(&mut self, fds: impl IntoIterator<Item = OwnedFd>) {
        self.outgoing.extend(fds);
    }

    /// The oldest received descriptor not yet taken.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        self.incoming.pop_front()
    }

    /// How many received descriptors wait to be taken.
    pub(crate) fn incoming_len(&self) -> usize {
        self.incoming.len()
    }

    /// How many queued descriptors have not been sent yet.
    pub(crate) fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Writes some of `bufs` with the next batch of queued descriptors, and
    /// drops that batch once the kernel has taken it.
    fn poll_write_with_fds(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().find(|b| !b.is_empty()) else {
            // No byte to carry them: the descriptors wait for the next write.
            return Poll::Ready(Ok(0));
        };
        let batch = self.outgoing.len().min(MAX_FDS_PER_MSG);
        // If more descriptors wait than one message carries, send a single
        // byte now so the rest of these bytes can carry the remainder.
        let first: &[u8] = if self.outgoing.len() > MAX_FDS_PER_MSG {
            &first[..1]
        } else {
            first
        };
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            let fds: Vec<BorrowedFd<'_>> =
                self.outgoing.iter().take(batch).map(AsFd::as_fd).collect();
            let sent = self.inner.try_io(Interest::WRITABLE, || {
                send_with_fds(self.inner.as_fd(), &[IoSlice::new(first)], &fds)
            });
            drop(fds);
            match sent {
                Ok(n) => {
                    // The kernel holds its own references now; close ours.
                    self.outgoing.drain(..batch);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl FdStream {
    /// Writes as much of `buf` as the socket takes at once, with the queued
    /// descriptors, without asking the reactor first: a socket just
    /// registered is not known to be writable until the reactor has had a
    /// turn, and the first write through `AsyncWrite` would wait for that
    /// turn (a wake-up of this task, or of another worker, on the path of
    /// every start). `Ok(0)` when the socket takes nothing now; the rest
    /// then goes through `AsyncWrite` as usual.
    pub(crate) fn write_now(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let batch = self.outgoing.len().min(MAX_FDS_PER_MSG);
        let bytes = if self.outgoing.len() > MAX_FDS_PER_MSG {
            &buf[..1]
        } else {
            buf
        };
        let fds: Vec<BorrowedFd<'_>> = self.outgoing.iter().take(batch).map(AsFd::as_fd).collect();
        // Not through `try_io`: it refuses while the reactor has not yet
        // reported the socket writable. A `WouldBlock` here leaves the
        // reactor's view as it was, which is right: it was not ready.
        let sent = send_with_fds(self.inner.as_fd(), &[IoSlice::new(bytes)], &fds);
        drop(fds);
        match sent {
            Ok(n) => {
                self.outgoing.drain(..batch);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

impl AsFd for FdStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let want = buf.remaining().min(READ_CHUNK);
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled_to(want);
            let mut fds = Vec::new();
            let inner = &this.inner;
            match inner.try_io(Interest::READABLE, || {
                recv_with_fds(inner.as_fd(), dst, &mut fds)
            }) {
                Ok(n) => {
                    this.incoming.extend(fds);
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
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
        if this.outgoing.is_empty() {
            Pin::new(&mut this.inner).poll_write(cx, buf)
        } else {
            this.poll_write_with_fds(cx, &[IoSlice::new(buf)])
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.outgoing.is_empty() {
            Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
        } else {
            this.poll_write_with_fds(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::time::Duration;

    use bytes::BytesMut;
    use futures::{SinkExt, StreamExt};
    use nix::fcntl::OFlag;
    use nix::unistd::{dup, pipe2, read, write};
    use serde::{Deserialize, Serialize};
    use tokio::io::AsyncWriteExt;
    use tokio::time::timeout;
    use tokio_util::codec::Framed;

    use super::*;
    use crate::wire::ChannelError;
    use crate::wire::frame::{DEFAULT_MAX_FRAME, FrameCodec, decode_message, encode_message};

    const LIMIT: Duration = Duration::from_secs(20);

    /// A test message: its index, how many descriptors travel with it, and
    /// some padding to vary frame sizes.
    #[derive(Debug, Serialize, Deserialize)]
    struct Msg {
        index: u32,
        fds: u32,
        #[serde(with = "serde_bytes")]
        pad: Vec<u8>,
    }

    fn body(msg: &Msg) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode_message(msg, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        buf[4..].to_vec()
    }

    fn framed_pair() -> (Framed<FdStream, FrameCodec>, Framed<FdStream, FrameCodec>) {
        let (a, b) = FdStream::pair().unwrap();
        (
            Framed::new(a, FrameCodec::default()),
            Framed::new(b, FrameCodec::default()),
        )
    }

    fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    /// Reads everything in a pipe whose write ends are all closed; fails
    /// (rather than hangs) if a write end is still open somewhere.
    fn drain_closed_pipe(r: &OwnedFd) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match read(r, &mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => panic!("pipe not at EOF ({e}): a write end leaked"),
            }
        }
    }

    /// Receives `count` frames; for each, takes its descriptors and writes the
    /// frame's index through every one of them.
    async fn receive_and_answer(framed: &mut Framed<FdStream, FrameCodec>, count: u32) -> Vec<u32> {
        let mut seen = Vec::new();
        for _ in 0..count {
            let frame = framed.next().await.expect("stream ended early").unwrap();
            let msg: Msg = decode_message(&frame).unwrap();
            for _ in 0..msg.fds {
                let fd = framed.get_mut().take_fd().expect("descriptor missing");
                write(&fd, &msg.index.to_be_bytes()).unwrap();
            }
            seen.push(msg.index);
        }
        seen
    }

    #[tokio::test]
    async fn hundred_frames_each_carrying_a_pipe_fd() {
        let (mut tx, mut rx) = framed_pair();
        let mut read_ends = Vec::new();
        let send = async {
            for index in 0..100u32 {
                let (r, w) = nonblocking_pipe();
                read_ends.push(r);
                tx.get_mut().queue_fds([w]);
                let msg = Msg {
                    index,
                    fds: 1,
                    pad: vec![0; usize::try_from(index).unwrap() * 37],
                };
                tx.send(&body(&msg)[..]).await.unwrap();
            }
        };
        let (_, seen) = timeout(LIMIT, async {
            tokio::join!(send, receive_and_answer(&mut rx, 100))
        })
        .await
        .expect("hung");
        assert_eq!(seen, (0..100).collect::<Vec<_>>());
        assert_eq!(tx.get_ref().outgoing_len(), 0);
        assert_eq!(rx.get_ref().incoming_len(), 0);
        for (index, r) in (0u32..).zip(&read_ends) {
            assert_eq!(drain_closed_pipe(r), index.to_be_bytes());
        }
    }

    #[tokio::test]
    async fn frames_without_fds_interleaved_keep_order() {
        let (mut tx, mut rx) = framed_pair();
        let mut read_ends = Vec::new();
        let send = async {
            for index in 0..120u32 {
                // Every third frame carries nothing, every fifth carries two
                // descriptors, and some are large enough to need many writes.
                let fds = match index {
                    i if i % 3 == 0 => 0,
                    i if i % 5 == 0 => 2,
                    _ => 1,
                };
                let (r, w) = nonblocking_pipe();
                for _ in 0..fds {
                    tx.get_mut().queue_fds([dup(&w).unwrap()]);
                }
                read_ends.push((r, fds));
                let pad = if index % 7 == 0 { 300_000 } else { 3 };
                let msg = Msg {
                    index,
                    fds,
                    pad: vec![1; pad],
                };
                // Feed without flushing half of the time, so that several
                // frames and their descriptors share the write buffer.
                if index % 2 == 0 {
                    tx.feed(&body(&msg)[..]).await.unwrap();
                } else {
                    tx.send(&body(&msg)[..]).await.unwrap();
                }
            }
            tx.flush().await.unwrap();
        };
        let (_, seen) = timeout(LIMIT, async {
            tokio::join!(send, receive_and_answer(&mut rx, 120))
        })
        .await
        .expect("hung");
        assert_eq!(seen, (0..120).collect::<Vec<_>>());
        assert_eq!(rx.get_ref().incoming_len(), 0);
        for (index, (r, fds)) in (0u32..).zip(&read_ends) {
            let want: Vec<u8> = (0..*fds).flat_map(|_| index.to_be_bytes()).collect();
            assert_eq!(drain_closed_pipe(r), want, "frame {index}");
        }
    }

    #[tokio::test]
    async fn more_fds_than_one_message_carries() {
        let (mut tx, mut rx) = framed_pair();
        let (r, w) = nonblocking_pipe();
        let count = u32::try_from(MAX_FDS_PER_MSG * 2 + 10).unwrap();
        let copies: Vec<OwnedFd> = (0..count).map(|_| dup(&w).unwrap()).collect();
        drop(w);
        tx.get_mut().queue_fds(copies);
        let msg = Msg {
            index: 7,
            fds: count,
            pad: Vec::new(),
        };
        let send = async {
            tx.send(&body(&msg)[..]).await.unwrap();
            tx.send(
                &body(&Msg {
                    index: 8,
                    fds: 0,
                    pad: Vec::new(),
                })[..],
            )
            .await
            .unwrap();
        };
        let (_, seen) = timeout(LIMIT, async {
            tokio::join!(send, receive_and_answer(&mut rx, 2))
        })
        .await
        .expect("hung");
        assert_eq!(seen, vec![7, 8]);
        assert_eq!(tx.get_ref().outgoing_len(), 0);
        let got = drain_closed_pipe(&r);
        assert_eq!(got.len(), 4 * usize::try_from(count).unwrap());
    }

    #[tokio::test]
    async fn empty_write_keeps_queued_fds() {
        let (mut a, mut b) = FdStream::pair().unwrap();
        let (r, w) = nonblocking_pipe();
        a.queue_fds([w]);
        assert_eq!(a.write(b"").await.unwrap(), 0);
        assert_eq!(a.outgoing_len(), 1);
        a.write_all(b"x").await.unwrap();
        assert_eq!(a.outgoing_len(), 0);

        let mut buf = [0u8; 4];
        let n = timeout(LIMIT, tokio::io::AsyncReadExt::read(&mut b, &mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"x");
        assert_eq!(b.incoming_len(), 1);
        let fd = b.take_fd().unwrap();
        assert!(b.take_fd().is_none());
        write(&fd, b"ok").unwrap();
        drop(fd);
        assert_eq!(drain_closed_pipe(&r), b"ok");
    }

    #[tokio::test]
    async fn peer_closing_mid_frame_is_truncated() {
        let (mut a, b) = FdStream::pair().unwrap();
        let mut rx = Framed::new(b, FrameCodec::default());
        let mut bytes = 100u32.to_be_bytes().to_vec();
        bytes.extend([9u8; 10]);
        a.write_all(&bytes).await.unwrap();
        a.shutdown().await.unwrap();
        let got = timeout(LIMIT, rx.next()).await.expect("hung");
        assert!(
            matches!(
                got,
                Some(Err(ChannelError::Truncated {
                    expected: 104,
                    received: 14
                }))
            ),
            "{got:?}"
        );
        drop(a);
    }

    #[tokio::test]
    async fn clean_close_ends_the_stream() {
        let (mut tx, mut rx) = framed_pair();
        tx.send(&b"last"[..]).await.unwrap();
        drop(tx);
        let frame = timeout(LIMIT, rx.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(&frame[..], b"last");
        assert!(timeout(LIMIT, rx.next()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn constructors_wrap_std_and_owned_fds() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut a = FdStream::from_std(a).unwrap();
        let mut b = FdStream::from_owned_fd(OwnedFd::from(b)).unwrap();
        assert_eq!(a.as_fd().as_raw_fd(), a.get_ref().as_fd().as_raw_fd());

        let (r, w) = nonblocking_pipe();
        a.queue_fds([w]);
        let bufs = [
            IoSlice::new(b""),
            IoSlice::new(b"vec"),
            IoSlice::new(b"tored"),
        ];
        let n = timeout(LIMIT, a.write_vectored(&bufs))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0);
        a.write_all(&b"vectored"[n..]).await.unwrap();
        a.shutdown().await.unwrap();

        let mut got = Vec::new();
        timeout(
            LIMIT,
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(got, b"vectored");
        let fd = b.take_fd().unwrap();
        write(&fd, b"v").unwrap();
        drop(fd);
        assert_eq!(drain_closed_pipe(&r), b"v");
    }
}
