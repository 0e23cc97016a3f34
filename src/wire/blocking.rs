//! Blocking reads of frames together with the descriptors that arrive
//! with them, for code that runs without a runtime: a child reading its
//! orders, the fork server reading requests.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

use crate::error::ChannelError;
use crate::sys;
use crate::wire::frame::{FrameCodec, decode_message};

/// Reads frames from a blocking Unix socket with `recvmsg`, keeping every
/// descriptor that arrives (in order) until it is taken.
#[derive(Debug)]
pub(crate) struct FdFrames {
    codec: FrameCodec,
    buf: BytesMut,
    fds: Vec<OwnedFd>,
}

impl FdFrames {
    pub(crate) fn new(max_frame: usize) -> Self {
        FdFrames {
            codec: FrameCodec::new(max_frame),
            buf: BytesMut::new(),
            fds: Vec::new(),
        }
    }

    /// Changes the largest frame accepted.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.codec.set_max_frame(max_frame);
    }

    /// The oldest descriptor received and not yet taken.
    pub(crate) fn take_fd(&mut self) -> Option<OwnedFd> {
        (!self.fds.is_empty()).then(|| self.fds.remove(0))
    }

    /// Takes the `n` oldest descriptors, or fails if fewer arrived.
    pub(crate) fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedFd>, ChannelError> {
        if self.fds.len() < n {
            return Err(ChannelError::Malformed(format!(
                "a frame announced {n} descriptors but {} arrived",
                self.fds.len()
            )));
        }
        Ok(self.fds.drain(..n).collect())
    }

    /// Reads the next frame and decodes it.
    pub(crate) fn recv<T: DeserializeOwned>(
        &mut self,
        sock: &UnixStream,
    ) -> Result<T, ChannelError> {
        let body = self.next(sock)?;
        decode_message(&body)
    }

    /// Reads the next frame. A clean end of stream between frames is
    /// [`ChannelError::Closed`]; in the middle of one, `Truncated`.
    pub(crate) fn next(&mut self, sock: &UnixStream) -> Result<BytesMut, ChannelError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(frame);
            }
            let n = match sys::scm::recv_with_fds(sock.as_fd(), &mut chunk, &mut self.fds) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return match self.codec.decode_eof(&mut self.buf)? {
                    Some(frame) => Ok(frame),
                    None => Err(ChannelError::Closed),
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
