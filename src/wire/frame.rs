//! The frame codec: a 4-byte big-endian body length, then the body.
//!
//! ```text
//! +----------------+---------------------------+
//! | len: u32 (BE)  | body: len bytes (MsgPack) |
//! +----------------+---------------------------+
//! ```
//!
//! `len` counts the body only. A zero-length body is a valid frame. A frame
//! whose claimed length exceeds the configured maximum is refused as soon as
//! its header arrives, before any of its body is read, and the decoder never
//! reserves more than [`RESERVE_STEP`] bytes beyond what it already holds, so a
//! peer cannot make us allocate memory it has not actually sent.
//!
//! [`FrameCodec`] is the one decoder of frames: it plugs into
//! `tokio_util::codec` for async code, and every other reader (the pipes'
//! buffers, the blocking reader in `crate::transport::blocking`, the fork
//! server's client) feeds it the bytes it has. Message bodies are
//! MessagePack in its compact form (structs as arrays), written by
//! [`encode_message`] and read by [`decode_message`].

use std::io::{self, Write};

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::wire::ChannelError;

/// Length of a frame header: the body length as a big-endian `u32`.
pub(crate) const HEADER_LEN: usize = 4;

/// The first byte of a pipe message's body when descriptors travel with
/// it: `0xc1`, which MessagePack never uses, so no plain message starts
/// with it. A big-endian `u32`, how many descriptors, follows, then the
/// MessagePack message.
pub(crate) const FDS_MARK: u8 = 0xc1;

/// The length of the prefix [`FDS_MARK`] starts: the mark and the count.
pub(crate) const FDS_PREFIX_LEN: usize = 5;

/// Splits a pipe message's body into how many descriptors travel with it
/// and the MessagePack message.
///
/// # Errors
///
/// [`ChannelError::Malformed`] if the body starts with [`FDS_MARK`] and
/// is too short for the count.
pub(crate) fn split_fds_prefix(body: &[u8]) -> Result<(usize, &[u8]), ChannelError> {
    if body.first() != Some(&FDS_MARK) {
        return Ok((0, body));
    }
    let count: [u8; 4] = body
        .get(1..FDS_PREFIX_LEN)
        .and_then(|c| c.try_into().ok())
        .ok_or_else(|| ChannelError::Malformed("a descriptor count cut short".to_owned()))?;
    let count = usize::try_from(u32::from_be_bytes(count)).unwrap_or(usize::MAX);
    Ok((count, &body[FDS_PREFIX_LEN..]))
}

/// Puts the prefix [`FDS_MARK`] starts into the frame at `dst[start..]`,
/// which [`encode_message`] has just written: the body moves up by
/// [`FDS_PREFIX_LEN`] bytes and the header grows to match.
///
/// # Errors
///
/// [`ChannelError::Oversized`] if the body no longer fits `max_frame`;
/// `dst` is then truncated back to `start`.
pub(crate) fn insert_fds_prefix(
    dst: &mut BytesMut,
    start: usize,
    count: u32,
    max_frame: usize,
) -> Result<(), ChannelError> {
    let body = dst[start + HEADER_LEN..].to_vec();
    let len = match checked_len(body.len() + FDS_PREFIX_LEN, max_frame) {
        Ok(len) => len,
        Err(e) => {
            dst.truncate(start);
            return Err(e);
        }
    };
    dst.truncate(start);
    dst.reserve(HEADER_LEN + FDS_PREFIX_LEN + body.len());
    dst.put_u32(len);
    dst.put_u8(FDS_MARK);
    dst.put_u32(count);
    dst.extend_from_slice(&body);
    Ok(())
}

/// The default maximum body length, 128 MiB.
pub(crate) const DEFAULT_MAX_FRAME: usize = 128 * 1024 * 1024;

/// The most the decoder reserves beyond the bytes it already holds while it
/// waits for the rest of a frame.
pub(crate) const RESERVE_STEP: usize = 64 * 1024;

/// The largest body a header can describe.
const HEADER_MAX: usize = u32::MAX as usize;

/// Length-prefixed framing: a big-endian `u32` body length, then the body.
///
/// Decodes into the body alone (the header is stripped) and encodes a body
/// slice into a whole frame. Bodies longer than [`max_frame`](Self::max_frame)
/// are refused with [`ChannelError::Oversized`] in both directions.
#[derive(Debug, Clone)]
pub(crate) struct FrameCodec {
    /// Largest body accepted or produced, never above `u32::MAX`.
    max_frame: usize,
}

impl FrameCodec {
    /// A codec that refuses bodies longer than `max_frame` bytes.
    ///
    /// `max_frame` is capped at `u32::MAX`, the most a header can describe.
    pub(crate) fn new(max_frame: usize) -> Self {
        Self {
            max_frame: max_frame.min(HEADER_MAX),
        }
    }

    /// Changes the largest accepted body length.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(HEADER_MAX);
    }

    /// The length, header included, of the whole frame at the start of
    /// `src`, once all of it is there: the check every decode makes, for
    /// readers that decode the body in place rather than split it off.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Oversized`] as soon as the header claims more than
    /// the limit.
    pub(crate) fn frame_len(&self, src: &[u8]) -> Result<Option<usize>, ChannelError> {
        let Some(len) = Self::claimed(src) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(ChannelError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        let total = HEADER_LEN + len;
        Ok((src.len() >= total).then_some(total))
    }

    /// The body length claimed by the header at the start of `src`, if the
    /// whole header is there.
    pub(crate) fn claimed(src: &[u8]) -> Option<usize> {
        let header: [u8; HEADER_LEN] = src.get(..HEADER_LEN)?.try_into().ok()?;
        // A u32 always fits in usize on the targets this crate supports.
        usize::try_from(u32::from_be_bytes(header)).ok()
    }
}

impl Default for FrameCodec {
    /// A codec with the [`DEFAULT_MAX_FRAME`] limit.
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = ChannelError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ChannelError> {
        match self.frame_len(src)? {
            Some(total) => {
                src.advance(HEADER_LEN);
                Ok(Some(src.split_to(total - HEADER_LEN)))
            }
            None => {
                // Make room for more of the body, but only in bounded
                // steps: the claimed length is the peer's word, not bytes
                // it has sent.
                if let Some(len) = Self::claimed(src) {
                    let total = HEADER_LEN + len;
                    src.reserve(total.saturating_sub(src.len()).min(RESERVE_STEP));
                }
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ChannelError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let expected = match Self::claimed(src) {
            Some(len) => HEADER_LEN + len,
            None => HEADER_LEN,
        };
        Err(ChannelError::Truncated {
            expected,
            received: src.len(),
        })
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = ChannelError;

    fn encode(&mut self, body: &[u8], dst: &mut BytesMut) -> Result<(), ChannelError> {
        let len = checked_len(body.len(), self.max_frame)?;
        dst.reserve(HEADER_LEN + body.len());
        dst.put_u32(len);
        dst.extend_from_slice(body);
        Ok(())
    }
}

/// `len` as a header value, or `Oversized` if it exceeds `max` (or `u32::MAX`).
fn checked_len(len: usize, max: usize) -> Result<u32, ChannelError> {
    let max = max.min(HEADER_MAX);
    match u32::try_from(len) {
        Ok(len32) if len <= max => Ok(len32),
        _ => Err(ChannelError::Oversized { len, max }),
    }
}

/// A `Write` that appends to a buffer until `cap` bytes were written, then
/// only counts, so an oversized message costs no more memory than `cap`.
struct CappedWriter<'a> {
    /// Where the bytes go.
    dst: &'a mut BytesMut,
    /// Bytes offered so far, stored or not.
    written: usize,
    /// Bytes stored at most.
    cap: usize,
}

impl Write for CappedWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written = self.written.saturating_add(buf.len());
        if self.written <= self.cap {
            self.dst.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Appends one whole frame carrying `msg` to `dst`.
///
/// The message is serialized as compact MessagePack (structs as arrays)
/// straight into `dst` after a reserved header, whose length is patched in
/// afterwards. On failure `dst` is truncated back to its previous length, so
/// a partial frame is never left behind to be sent.
///
/// # Errors
///
/// [`ChannelError::Encode`] if `msg` fails to serialize;
/// [`ChannelError::Oversized`] if its body would exceed `max_frame` bytes
/// (the body is then measured but not kept in memory past `max_frame`).
pub(crate) fn encode_message<T: Serialize + ?Sized>(
    msg: &T,
    dst: &mut BytesMut,
    max_frame: usize,
) -> Result<(), ChannelError> {
    let start = dst.len();
    let max = max_frame.min(HEADER_MAX);
    dst.put_bytes(0, HEADER_LEN);
    let mut writer = CappedWriter {
        dst,
        written: 0,
        cap: max,
    };
    let result = rmp_serde::encode::write(&mut writer, msg);
    let body_len = writer.written;
    let outcome = match result {
        Err(e) => Err(ChannelError::Encode(e.to_string())),
        Ok(()) => checked_len(body_len, max),
    };
    match outcome {
        Ok(len) => {
            dst[start..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        Err(e) => {
            dst.truncate(start);
            Err(e)
        }
    }
}

/// Decodes one MessagePack message that must fill `body` exactly.
///
/// # Errors
///
/// [`ChannelError::Malformed`] if the bytes do not decode as a `T`, or if
/// bytes remain after the value.
pub(crate) fn decode_message<T: DeserializeOwned>(body: &[u8]) -> Result<T, ChannelError> {
    let mut de = rmp_serde::Deserializer::new(io::Cursor::new(body));
    let value = T::deserialize(&mut de).map_err(|e| ChannelError::Malformed(e.to_string()))?;
    let used = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if used != body.len() {
        return Err(ChannelError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len().saturating_sub(used)
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests;
