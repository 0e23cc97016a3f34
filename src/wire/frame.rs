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
//! [`FrameCodec`] plugs into `tokio_util::codec` for async code;
//! [`BlockingFramed`] drives the same codec over any `std::io::Read + Write`
//! for code that runs without a runtime. Message bodies are MessagePack in its
//! compact form (structs as arrays), written by [`encode_message`] and read
//! by [`decode_message`].

use std::io::{self, Read, Write};

use bytes::{Buf, BufMut, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ChannelError;

/// Length of a frame header: the body length as a big-endian `u32`.
pub(crate) const HEADER_LEN: usize = 4;

/// The default maximum body length, 128 MiB.
pub(crate) const DEFAULT_MAX_FRAME: usize = 128 * 1024 * 1024;

/// The most the decoder reserves beyond the bytes it already holds while it
/// waits for the rest of a frame.
pub(crate) const RESERVE_STEP: usize = 64 * 1024;

/// How much [`BlockingFramed`] asks its reader for at a time.
#[cfg_attr(not(test), allow(dead_code))] // its reads serve the codec's tests only now
const READ_CHUNK: usize = 64 * 1024;

/// A write buffer that grew past this is released after use rather than kept.
const KEEP_WRITE_BUF: usize = 1024 * 1024;

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

    /// The largest body this codec accepts or produces.
    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Changes the largest accepted body length.
    pub(crate) fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame.min(HEADER_MAX);
    }

    /// The body length claimed by the header at the start of `src`, if the
    /// whole header is there.
    fn peek_len(src: &[u8]) -> Option<usize> {
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
        let Some(len) = Self::peek_len(src) else {
            return Ok(None);
        };
        if len > self.max_frame {
            return Err(ChannelError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Make room for more of the body, but only in bounded steps: the
            // claimed length is the peer's word, not bytes it has sent.
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, ChannelError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let expected = match Self::peek_len(src) {
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

/// Frames over a blocking `Read + Write`, for code without a runtime.
///
/// Reads go through [`FrameCodec`] in chunks, so the same limits hold as in
/// async code: oversized frames are refused on their header, and the read
/// buffer grows only as bytes actually arrive.
#[derive(Debug)]
pub(crate) struct BlockingFramed<S> {
    /// The underlying stream.
    io: S,
    /// Framing rules and the size limit.
    codec: FrameCodec,
    /// Bytes read but not yet returned as frames.
    #[cfg_attr(not(test), allow(dead_code))]
    rbuf: BytesMut,
    /// Scratch space for the frame being sent.
    wbuf: BytesMut,
}

impl<S> BlockingFramed<S> {
    /// Frames `io`, refusing bodies longer than `max_frame` bytes.
    pub(crate) fn new(io: S, max_frame: usize) -> Self {
        Self {
            io,
            codec: FrameCodec::new(max_frame),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// The underlying stream.
    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably. Reading or writing it directly
    /// bypasses the framing and will likely corrupt the stream.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The underlying stream. Bytes already read but not yet returned as a
    /// frame are lost.
    pub(crate) fn into_inner(self) -> S {
        self.io
    }
}

#[cfg_attr(not(test), allow(dead_code))]
impl<S: Read> BlockingFramed<S> {
    /// Reads the next frame and returns its body.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Closed`] on a clean end of stream between frames;
    /// [`ChannelError::Truncated`] if the stream ends inside a frame;
    /// [`ChannelError::Oversized`] as soon as a header claims too much;
    /// [`ChannelError::Io`] if reading fails (`Interrupted` is retried).
    pub(crate) fn read_frame(&mut self) -> Result<BytesMut, ChannelError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.rbuf)? {
                return Ok(frame);
            }
            let start = self.rbuf.len();
            self.rbuf.resize(start + READ_CHUNK, 0);
            let read = loop {
                match self.io.read(&mut self.rbuf[start..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other,
                }
            };
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.rbuf.truncate(start);
                    return Err(e.into());
                }
            };
            self.rbuf.truncate(start + n);
            if n == 0 {
                return match self.codec.decode_eof(&mut self.rbuf)? {
                    Some(frame) => Ok(frame),
                    None => Err(ChannelError::Closed),
                };
            }
        }
    }

    /// Reads the next frame and decodes it as a `T`.
    ///
    /// # Errors
    ///
    /// Those of [`read_frame`](Self::read_frame), and
    /// [`ChannelError::Malformed`] if the body does not decode.
    pub(crate) fn recv<T: DeserializeOwned>(&mut self) -> Result<T, ChannelError> {
        let body = self.read_frame()?;
        decode_message(&body)
    }
}

impl<S: Write> BlockingFramed<S> {
    /// Encodes `msg` as one frame, writes it whole and flushes.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Encode`] or [`ChannelError::Oversized`] before anything
    /// is written; [`ChannelError::Io`] if writing fails.
    pub(crate) fn send<T: Serialize + ?Sized>(&mut self, msg: &T) -> Result<(), ChannelError> {
        self.wbuf.clear();
        encode_message(msg, &mut self.wbuf, self.codec.max_frame())?;
        self.write_buffered()
    }

    /// Writes `body` as one frame and flushes.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Oversized`] before anything is written;
    /// [`ChannelError::Io`] if writing fails.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn send_frame(&mut self, body: &[u8]) -> Result<(), ChannelError> {
        self.wbuf.clear();
        self.codec.encode(body, &mut self.wbuf)?;
        self.write_buffered()
    }

    /// Writes out the write buffer, then empties it.
    fn write_buffered(&mut self) -> Result<(), ChannelError> {
        let result = self.io.write_all(&self.wbuf).and_then(|()| self.io.flush());
        self.wbuf.clear();
        if self.wbuf.capacity() > KEEP_WRITE_BUF {
            self.wbuf = BytesMut::new();
        }
        result.map_err(ChannelError::from)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::time::Duration;

    use futures::StreamExt;
    use serde::{Deserialize, Serializer};
    use tokio::time::timeout;
    use tokio_test::io::{Builder, Mock};
    use tokio_util::codec::FramedRead;

    use super::*;

    /// How long an async case may take before it counts as a hang.
    const LIMIT: Duration = Duration::from_secs(5);

    /// A whole frame around `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Everything a `FramedRead` over `mock` yields until it ends.
    async fn collect(mock: Mock, codec: FrameCodec) -> Vec<Result<BytesMut, ChannelError>> {
        let mut framed = FramedRead::new(mock, codec);
        let mut out = Vec::new();
        timeout(LIMIT, async {
            while let Some(item) = framed.next().await {
                out.push(item);
            }
        })
        .await
        .expect("the decoder hung");
        out
    }

    /// The bodies, panicking on any error.
    fn bodies(items: Vec<Result<BytesMut, ChannelError>>) -> Vec<Vec<u8>> {
        items.into_iter().map(|r| r.unwrap().to_vec()).collect()
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Job {
        id: u64,
        name: String,
        args: Vec<i32>,
        kind: Kind,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Newtype(String),
        Tuple(u8, bool),
        Struct { fds: u32, tag: Option<String> },
    }

    /// A value whose serialization always fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this value refuses to encode"))
        }
    }

    /// A reader that hands out scripted chunks (or errors), then EOF, and
    /// records what is written to it.
    #[derive(Default)]
    struct Scripted {
        reads: VecDeque<io::Result<Vec<u8>>>,
        written: Vec<u8>,
        flushes: usize,
    }

    impl Scripted {
        fn new(chunks: impl IntoIterator<Item = io::Result<Vec<u8>>>) -> Self {
            Self {
                reads: chunks.into_iter().collect(),
                ..Self::default()
            }
        }

        fn of(chunks: &[&[u8]]) -> Self {
            Self::new(chunks.iter().map(|c| Ok(c.to_vec())))
        }
    }

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.reads.pop_front() {
                None => Ok(0),
                Some(Err(e)) => Err(e),
                Some(Ok(mut chunk)) => {
                    let n = chunk.len().min(buf.len());
                    buf[..n].copy_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        self.reads.push_front(Ok(chunk.split_off(n)));
                    }
                    Ok(n)
                }
            }
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[tokio::test]
    async fn header_split_one_plus_three() {
        let bytes = frame(b"hello");
        let mock = Builder::new()
            .read(&bytes[..1])
            .read(&bytes[1..4])
            .read(&bytes[4..])
            .build();
        let got = bodies(collect(mock, FrameCodec::default()).await);
        assert_eq!(got, vec![b"hello".to_vec()]);
    }

    #[tokio::test]
    async fn body_split_into_many_pieces() {
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let bytes = frame(&body);
        let mut builder = Builder::new();
        builder.read(&bytes[..HEADER_LEN]);
        for piece in bytes[HEADER_LEN..].chunks(333) {
            builder.read(piece);
        }
        let got = bodies(collect(builder.build(), FrameCodec::default()).await);
        assert_eq!(got, vec![body]);
    }

    #[tokio::test]
    async fn one_byte_at_a_time() {
        let mut bytes = frame(b"first");
        bytes.extend(frame(b""));
        bytes.extend(frame(b"third frame"));
        let mut builder = Builder::new();
        for b in &bytes {
            builder.read(std::slice::from_ref(b));
        }
        let got = bodies(collect(builder.build(), FrameCodec::default()).await);
        assert_eq!(
            got,
            vec![b"first".to_vec(), Vec::new(), b"third frame".to_vec()]
        );
    }

    #[tokio::test]
    async fn several_frames_in_one_read() {
        let mut bytes = Vec::new();
        for i in 0..10u8 {
            bytes.extend(frame(&vec![i; usize::from(i)]));
        }
        let mock = Builder::new().read(&bytes).build();
        let got = bodies(collect(mock, FrameCodec::default()).await);
        let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; usize::from(i)]).collect();
        assert_eq!(got, want);
    }

    #[tokio::test]
    async fn zero_length_frame() {
        let mut bytes = frame(b"");
        bytes.extend(frame(b""));
        let mock = Builder::new().read(&bytes).build();
        let got = bodies(collect(mock, FrameCodec::default()).await);
        assert_eq!(got, vec![Vec::<u8>::new(), Vec::new()]);
    }

    #[tokio::test]
    async fn clean_close_ends_the_stream() {
        let got = collect(Builder::new().build(), FrameCodec::default()).await;
        assert!(got.is_empty());

        let mock = Builder::new().read(&frame(b"last")).build();
        let got = bodies(collect(mock, FrameCodec::default()).await);
        assert_eq!(got, vec![b"last".to_vec()]);
    }

    #[tokio::test]
    async fn truncated_header_at_eof() {
        let mock = Builder::new().read(&[0, 0]).build();
        let got = collect(mock, FrameCodec::default()).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(ChannelError::Truncated {
                expected: 4,
                received: 2
            })
        ));
    }

    #[tokio::test]
    async fn truncated_body_at_eof() {
        let bytes = frame(b"0123456789");
        let mock = Builder::new().read(&bytes[..7]).build();
        let got = collect(mock, FrameCodec::default()).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(ChannelError::Truncated {
                expected: 14,
                received: 7
            })
        ));
    }

    #[tokio::test]
    async fn complete_frames_come_before_the_truncation() {
        let mut bytes = frame(b"whole");
        bytes.extend(&frame(b"partial")[..6]);
        let mock = Builder::new().read(&bytes).build();
        let mut got = collect(mock, FrameCodec::default()).await.into_iter();
        assert_eq!(&got.next().unwrap().unwrap()[..], b"whole");
        assert!(matches!(
            got.next(),
            Some(Err(ChannelError::Truncated {
                expected: 11,
                received: 6
            }))
        ));
        assert!(got.next().is_none());
    }

    #[tokio::test]
    async fn peer_closes_mid_frame() {
        let body = vec![7u8; 1000];
        let bytes = frame(&body);
        let mock = Builder::new()
            .read(&bytes[..2])
            .read(&bytes[2..300])
            .read(&bytes[300..600])
            .build();
        let got = collect(mock, FrameCodec::default()).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(ChannelError::Truncated {
                expected: 1004,
                received: 600
            })
        ));
    }

    #[tokio::test]
    async fn oversized_claim_fails_before_the_body() {
        // The body would only come an hour later: the error must not wait.
        let mock = Builder::new()
            .read(&1025u32.to_be_bytes())
            .wait(Duration::from_secs(3600))
            .build();
        let got = collect(mock, FrameCodec::new(1024)).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(ChannelError::Oversized {
                len: 1025,
                max: 1024
            })
        ));
    }

    #[tokio::test]
    async fn huge_claim_does_not_preallocate() {
        let claim = u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap();
        let mut bytes = claim.to_be_bytes().to_vec();
        bytes.extend([0xAB; 10]);
        let mock = Builder::new()
            .read(&bytes)
            .wait(Duration::from_secs(3600))
            .build();
        let mut framed = FramedRead::new(mock, FrameCodec::default());
        let pending = timeout(Duration::from_millis(200), framed.next()).await;
        assert!(pending.is_err(), "no frame can be complete yet");
        assert_eq!(framed.read_buffer().len(), 14);
        assert!(framed.read_buffer().capacity() < 1024 * 1024);
    }

    #[test]
    fn decoder_reserves_in_bounded_steps() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        buf.put_u32(u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap());
        buf.put_bytes(1, 10);
        for _ in 0..100 {
            assert!(codec.decode(&mut buf).unwrap().is_none());
        }
        assert_eq!(buf.len(), 14);
        assert!(buf.capacity() < 1024 * 1024);
    }

    #[tokio::test]
    async fn garbage_with_a_small_length_is_malformed() {
        // 0xc1 is never used in MessagePack.
        let garbage = [0, 0, 0, 5, 0xc1, 0x9f, 0x13, 0x37, 0xc1];
        let mock = Builder::new().read(&garbage).build();
        let got = bodies(collect(mock, FrameCodec::default()).await);
        assert_eq!(got.len(), 1);
        let err = decode_message::<Job>(&got[0]).unwrap_err();
        assert!(matches!(err, ChannelError::Malformed(_)), "{err:?}");
    }

    #[tokio::test]
    async fn garbage_with_a_huge_length_is_oversized() {
        let garbage = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03];
        let mock = Builder::new().read(&garbage).build();
        let got = collect(mock, FrameCodec::default()).await;
        assert_eq!(got.len(), 1);
        assert!(matches!(
            got[0],
            Err(ChannelError::Oversized {
                len: 0xdead_beef,
                max: DEFAULT_MAX_FRAME
            })
        ));
    }

    #[tokio::test]
    async fn read_error_propagates_as_io() {
        let bytes = frame(b"ok");
        let mock = Builder::new()
            .read(&bytes)
            .read(&[0, 0])
            .read_error(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
            .build();
        let mut got = collect(mock, FrameCodec::default()).await.into_iter();
        assert_eq!(&got.next().unwrap().unwrap()[..], b"ok");
        match got.next() {
            Some(Err(ChannelError::Io(e))) => {
                assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
            }
            other => panic!("expected an i/o error, got {other:?}"),
        }
        assert!(got.next().is_none());
    }

    #[test]
    fn random_input_never_panics() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut codec = FrameCodec::new(512);
            let len = usize::try_from(next() % 64).unwrap();
            let mut input: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if next() % 2 == 0 && input.len() >= 4 {
                // Make a plausible small length half of the time.
                input[..2].fill(0);
            }
            let mut buf = BytesMut::new();
            let mut rest = &input[..];
            let mut failed = false;
            while !rest.is_empty() && !failed {
                let take = (usize::try_from(next() % 8).unwrap() + 1).min(rest.len());
                buf.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                loop {
                    match codec.decode(&mut buf) {
                        Ok(Some(body)) => {
                            let _ = decode_message::<Job>(&body);
                        }
                        Ok(None) => break,
                        Err(ChannelError::Oversized { len, max }) => {
                            assert!(len > max);
                            failed = true;
                            break;
                        }
                        Err(e) => panic!("unexpected error {e:?}"),
                    }
                }
            }
            if !failed {
                match codec.decode_eof(&mut buf) {
                    Ok(_)
                    | Err(ChannelError::Truncated { .. })
                    | Err(ChannelError::Oversized { .. }) => {}
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
        }
    }

    #[test]
    fn round_trip_struct_and_enum() {
        let jobs = [
            Job {
                id: 1,
                name: "unit".into(),
                args: vec![],
                kind: Kind::Unit,
            },
            Job {
                id: u64::MAX,
                name: "newtype".into(),
                args: vec![-1, 0, 1],
                kind: Kind::Newtype("x".repeat(300)),
            },
            Job {
                id: 3,
                name: String::new(),
                args: vec![i32::MIN, i32::MAX],
                kind: Kind::Tuple(9, true),
            },
            Job {
                id: 4,
                name: "struct".into(),
                args: vec![42],
                kind: Kind::Struct {
                    fds: 2,
                    tag: Some("t".into()),
                },
            },
        ];
        let mut buf = BytesMut::new();
        for job in &jobs {
            encode_message(job, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        }
        let mut codec = FrameCodec::default();
        for job in &jobs {
            let body = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(&decode_message::<Job>(&body).unwrap(), job);
        }
        assert!(buf.is_empty());
        assert!(codec.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn messages_use_the_compact_array_form() {
        let mut buf = BytesMut::new();
        let job = Job {
            id: 5,
            name: "n".into(),
            args: vec![],
            kind: Kind::Unit,
        };
        encode_message(&job, &mut buf, DEFAULT_MAX_FRAME).unwrap();
        // A fixarray of four fields, not a map with field names.
        assert_eq!(buf[HEADER_LEN], 0x94);
        let expected = rmp_serde::to_vec(&job).unwrap();
        assert_eq!(&buf[HEADER_LEN..], &expected[..]);
        assert_eq!(
            usize::try_from(u32::from_be_bytes(buf[..4].try_into().unwrap())).unwrap(),
            expected.len()
        );
    }

    #[test]
    fn encode_error_leaves_dst_unchanged() {
        let mut buf = BytesMut::from(&b"earlier frame bytes"[..]);
        let err = encode_message(&Unencodable, &mut buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(
            matches!(&err, ChannelError::Encode(m) if m.contains("refuses")),
            "{err:?}"
        );
        assert_eq!(&buf[..], b"earlier frame bytes");

        // An error deep inside a value also leaves nothing behind.
        let nested = (1u32, "partly written", Unencodable);
        let err = encode_message(&nested, &mut buf, DEFAULT_MAX_FRAME).unwrap_err();
        assert!(matches!(err, ChannelError::Encode(_)));
        assert_eq!(&buf[..], b"earlier frame bytes");
    }

    #[test]
    fn encode_oversized_leaves_dst_unchanged() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        let big = vec![0u8; 2000];
        let err = encode_message(&big, &mut buf, 100).unwrap_err();
        // The exact length is measured even though only 100 bytes are kept.
        let exact = rmp_serde::to_vec(&big).unwrap().len();
        assert!(
            matches!(err, ChannelError::Oversized { len, max: 100 } if len == exact),
            "{err:?}"
        );
        assert_eq!(&buf[..], b"xy");
        assert!(buf.capacity() < 1024);

        // Exactly at the limit is fine.
        let fits = vec![0u8; 5];
        let len = rmp_serde::to_vec(&fits).unwrap().len();
        encode_message(&fits, &mut buf, len).unwrap();
        assert_eq!(buf.len(), 2 + HEADER_LEN + len);
    }

    #[test]
    fn encoder_frames_bodies_and_refuses_oversized() {
        let mut codec = FrameCodec::new(8);
        assert_eq!(codec.max_frame(), 8);
        let mut buf = BytesMut::new();
        codec.encode(&b"12345678"[..], &mut buf).unwrap();
        codec.encode(&b""[..], &mut buf).unwrap();
        assert_eq!(
            &buf[..],
            &[&frame(b"12345678")[..], &frame(b"")[..]].concat()[..]
        );
        let err = codec.encode(&b"123456789"[..], &mut buf).unwrap_err();
        assert!(matches!(err, ChannelError::Oversized { len: 9, max: 8 }));
        assert_eq!(buf.len(), 16);
        assert_eq!(
            FrameCodec::new(usize::MAX).max_frame(),
            usize::try_from(u32::MAX).unwrap()
        );
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut body = rmp_serde::to_vec(&42u32).unwrap();
        assert_eq!(decode_message::<u32>(&body).unwrap(), 42);
        body.extend([0xc0, 0x01]);
        let err = decode_message::<u32>(&body).unwrap_err();
        assert!(
            matches!(&err, ChannelError::Malformed(m) if m.contains("2 trailing")),
            "{err:?}"
        );
    }

    #[test]
    fn empty_or_mistyped_bodies_are_malformed() {
        assert!(matches!(
            decode_message::<u32>(b""),
            Err(ChannelError::Malformed(_))
        ));
        let body = rmp_serde::to_vec(&"a string").unwrap();
        assert!(matches!(
            decode_message::<Job>(&body),
            Err(ChannelError::Malformed(_))
        ));
        // A string that claims far more bytes than the body holds.
        assert!(matches!(
            decode_message::<String>(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
            Err(ChannelError::Malformed(_))
        ));
    }

    #[test]
    fn blocking_reads_scripted_chunks() {
        let mut bytes = frame(&rmp_serde::to_vec(&"one").unwrap());
        bytes.extend(frame(b""));
        bytes.extend(frame(&rmp_serde::to_vec(&(2u8, "two")).unwrap()));
        let mut chunks: Vec<io::Result<Vec<u8>>> = Vec::new();
        chunks.push(Ok(bytes[..1].to_vec()));
        chunks.push(Err(io::Error::from(io::ErrorKind::Interrupted)));
        chunks.push(Ok(bytes[1..3].to_vec()));
        for b in &bytes[3..] {
            chunks.push(Ok(vec![*b]));
        }
        let mut framed = BlockingFramed::new(Scripted::new(chunks), DEFAULT_MAX_FRAME);
        assert_eq!(framed.recv::<String>().unwrap(), "one");
        assert!(framed.read_frame().unwrap().is_empty());
        assert_eq!(framed.recv::<(u8, String)>().unwrap(), (2, "two".into()));
        assert!(matches!(framed.read_frame(), Err(ChannelError::Closed)));
    }

    #[test]
    fn blocking_several_frames_in_one_chunk() {
        let mut bytes = Vec::new();
        for i in 0..5u32 {
            bytes.extend(frame(&rmp_serde::to_vec(&i).unwrap()));
        }
        let mut framed = BlockingFramed::new(Scripted::of(&[&bytes]), DEFAULT_MAX_FRAME);
        for i in 0..5u32 {
            assert_eq!(framed.recv::<u32>().unwrap(), i);
        }
        assert!(matches!(framed.recv::<u32>(), Err(ChannelError::Closed)));
    }

    #[test]
    fn blocking_clean_eof_is_closed() {
        let mut framed = BlockingFramed::new(Scripted::of(&[]), DEFAULT_MAX_FRAME);
        assert!(matches!(framed.read_frame(), Err(ChannelError::Closed)));
    }

    #[test]
    fn blocking_truncated_header_and_body() {
        let mut framed = BlockingFramed::new(Scripted::of(&[&[0], &[0, 0]]), DEFAULT_MAX_FRAME);
        assert!(matches!(
            framed.read_frame(),
            Err(ChannelError::Truncated {
                expected: 4,
                received: 3
            })
        ));

        let bytes = frame(b"twenty bytes of body");
        let mut framed = BlockingFramed::new(
            Scripted::of(&[&bytes[..5], &bytes[5..9]]),
            DEFAULT_MAX_FRAME,
        );
        assert!(matches!(
            framed.read_frame(),
            Err(ChannelError::Truncated {
                expected: 24,
                received: 9
            })
        ));
    }

    #[test]
    fn blocking_read_error_is_io() {
        let script = Scripted::new([
            Ok(vec![0, 0, 0, 3, b'a']),
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone")),
        ]);
        let mut framed = BlockingFramed::new(script, DEFAULT_MAX_FRAME);
        match framed.read_frame() {
            Err(ChannelError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected an i/o error, got {other:?}"),
        }
    }

    #[test]
    fn blocking_oversized_claim_and_bounded_buffer() {
        let mut framed = BlockingFramed::new(Scripted::of(&[&[0, 0, 4, 1], b"body"]), 1024);
        assert!(matches!(
            framed.read_frame(),
            Err(ChannelError::Oversized {
                len: 1025,
                max: 1024
            })
        ));

        let claim = u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap().to_be_bytes();
        let mut framed =
            BlockingFramed::new(Scripted::of(&[&claim, &[0xAB; 10]]), DEFAULT_MAX_FRAME);
        assert!(matches!(
            framed.read_frame(),
            Err(ChannelError::Truncated { expected, received: 14 }) if expected == DEFAULT_MAX_FRAME + 3
        ));
        assert!(framed.rbuf.capacity() < 1024 * 1024);
    }

    #[test]
    fn blocking_send_writes_whole_frames() {
        let mut framed = BlockingFramed::new(Scripted::default(), DEFAULT_MAX_FRAME);
        framed.send(&("hi", 7u8)).unwrap();
        framed.send_frame(b"raw").unwrap();
        let mut want = frame(&rmp_serde::to_vec(&("hi", 7u8)).unwrap());
        want.extend(frame(b"raw"));
        assert_eq!(framed.get_ref().written, want);
        assert_eq!(framed.get_ref().flushes, 2);

        // Nothing is written when encoding fails or the frame is too big.
        assert!(matches!(
            framed.send(&Unencodable),
            Err(ChannelError::Encode(_))
        ));
        framed.get_mut().written.clear();
        let mut small = BlockingFramed::new(framed.into_inner(), 4);
        assert!(matches!(
            small.send(&"too long"),
            Err(ChannelError::Oversized { max: 4, .. })
        ));
        assert!(matches!(
            small.send_frame(b"12345"),
            Err(ChannelError::Oversized { len: 5, max: 4 })
        ));
        assert!(small.get_ref().written.is_empty());
    }

    #[test]
    fn blocking_round_trip_over_a_socket() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let child = std::thread::spawn(move || {
            let mut framed = BlockingFramed::new(b, DEFAULT_MAX_FRAME);
            while let Ok(job) = framed.recv::<Job>() {
                framed.send(&(job.id, job.args.len())).unwrap();
            }
        });
        let mut framed = BlockingFramed::new(a, DEFAULT_MAX_FRAME);
        for id in 0..50u64 {
            let job = Job {
                id,
                name: format!("job {id}"),
                args: (0..i32::try_from(id).unwrap() * 100).collect(),
                kind: Kind::Struct { fds: 0, tag: None },
            };
            framed.send(&job).unwrap();
            let (got_id, n): (u64, usize) = framed.recv().unwrap();
            assert_eq!((got_id, n), (id, usize::try_from(id).unwrap() * 100));
        }
        drop(framed);
        child.join().unwrap();
    }
}
