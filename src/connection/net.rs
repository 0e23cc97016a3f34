//! [`Listener`] and [`Client`]: pipe ends between processes that did not
//! start each other, over TCP or a Unix socket path. Python's
//! `multiprocessing.connection.Listener` and `Client`.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::auth::{self, AuthenticationError, HandshakeError};
use super::{Connection, chan::Chan};
use crate::transport::net::{Bound, NetListener, NetStream, Where, looks_like_path, relay};
use crate::wire::ChannelError;
use crate::wire::frame::DEFAULT_MAX_FRAME;

/// How long a peer has to finish the handshake, unless set otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes a listener runs at once, unless set otherwise: peers past
/// this wait to be accepted until one ends.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;

/// Where a [`Listener`] listens and a [`Client`] connects: a TCP address
/// or a Unix socket path (on Windows, a named pipe).
///
/// From a string: an IP address and port (`"127.0.0.1:6000"`,
/// `"[::1]:6000"`) or a host name and port (`"localhost:6000"`) is TCP;
/// anything else (`"/tmp/app.sock"`, `"app.sock"`) is a path. Use
/// [`Address::Unix`] (or a `Path`) for a path that looks like `host:port`.
///
/// On Windows the local address is a named pipe, `\\.\pipe\NAME`, as
/// in Python's `multiprocessing.connection` there (its `AF_PIPE`); it is
/// an [`Address::Unix`] path. Each instance of the pipe admits only the
/// current user and refuses remote clients; a listener fails to bind a
/// name another listener has.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP address, `host:port`; port 0 in a listener's address lets
    /// the system pick one ([`Listener::address`] then tells it).
    Inet(String),
    /// A Unix socket at this path. A listener creates it and removes it
    /// when it closes. On Windows, a named pipe (`\\.\pipe\NAME`).
    Unix(PathBuf),
}

impl Address {
    fn to_where(&self) -> Where {
        match self {
            Address::Inet(a) => Where::Inet(a.clone()),
            Address::Unix(p) => Where::Unix(p.clone()),
        }
    }
}

impl From<&str> for Address {
    fn from(s: &str) -> Address {
        if looks_like_path(s) {
            Address::Unix(PathBuf::from(s))
        } else {
            Address::Inet(s.to_owned())
        }
    }
}

impl From<String> for Address {
    fn from(s: String) -> Address {
        Address::from(s.as_str())
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Address {
        Address::Inet(a.to_string())
    }
}

impl From<&Path> for Address {
    fn from(p: &Path) -> Address {
        Address::Unix(p.to_owned())
    }
}

impl From<PathBuf> for Address {
    fn from(p: PathBuf) -> Address {
        Address::Unix(p)
    }
}

impl From<&Address> for Address {
    fn from(a: &Address) -> Address {
        a.clone()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Inet(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why a [`Listener`] could not bind or accept, or a [`Client`] could not
/// connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The operating system refused: nothing listens there, the address
    /// is in use, the path exists, ...
    #[error("{address}: {source}")]
    Io {
        /// The address.
        address: Address,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The peer did not prove the authkey, or rejected ours.
    #[error(transparent)]
    Authentication(#[from] AuthenticationError),
    /// The stream broke during the handshake, or the peer sent a frame
    /// the handshake does not allow (more than 256 bytes, as CPython).
    #[error("handshake with {address}: {source}")]
    Handshake {
        /// The address.
        address: Address,
        /// What broke.
        #[source]
        source: ChannelError,
    },
    /// The TLS handshake failed: the peer's certificate was not trusted,
    /// its name did not match, the peer spoke no TLS, ...
    #[error("TLS with {address}: {source}")]
    Tls {
        /// The address.
        address: Address,
        /// What rustls said.
        #[source]
        source: io::Error,
    },
    /// The peer did not finish the handshake within the deadline.
    #[error("handshake with {address} took longer than {after:?}")]
    HandshakeTimeout {
        /// The address.
        address: Address,
        /// The deadline.
        after: Duration,
    },
    /// A listener would take plaintext from other machines.
    #[error(
        "{address} is reachable from other machines, and a listener there takes only TLS \
         connections: give it `.tls(server_config)`, bind a loopback address or a Unix \
         path, or say `.insecure_plaintext()` to accept anyone who can reach the port in \
         the clear"
    )]
    Plaintext {
        /// The address.
        address: Address,
    },
}

impl NetError {
    fn tls(address: &Address) -> impl FnOnce(io::Error) -> NetError + '_ {
        move |source| NetError::Tls {
            address: address.clone(),
            source,
        }
    }

    fn io(address: &Address) -> impl FnOnce(io::Error) -> NetError + '_ {
        move |source| NetError::Io {
            address: address.clone(),
            source,
        }
    }

    fn from_handshake(address: &Address, e: HandshakeError) -> NetError {
        match e {
            HandshakeError::Auth(e) => NetError::Authentication(e),
            HandshakeError::Channel(source) => NetError::Handshake {
                address: address.clone(),
                source,
            },
        }
    }
}

/// How a stream is secured before the authkey handshake.
#[derive(Clone)]
enum Secure {
    Plain,
    /// A listener's side of TLS.
    Server(TlsAcceptor),
    /// A client's side of TLS, with the name the server's certificate
    /// must carry (`None`: the host of the address).
    Client(TlsConnector, Option<ServerName<'static>>),
}

/// What both ends of a connection agree on before it carries messages.
#[derive(Clone)]
struct Terms {
    authkey: Option<Vec<u8>>,
    handshake_timeout: Duration,
    max_message: usize,
    secure: Secure,
}

impl fmt::Debug for Terms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key itself is never printed.
        f.debug_struct("Terms")
            .field("authkey", &self.authkey.as_ref().map(|_| "<set>"))
            .field("handshake_timeout", &self.handshake_timeout)
            .field("max_message", &self.max_message)
            .field(
                "tls",
                &match self.secure {
                    Secure::Plain => "no",
                    Secure::Server(_) | Secure::Client(..) => "yes",
                },
            )
            .finish()
    }
}

impl Default for Terms {
    fn default() -> Self {
        Terms {
            authkey: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_message: DEFAULT_MAX_FRAME,
            secure: Secure::Plain,
        }
    }
}

/// Which side of the handshake this end takes.
#[derive(Clone, Copy)]
enum Side {
    /// Delivers its challenge first, as Python's `Listener.accept`.
    Listener,
    /// Answers first, as Python's `Client`.
    Client,
}

/// A stream past its handshakes: the socket itself, or a TLS session
/// over it.
enum Link {
    Plain(NetStream),
    Tls(Box<TlsStream<NetStream>>),
}

/// The name a server's certificate must carry: the one given, or the host
/// of a TCP address.
fn server_name(
    given: Option<&ServerName<'static>>,
    address: &Address,
) -> io::Result<ServerName<'static>> {
    if let Some(name) = given {
        return Ok(name.clone());
    }
    let Address::Inet(a) = address else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TLS over a Unix path needs the server's name (`tls_server_name`)",
        ));
    };
    let host = a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Proves the key to the peer and has it prove it, in `side`'s order.
async fn authenticate<S>(s: &mut S, key: &[u8], side: Side) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match side {
        Side::Listener => {
            auth::deliver_challenge(s, key).await?;
            auth::answer_challenge(s, key).await
        }
        Side::Client => {
            auth::answer_challenge(s, key).await?;
            auth::deliver_challenge(s, key).await
        }
    }
}

/// Runs the handshakes on `stream` within the deadline: TLS if the terms
/// have it, then the authkey's if there is a key.
async fn handshake(
    stream: NetStream,
    terms: &Terms,
    side: Side,
    address: &Address,
) -> Result<Link, NetError> {
    let run = async {
        let mut link = match &terms.secure {
            Secure::Plain => Link::Plain(stream),
            Secure::Server(acceptor) => Link::Tls(Box::new(
                acceptor
                    .accept(stream)
                    .await
                    .map_err(NetError::tls(address))?
                    .into(),
            )),
            Secure::Client(connector, name) => {
                let name = server_name(name.as_ref(), address).map_err(NetError::tls(address))?;
                Link::Tls(Box::new(
                    connector
                        .connect(name, stream)
                        .await
                        .map_err(NetError::tls(address))?
                        .into(),
                ))
            }
        };
        if let Some(key) = terms.authkey.as_deref() {
            let proved = match &mut link {
                Link::Plain(s) => authenticate(s, key, side).await,
                Link::Tls(s) => authenticate(s.as_mut(), key, side).await,
            };
            proved.map_err(|e| NetError::from_handshake(address, e))?;
        }
        Ok(link)
    };
    match tokio::time::timeout(terms.handshake_timeout, run).await {
        Ok(done) => done,
        Err(_) => Err(NetError::HandshakeTimeout {
            address: address.clone(),
            after: terms.handshake_timeout,
        }),
    }
}

/// A pipe end around a stream whose handshakes are done: the socket
/// itself, or, for TLS, one end of a socket pair that a task relays to
/// the session.
fn into_connection<T>(
    link: Link,
    terms: &Terms,
    address: &Address,
) -> Result<Connection<T>, NetError> {
    let handle = match link {
        Link::Plain(stream) => stream.into_handle(),
        Link::Tls(session) => relay(*session),
    }
    .map_err(NetError::io(address))?;
    Ok(Connection::from_chan(Chan::from_fd(
        handle,
        terms.max_message,
    )))
}

type Pending = Pin<Box<dyn Future<Output = Result<Link, NetError>> + Send>>;

/// Listens for [`Client`]s (Python's or this crate's) on a TCP address or
/// a Unix socket path. Python's `multiprocessing.connection.Listener`.
///
/// With an authkey, every peer must prove it knows the key before
/// [`accept`](Listener::accept) hands out its connection, and this side
/// proves it too: the HMAC challenge of CPython's `deliver_challenge` and
/// `answer_challenge`, SHA-256 as CPython 3.12 and later send it, and
/// the HMAC-MD5 of 3.11 and earlier. A wrong key fails that peer's
/// accept with [`NetError::Authentication`] and reads nothing past the
/// handshake; the listener goes on. Frames before the handshake ends may
/// hold at most 256 bytes, and the handshake must end within a deadline
/// (10 s by default), so a peer that says nothing holds nothing for long.
/// Several handshakes run at once, so one slow peer does not hold up the
/// others.
///
/// Messages are framed as CPython frames them (a 4-byte big-endian length,
/// then the bytes) and are MessagePack: a Python peer sends
/// `conn.send_bytes(msgpack.packb(x))` and reads
/// `msgpack.unpackb(conn.recv_bytes())`. Handles (pipe ends, locks,
/// queues) cannot travel over a TCP connection.
///
/// ```no_run
/// use tokio_multiprocessing::connection::{Client, Listener};
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut listener = Listener::bind("127.0.0.1:0", Some(b"secret")).await?;
/// let address = listener.address().clone();
/// let client = tokio::spawn(async move {
///     let mut conn = Client::connect::<String>(&address, Some(b"secret")).await?;
///     conn.send(&"hello".to_owned()).await?;
///     Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
/// });
/// let mut conn = listener.accept::<String>().await?;
/// assert_eq!(conn.recv().await?, "hello");
/// # client.await.unwrap().unwrap();
/// # Ok(()) }
/// ```
pub struct Listener {
    socket: NetListener,
    address: Address,
    terms: Terms,
    max_handshakes: usize,
    /// Handshakes under way; kept across `accept` calls, so a cancelled
    /// accept loses no peer.
    pending: FuturesUnordered<Pending>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.address)
            .field("terms", &self.terms)
            .field("handshakes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `address`, with `authkey` if given: Python's
    /// `Listener(address, authkey=...)`.
    ///
    /// # Errors
    ///
    /// [`NetError::Io`] if the address cannot be bound;
    /// [`NetError::Plaintext`] if it can be reached from other machines
    /// (see [`ListenerBuilder::insecure_plaintext`]).
    pub async fn bind(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Listener, NetError> {
        let mut b = Listener::builder(address);
        if let Some(key) = authkey {
            b = b.authkey(key);
        }
        b.bind().await
    }

    /// A builder, for the deadline, the message limit and plaintext.
    pub fn builder(address: impl Into<Address>) -> ListenerBuilder {
        ListenerBuilder {
            address: address.into(),
            terms: Terms::default(),
            plaintext: false,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
        }
    }

    /// The address bound, with the port the system chose if it was 0.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// The next peer whose handshake succeeded, as a connection. Python's
    /// `Listener.accept`.
    ///
    /// # Errors
    ///
    /// The failure of one peer: its handshake failed or ran out of time
    /// ([`NetError::Authentication`], [`NetError::Handshake`],
    /// [`NetError::HandshakeTimeout`]), or accepting it failed
    /// ([`NetError::Io`], for example when out of descriptors). The
    /// listener goes on; call `accept` again.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a peer accepted or in its handshake when the future is
    /// dropped is handed out by a later call.
    pub async fn accept<T>(&mut self) -> Result<Connection<T>, NetError> {
        enum Step {
            Done(Result<Link, NetError>),
            Accepted(NetStream),
        }
        loop {
            let room = self.pending.len() < self.max_handshakes;
            let step = tokio::select! {
                Some(done) = self.pending.next(), if !self.pending.is_empty() => Step::Done(done),
                accepted = self.socket.accept(), if room => {
                    Step::Accepted(accepted.map_err(NetError::io(&self.address))?)
                }
            };
            match step {
                Step::Done(done) => return into_connection(done?, &self.terms, &self.address),
                Step::Accepted(stream) => {
                    let terms = self.terms.clone();
                    let address = self.address.clone();
                    self.pending.push(Box::pin(async move {
                        handshake(stream, &terms, Side::Listener, &address).await
                    }));
                }
            }
        }
    }

    /// Stops listening; a Unix socket's path is removed. Python's
    /// `Listener.close`. Dropping the listener does the same.
    pub fn close(self) {}
}

/// Configures a [`Listener`] before it binds.
#[derive(Debug, Clone)]
#[must_use]
pub struct ListenerBuilder {
    address: Address,
    terms: Terms,
    plaintext: bool,
    max_handshakes: usize,
}

impl ListenerBuilder {
    /// Requires every peer to prove it knows `key`, and proves it to them.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.terms.authkey = Some(key.to_vec());
        self
    }

    /// How long a peer has to finish the handshake (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.terms.handshake_timeout = d;
        self
    }

    /// How many handshakes run at once (default 64); more peers wait to
    /// be accepted.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n.max(1);
        self
    }

    /// The largest message a connection sends or accepts (default
    /// 128 MiB), as [`PipeBuilder::max_message`](crate::PipeBuilder::max_message).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.terms.max_message = bytes;
        self
    }

    /// Takes only TLS connections, with this configuration (its
    /// certificate and, for clients to be verified, their roots). The
    /// authkey handshake, if any, runs inside the session. A listener
    /// with TLS may bind any address.
    ///
    /// `rustls` is re-exported as
    /// [`connection::rustls`](crate::connection::rustls), so that the
    /// configuration is built with the version this crate uses.
    pub fn tls(mut self, config: Arc<ServerConfig>) -> Self {
        self.terms.secure = Secure::Server(TlsAcceptor::from(config));
        self
    }

    /// The authkey peers must prove, if any.
    pub(crate) fn key(&self) -> Option<&[u8]> {
        self.terms.authkey.as_deref()
    }

    /// Allows a listener that other machines can reach to take plaintext
    /// connections. Without it, binding an address that is not loopback
    /// fails with [`NetError::Plaintext`]: anyone who can reach the port
    /// could read the messages, and, without an authkey, send them.
    pub fn insecure_plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// Binds the address.
    ///
    /// # Errors
    ///
    /// As [`Listener::bind`].
    pub async fn bind(self) -> Result<Listener, NetError> {
        let socket = NetListener::bind(&self.address.to_where())
            .await
            .map_err(NetError::io(&self.address))?;
        let bound = socket.local().map_err(NetError::io(&self.address))?;
        let address = match &bound {
            Bound::Inet(a) => Address::Inet(a.to_string()),
            Bound::Unix(p) => Address::Unix(p.clone()),
        };
        let tls = matches!(self.terms.secure, Secure::Server(_));
        if !bound.is_local() && !self.plaintext && !tls {
            return Err(NetError::Plaintext { address });
        }
        Ok(Listener {
            socket,
            address,
            terms: self.terms,
            max_handshakes: self.max_handshakes,
            pending: FuturesUnordered::new(),
        })
    }
}

/// Connects to a [`Listener`] (Python's or this crate's). Python's
/// `multiprocessing.connection.Client`.
#[derive(Debug)]
pub enum Client {}

impl Client {
    /// Connects to `address`, with `authkey` if the listener has one.
    ///
    /// # Errors
    ///
    /// [`NetError::Io`] if nothing listens there;
    /// [`NetError::Authentication`] if the keys differ; the handshake's
    /// other failures.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a connection made is closed when the future is
    /// dropped.
    pub async fn connect<T>(
        address: impl Into<Address>,
        authkey: Option<&[u8]>,
    ) -> Result<Connection<T>, NetError> {
        let mut b = Client::builder(address);
        if let Some(key) = authkey {
            b = b.authkey(key);
        }
        b.connect().await
    }

    /// A builder, for the deadline and the message limit.
    pub fn builder(address: impl Into<Address>) -> ClientBuilder {
        ClientBuilder {
            address: address.into(),
            terms: Terms::default(),
            server_name: None,
        }
    }
}

/// Configures a [`Client`] connection before it is made.
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    address: Address,
    terms: Terms,
    server_name: Option<ServerName<'static>>,
}

impl ClientBuilder {
    /// Proves to the listener that this side knows `key`, and requires the
    /// same of it.
    pub fn authkey(mut self, key: &[u8]) -> Self {
        self.terms.authkey = Some(key.to_vec());
        self
    }

    /// Speaks TLS with this configuration (its roots decide which servers
    /// are trusted). The server's certificate must name the host of the
    /// address, unless [`tls_server_name`](Self::tls_server_name) says
    /// otherwise. The authkey handshake, if any, runs inside the session.
    pub fn tls(mut self, config: Arc<ClientConfig>) -> Self {
        self.terms.secure = Secure::Client(TlsConnector::from(config), None);
        self
    }

    /// The name the server's certificate must carry, when it is not the
    /// host of the address (always, for a Unix path). Takes effect with
    /// [`tls`](Self::tls).
    ///
    /// # Errors
    ///
    /// If `name` is neither a DNS name nor an IP address.
    pub fn tls_server_name(mut self, name: &str) -> Result<Self, NetError> {
        let parsed = ServerName::try_from(name.to_owned()).map_err(|e| NetError::Tls {
            address: self.address.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        self.server_name = Some(parsed);
        Ok(self)
    }

    /// How long the handshake may take (default 10 s).
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.terms.handshake_timeout = d;
        self
    }

    /// The largest message the connection sends or accepts (default
    /// 128 MiB).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.terms.max_message = bytes;
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// As [`Client::connect`].
    ///
    /// # Cancel safety
    ///
    /// As [`Client::connect`].
    pub async fn connect<T>(mut self) -> Result<Connection<T>, NetError> {
        if let Secure::Client(_, name) = &mut self.terms.secure {
            name.clone_from(&self.server_name);
        }
        let stream = NetStream::connect(&self.address.to_where())
            .await
            .map_err(NetError::io(&self.address))?;
        let stream = handshake(stream, &self.terms, Side::Client, &self.address).await?;
        into_connection(stream, &self.terms, &self.address)
    }
}
