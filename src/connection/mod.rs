//! Pipes between processes: [`Pipe`], [`Connection`], [`Sender`] and
//! [`Receiver`].
//!
//! A pipe is a connected pair of ends that carry typed messages, each end
//! a Unix socket. Pass an end to a child inside its target's arguments
//! and the two processes talk directly, without going through anyone
//! else. [`Pipe::new`] gives two [`Connection`]s that both send and
//! receive; [`Pipe::oneway`] gives a [`Receiver`] and a [`Sender`], in the
//! order of Python's `Pipe(duplex=False)`.
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! // Runs in the child: doubles every number until the parent hangs up.
//! fn doubler(mut conn: mp::Connection<u64>) {
//!     while let Ok(n) = conn.blocking_recv() {
//!         conn.blocking_send(&(n * 2)).unwrap();
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     let _guard = mp::init();
//!     let (mut here, there) = mp::Pipe::new::<u64>()?;
//!     let child = mp::Process::new(doubler, there); // `there` moves to the child
//!     child.start().await?;
//!     here.send(&21).await?;
//!     assert_eq!(here.recv().await?, 42);
//!     here.close(); // the child's recv now fails with Closed, and it returns
//!     child.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! The rules (framing, coalesced writes, what a closed end does, and the
//! caveats) are on [`Pipe`]; `docs/channels.md` tells how it is built.
//!
//! Processes that did not start each other, on this machine or another,
//! meet through a [`Listener`] and a [`Client`], which speak the protocol
//! of Python's `multiprocessing.connection`, authkey handshake included.

mod auth;
mod chan;
mod net;

pub use auth::AuthenticationError;
pub use net::{
    Address, Client, ClientBuilder, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_HANDSHAKES, Listener,
    ListenerBuilder, NetError,
};
/// The TLS library of [`ListenerBuilder::tls`] and [`ClientBuilder::tls`],
/// re-exported so that their configurations are built with the version
/// this crate uses.
pub use tokio_rustls::rustls;

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::result::Result;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::ser::{Error as _, SerializeTuple};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sentinel::{Waitable, private::Sealed};
use crate::sys::OwnedHandle;
use crate::wire::ChannelError;
use crate::wire::frame::DEFAULT_MAX_FRAME;
pub(crate) use chan::flush_orphans;
use chan::{Chan, closed_here};

/// Creates pipes: connected pairs of ends that carry messages of type `T`
/// between processes.
///
/// Python's `multiprocessing.Pipe`. It has no values; use its associated
/// functions.
///
/// # Messages
///
/// A message is any `Serialize + DeserializeOwned` value, sent as one
/// length-prefixed MessagePack frame: boundaries are kept, and an empty
/// message (`()`, an empty `Vec`) is a message like any other. Both ends
/// refuse messages over a maximum size, 128 MiB unless
/// [`PipeBuilder::max_message`] says otherwise. A message that does not
/// decode as the receiver's `T` is reported by that `recv` as
/// [`ChannelError::Malformed`], and the next `recv` goes on with the next
/// message. For bulk bytes use `serde_bytes::ByteBuf` rather than
/// `Vec<u8>`, which MessagePack would encode byte by byte.
///
/// # Writes are coalesced
///
/// An async [`send`](Connection::send) puts the encoded message in the
/// end's send queue and returns; a task on the current runtime writes out
/// everything queued in one system call once the sending task yields, and
/// a backlog of 256 KiB makes `send` wait for the socket. A loop of small
/// sends thus costs one write per burst, not one per message. A send
/// right after a receive on the same end (a reply, or the next request)
/// is written at once instead, so a request-reply exchange pays no
/// delay. `recv`, `poll`, [`flush`](Connection::flush), `close` and
/// dropping the end write out the queue first. The `blocking_*` forms,
/// for synchronous code (a child's target runs without a runtime unless it
/// is `async`), write directly.
///
/// # Ends that closed
///
/// Once every copy of the other end is closed, in every process (dropped,
/// or [`close`](Connection::close)d), `recv` returns the messages that had
/// arrived and then [`ChannelError::Closed`], every time. A `send` to such
/// an end fails with `Closed` too, though the operating system may report
/// it only on the next send after the one that met the closed end. No
/// send ever raises `SIGPIPE`.
///
/// # Examples
///
/// A child that answers on a duplex pipe (seed 001 runs a one-way version
/// in `examples/pipe_throughput.rs`):
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn doubler(mut conn: mp::Connection<u64>) {
///     while let Ok(n) = conn.blocking_recv() {
///         conn.blocking_send(&(n * 2)).unwrap();
///     }
/// }
///
/// # async fn demo() -> mp::Result<()> {
/// let (mut here, there) = mp::Pipe::new::<u64>()?;
/// let child = mp::Process::new(doubler, there);
/// child.start().await?;
/// here.send(&21).await?;
/// assert_eq!(here.recv().await?, 42);
/// here.close();
/// child.join().await?;
/// # Ok(()) }
/// ```
///
/// # Caveats
///
/// Dropping an end with messages still queued writes them out before the
/// descriptor closes: what the socket takes at once, the rest in the
/// background if a runtime is running, otherwise by blocking the thread
/// until the peer has taken them or is gone (as Python's blocking `send`
/// would). The [`InitGuard`](crate::InitGuard)'s exit rule writes out what
/// is still queued before it joins the children.
///
/// An end belongs to one reader at a time. Two processes that both read
/// from copies of the same end split its bytes between them and break the
/// frames, as in Python.
///
/// The async methods must run within a Tokio runtime; an end registers
/// its socket with the runtime that first waits on it (and with any other
/// runtime that does later).
#[derive(Debug)]
pub enum Pipe {}

impl Pipe {
    /// A duplex pipe: two connected [`Connection`]s, each of which sends
    /// to the other and receives from it.
    ///
    /// Python's `Pipe()`. Either end may go to a child process inside its
    /// target's arguments.
    ///
    /// ```
    /// # use tokio_multiprocessing as mp;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> mp::Result<()> {
    /// let (mut a, mut b) = mp::Pipe::new::<String>()?;
    /// a.send(&"ping".to_owned()).await?;
    /// assert_eq!(b.recv().await?, "ping");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a socket pair (out of
    /// descriptors, say).
    #[doc(alias = "Pipe")]
    #[allow(clippy::new_ret_no_self)] // `Pipe` has no values; it makes pairs
    pub fn new<T>() -> std::io::Result<(Connection<T>, Connection<T>)> {
        PipeBuilder::default().duplex()
    }

    /// A one-way pipe: a [`Receiver`] and the [`Sender`] that sends to it,
    /// in that order, as Python's `Pipe(duplex=False)` returns them.
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a socket pair.
    #[doc(alias = "Pipe(duplex=False)")]
    pub fn oneway<T>() -> std::io::Result<(Receiver<T>, Sender<T>)> {
        PipeBuilder::default().oneway()
    }

    /// A builder, to set the largest message the pipe carries.
    pub fn builder() -> PipeBuilder {
        PipeBuilder::default()
    }
}

/// Configures a pipe before it is created.
///
/// ```
/// # use tokio_multiprocessing as mp;
/// # fn main() -> mp::Result<()> {
/// let (rx, tx) = mp::Pipe::builder().max_message(1024).oneway::<Vec<u32>>()?;
/// assert_eq!(tx.max_message(), 1024);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct PipeBuilder {
    max_message: usize,
    spin: Duration,
}

impl Default for PipeBuilder {
    fn default() -> Self {
        PipeBuilder {
            max_message: DEFAULT_MAX_FRAME,
            spin: Duration::ZERO,
        }
    }
}

impl PipeBuilder {
    /// The largest encoded message either end sends or accepts, in bytes
    /// (default 128 MiB, at most `u32::MAX`). A larger message is refused
    /// by `send` with [`ChannelError::Oversized`] before anything is
    /// written; the end stays usable.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// How long a receive that comes right after a send on the same end
    /// (a request awaiting its reply, an echo awaiting the next request)
    /// watches the socket before it parks; default zero, never.
    ///
    /// Parking costs a wake-up when the message comes, which is most of a
    /// round trip between processes on a machine whose idle CPUs sleep
    /// deeply: about 25 us each way where `pipe_rtt` measures 50 us. A
    /// reply that comes while the receiver watches costs a read instead.
    /// The price is CPU: the receiving thread (a runtime worker, for
    /// `recv`) reads the socket in a loop for up to `d` whenever the reply
    /// is slower than that, and nothing else runs on that thread
    /// meanwhile. Worth it for request/reply traffic whose replies come
    /// within a few tens of microseconds; pick `d` around the reply time.
    /// Both ends of the pipe watch, wherever they travel: the setting
    /// goes with an end sent to another process.
    ///
    /// Cancel safety is unchanged: the watch reads only into the end's own
    /// buffer.
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = d;
        self
    }

    /// Creates a duplex pipe; see [`Pipe::new`].
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a socket pair.
    pub fn duplex<T>(&self) -> std::io::Result<(Connection<T>, Connection<T>)> {
        let (a, b) = Chan::pair_spinning(self.max_message, self.spin)?;
        Ok((Connection::from_chan(a), Connection::from_chan(b)))
    }

    /// Creates a one-way pipe; see [`Pipe::oneway`].
    ///
    /// # Errors
    ///
    /// If the operating system cannot create a socket pair.
    pub fn oneway<T>(&self) -> std::io::Result<(Receiver<T>, Sender<T>)> {
        let (a, b) = Chan::pair_spinning(self.max_message, self.spin)?;
        Ok((
            Receiver {
                end: End::new(a),
                _msg: PhantomData,
            },
            Sender {
                end: End::new(b),
                _msg: PhantomData,
            },
        ))
    }
}

/// An open or closed end; what the three public types share.
struct End {
    chan: Option<Chan>,
    max: usize,
}

impl End {
    fn new(chan: Chan) -> Self {
        End {
            max: chan.max(),
            chan: Some(chan),
        }
    }

    fn open(&self) -> Result<&Chan, ChannelError> {
        self.chan.as_ref().ok_or_else(closed_here)
    }

    fn open_mut(&mut self) -> Result<&mut Chan, ChannelError> {
        self.chan.as_mut().ok_or_else(closed_here)
    }

    async fn poll(&mut self, timeout: Duration) -> bool {
        match &mut self.chan {
            Some(chan) => chan.poll(timeout).await,
            None => true,
        }
    }

    fn blocking_poll(&mut self, timeout: Duration) -> bool {
        match &mut self.chan {
            Some(chan) => chan.blocking_poll(timeout),
            None => true,
        }
    }

    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(chan) = &self.chan {
                chan.readable().await;
            }
        })
    }

    #[cfg(unix)]
    fn into_handle(mut self) -> Result<OwnedHandle, ChannelError> {
        let chan = self.chan.take().ok_or_else(closed_here)?;
        if chan.holds_unread() {
            return Err(ChannelError::Io(std::io::Error::other(
                "this end holds received bytes that no recv has taken; they would be lost",
            )));
        }
        chan.blocking_flush()?;
        Ok(chan.fd().try_clone()?)
    }

    fn fmt(&self, name: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(name)
            .field("socket", &self.chan.as_ref().map(|c| c.fd()))
            .field("max_message", &self.max)
            .finish()
    }
}

impl Serialize for End {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let Some(chan) = &self.chan else {
            return Err(S::Error::custom("a closed end of a pipe cannot be sent"));
        };
        if chan.holds_unread() {
            return Err(S::Error::custom(
                "this end of a pipe holds received bytes that no recv has taken; \
                 receive them before sending the end to another process",
            ));
        }
        let mut t = serializer.serialize_tuple(3)?;
        t.serialize_element(&FdRef(chan.fd()))?;
        t.serialize_element(&(self.max as u64))?;
        t.serialize_element(&u64::try_from(chan.spin().as_nanos()).unwrap_or(u64::MAX))?;
        t.end()
    }
}

/// Serializes a borrowed descriptor out of band (see `crate::transport::handle`).
struct FdRef<'a>(&'a OwnedHandle);

impl Serialize for FdRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        crate::transport::handle::fd::serialize(self.0, serializer)
    }
}

/// An end as it travels: its descriptor (out of band), its limit, and
/// its spin time in nanoseconds.
#[derive(Deserialize)]
struct EndWire(
    #[serde(with = "crate::transport::handle::fd")] OwnedHandle,
    u64,
    u64,
);

impl<'de> Deserialize<'de> for End {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let EndWire(fd, max, spin) = EndWire::deserialize(deserializer)?;
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        let spin = Duration::from_nanos(spin);
        Ok(End::new(Chan::from_fd_spinning(fd, max, spin)))
    }
}

/// One end of a duplex pipe: it sends messages of type `T` to the other
/// end and receives theirs.
///
/// Python's `multiprocessing.connection.Connection`. Made by [`Pipe::new`].
/// It is `Send` and `Sync` (senders on several tasks share it by
/// reference; receiving needs `&mut`), it serializes into a child's
/// arguments (the socket travels by `SCM_RIGHTS`, and the copy moved into
/// the arguments closes here), and it can be waited on with
/// [`wait`](crate::wait): it is ready when a message or the end of the
/// stream is there to be received, and stays ready until a `recv` takes it.
///
/// See [`Pipe`] for how messages are framed and written.
pub struct Connection<T> {
    end: End,
    _msg: PhantomData<fn(T) -> T>,
}

impl<T> Connection<T> {
    fn from_chan(chan: Chan) -> Self {
        Connection {
            end: End::new(chan),
            _msg: PhantomData,
        }
    }

    /// Closes this end. Queued messages are still written out (see the
    /// module's caveats). Once every copy of it is closed, the other end's
    /// `recv` returns [`ChannelError::Closed`] after the messages that
    /// arrived. Closing twice does nothing; any other use afterwards fails
    /// with an [`io::ErrorKind::NotConnected`](std::io::ErrorKind) error.
    pub fn close(&mut self) {
        self.end.chan = None;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.end.chan.is_none()
    }

    /// The largest encoded message this end sends or accepts, in bytes.
    pub fn max_message(&self) -> usize {
        self.end.max
    }

    /// Writes out the queued messages, then gives the socket up (see
    /// `crate::unix::PipeEndExt`).
    #[cfg(unix)]
    pub(crate) fn into_handle(self) -> Result<OwnedHandle, ChannelError> {
        self.end.into_handle()
    }

    /// The socket, to wait on outside the runtime; `None` once closed.
    pub(crate) fn handle(&self) -> Option<&OwnedHandle> {
        self.end.chan.as_ref().map(Chan::fd)
    }
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends a message to the other end.
    ///
    /// The message is encoded into this end's send queue, whole, before
    /// the first `.await` returns; it is written out with whatever else
    /// is queued (see the module docs). Only when 256 KiB wait does
    /// `send` wait for the socket to take some.
    ///
    /// The message may hold handles (a Pipe end, a `Queue`, a `Lock`, ...):
    /// their descriptors travel with its bytes by `SCM_RIGHTS`, and the
    /// receiver's handles work at once, as in Python (see
    /// `docs/channels.md`, "Handles inside messages").
    ///
    /// # Errors
    ///
    /// [`ChannelError::Oversized`] or [`ChannelError::Encode`] if the
    /// message is too big or fails to encode (or holds more than 253
    /// handles): nothing is queued and the end stays usable. [`ChannelError::Closed`] once a write found the
    /// other end closed (this message, or an earlier one that was queued,
    /// may be the one that met it), and on every send after that.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that matters: once polled, the message is
    /// queued whole and will be written even if the future is then
    /// dropped (while it waits for room); a future dropped before its
    /// first poll sends nothing. A message is never sent in part.
    pub async fn send(&self, msg: &T) -> Result<(), ChannelError> {
        self.end.open()?.send(msg).await
    }

    /// Queues a message to be written by the next [`flush`](Self::flush),
    /// for a batch sent with one system call.
    pub(crate) fn feed(&self, msg: &T) -> Result<(), ChannelError> {
        self.end.open()?.feed(msg)
    }

    /// Sends a message from synchronous code, writing it (and anything
    /// queued before it) before returning.
    ///
    /// For code without a runtime, such as a child's synchronous target.
    /// It blocks the thread until the socket has taken the bytes, so do
    /// not call it from async code.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn blocking_send(&self, msg: &T) -> Result<(), ChannelError> {
        self.end.open()?.blocking_send(msg)
    }

    /// Waits until every queued message has been written to the socket.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Closed`] if the other end is closed; other write
    /// errors as [`ChannelError::Io`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves the rest of the queue to
    /// be written in the background.
    pub async fn flush(&self) -> Result<(), ChannelError> {
        self.end.open()?.flush().await
    }

    /// Receives the next message, waiting for it.
    ///
    /// # Errors
    ///
    /// [`ChannelError::Closed`], every time, once every copy of the other
    /// end is closed and the messages that arrived have been received;
    /// [`ChannelError::Truncated`] if the stream ended in the middle of a
    /// message; [`ChannelError::Malformed`] for a message that does not
    /// decode as a `T` (it is skipped; the next `recv` goes on);
    /// [`ChannelError::Oversized`] for a message over the limit (the
    /// stream cannot go on past it).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: bytes that arrived stay with the end, so a `recv`
    /// dropped in a `select!` loses no message.
    pub async fn recv(&mut self) -> Result<T, ChannelError> {
        self.end.open_mut()?.recv().await
    }

    /// Starts writing what is queued without waiting for the socket to
    /// take it all: a background task writes the rest.
    pub(crate) fn flush_soon(&self) {
        if let Ok(end) = self.end.open() {
            end.flush_soon();
        }
    }

    /// A whole message already read from the socket, without a system
    /// call.
    pub(crate) fn take_buffered(&mut self) -> Result<Option<T>, ChannelError> {
        self.end.open_mut()?.take_buffered()
    }

    /// Receives a message if a whole one has arrived, without waiting.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<Option<T>, ChannelError> {
        self.end.open_mut()?.try_recv()
    }

    /// Receives the next message from synchronous code, blocking the
    /// thread until it arrives. Do not call it from async code.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub fn blocking_recv(&mut self) -> Result<T, ChannelError> {
        self.end.open_mut()?.blocking_recv()
    }

    /// Whether there is something to receive: waits up to `timeout` for a
    /// message or the end of the stream. Returns at once when one is
    /// already there, and `false` after about `timeout` when none came.
    /// Python's `poll(timeout)`; `Duration::ZERO` only checks.
    ///
    /// Readable bytes count, even the start of a message whose rest has
    /// not arrived yet. A closed end counts as ready (its `recv` returns
    /// at once, with an error).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: polling consumes nothing.
    pub async fn poll(&mut self, timeout: Duration) -> bool {
        self.end.poll(timeout).await
    }

    /// [`poll`](Self::poll) for synchronous code: blocks the thread up to
    /// `timeout`.
    pub fn blocking_poll(&mut self, timeout: Duration) -> bool {
        self.end.blocking_poll(timeout)
    }
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.end.fmt("Connection", f)
    }
}

impl<T> Serialize for Connection<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.end.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(Connection {
            end: End::deserialize(deserializer)?,
            _msg: PhantomData,
        })
    }
}

impl<T> Sealed for Connection<T> {}

impl<T> Waitable for Connection<T> {
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.end.ready()
    }
}

/// The sending end of a one-way pipe, made by [`Pipe::oneway`].
///
/// It has the sending half of [`Connection`]'s methods, with the same
/// semantics, and like it is `Send`, `Sync` and serializable into a
/// child's arguments.
pub struct Sender<T> {
    end: End,
    _msg: PhantomData<fn(T) -> T>,
}

impl<T> Sender<T> {
    /// Closes this end; see [`Connection::close`].
    pub fn close(&mut self) {
        self.end.chan = None;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.end.chan.is_none()
    }

    /// The largest encoded message this end sends, in bytes.
    pub fn max_message(&self) -> usize {
        self.end.max
    }

    /// Writes out the queued messages, then gives the socket up (see
    /// `crate::unix::PipeEndExt`).
    #[cfg(unix)]
    pub(crate) fn into_handle(self) -> Result<OwnedHandle, ChannelError> {
        self.end.into_handle()
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends a message; see [`Connection::send`].
    ///
    /// # Errors
    ///
    /// As [`Connection::send`].
    ///
    /// # Cancel safety
    ///
    /// As [`Connection::send`]: once polled, the message is queued whole
    /// and will be written even if the future is dropped.
    pub async fn send(&self, msg: &T) -> Result<(), ChannelError> {
        self.end.open()?.send(msg).await
    }

    /// Sends a message from synchronous code; see
    /// [`Connection::blocking_send`].
    ///
    /// # Errors
    ///
    /// As [`Connection::send`].
    pub fn blocking_send(&self, msg: &T) -> Result<(), ChannelError> {
        self.end.open()?.blocking_send(msg)
    }

    /// Waits until every queued message has been written; see
    /// [`Connection::flush`].
    ///
    /// # Errors
    ///
    /// As [`Connection::flush`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the rest is written in the background.
    pub async fn flush(&self) -> Result<(), ChannelError> {
        self.end.open()?.flush().await
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.end.fmt("Sender", f)
    }
}

impl<T> Serialize for Sender<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.end.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Sender<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(Sender {
            end: End::deserialize(deserializer)?,
            _msg: PhantomData,
        })
    }
}

/// The receiving end of a one-way pipe, made by [`Pipe::oneway`].
///
/// It has the receiving half of [`Connection`]'s methods, with the same
/// semantics; like it, it is `Send`, `Sync`, serializable into a child's
/// arguments, and [`Waitable`].
pub struct Receiver<T> {
    end: End,
    _msg: PhantomData<fn(T) -> T>,
}

impl<T> Receiver<T> {
    /// Closes this end; see [`Connection::close`]. A sender that writes
    /// afterwards gets [`ChannelError::Closed`].
    pub fn close(&mut self) {
        self.end.chan = None;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.end.chan.is_none()
    }

    /// The largest encoded message this end accepts, in bytes.
    pub fn max_message(&self) -> usize {
        self.end.max
    }

    /// Writes out the queued messages, then gives the socket up (see
    /// `crate::unix::PipeEndExt`).
    #[cfg(unix)]
    pub(crate) fn into_handle(self) -> Result<OwnedHandle, ChannelError> {
        self.end.into_handle()
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Receives the next message; see [`Connection::recv`].
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`]: [`ChannelError::Closed`], every time, once
    /// every sender is closed and the messages that arrived are taken.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: no message is lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<T, ChannelError> {
        self.end.open_mut()?.recv().await
    }

    /// Receives a message if a whole one has arrived, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`].
    pub fn try_recv(&mut self) -> Result<Option<T>, ChannelError> {
        self.end.open_mut()?.try_recv()
    }

    /// Receives the next message from synchronous code; see
    /// [`Connection::blocking_recv`].
    ///
    /// # Errors
    ///
    /// As [`Connection::recv`].
    pub fn blocking_recv(&mut self) -> Result<T, ChannelError> {
        self.end.open_mut()?.blocking_recv()
    }

    /// Whether there is something to receive, waiting up to `timeout`;
    /// see [`Connection::poll`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: polling consumes nothing.
    pub async fn poll(&mut self, timeout: Duration) -> bool {
        self.end.poll(timeout).await
    }

    /// [`poll`](Self::poll) for synchronous code.
    pub fn blocking_poll(&mut self, timeout: Duration) -> bool {
        self.end.blocking_poll(timeout)
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.end.fmt("Receiver", f)
    }
}

impl<T> Serialize for Receiver<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.end.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Receiver<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        Ok(Receiver {
            end: End::deserialize(deserializer)?,
            _msg: PhantomData,
        })
    }
}

impl<T> Sealed for Receiver<T> {}

impl<T> Waitable for Receiver<T> {
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.end.ready()
    }
}
