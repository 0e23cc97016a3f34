//! [`ChannelError`]: what can go wrong on a framed channel.

use std::io;

/// Something went wrong on a framed channel between two processes.
///
/// Every fault on the wire maps to one of these kinds, on the side that
/// saw it; none of them panics or hangs either side. A truncated frame
/// ([`Truncated`](ChannelError::Truncated)) is reported differently from a
/// clean close between frames ([`Closed`](ChannelError::Closed)).
///
/// Converting into [`io::Error`] gives [`io::ErrorKind::InvalidData`] for a
/// bad frame and [`io::ErrorKind::UnexpectedEof`] for a close, wrapping this
/// error (reach it with `get_ref` or `into_inner`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The peer closed the channel cleanly, between two frames.
    #[error("channel closed by the peer")]
    Closed,
    /// The peer closed the channel in the middle of a frame.
    #[error("channel closed in the middle of a frame ({received} of {expected} bytes received)")]
    Truncated {
        /// Bytes the frame claimed, header included.
        expected: usize,
        /// Bytes that arrived before the close.
        received: usize,
    },
    /// A frame claimed, or would have needed, more bytes than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized {
        /// The frame's length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// A frame arrived whole but its bytes do not decode as the expected message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message could not be encoded.
    #[error("message failed to encode: {0}")]
    Encode(String),
    /// The operating system reported an error on the channel.
    #[error("i/o error on the channel: {0}")]
    Io(#[from] io::Error),
}

impl ChannelError {
    /// Whether the peer went away: a clean close, or a close that reset
    /// the connection because this side had not read all it sent.
    pub(crate) fn peer_left(&self) -> bool {
        match self {
            ChannelError::Closed => true,
            ChannelError::Io(e) => e.kind() == io::ErrorKind::ConnectionReset,
            _ => false,
        }
    }
}

impl From<ChannelError> for io::Error {
    fn from(err: ChannelError) -> io::Error {
        match err {
            ChannelError::Io(e) => e,
            e @ (ChannelError::Closed | ChannelError::Truncated { .. }) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, e)
            }
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}
