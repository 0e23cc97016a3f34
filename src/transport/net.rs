//! Sockets between processes that did not start each other: a listener on
//! a TCP port or a Unix socket path, the streams it accepts, and the
//! client's stream, for `connection::{Listener, Client}`.
//!
//! Before a stream becomes a pipe end it carries the handshake, a few
//! small frames read one at a time, exactly: [`NetStream::recv_frame`]
//! reads a header and then the body it announces, never a byte more, so
//! whatever the peer sends after the handshake is left for the pipe end.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
#[cfg(unix)]
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Encoder;

#[cfg(windows)]
use super::fdstream::FdStream;
use crate::sys::OwnedHandle;
use crate::wire::ChannelError;
use crate::wire::frame::{FrameCodec, HEADER_LEN};

/// Where a listener listens, as the transport sees it.
#[derive(Debug, Clone)]
pub(crate) enum Where {
    /// A TCP address: `host:port`, resolved when used.
    Inet(String),
    /// A Unix socket at this path.
    Unix(PathBuf),
}

/// A bound listener.
#[derive(Debug)]
pub(crate) enum NetListener {
    Tcp(TcpListener),
    /// The path is unlinked when the listener goes.
    #[cfg(unix)]
    Unix(UnixListener, PathBuf),
    /// A named pipe, `\\.\pipe\NAME` (Windows).
    #[cfg(windows)]
    Pipe(crate::sys::stream::PipeListener, PathBuf),
}

impl NetListener {
    /// Binds `at`. A TCP address is resolved, and the first of its
    /// addresses that binds is used.
    ///
    /// # Errors
    ///
    /// As `bind(2)`: the address is in use, or not this machine's; for a
    /// Unix path, the path exists.
    pub(crate) async fn bind(at: &Where) -> io::Result<NetListener> {
        match at {
            Where::Inet(addr) => Ok(NetListener::Tcp(TcpListener::bind(addr.as_str()).await?)),
            #[cfg(unix)]
            Where::Unix(path) => Ok(NetListener::Unix(UnixListener::bind(path)?, path.clone())),
            #[cfg(windows)]
            Where::Unix(path) if crate::sys::stream::is_pipe_name(path) => Ok(NetListener::Pipe(
                crate::sys::stream::PipeListener::bind(path)?,
                path.clone(),
            )),
            #[cfg(windows)]
            Where::Unix(path) => Err(not_a_pipe(path)),
        }
    }

    /// The address bound: a TCP port chosen by the system is filled in.
    pub(crate) fn local(&self) -> io::Result<Bound> {
        match self {
            NetListener::Tcp(l) => l.local_addr().map(Bound::Inet),
            #[cfg(unix)]
            NetListener::Unix(_, path) => Ok(Bound::Unix(path.clone())),
            #[cfg(windows)]
            NetListener::Pipe(_, path) => Ok(Bound::Unix(path.clone())),
        }
    }

    /// Waits for the next peer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as Tokio's `accept`.
    pub(crate) async fn accept(&self) -> io::Result<NetStream> {
        match self {
            NetListener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                // Frames are small and answered at once.
                s.set_nodelay(true)?;
                Ok(NetStream::Tcp(s))
            }
            #[cfg(unix)]
            NetListener::Unix(l, _) => Ok(NetStream::Unix(l.accept().await?.0)),
            #[cfg(windows)]
            NetListener::Pipe(l, _) => {
                Ok(NetStream::Pipe(FdStream::from_owned_fd(l.accept().await?)?))
            }
        }
    }
}

impl Drop for NetListener {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let NetListener::Unix(_, path) = self {
            // As Python's `Listener.close`: the path goes with the listener.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A bound address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bound {
    Inet(SocketAddr),
    /// A Unix socket path, or a named pipe on Windows.
    Unix(PathBuf),
}

impl Bound {
    /// Whether only this machine can reach it: a loopback address or a
    /// Unix path.
    pub(crate) fn is_local(&self) -> bool {
        match self {
            Bound::Inet(a) => a.ip().is_loopback(),
            Bound::Unix(_) => true,
        }
    }
}

/// A connected stream, before it becomes a pipe end.
#[derive(Debug)]
pub(crate) enum NetStream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
    #[cfg(windows)]
    Pipe(FdStream),
}

impl NetStream {
    /// Connects to `at`.
    ///
    /// # Errors
    ///
    /// As `connect(2)`: nobody listens there, or it cannot be reached.
    pub(crate) async fn connect(at: &Where) -> io::Result<NetStream> {
        match at {
            Where::Inet(addr) => {
                let s = TcpStream::connect(addr.as_str()).await?;
                s.set_nodelay(true)?;
                Ok(NetStream::Tcp(s))
            }
            #[cfg(unix)]
            Where::Unix(path) => Ok(NetStream::Unix(UnixStream::connect(path).await?)),
            #[cfg(windows)]
            Where::Unix(path) if crate::sys::stream::is_pipe_name(path) => {
                let end = crate::sys::stream::pipe_connect(path, PIPE_BUSY_WAIT).await?;
                Ok(NetStream::Pipe(FdStream::from_owned_fd(end)?))
            }
            #[cfg(windows)]
            Where::Unix(path) => Err(not_a_pipe(path)),
        }
    }

    /// The stream's descriptor, for a pipe end; no longer registered with
    /// the runtime.
    ///
    /// # Errors
    ///
    /// If the runtime cannot let go of it.
    #[cfg(unix)]
    pub(crate) fn into_handle(self) -> io::Result<OwnedHandle> {
        Ok(match self {
            NetStream::Tcp(s) => OwnedHandle::from(s.into_std()?),
            NetStream::Unix(s) => OwnedHandle::from(s.into_std()?),
        })
    }

    /// A pipe end for the stream: on Windows a pipe end is a named pipe,
    /// relayed to the socket (see [`relay`]).
    ///
    /// # Errors
    ///
    /// If the pipe cannot be made, or there is no runtime.
    #[cfg(windows)]
    pub(crate) fn into_handle(self) -> io::Result<OwnedHandle> {
        match self {
            // A named pipe is a pipe end already.
            NetStream::Pipe(s) => s.into_handle(),
            tcp => relay(tcp),
        }
    }
}

/// How long a client waits while every instance of a named pipe is busy.
#[cfg(windows)]
const PIPE_BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The error for a path that is no named pipe, on Windows.
#[cfg(windows)]
fn not_a_pipe(path: &std::path::Path) -> io::Error {
    crate::sys::unsupported(&format!(
        "a Unix socket path ({}); a named pipe, \\\\.\\pipe\\NAME, is the local address there",
        path.display()
    ))
}

/// Whether `path` names a Unix socket address rather than a TCP one.
pub(crate) fn looks_like_path(s: &str) -> bool {
    if s.parse::<SocketAddr>().is_ok() {
        return false;
    }
    if s.contains('/') {
        return true;
    }
    // `host:port` with a numeric port is TCP; anything else is a path.
    !s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(unix)]
            NetStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            #[cfg(windows)]
            NetStream::Pipe(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(unix)]
            NetStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            #[cfg(windows)]
            NetStream::Pipe(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            #[cfg(unix)]
            NetStream::Unix(s) => Pin::new(s).poll_flush(cx),
            #[cfg(windows)]
            NetStream::Pipe(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NetStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(unix)]
            NetStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            #[cfg(windows)]
            NetStream::Pipe(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Sends one frame on `s` and flushes it.
///
/// # Errors
///
/// If the body is longer than `max`, or the write fails.
pub(crate) async fn send_frame<S>(s: &mut S, body: &[u8], max: usize) -> Result<(), ChannelError>
where
    S: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    FrameCodec::new(max).encode(body, &mut buf)?;
    s.write_all(&buf).await?;
    s.flush().await?;
    Ok(())
}

/// Reads exactly one frame of at most `max` bytes from `s`, and nothing
/// after it.
///
/// # Errors
///
/// [`ChannelError::Oversized`] as soon as the header claims more than
/// `max`; [`ChannelError::Closed`] or `Truncated` if the peer hangs up.
///
/// # Cancel safety
///
/// Not cancel safe: a frame partly read is lost, and the stream with it
/// (the handshake that calls this gives up the stream when it is
/// cancelled).
pub(crate) async fn recv_frame<S>(s: &mut S, max: usize) -> Result<Vec<u8>, ChannelError>
where
    S: AsyncRead + Unpin,
{
    let mut header = [0u8; HEADER_LEN];
    read_exact_or(s, &mut header, 0).await?;
    // The one codec decides whether the claimed length is allowed.
    FrameCodec::new(max).frame_len(&header)?;
    let len = FrameCodec::claimed(&header).unwrap_or(0);
    let mut body = vec![0u8; len];
    read_exact_or(s, &mut body, HEADER_LEN).await?;
    Ok(body)
}

/// Fills `buf` from `s`; `before` bytes of the frame came already.
async fn read_exact_or<S>(s: &mut S, buf: &mut [u8], before: usize) -> Result<(), ChannelError>
where
    S: AsyncRead + Unpin,
{
    let mut got = 0;
    while got < buf.len() {
        let n = s.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(if before + got == 0 {
                ChannelError::Closed
            } else {
                ChannelError::Truncated {
                    expected: before + buf.len(),
                    received: before + got,
                }
            });
        }
        got += n;
    }
    Ok(())
}

/// A pipe end for a stream that is not a socket of its own (a TLS session
/// over one): a socket pair, one end returned for the pipe end, the other
/// joined to `stream` by a task that copies both ways until either side
/// closes. The task runs on the current runtime and ends with it.
///
/// # Errors
///
/// If the socket pair cannot be made, or there is no runtime.
pub(crate) fn relay<S>(stream: S) -> io::Result<OwnedHandle>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handle = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
    let (ours, theirs) = crate::sys::socketpair()?;
    #[cfg(unix)]
    let mut theirs = {
        let theirs = std::os::unix::net::UnixStream::from(theirs);
        theirs.set_nonblocking(true)?;
        let _entered = handle.enter();
        UnixStream::from_std(theirs)?
    };
    #[cfg(windows)]
    let theirs = FdStream::from_owned_fd(theirs)?;
    #[cfg(unix)]
    handle.spawn(async move {
        let mut stream = stream;
        // Either side's end (an error, or both halves closed) ends the
        // relay; dropping the stream closes the session.
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut theirs).await;
        let _ = stream.shutdown().await;
    });
    // A named pipe cannot be closed for writing alone: the end of either
    // direction ends the relay, which closes the session and drops its
    // pipe end, so that the pipe's reader sees the end of the stream (a
    // `Connection` closes both ways at once anyway).
    #[cfg(windows)]
    handle.spawn(async move {
        let (mut net_in, mut net_out) = tokio::io::split(stream);
        let (mut pipe_in, mut pipe_out) = tokio::io::split(theirs);
        tokio::select! {
            _ = tokio::io::copy(&mut net_in, &mut pipe_out) => {}
            _ = tokio::io::copy(&mut pipe_in, &mut net_out) => {}
        }
        let _ = net_out.shutdown().await;
    });
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_is_read_to_its_end_and_not_a_byte_further() {
        let mut data = vec![0, 0, 0, 3, b'a', b'b', b'c'];
        data.extend_from_slice(&[0, 0, 1, 0, 9, 9]);
        let mut rest: &[u8] = &data;
        assert_eq!(recv_frame(&mut rest, 256).await.unwrap(), b"abc");
        assert_eq!(rest, [0, 0, 1, 0, 9, 9], "the next frame is left unread");
        // It claims 256 bytes: allowed, but cut short.
        assert!(matches!(
            recv_frame(&mut rest, 256).await,
            Err(ChannelError::Truncated { .. })
        ));
    }

    #[tokio::test]
    async fn a_header_over_the_limit_is_refused_before_its_body_is_read() {
        let data = [0u8, 0, 1, 1, 7, 7, 7];
        let mut rest: &[u8] = &data;
        assert!(matches!(
            recv_frame(&mut rest, 256).await,
            Err(ChannelError::Oversized { len: 257, max: 256 })
        ));
        assert_eq!(rest, [7, 7, 7], "nothing of the body was read");
        let mut empty: &[u8] = &[];
        assert!(matches!(
            recv_frame(&mut empty, 256).await,
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn addresses_are_told_apart() {
        for tcp in [
            "127.0.0.1:80",
            "[::1]:6000",
            "localhost:6000",
            "example.com:1",
        ] {
            assert!(!looks_like_path(tcp), "{tcp}");
        }
        for path in [
            "/tmp/a.sock",
            "a.sock",
            "./x:80",
            "dir/name",
            ":80",
            "host:port",
        ] {
            assert!(looks_like_path(path), "{path}");
        }
    }
}
