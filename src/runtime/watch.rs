//! The parent's record of one child ([`ChildState`]): its exit, its report,
//! and the task that watches its control channel and reaps it; and the
//! registry of the live ones.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use super::capture::{self, OutputHook};
use super::latch::Latch;
use super::logs;
use super::registry::Registry;
use crate::sys::{self, OwnedHandle, Signal};
use crate::transport::fdstream::FdStream;
use crate::wire::ChannelError;
use crate::wire::frame::{FrameCodec, decode_message};
use crate::wire::message::{ChildMsg, Outcome};

/// How long the watcher keeps reading after the child has exited, in case
/// some other process still holds the child's end of the channel.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// The request id of a `Process`'s one `Run`.
pub(crate) const RUN_ID: u64 = 1;

/// What a supervised child tells its supervisor while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// It is ready (`notify_ready`).
    Ready,
    /// It is alive (`heartbeat`).
    Heartbeat,
}

/// What the child reported, as far as the parent knows.
#[derive(Debug)]
pub(crate) enum Report {
    /// Nothing yet.
    Pending,
    /// The target's outcome.
    Outcome(Outcome),
    /// The child refused to run (its handshake, its current_dir or environment).
    Refused(String),
    /// The channel broke before a report arrived.
    Broken(ChannelError),
    /// An earlier `join` took the report.
    Taken,
}

/// The parent's side of one child process.
#[derive(Debug)]
pub(crate) struct ChildState {
    pub(crate) key: u64,
    /// The child's name, which labels what it logs here.
    pub(crate) name: String,
    pub(crate) daemon: bool,
    pub(crate) detached: bool,
    child: OnceLock<sys::Child>,
    /// Held while reaping or signalling, so a pid is never signalled after
    /// it was reaped (and could have been reused).
    reap_lock: Mutex<()>,
    pub(crate) exit: Arc<Latch<ExitStatus>>,
    /// Set once the watcher has read everything the child sent.
    pub(crate) done: Latch<()>,
    /// Set when the watcher task was dropped before it finished (its
    /// runtime shut down); a later `join` starts a new one.
    watcher_lost: Latch<()>,
    rewatching: AtomicBool,
    max_frame: OnceLock<usize>,
    report: Mutex<Report>,
    /// Where readiness and heartbeats of a supervised child go.
    notes: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Note>>>,
    /// Re-emits the child's `tracing` events here, once it sent some.
    logs: Mutex<Option<logs::Replayer>>,
    /// A second descriptor of our end of the control socket, for draining
    /// at program exit when no runtime is left to run the watcher.
    drain: Mutex<Option<OwnedHandle>>,
    /// What is done with the lines of a child whose output is captured,
    /// besides their events; taken when it starts.
    output_hook: Mutex<Option<OutputHook>>,
    /// Whether its output is captured (then `done` waits for its end).
    capturing: AtomicBool,
    /// Set once both captured streams have ended.
    output_done: Latch<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChildState {
    pub(crate) fn new(name: &str, daemon: bool, detached: bool) -> Arc<Self> {
        static KEYS: AtomicU64 = AtomicU64::new(1);
        Arc::new(ChildState {
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            name: name.to_owned(),
            daemon,
            detached,
            child: OnceLock::new(),
            reap_lock: Mutex::new(()),
            exit: Arc::new(Latch::new()),
            done: Latch::new(),
            watcher_lost: Latch::new(),
            rewatching: AtomicBool::new(false),
            max_frame: OnceLock::new(),
            report: Mutex::new(Report::Pending),
            drain: Mutex::new(None),
            notes: Mutex::new(None),
            logs: Mutex::new(None),
            output_hook: Mutex::new(None),
            capturing: AtomicBool::new(false),
            output_done: Latch::new(),
        })
    }

    /// Sets what is done with the child's captured lines besides their
    /// events (before it starts; a child whose output is not captured
    /// never uses it).
    pub(crate) fn set_output_hook(&self, hook: OutputHook) {
        *lock(&self.output_hook) = Some(hook);
    }

    /// From now on, what a supervised child notifies (readiness,
    /// heartbeats) goes to the returned receiver; unsubscribed, it is
    /// dropped.
    pub(crate) fn subscribe_notes(&self) -> tokio::sync::mpsc::UnboundedReceiver<Note> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.notes) = Some(tx);
        rx
    }

    /// The pid, once started.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.get().map(sys::Child::pid)
    }

    pub(crate) fn started(&self) -> bool {
        self.child.get().is_some()
    }

    /// Reaps the child if it has exited, without blocking; returns its
    /// status once it is known.
    pub(crate) fn try_reap(&self) -> Option<ExitStatus> {
        if let Some(st) = self.exit.get() {
            return Some(*st);
        }
        let child = self.child.get()?;
        let _g = lock(&self.reap_lock);
        if let Some(st) = self.exit.get() {
            return Some(*st);
        }
        match child.try_reap() {
            Ok(Some(status)) => {
                self.exit.set(status);
                CHILDREN.remove(self.key);
                tracing::debug!(
                    process = %self.name,
                    pid = child.pid(),
                    exitcode = sys::python_exitcode(status),
                    "child exited"
                );
                Some(status)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(process = %self.name, pid = child.pid(), error = %e, "waitid failed");
                None
            }
        }
    }

    /// Sends a signal unless the child has been reaped.
    pub(crate) fn signal(&self, sig: Signal) -> std::io::Result<()> {
        let Some(child) = self.child.get() else {
            return Ok(());
        };
        let _g = lock(&self.reap_lock);
        if self.exit.get().is_some() {
            return Ok(());
        }
        child.signal(sig)
    }

    /// Kills the child and reaps it, blocking the thread for at most
    /// `timeout` while it dies. For when no runtime is left to do it.
    pub(crate) fn kill_and_reap_blocking(&self, timeout: Duration) {
        if self.signal(Signal::Kill).is_err() {
            return;
        }
        if let Some(child) = self.child.get() {
            child.wait_exited_timeout_blocking(timeout);
        }
        self.try_reap();
    }

    /// Blocks the thread until the child has exited, for at most
    /// `timeout`, and reaps it if it has; says whether it has.
    pub(crate) fn wait_exited_blocking(&self, timeout: Duration) -> bool {
        if self.exit.get().is_none()
            && let Some(child) = self.child.get()
        {
            child.wait_exited_timeout_blocking(timeout);
        }
        self.try_reap().is_some()
    }

    /// Takes the child's report, leaving `Taken`.
    pub(crate) fn take_report(&self) -> Report {
        std::mem::replace(&mut *lock(&self.report), Report::Taken)
    }

    fn on_frame(&self, body: &[u8]) {
        let msg = decode_message::<ChildMsg>(body);
        let note = match &msg {
            Ok(ChildMsg::Ready) => Some(Note::Ready),
            Ok(ChildMsg::Heartbeat) => Some(Note::Heartbeat),
            _ => None,
        };
        if let Some(note) = note {
            if let Some(tx) = lock(&self.notes).as_ref() {
                let _ = tx.send(note);
            }
            return;
        }
        if let Ok(ChildMsg::Log(batch)) = msg {
            lock(&self.logs)
                .get_or_insert_with(|| logs::Replayer::new(&self.name, self.pid().unwrap_or(0)))
                .replay(&batch);
            return;
        }
        let mut report = lock(&self.report);
        match msg {
            Ok(ChildMsg::Outcome {
                id: RUN_ID,
                outcome,
            }) => {
                if matches!(*report, Report::Pending) {
                    if let Outcome::Panicked(info) = &outcome {
                        self.report_panic(info);
                    }
                    *report = Report::Outcome(outcome);
                }
            }
            Ok(ChildMsg::Outcome { id, .. }) => {
                let e = ChannelError::Malformed(format!(
                    "a reply to request {id}, which was never sent"
                ));
                tracing::warn!(process = %self.name, pid = self.pid(), error = %e, "protocol violation");
                if matches!(*report, Report::Pending) {
                    *report = Report::Broken(e);
                }
            }
            Ok(ChildMsg::Refused { reason }) => *report = Report::Refused(reason),
            // A child forked by the fork server says who it is before
            // anything else (see `forkserver::fork`).
            Ok(ChildMsg::Forked { pid, .. }) if Some(pid) == self.pid() => {}
            Ok(
                other @ (ChildMsg::Serving
                | ChildMsg::Forked { .. }
                | ChildMsg::ForkFailed { .. }
                | ChildMsg::Ready
                | ChildMsg::Heartbeat
                | ChildMsg::Log(_)),
            ) => {
                let e =
                    ChannelError::Malformed(format!("unexpected message from a child: {other:?}"));
                tracing::warn!(process = %self.name, pid = self.pid(), error = %e, "protocol violation");
                if matches!(*report, Report::Pending) {
                    *report = Report::Broken(e);
                }
            }
            Err(e) => {
                tracing::warn!(process = %self.name, pid = self.pid(), error = %e, "malformed message from child");
                if matches!(*report, Report::Pending) {
                    *report = Report::Broken(e);
                }
            }
        }
    }

    /// Tells this process's subscriber that the child's target panicked:
    /// one ERROR event inside the child's span.
    fn report_panic(&self, info: &crate::wire::PanicInfo) {
        let pid = self.pid().unwrap_or(0);
        let _label = logs::child_span(tracing::Level::ERROR, &self.name, pid).entered();
        let location = info.location.as_deref().unwrap_or("unknown");
        match &info.backtrace {
            Some(backtrace) => tracing::error!(
                target: logs::CHILD_TARGET,
                location,
                backtrace = %backtrace,
                "panicked: {}",
                info.message
            ),
            None => tracing::error!(
                target: logs::CHILD_TARGET,
                location,
                "panicked: {}",
                info.message
            ),
        }
    }

    fn on_channel_error(&self, e: ChannelError) {
        if let ChannelError::Io(io) = &e
            && io.kind() == std::io::ErrorKind::ConnectionReset
        {
            // The child went away with our bytes unread: a close, and its
            // exit status says why.
            return;
        }
        tracing::warn!(process = %self.name, pid = self.pid(), error = %e, "control channel from child broke");
        let mut report = lock(&self.report);
        if matches!(*report, Report::Pending) {
            *report = Report::Broken(e);
        }
    }

    /// Blocks until the child has exited and reaps it, draining its
    /// channel meanwhile. For the exit rule, where no runtime may be left.
    pub(crate) fn join_blocking(&self) {
        let Some(child) = self.child.get() else {
            return;
        };
        if self.exit.get().is_none() {
            let drain = lock(&self.drain)
                .as_ref()
                .and_then(|fd| fd.try_clone().ok());
            child.wait_exited_blocking(drain.as_ref());
        }
        self.try_reap();
        drop(lock(&self.drain).take());
    }

    /// Waits until the watcher has read everything the child sent. If the
    /// watcher was lost with its runtime, starts a new one on the current
    /// runtime, reading on from a second descriptor of the channel.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes (a new watcher, once started, runs on
    /// its own).
    pub(crate) async fn wait_done(self: &Arc<Self>) {
        tokio::select! {
            () = self.done.wait() => return,
            () = self.watcher_lost.wait() => {}
        }
        if self.done.get().is_none() && !self.rewatching.swap(true, Ordering::AcqRel) {
            let stream = lock(&self.drain)
                .as_ref()
                .and_then(|fd| fd.try_clone().ok())
                .and_then(|fd| FdStream::from_owned_fd(fd).ok());
            let max_frame = self
                .max_frame
                .get()
                .copied()
                .unwrap_or(crate::wire::frame::DEFAULT_MAX_FRAME);
            match stream {
                Some(stream) => {
                    tracing::debug!(
                        process = %self.name,
                        pid = self.pid(),
                        "watching a child again after its runtime shut down"
                    );
                    spawn_watch(self.clone(), stream, max_frame);
                }
                None => {
                    self.try_reap();
                    self.done.set(());
                }
            }
        }
        self.done.wait().await;
    }
}

/// Takes charge of a freshly spawned child: records it, writes `first`
/// (the handshake and the orders) to it, and starts the watcher that reads
/// its reports until it exits, reaps it, and marks the state done.
///
/// The orders are written before this returns, so that a program that
/// starts a child and then leaves (or drops its runtime) still gets the
/// child running.
///
/// `output`, the reading ends of the pipes of a child whose output is
/// captured, is read as lines from now on (see `capture`); the watcher
/// marks the state done only once both have ended, or
/// [`DRAIN_AFTER_EXIT`] after the child exited.
///
/// # Cancel safety
///
/// Not cancel safe: dropped while the orders are written, the child finds
/// them truncated (it is watched and reaped all the same).
pub(crate) async fn start_watcher(
    state: Arc<ChildState>,
    child: sys::Child,
    sock: OwnedHandle,
    (first, fds): (BytesMut, Vec<OwnedHandle>),
    output: Option<(OwnedHandle, OwnedHandle)>,
    max_frame: usize,
) -> std::io::Result<()> {
    let drain = sock.try_clone()?;
    let mut stream = FdStream::from_owned_fd(sock)?;
    // The descriptors of the handles in the arguments go with the first byte.
    stream.queue_fds(fds);
    *lock(&state.drain) = Some(drain);
    state
        .child
        .set(child)
        .expect("a child state is started once");
    CHILDREN.insert(state.key, &state);
    if let Some(output) = output {
        state.capturing.store(true, Ordering::Release);
        let hook = lock(&state.output_hook).take().unwrap_or_default();
        let finished = state.clone();
        capture::spawn_capture(
            state.name.clone(),
            state.pid().unwrap_or(0),
            output,
            hook,
            move || {
                finished.output_done.set(());
            },
        );
    }
    // At once as far as the socket takes them (nearly always all of
    // them), the rest as the child reads.
    let written = write_orders(&mut stream, &first).await;
    if let Err(e) = written {
        // The child died (or closed its end) before reading its orders;
        // its exit status tells the story.
        tracing::debug!(process = %state.name, pid = state.pid(), error = %e, "could not write the orders");
    }
    drop(first);
    spawn_watch(state, stream, max_frame);
    Ok(())
}

/// Writes a child's orders: what the socket takes at once without a turn
/// of the reactor, then the rest as the child reads.
async fn write_orders(stream: &mut FdStream, orders: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < orders.len() {
        match stream.write_now(&orders[at..])? {
            0 => break,
            n => at += n,
        }
    }
    stream.write_all(&orders[at..]).await
}

/// Marks the watcher lost if it is dropped before it finished; created
/// outside the watcher's future and moved into it, so that a future
/// dropped before its first poll counts too.
struct Lost(Arc<ChildState>);

impl Drop for Lost {
    fn drop(&mut self) {
        if self.0.done.get().is_none() {
            self.0.rewatching.store(false, Ordering::Release);
            self.0.watcher_lost.set(());
        }
    }
}

/// Spawns a watcher on the current runtime.
fn spawn_watch(state: Arc<ChildState>, stream: FdStream, max_frame: usize) {
    let lost = Lost(state.clone());
    tokio::spawn(async move {
        let _lost = lost;
        watch(state, stream, max_frame).await;
    });
}

async fn watch(state: Arc<ChildState>, stream: FdStream, max_frame: usize) {
    let child = state.child.get().expect("started");
    let mut frames = FramedRead::new(stream, FrameCodec::new(max_frame));
    let exited = child.exited();
    tokio::pin!(exited);
    let mut reading = true;
    let mut has_exited = false;
    while reading && !has_exited {
        tokio::select! {
            biased;
            frame = frames.next() => match frame {
                Some(Ok(body)) => state.on_frame(&body),
                Some(Err(e)) => { state.on_channel_error(e); reading = false; }
                None => reading = false,
            },
            r = &mut exited => {
                if let Err(e) = r {
                    tracing::warn!(process = %state.name, pid = child.pid(), error = %e, "waiting for the child failed");
                }
                has_exited = true;
            }
        }
    }
    if reading {
        // Exited while we were reading: take what it sent before it died.
        let rest = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            while let Some(frame) = frames.next().await {
                match frame {
                    Ok(body) => state.on_frame(&body),
                    Err(e) => {
                        state.on_channel_error(e);
                        break;
                    }
                }
            }
        });
        let _ = rest.await;
    } else if !has_exited && let Err(e) = exited.await {
        tracing::warn!(process = %state.name, pid = child.pid(), error = %e, "waiting for the child failed");
    }
    // The channel is finished; reap (polling briefly if `exited` failed).
    let mut delay = Duration::from_millis(1);
    while state.try_reap().is_none() {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(100));
    }
    drop(frames);
    drop(lock(&state.drain).take());
    if state.capturing.load(Ordering::Acquire) {
        // Every line the child wrote is told before `join` returns, unless
        // some other process (a grandchild) keeps its pipes open.
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, state.output_done.wait()).await;
    }
    // The child's label spans close with it.
    drop(lock(&state.logs).take());
    state.done.set(());
}

/// The live (started, not yet reaped) children of this process.
static CHILDREN: Registry<ChildState> = Registry::new();

/// The live (started, not yet reaped) children of this process.
pub(crate) fn active_children() -> Vec<Arc<ChildState>> {
    CHILDREN.all()
}
