//! The parent's side of the fork server: starting it, asking it for
//! forks, and what to do when it is lost.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio_util::codec::Decoder;

#[cfg(feature = "test-support")]
use super::FAULTS_ENV;
use crate::runtime::{exec, identity};
use crate::sys::{self, OwnedHandle, Signal};
use crate::transport::socket::AsyncSocket;
use crate::wire::ChannelError;
use crate::wire::frame::{DEFAULT_MAX_FRAME, FrameCodec, decode_message, encode_message};
use crate::wire::message::{ChildMsg, Group, Hello, MAGIC, PROTOCOL_VERSION, ParentMsg};

/// How long the parent waits for the server to answer one fork request.
/// A server that does not answer in time (stopped, hung) is killed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a new server has to start and say it serves.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, after the server was lost with a request, the parent waits
/// to hear from a child the server may have forked for it.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the exit rule waits for the server to leave before it kills it.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// A lost server is replaced on the next start, unless servers keep failing
/// before they fork anything: after this many in a row, the program
/// re-executes for a pause that starts at [`FIRST_BACKOFF`] and doubles
/// with each further such failure, up to [`MAX_BACKOFF`].
const FAILURES_BEFORE_BACKOFF: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

enum State {
    /// No server runs; one is started on the next fork, unless `retry_at`
    /// says to re-execute until then.
    Idle,
    Running(Server),
    /// The server cannot run in this program (it has threads, or the C
    /// library needs its fork handlers): every child is re-executed.
    Unavailable,
}

struct Server {
    child: sys::Child,
    /// The channel, nonblocking. Each runtime that talks to the server
    /// registers its own duplicate of it.
    sock: AsyncSocket,
    codec: FrameCodec,
    buf: BytesMut,
    next_id: u64,
    /// The child forked ahead of the next start, if one was asked for.
    spare: Option<Spare>,
}

/// A child asked of the server ahead of its start (a warm start): once
/// forked, it waits on its control socket for the orders of whichever
/// start takes it, so that the start is one message to a running process.
struct Spare {
    /// The request that forks it.
    id: u64,
    /// The parent's end of its control socket.
    ours: OwnedHandle,
    /// What its handshake must carry.
    nonce: u64,
    /// Its pid, once the server's answer has been read.
    pid: Option<u32>,
}

struct Client {
    state: State,
    /// Servers lost in a row before they forked anything.
    barren: u32,
    /// Until when to re-execute rather than start a server.
    retry_at: Option<Instant>,
}

/// The one client of the fork server. An async lock: a start waits for the
/// one before it without blocking its thread, and every wait on the server
/// has a deadline.
static CLIENT: tokio::sync::Mutex<Client> = tokio::sync::Mutex::const_new(Client {
    state: State::Idle,
    barren: 0,
    retry_at: None,
});

/// The running server's pid (0: none), readable without the lock.
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

/// A child for a start, forked ahead of it or just now: it waits for its
/// handshake, which must carry `nonce`, on `ours`.
pub(crate) struct Warm {
    pub(crate) child: sys::Child,
    pub(crate) ours: OwnedHandle,
    pub(crate) nonce: u64,
}

/// What became of a warm start.
pub(crate) enum WarmStart {
    /// A child from the fork server.
    Child(Warm),
    /// No fork server serves now: the caller re-executes the program.
    Declined,
}

/// What became of a fork request.
pub(crate) enum Forked {
    /// The server forked the child, which waits for its orders on the
    /// caller's end of the socketpair.
    Child(sys::Child),
    /// No fork server serves now: the caller re-executes the program, with
    /// its end of the socketpair handed back.
    Declined(OwnedHandle),
    /// The server was lost with the request and no child took the
    /// socketpair: it is spent, and the caller re-executes with a new one.
    Spent,
}

/// Forks a child whose control socket is `theirs` through the fork server
/// (starting the server if none runs); `ours` is the other end.
///
/// The request is a short async round trip: no thread blocks on the
/// server, and each wait has a deadline. A server that fails, dies or
/// does not answer in time is killed, reaped and, after a pause, replaced.
/// If it was lost after it received the request, it may have forked the
/// child already: such a child announces itself on `ours` first thing, so
/// it is adopted if it does (never a second child on one channel), and
/// killed and reaped if it shows up too late.
pub(crate) async fn fork(
    ours: &OwnedHandle,
    theirs: OwnedHandle,
    nonce: u64,
    group: Group,
) -> Forked {
    reap_strays();
    if let Some(reason) = super::unavailable() {
        declined(reason);
        return Forked::Declined(theirs);
    }
    let mut client = CLIENT.lock().await;
    client.ensure_server().await;
    let State::Running(server) = &mut client.state else {
        return Forked::Declined(theirs);
    };
    let id = server.next_id;
    server.next_id += 1;
    match server.fork(id, &theirs, nonce, group).await {
        Ok(pid) => {
            client.barren = 0;
            client.retry_at = None;
            return Forked::Child(sys::Child::adopt(pid));
        }
        Err(e) => tracing::warn!(error = %e, "the fork server failed; it is replaced"),
    }
    client.lose_server().await;
    // The server is gone, and its copy of `theirs` with it. If it forked
    // before it died, the child holds the only other copy and says who it
    // is; if not, nobody does once ours is closed.
    drop(theirs);
    claim_orphan(ours, id).await
}

/// Takes the spare child for a start (asking for one first if there is
/// none, and waiting for it if it is not forked yet), and asks the server
/// for the next spare without waiting for it: the server forks it while
/// the caller goes on, and its answer is read by the next start. A start
/// that finds its spare forked costs no round trip to the server at all.
///
/// The spare is forked as a member of this process's group; the caller
/// makes it lead a group of its own when the start wants that (a child
/// that must start a session of its own uses [`fork`]).
///
/// A server lost with the spare's request is handled as in [`fork`]: the
/// spare is adopted if it announces itself; if not, the start goes on with
/// a child forked from a new server, or re-executes.
pub(crate) async fn fork_warm() -> WarmStart {
    reap_strays();
    if let Some(reason) = super::unavailable() {
        declined(reason);
        return WarmStart::Declined;
    }
    let mut client = CLIENT.lock().await;
    // A spare lost with a server (or dead before its start) is not waited
    // for again and again: after three, the program re-executes.
    for _ in 0..3 {
        client.ensure_server().await;
        let State::Running(server) = &mut client.state else {
            return WarmStart::Declined;
        };
        match server.take_spare().await {
            // Killed while it waited (by someone sweeping our children,
            // say): reaped, and the start takes the next one.
            Ok(warm) if matches!(warm.child.try_reap(), Ok(Some(_))) => {
                tracing::debug!(pid = warm.child.pid(), "a spare died before its start");
            }
            Ok(warm) => {
                client.barren = 0;
                client.retry_at = None;
                if let State::Running(server) = &mut client.state
                    && let Err(e) = server.ask_spare()
                {
                    tracing::warn!(error = %e, "the fork server failed; it is replaced");
                    client.lose_server().await;
                }
                return WarmStart::Child(warm);
            }
            Err((e, spare)) => {
                tracing::warn!(error = %e, "the fork server failed; it is replaced");
                client.lose_server().await;
                if let Some(spare) = spare
                    && let Forked::Child(child) = claim_orphan(&spare.ours, spare.id).await
                {
                    return WarmStart::Child(Warm {
                        child,
                        ours: spare.ours,
                        nonce: spare.nonce,
                    });
                }
            }
        }
    }
    WarmStart::Declined
}

/// Waits for the announcement of a child forked for request `id` by a
/// server since lost, on `ours`.
async fn claim_orphan(ours: &OwnedHandle, id: u64) -> Forked {
    let announce = ours.try_clone().and_then(Announcement::new);
    let mut announce = match announce {
        Ok(announce) => announce,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for a child the lost fork server forked");
            return Forked::Spent;
        }
    };
    match announce.read(Instant::now() + ANNOUNCE_TIMEOUT).await {
        Ok(Some(pid)) => {
            tracing::debug!(pid, id, "adopted the child a lost fork server forked");
            Forked::Child(sys::Child::adopt(pid))
        }
        Ok(None) => Forked::Spent,
        Err(e) => {
            tracing::warn!(error = %e, "no word from the child the lost fork server may have forked; \
                it is killed and reaped if it shows up");
            stray(Stray::Unannounced(announce));
            Forked::Spent
        }
    }
}

/// Says (once, as [`declined`]) that the fork server cannot serve this
/// program, when the program's method is the fork server and `init()`
/// found it could not: its starts then come here as `Spawn`.
pub(crate) fn say_if_declined() {
    if let Some(reason) = super::unavailable()
        && super::chosen_method() == super::StartMethod::ForkServer
    {
        declined(reason);
    }
}

/// Says, once per process, that the fork server declined to serve, why,
/// and (when it had threads) how to fix it.
fn declined(reason: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    if reason.contains("threads") {
        tracing::warn!(
            %reason,
            "the fork server declined to serve; children are re-executed, which is slower: \
             call init() first thing in main, before the Tokio runtime is built or any thread starts"
        );
    } else {
        tracing::warn!(
            %reason,
            "the fork server declined to serve; children are re-executed, which is slower \
             (set_start_method(StartMethod::Spawn) says so from the start)"
        );
    }
}

/// Runs `f` on the keeper thread: one thread per program, started with
/// the first fork server, that starts every fork server and does nothing
/// else, so it lives as long as the program. A server is its child, and
/// so (forked with `CLONE_PARENT`) is every child the server forks: the
/// kernel's parent-death signal, which follows the parent *thread*, then
/// kills them when the program ends, and never earlier (a runtime's worker
/// or a blocking thread may end while the program runs on).
fn on_keeper<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<R>> {
    type Job = Box<dyn FnOnce() + Send>;
    static KEEPER: Mutex<Option<std::sync::mpsc::Sender<Job>>> = Mutex::new(None);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    let mut keeper = KEEPER.lock().unwrap_or_else(PoisonError::into_inner);
    let job = match keeper.as_ref() {
        Some(k) => match k.send(job) {
            Ok(()) => return Ok(rx),
            Err(std::sync::mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("tokio-multiprocessing-keeper".to_owned())
        .stack_size(256 * 1024)
        .spawn(move || {
            for job in queue {
                job();
            }
        })?;
    jobs.send(job)
        .map_err(|_| std::io::Error::other("the keeper thread is gone"))?;
    *keeper = Some(jobs);
    Ok(rx)
}

enum StartError {
    /// The server cannot serve in this program; do not try again.
    Refused(String),
    /// Starting it failed; try again later.
    Failed(ChannelError),
}

async fn start_server() -> Result<Server, StartError> {
    if !sys::libc_allows_raw_fork() {
        return Err(StartError::Refused(
            "the C library needs its own fork handlers".to_owned(),
        ));
    }
    let io = |e: std::io::Error| StartError::Failed(e.into());
    let (ours, theirs) = sys::socketpair().map_err(io)?;
    let nonce = identity::nonce().map_err(io)?;
    #[allow(unused_mut)] // with the test hooks, faults may be added
    let mut env = exec::child_env(nonce, &theirs, &[]);
    #[cfg(feature = "test-support")]
    if let Some(spec) = FAULTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_deref()
    {
        env.push(
            std::ffi::CString::new(format!("{FAULTS_ENV}={spec}"))
                .map_err(|e| io(std::io::Error::other(e)))?,
        );
    }
    let child = on_keeper(move || exec::reexec(theirs, &env, Group::Inherit, None))
        .map_err(io)?
        .await
        .map_err(|_| io(std::io::Error::other("the keeper thread is gone")))?
        .map_err(io)?;
    let sock = AsyncSocket::new(ours).map_err(io)?;
    let mut server = Server {
        child,
        codec: FrameCodec::new(DEFAULT_MAX_FRAME),
        buf: BytesMut::new(),
        next_id: 1,
        sock,
        spare: None,
    };
    let answer = server.handshake(nonce).await;
    match answer {
        Ok(ChildMsg::Serving) => {
            tracing::debug!(pid = server.child.pid(), "fork server started");
            Ok(server)
        }
        Ok(ChildMsg::Refused { reason }) => {
            server.kill().await;
            Err(StartError::Refused(reason))
        }
        Ok(other) => {
            server.kill().await;
            Err(StartError::Failed(ChannelError::Malformed(format!(
                "unexpected answer from the fork server: {other:?}"
            ))))
        }
        Err(e) => {
            server.kill().await;
            Err(StartError::Failed(e))
        }
    }
}

impl Client {
    /// Starts a server if none runs and none failed too recently; notes
    /// for good that none can serve if the server refuses.
    async fn ensure_server(&mut self) {
        if !matches!(self.state, State::Idle) || self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.state = match start_server().await {
            Ok(server) => {
                SERVER_PID.store(server.child.pid(), Ordering::Relaxed);
                State::Running(server)
            }
            Err(StartError::Refused(reason)) => {
                // Said once: the state stays `Unavailable` for good.
                declined(&reason);
                super::mark_unavailable(reason);
                State::Unavailable
            }
            Err(StartError::Failed(e)) => {
                tracing::warn!(error = %e, "the fork server failed to start; re-executing for now");
                self.lost(false);
                State::Idle
            }
        };
    }

    /// Kills and reaps the running server, which failed, and leaves the
    /// state `Idle` (the next start replaces it). A spare it was asked for
    /// and had not answered for is left to the strays: killed and reaped
    /// if it announces itself.
    async fn lose_server(&mut self) {
        let State::Running(mut server) = std::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        self.lost(server.next_id > 2);
        if let Some(spare) = server.spare.take() {
            spare.discard();
        }
        server.kill().await;
    }

    /// Records that a server was lost (`forked`: after it had forked a
    /// child). The next start replaces it, unless servers keep failing
    /// before they fork anything.
    fn lost(&mut self, forked: bool) {
        SERVER_PID.store(0, Ordering::Relaxed);
        if forked {
            self.barren = 0;
            self.retry_at = None;
            return;
        }
        self.barren += 1;
        if self.barren >= FAILURES_BEFORE_BACKOFF {
            let doublings = (self.barren - FAILURES_BEFORE_BACKOFF).min(16);
            let pause = (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF);
            self.retry_at = Some(Instant::now() + pause);
        }
    }
}

impl Server {
    /// Sends the handshake and the order to serve; returns the answer.
    async fn handshake(&mut self, nonce: u64) -> Result<ChildMsg, ChannelError> {
        let mut frame = BytesMut::new();
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            fingerprint: crate::target::fingerprint(),
            nonce,
            max_frame: DEFAULT_MAX_FRAME as u64,
        };
        encode_message(&hello, &mut frame, DEFAULT_MAX_FRAME)?;
        encode_message(&ParentMsg::Serve, &mut frame, DEFAULT_MAX_FRAME)?;
        let deadline = Instant::now() + START_TIMEOUT;
        self.send(&frame, None, deadline).await?;
        self.recv(deadline).await
    }

    /// Asks for a spare, without waiting for the answer. Fails only when
    /// the request cannot be written at once (the server is gone, or so
    /// far behind that its socket is full).
    fn ask_spare(&mut self) -> Result<(), ChannelError> {
        if self.spare.is_some() {
            return Ok(());
        }
        let (ours, theirs) = sys::socketpair()?;
        let nonce = identity::nonce()?;
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = BytesMut::new();
        let group = Group::Inherit;
        encode_message(
            &ParentMsg::Fork { id, nonce, group },
            &mut frame,
            DEFAULT_MAX_FRAME,
        )?;
        self.sock.try_send(&frame, Some(&theirs))?;
        self.spare = Some(Spare {
            id,
            ours,
            nonce,
            pid: None,
        });
        Ok(())
    }

    /// The spare for a start: asked for now if there is none, its answer
    /// awaited if not read yet. On failure, the spare whose answer never
    /// came, if any, for [`claim_orphan`].
    async fn take_spare(&mut self) -> Result<Warm, (ChannelError, Option<Spare>)> {
        if let Err(e) = self.ask_spare() {
            return Err((e, None));
        }
        let spare = self.spare.as_ref().expect("asked for just above");
        let id = spare.id;
        if spare.pid.is_none() {
            let deadline = Instant::now() + REPLY_TIMEOUT;
            match self.answer(id, deadline).await {
                Ok(pid) => {
                    if let Some(spare) = &mut self.spare {
                        spare.pid = Some(pid);
                    }
                }
                Err(e) => return Err((e, self.spare.take())),
            }
        }
        match self.spare.take() {
            Some(Spare {
                ours,
                nonce,
                pid: Some(pid),
                ..
            }) => Ok(Warm {
                child: sys::Child::adopt(pid),
                ours,
                nonce,
            }),
            // The server said it could not fork it: ask again at the
            // next start, and fail this one over to a new server.
            _ => Err((
                ChannelError::Io(std::io::Error::other("the fork server could not fork")),
                None,
            )),
        }
    }

    /// Asks for a fork of a child whose control socket is `control`, and
    /// returns its pid.
    async fn fork(
        &mut self,
        id: u64,
        control: &OwnedHandle,
        nonce: u64,
        group: Group,
    ) -> Result<u32, ChannelError> {
        let mut frame = BytesMut::new();
        encode_message(
            &ParentMsg::Fork { id, nonce, group },
            &mut frame,
            DEFAULT_MAX_FRAME,
        )?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        self.send(&frame, Some(control), deadline).await?;
        self.answer(id, deadline).await
    }

    /// Reads answers until the one to request `id`, and returns the pid it
    /// gives. The answer for the spare, if it comes first, is kept with
    /// it; answers to requests whose starts were cancelled are children
    /// nobody wants: killed and reaped.
    async fn answer(&mut self, id: u64, deadline: Instant) -> Result<u32, ChannelError> {
        loop {
            let msg = self.recv(deadline).await?;
            let spare = self.spare.as_mut().filter(|s| s.pid.is_none());
            match (msg, spare) {
                (ChildMsg::Forked { id: got, pid }, _) if got == id => return Ok(pid),
                (ChildMsg::ForkFailed { id: got, error }, _) if got == id => {
                    return Err(ChannelError::Io(std::io::Error::other(error)));
                }
                (ChildMsg::Forked { id: got, pid }, Some(spare)) if got == spare.id => {
                    spare.pid = Some(pid);
                }
                (ChildMsg::ForkFailed { id: got, .. }, Some(spare)) if got == spare.id => {
                    self.spare = None;
                }
                // The answer to a request whose start was cancelled while
                // it waited: its child saw its channel close and exits.
                (ChildMsg::Forked { pid, .. }, _) => {
                    let child = sys::Child::adopt(pid);
                    let _ = child.signal(Signal::Kill);
                    stray(Stray::Child(child));
                }
                (ChildMsg::ForkFailed { .. }, _) => {}
                (other, _) => {
                    return Err(ChannelError::Malformed(format!(
                        "unexpected answer from the fork server: {other:?}"
                    )));
                }
            }
        }
    }

    /// Writes `frame`, with `fd` attached to its first byte, by `deadline`.
    async fn send(
        &mut self,
        frame: &[u8],
        fd: Option<&OwnedHandle>,
        deadline: Instant,
    ) -> Result<(), ChannelError> {
        Ok(self.sock.send(frame, fd, deadline).await?)
    }

    /// Reads the next message by `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Result<ChildMsg, ChannelError> {
        loop {
            if let Some(body) = self.codec.decode(&mut self.buf)? {
                return decode_message(&body);
            }
            if self.sock.recv(&mut self.buf, deadline).await? == 0 {
                return Err(ChannelError::Closed);
            }
        }
    }

    /// Kills the server and reaps it, giving up the wait after a moment
    /// (then the exit rule reaps it).
    async fn kill(self) {
        let Server {
            child, sock, spare, ..
        } = self;
        if let Some(spare) = spare {
            spare.discard();
        }
        drop(sock);
        let _ = child.signal(Signal::Kill);
        let _ = tokio::time::timeout(STOP_TIMEOUT, child.exited()).await;
        if !matches!(child.try_reap(), Ok(Some(_))) {
            stray(Stray::Child(child));
        }
    }

    /// Closes the channel (the server exits when it sees that) and reaps
    /// the server, killing it if it has not left within [`STOP_TIMEOUT`].
    /// Blocks the thread: for the exit rule.
    fn stop_blocking(self) {
        let Server {
            child, sock, spare, ..
        } = self;
        // Among the strays, which the exit rule settles before it returns
        // (a task on a runtime that is shutting down might never run).
        if let Some(s) = spare.and_then(Spare::into_stray) {
            stray(s);
        }
        drop(sock);
        if !child.wait_exited_timeout_blocking(STOP_TIMEOUT) {
            let _ = child.signal(Signal::Kill);
            child.wait_exited_blocking(None);
        }
        let _ = child.try_reap();
    }
}

impl Spare {
    /// Lets the spare go, unused. Killed now if its pid is known, else as
    /// soon as it announces itself (it may never have been forked: then
    /// its socket just closes), and reaped: by a task on the current
    /// runtime, so that no zombie lingers until the next start. Whatever
    /// that task has not finished when its runtime goes (or when there is
    /// no runtime, in the exit rule) is left to the strays.
    fn discard(self) {
        let Some(watch) = self.into_stray() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(settle(Unsettled(Some(watch))));
            }
            Err(_) => stray(watch),
        }
    }

    /// The spare as a stray to settle: killed now if its pid is known,
    /// else watched for its announcement.
    fn into_stray(self) -> Option<Stray> {
        match self.pid {
            Some(pid) => {
                let child = sys::Child::adopt(pid);
                let _ = child.signal(Signal::Kill);
                Some(Stray::Child(child))
            }
            None => match Announcement::new(self.ours) {
                Ok(a) => Some(Stray::Unannounced(a)),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch for a spare the fork server may have forked");
                    None
                }
            },
        }
    }
}

/// A stray being settled by a task; left to the strays if the task is
/// dropped before it finished.
struct Unsettled(Option<Stray>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            stray(s);
        }
    }
}

/// Kills and reaps a stray: waits for its announcement if it has not
/// made one, then for its exit.
async fn settle(mut s: Unsettled) {
    if let Some(Stray::Unannounced(a)) = &mut s.0 {
        match a.read(Instant::now() + ANNOUNCE_TIMEOUT).await {
            Ok(Some(pid)) => {
                let child = sys::Child::adopt(pid);
                let _ = child.signal(Signal::Kill);
                s.0 = Some(Stray::Child(child));
            }
            // Never forked.
            Ok(None) => s.0 = None,
            // Left to the strays.
            Err(_) => return,
        }
    }
    if let Some(Stray::Child(child)) = &s.0 {
        let _ = tokio::time::timeout(STOP_TIMEOUT, child.exited()).await;
        if matches!(child.try_reap(), Ok(Some(_))) {
            s.0 = None;
        }
    }
}

/// Reads the one frame a child forked by the server writes first on its
/// control socket: `ChildMsg::Forked` with its pid.
struct Announcement {
    sock: AsyncSocket,
    codec: FrameCodec,
    buf: BytesMut,
}

impl Announcement {
    fn new(handle: OwnedHandle) -> std::io::Result<Announcement> {
        Ok(Announcement {
            sock: AsyncSocket::new(handle)?,
            codec: FrameCodec::new(ANNOUNCEMENT_MAX),
            buf: BytesMut::new(),
        })
    }

    /// The announced pid; `None` when the channel closed with no word (no
    /// child holds it). Waits until `deadline`.
    async fn read(&mut self, deadline: Instant) -> Result<Option<u32>, ChannelError> {
        loop {
            if let Some(pid) = self.decode()? {
                return Ok(Some(pid));
            }
            if self.sock.recv(&mut self.buf, deadline).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads what has arrived without waiting: `Ok(Some(pid))` once the
    /// announcement is in, `Err(Closed)` when the channel closed without it.
    fn poll_now(&mut self) -> Result<Option<u32>, ChannelError> {
        loop {
            if let Some(pid) = self.decode()? {
                return Ok(Some(pid));
            }
            match self.sock.try_recv(&mut self.buf, ANNOUNCEMENT_MAX) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn decode(&mut self) -> Result<Option<u32>, ChannelError> {
        match self.codec.decode(&mut self.buf)? {
            None => Ok(None),
            Some(body) => match decode_message::<ChildMsg>(&body)? {
                ChildMsg::Forked { pid, .. } => Ok(Some(pid)),
                other => Err(ChannelError::Malformed(format!(
                    "a forked child announced itself with {other:?}"
                ))),
            },
        }
    }
}

/// The largest announcement frame.
const ANNOUNCEMENT_MAX: usize = 64;

/// A process of ours, or one that may be, that no `Process` tracks: the
/// leftovers of a fork server lost in the middle of a request.
enum Stray {
    /// A child that was killed and must be reaped.
    Child(sys::Child),
    /// The channel of a child the lost server may have forked: if it
    /// announces itself, it is killed and reaped.
    Unannounced(Announcement),
}

static STRAYS: Mutex<Vec<Stray>> = Mutex::new(Vec::new());

fn stray(s: Stray) {
    STRAYS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(s);
}

/// Reaps the strays that have ended, without blocking.
fn reap_strays() {
    let mut strays = STRAYS.lock().unwrap_or_else(PoisonError::into_inner);
    if strays.is_empty() {
        return;
    }
    let mut kept = Vec::new();
    for s in strays.drain(..) {
        match s {
            Stray::Child(child) => {
                if !matches!(child.try_reap(), Ok(Some(_))) {
                    kept.push(Stray::Child(child));
                }
            }
            Stray::Unannounced(mut a) => match a.poll_now() {
                Ok(Some(pid)) => {
                    let child = sys::Child::adopt(pid);
                    let _ = child.signal(Signal::Kill);
                    kept.push(Stray::Child(child));
                }
                Ok(None) => kept.push(Stray::Unannounced(a)),
                Err(_) => {}
            },
        }
    }
    *strays = kept;
}

/// The pid of the running fork server, if there is one.
pub(crate) fn server_pid() -> Option<u32> {
    match SERVER_PID.load(Ordering::Relaxed) {
        0 => None,
        pid => Some(pid),
    }
}

/// Test hook: the pid of the running fork server, if there is one.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub fn __fork_server_pid() -> Option<u32> {
    server_pid()
}

/// Stops the fork server, if one runs, and reaps the strays; part of the
/// exit rule. Blocks the thread, each wait with a deadline.
pub(crate) fn shutdown() {
    // Not `blocking_lock`: this may run inside a runtime (the guard of a
    // `#[tokio::main]`). A start still holding the lock cannot finish now.
    match CLIENT.try_lock() {
        Ok(mut client) => {
            let state = std::mem::replace(&mut client.state, State::Unavailable);
            if let State::Running(server) = state {
                SERVER_PID.store(0, Ordering::Relaxed);
                server.stop_blocking();
            }
        }
        Err(_) => {
            if let Some(pid) = server_pid() {
                let _ = sys::signal_pid(pid, Signal::Kill);
            }
        }
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        reap_strays();
        let left = STRAYS.lock().unwrap_or_else(PoisonError::into_inner).len();
        if left == 0 || Instant::now() >= deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The faults the next fork servers are to inject (a test hook).
#[cfg(feature = "test-support")]
static FAULTS: Mutex<Option<String>> = Mutex::new(None);

/// Test hook: the faults that fork servers started from now on inject, a
/// comma-separated list (`None`: none). `forkserver-exit-after-fork=N`
/// makes each server exit right after its `N`-th fork, before it replies.
/// A server already running is not affected: kill it to get one that is.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub fn __set_fork_server_faults(spec: Option<&str>) {
    *FAULTS.lock().unwrap_or_else(PoisonError::into_inner) = spec.map(str::to_owned);
}
