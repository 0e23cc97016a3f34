//! What a supervisor tells about its children: [`Event`]s, how a child
//! ended ([`ExitKind`]), and where each child stands ([`ChildInfo`]).

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::ReusableBoxFuture;

/// Something that happened to a supervised child. `child` is the child's
/// path: the supervisors' names and its own, joined with `/`
/// (`"root/sub/db"`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A new incarnation of the child started. For a pool or a nested
    /// supervisor (tasks of this program), `pid` is the program's own.
    Started {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
        /// Which start of this child it is, from 1.
        generation: u64,
    },
    /// The child said it is ready ([`notify_ready`](crate::notify_ready),
    /// or `READY=1` from a program).
    Ready {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// An incarnation of the child ended, whatever the reason: a crash, a
    /// restart of its siblings, a shutdown.
    Exited {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
        /// How it ended.
        exit: ExitKind,
        /// How long it ran.
        uptime: Duration,
    },
    /// The child is to start again after `delay`.
    RestartScheduled {
        /// The child's path.
        child: String,
        /// The pause before the start (the backoff).
        delay: Duration,
        /// Restarts counted in the supervisor's current period, this one
        /// included.
        restarts_in_period: u32,
    },
    /// The supervisor is stopping the child (its stop signal is sent).
    Stopping {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// The child outlived its shutdown timeout and was killed.
    Killed {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// The child missed its heartbeat; it is killed and handled as an
    /// exit.
    WatchdogTimeout {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
    },
    /// Restarts in the period went past the supervisor's intensity: it
    /// stops every child and ends with
    /// [`SupervisorError::IntensityExceeded`](super::SupervisorError::IntensityExceeded).
    IntensityExceeded {
        /// The supervisor's path.
        supervisor: String,
        /// The child whose exit went past the limit.
        child: String,
        /// Restarts counted in the period.
        restarts: u32,
    },
    /// A line the child wrote to its standard output or error, when it
    /// was started with [`capture_output`](super::ChildSpec::capture_output).
    Log {
        /// The child's path.
        child: String,
        /// Its process id.
        pid: u32,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its end (a line over 64 KiB comes in pieces).
        line: String,
    },
    /// This stream fell behind and missed this many events.
    Lagged(u64),
}

/// One line for a log: `"root/db: started, pid 4242 (start 2)"`.
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Started {
                child,
                pid,
                generation,
            } => write!(f, "{child}: started, pid {pid} (start {generation})"),
            Event::Ready { child, pid } => write!(f, "{child}: ready, pid {pid}"),
            Event::Exited {
                child,
                pid,
                exit,
                uptime,
            } => write!(f, "{child}: pid {pid} {exit} after {uptime:.1?}"),
            Event::RestartScheduled {
                child,
                delay,
                restarts_in_period,
            } if delay.is_zero() => write!(
                f,
                "{child}: restarts at once (restart {restarts_in_period} in the period)"
            ),
            Event::RestartScheduled {
                child,
                delay,
                restarts_in_period,
            } => write!(
                f,
                "{child}: restarts in {delay:.1?} (restart {restarts_in_period} in the period)"
            ),
            Event::Stopping { child, pid } => write!(f, "{child}: stopping pid {pid}"),
            Event::Killed { child, pid } => {
                write!(
                    f,
                    "{child}: pid {pid} outlived its shutdown timeout; killed"
                )
            }
            Event::WatchdogTimeout { child, pid } => {
                write!(f, "{child}: pid {pid} missed its heartbeat; killed")
            }
            Event::IntensityExceeded {
                supervisor,
                child,
                restarts,
            } => write!(
                f,
                "{supervisor}: {restarts} restarts in the period (the last for {child}), \
                 past its intensity; every child is stopped"
            ),
            Event::Log {
                child,
                pid,
                stream,
                line,
            } => {
                let stream = match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                };
                write!(f, "{child}[{pid}] {stream}: {line}")
            }
            Event::Lagged(n) => write!(f, "(this reader missed {n} events)"),
        }
    }
}

/// How an incarnation of a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitKind {
    /// It returned, or exited with code 0.
    Normal,
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// Its target panicked, with this message.
    Panicked(String),
    /// It was not ready within its `ready_timeout`.
    ReadyTimeout,
    /// It missed its heartbeat.
    WatchdogTimeout,
    /// It could not be started.
    SpawnFailed(String),
    /// A pool that could not keep its workers, or a nested supervisor
    /// that melted down, ended with this reason.
    Failed(String),
}

impl ExitKind {
    /// Whether this is a normal end (a transient child is not restarted
    /// after one).
    pub fn is_normal(&self) -> bool {
        matches!(self, ExitKind::Normal)
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::Normal => f.write_str("exited normally"),
            ExitKind::Code(code) => write!(f, "exited with code {code}"),
            ExitKind::Signal(sig) => {
                write!(f, "killed by {}", crate::sys::signal_name(*sig))
            }
            ExitKind::Panicked(message) => write!(f, "panicked: {message}"),
            ExitKind::ReadyTimeout => f.write_str("was not ready in time"),
            ExitKind::WatchdogTimeout => f.write_str("missed its heartbeat"),
            ExitKind::SpawnFailed(why) => write!(f, "could not be started: {why}"),
            ExitKind::Failed(why) => write!(f, "failed: {why}"),
        }
    }
}

/// Which output stream a captured line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a child stands, from [`Supervisor::which_children`](super::Supervisor::which_children).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChildInfo {
    /// The child's name (not its path).
    pub name: String,
    /// The running incarnation's process id.
    pub pid: Option<u32>,
    /// Where it stands.
    pub state: ChildStatus,
    /// How many times it was restarted after an exit.
    pub restarts: u32,
    /// How many times it was started, its first start included.
    pub generation: u64,
}

/// Where a child stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildStatus {
    /// Started, waiting to be ready.
    Starting,
    /// Running (and ready, if it has a `ready_timeout`).
    Running,
    /// Waiting out its backoff before it starts again.
    Backoff,
    /// Being stopped.
    Stopping,
    /// Not running: not started yet, terminated, or ended and not to be
    /// restarted.
    Stopped,
}

/// The events of a supervisor, from the moment it was made, as a
/// [`Stream`]. Owned: `Send + Unpin + 'static`. A reader that falls behind
/// by more than the buffer (1,024 events) gets one [`Event::Lagged`] with
/// the number it missed, then the events that follow.
///
/// The stream ends once the supervisor is gone (its last handle dropped
/// and its task ended) and every event before that was read; a
/// supervisor that stopped may be started again, so it does not end
/// then.
///
/// # Cancel safety
///
/// Cancel safe: an event is taken only in the poll that returns it.
pub struct EventStream {
    inner: ReusableBoxFuture<'static, (Result<Event, RecvError>, broadcast::Receiver<Event>)>,
}

async fn next(
    mut rx: broadcast::Receiver<Event>,
) -> (Result<Event, RecvError>, broadcast::Receiver<Event>) {
    let result = rx.recv().await;
    (result, rx)
}

impl EventStream {
    pub(super) fn new(rx: broadcast::Receiver<Event>) -> EventStream {
        EventStream {
            inner: ReusableBoxFuture::new(next(rx)),
        }
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let (result, rx) = futures::ready!(self.inner.poll(cx));
        self.inner.set(next(rx));
        match result {
            Ok(event) => Poll::Ready(Some(event)),
            Err(RecvError::Lagged(n)) => Poll::Ready(Some(Event::Lagged(n))),
            Err(RecvError::Closed) => Poll::Ready(None),
        }
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream").finish_non_exhaustive()
    }
}
