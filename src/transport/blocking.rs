//! Blocking reads and writes of frames, for code that runs without a
//! runtime: a child reading its orders, the fork server reading requests.
//!
//! [`FrameReader`] is the blocking counterpart of the async readers: the
//! same codec (`crate::wire::frame::FrameCodec`), fed by `recvmsg` so that
//! the descriptors that arrive with the bytes are kept, in order, until
//! taken. [`send_message`] writes one whole frame.

#[cfg(unix)]
use std::io::Write;
use std::io::{self, Read};
#[cfg(unix)]
use std::os::fd::AsFd;
#[cfg(unix)]
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::Decoder;

use crate::sys::{self, OwnedHandle};
use crate::wire::ChannelError;
use crate::wire::frame::{FrameCodec, decode_message, encode_message};

/// How much one read asks for.
const READ_CHUNK: usize = 16 * 1024;

/// Where a [`FrameReader`] gets its bytes (and descriptors) from.
pub(crate) trait Source {
    /// Reads some bytes into `buf`, appending any descriptors that came
    /// with them to `fds`; 0 at the end of the stream.
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedHandle>) -> io::Result<usize>;
}

#[cfg(unix)]
impl Source for &UnixStream {
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedHandle>) -> io::Result<usize> {
        sys::scm::recv_with_fds(self.as_fd(), buf, fds)
    }
}

#[cfg(unix)]
impl Source for &BlockingChannel {
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedHandle>) -> io::Result<usize> {
        sys::scm::recv_with_fds(self.stream.as_fd(), buf, fds)
    }
}

#[cfg(windows)]
impl Source for &BlockingChannel {
    fn recv(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedHandle>) -> io::Result<usize> {
        let timeout = *self
            .read_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if timeout.is_some()
            && !sys::stream::wait(&self.handle, sys::stream::Wait::Readable, timeout)?
        {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut got = BytesMut::with_capacity(buf.len());
        let n = sys::stream::recv_into(&self.handle, &mut got, buf.len(), true)?;
        buf[..n].copy_from_slice(&got[..n]);
        Ok(n)
    }
}

impl<S: Source + ?Sized> Source for &mut S {
    fn recv(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedHandle>) -> io::Result<usize> {
        (**self).recv(buf, fds)
    }
}

/// Any reader as a [`Source`] that carries no descriptors.
#[cfg_attr(not(all(test, unix)), allow(dead_code))]
pub(crate) struct Plain<R>(pub(crate) R);

impl<R: Read> Source for Plain<R> {
    fn recv(&mut self, buf: &mut [u8], _fds: &mut Vec<OwnedHandle>) -> io::Result<usize> {
        self.0.read(buf)
    }
}

/// Reads frames from a blocking source, keeping every descriptor that
/// arrives (in order) until it is taken.
#[derive(Debug)]
pub(crate) struct FrameReader {
    codec: FrameCodec,
    buf: BytesMut,
    fds: Vec<OwnedHandle>,
}

impl FrameReader {
    pub(crate) fn new(max_frame: usize) -> Self {
        FrameReader {
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
    pub(crate) fn take_fd(&mut self) -> Option<OwnedHandle> {
        (!self.fds.is_empty()).then(|| self.fds.remove(0))
    }

    /// Takes the `n` oldest descriptors, or fails if fewer arrived. (On
    /// Windows none arrive beside the bytes.)
    #[cfg(unix)]
    pub(crate) fn take_fds(&mut self, n: usize) -> Result<Vec<OwnedHandle>, ChannelError> {
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
        from: impl Source,
    ) -> Result<T, ChannelError> {
        let body = self.next(from)?;
        decode_message(&body)
    }

    /// Reads the next frame. A clean end of stream between frames is
    /// [`ChannelError::Closed`]; in the middle of one, `Truncated`.
    /// `Interrupted` reads are retried.
    pub(crate) fn next(&mut self, mut from: impl Source) -> Result<BytesMut, ChannelError> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self.codec.decode(&mut self.buf)? {
                return Ok(frame);
            }
            let n = match from.recv(&mut chunk, &mut self.fds) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
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

    /// Bytes held that no frame has taken yet (for tests of the bound).
    #[cfg(all(test, unix))]
    fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A blocking stream socket carrying frames, and the frame limit on it: a
/// child's end of its control channel, or the fork server's.
#[cfg(unix)]
pub(crate) struct BlockingChannel {
    pub(crate) stream: UnixStream,
    pub(crate) max_frame: usize,
}

#[cfg(unix)]
impl BlockingChannel {
    /// A channel on `handle`, a connected stream socket.
    pub(crate) fn new(handle: OwnedHandle, max_frame: usize) -> BlockingChannel {
        BlockingChannel {
            stream: UnixStream::from(handle),
            max_frame,
        }
    }

    /// A second handle on the same socket.
    pub(crate) fn try_clone_handle(&self) -> io::Result<OwnedHandle> {
        self.stream.as_fd().try_clone_to_owned()
    }

    /// The number of the socket's descriptor (for tests that play a
    /// misbehaving child).
    pub(crate) fn number(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.stream)
    }

    /// Sets how long a read may wait (`None`: for ever).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.stream.set_read_timeout(timeout)
    }

    /// Sends one message, blocking.
    pub(crate) fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), ChannelError> {
        send_message(&self.stream, msg, self.max_frame)
    }
}

/// A blocking pipe end carrying frames, and the frame limit on it: a
/// child's end of its control channel.
#[cfg(windows)]
pub(crate) struct BlockingChannel {
    pub(crate) handle: OwnedHandle,
    pub(crate) max_frame: usize,
    read_timeout: std::sync::Mutex<Option<std::time::Duration>>,
}

#[cfg(windows)]
impl BlockingChannel {
    /// A channel on `handle`, a connected pipe end.
    pub(crate) fn new(handle: OwnedHandle, max_frame: usize) -> BlockingChannel {
        BlockingChannel {
            handle,
            max_frame,
            read_timeout: std::sync::Mutex::new(None),
        }
    }

    /// A second handle on the same pipe end (it must not read).
    pub(crate) fn try_clone_handle(&self) -> io::Result<OwnedHandle> {
        self.handle.try_clone()
    }

    /// The handle's value (for tests that play a misbehaving child).
    pub(crate) fn number(&self) -> i32 {
        // Handle values are small; only tests read this.
        i32::try_from(self.handle.as_raw() as usize).unwrap_or(-1)
    }

    /// Sets how long a read may wait (`None`: for ever).
    pub(crate) fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        *self
            .read_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timeout;
        Ok(())
    }

    /// Sends one message, blocking.
    pub(crate) fn send<T: Serialize + ?Sized>(&self, msg: &T) -> Result<(), ChannelError> {
        send_on(&self.handle, msg, self.max_frame)
    }
}

/// [`send_message`] on a stream socket given by its handle.
///
/// # Errors
///
/// As [`send_message`].
pub(crate) fn send_on<T: Serialize + ?Sized>(
    sock: &OwnedHandle,
    msg: &T,
    max_frame: usize,
) -> Result<(), ChannelError> {
    let mut frame = BytesMut::new();
    encode_message(msg, &mut frame, max_frame)?;
    let mut rest = &frame[..];
    while !rest.is_empty() {
        match sys::stream::send(sock, rest, true) {
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Encodes `msg` as one frame (at most `max_frame` bytes of body) and
/// writes it whole, then flushes.
///
/// # Errors
///
/// [`ChannelError::Encode`] or [`ChannelError::Oversized`] before anything
/// is written; [`ChannelError::Io`] if writing fails.
#[cfg(unix)]
pub(crate) fn send_message<T: Serialize + ?Sized>(
    mut to: impl Write,
    msg: &T,
    max_frame: usize,
) -> Result<(), ChannelError> {
    let mut frame = BytesMut::new();
    encode_message(msg, &mut frame, max_frame)?;
    to.write_all(&frame)?;
    to.flush()?;
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use std::collections::VecDeque;

    use serde::{Deserialize, Serializer};

    use super::*;
    use crate::wire::frame::DEFAULT_MAX_FRAME;

    /// A whole frame around `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
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

    impl Write for &mut Scripted {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    /// A value whose serialization always fails.
    struct Unencodable;

    impl Serialize for Unencodable {
        fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("this value refuses to encode"))
        }
    }

    #[test]
    fn reads_scripted_chunks_with_interruptions() {
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
        let mut src = Plain(Scripted::new(chunks));
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert_eq!(reader.recv::<String>(&mut src).unwrap(), "one");
        assert!(reader.next(&mut src).unwrap().is_empty());
        assert_eq!(
            reader.recv::<(u8, String)>(&mut src).unwrap(),
            (2, "two".into())
        );
        assert!(matches!(reader.next(&mut src), Err(ChannelError::Closed)));
    }

    #[test]
    fn several_frames_in_one_chunk() {
        let mut bytes = Vec::new();
        for i in 0..5u32 {
            bytes.extend(frame(&rmp_serde::to_vec(&i).unwrap()));
        }
        let mut src = Plain(Scripted::of(&[&bytes]));
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        for i in 0..5u32 {
            assert_eq!(reader.recv::<u32>(&mut src).unwrap(), i);
        }
        assert!(matches!(
            reader.recv::<u32>(&mut src),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn a_clean_end_is_closed() {
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert!(matches!(
            reader.next(Plain(Scripted::of(&[]))),
            Err(ChannelError::Closed)
        ));
    }

    #[test]
    fn a_truncated_header_or_body_is_truncated() {
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert!(matches!(
            reader.next(Plain(Scripted::of(&[&[0], &[0, 0]]))),
            Err(ChannelError::Truncated {
                expected: 4,
                received: 3
            })
        ));

        let bytes = frame(b"twenty bytes of body");
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert!(matches!(
            reader.next(Plain(Scripted::of(&[&bytes[..5], &bytes[5..9]]))),
            Err(ChannelError::Truncated {
                expected: 24,
                received: 9
            })
        ));
    }

    #[test]
    fn a_read_error_is_io() {
        let script = Scripted::new([
            Ok(vec![0, 0, 0, 3, b'a']),
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone")),
        ]);
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        match reader.next(Plain(script)) {
            Err(ChannelError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("expected an i/o error, got {other:?}"),
        }
    }

    #[test]
    fn an_oversized_claim_fails_and_the_buffer_stays_bounded() {
        let mut reader = FrameReader::new(1024);
        assert!(matches!(
            reader.next(Plain(Scripted::of(&[&[0, 0, 4, 1], b"body"]))),
            Err(ChannelError::Oversized {
                len: 1025,
                max: 1024
            })
        ));

        let claim = u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap().to_be_bytes();
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        assert!(matches!(
            reader.next(Plain(Scripted::of(&[&claim, &[0xAB; 10]]))),
            Err(ChannelError::Truncated { expected, received: 14 }) if expected == DEFAULT_MAX_FRAME + 3
        ));
        assert!(reader.buffered_capacity() < 1024 * 1024);
    }

    #[test]
    fn send_writes_whole_frames_or_nothing() {
        let mut out = Scripted::default();
        send_message(&mut out, &("hi", 7u8), DEFAULT_MAX_FRAME).unwrap();
        send_message(&mut out, &"raw", DEFAULT_MAX_FRAME).unwrap();
        let mut want = frame(&rmp_serde::to_vec(&("hi", 7u8)).unwrap());
        want.extend(frame(&rmp_serde::to_vec(&"raw").unwrap()));
        assert_eq!(out.written, want);
        assert_eq!(out.flushes, 2);

        // Nothing is written when encoding fails or the frame is too big.
        out.written.clear();
        assert!(matches!(
            send_message(&mut out, &Unencodable, DEFAULT_MAX_FRAME),
            Err(ChannelError::Encode(_))
        ));
        assert!(matches!(
            send_message(&mut out, &"too long", 4),
            Err(ChannelError::Oversized { max: 4, .. })
        ));
        assert!(out.written.is_empty());
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Job {
        id: u64,
        name: String,
        args: Vec<i32>,
    }

    #[test]
    fn round_trip_over_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let child = std::thread::spawn(move || {
            let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
            while let Ok(job) = reader.recv::<Job>(&b) {
                send_message(&b, &(job.id, job.args.len()), DEFAULT_MAX_FRAME).unwrap();
            }
        });
        let mut reader = FrameReader::new(DEFAULT_MAX_FRAME);
        for id in 0..50u64 {
            let job = Job {
                id,
                name: format!("job {id}"),
                args: (0..i32::try_from(id).unwrap() * 100).collect(),
            };
            send_message(&a, &job, DEFAULT_MAX_FRAME).unwrap();
            let (got_id, n): (u64, usize) = reader.recv(&a).unwrap();
            assert_eq!((got_id, n), (id, usize::try_from(id).unwrap() * 100));
        }
        drop(a);
        child.join().unwrap();
    }
}
