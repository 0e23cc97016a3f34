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

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_util::codec::Encoder;

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
    Unix(UnixListener, PathBuf),
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
            Where::Unix(path) => Ok(NetListener::Unix(UnixListener::bind(path)?, path.clone())),
        }
    }

    /// The address bound: a TCP port chosen by the system is filled in.
    pub(crate) fn local(&self) -> io::Result<Bound> {
        match self {
            NetListener::Tcp(l) => l.local_addr().map(Bound::Inet),
            NetListener::Unix(_, path) => Ok(Bound::Unix(path.clone())),
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
            NetListener::Unix(l, _) => Ok(NetStream::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for NetListener {
    fn drop(&mut self) {
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
    Unix(UnixStream),
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
            Where::Unix(path) => Ok(NetStream::Unix(UnixStream::connect(path).await?)),
        }
    }

    /// Sends one frame.
    ///
    /// # Errors
    ///
    /// If the body is longer than `max`, or the write fails.
    pub(crate) async fn send_frame(&mut self, body: &[u8], max: usize) -> Result<(), ChannelError> {
        let mut buf = BytesMut::new();
        FrameCodec::new(max).encode(body, &mut buf)?;
        match self {
            NetStream::Tcp(s) => s.write_all(&buf).await?,
            NetStream::Unix(s) => s.write_all(&buf).await?,
        }
        Ok(())
    }

    /// Reads exactly one frame of at most `max` bytes, and nothing after
    /// it.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Oversized`] as soon as the header claims more than
    /// `max`; [`ChannelError::Closed`] or `Truncated` if the peer hangs up.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a frame partly read is lost, and the stream with
    /// it (the handshake that calls this gives up the stream when it is
    /// cancelled).
    pub(crate) async fn recv_frame(&mut self, max: usize) -> Result<Vec<u8>, ChannelError> {
        let mut header = [0u8; HEADER_LEN];
        self.read_exact_or(&mut header, 0).await?;
        let codec = FrameCodec::new(max);
        // The one codec decides whether the claimed length is allowed.
        codec.frame_len(&header)?;
        let len = FrameCodec::claimed(&header).unwrap_or(0);
        let mut body = vec![0u8; len];
        self.read_exact_or(&mut body, HEADER_LEN).await?;
        Ok(body)
    }

    /// Fills `buf`; `before` bytes of the frame came already.
    async fn read_exact_or(&mut self, buf: &mut [u8], before: usize) -> Result<(), ChannelError> {
        let mut got = 0;
        while got < buf.len() {
            let n = match self {
                NetStream::Tcp(s) => s.read(&mut buf[got..]).await?,
                NetStream::Unix(s) => s.read(&mut buf[got..]).await?,
            };
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

    /// The stream's descriptor, for a pipe end; no longer registered with
    /// the runtime.
    ///
    /// # Errors
    ///
    /// If the runtime cannot let go of it.
    pub(crate) fn into_handle(self) -> io::Result<OwnedHandle> {
        Ok(match self {
            NetStream::Tcp(s) => OwnedHandle::from(s.into_std()?),
            NetStream::Unix(s) => OwnedHandle::from(s.into_std()?),
        })
    }
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
