//! What a supervisor keeps running, and by which rules: [`ChildSpec`] and
//! the policies ([`Restart`], [`Shutdown`], [`Strategy`], [`Backoff`],
//! [`AutoShutdown`]).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{Events, Supervisor, SupervisorBuilder};
use crate::pool::PoolBuilder;
use crate::sys::{OwnedHandle, Signal};
use crate::target::{Target, encode_value};
use crate::wire::message::TargetRef;

/// When a child that ended is started again (OTP's `restart`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// Always (the default).
    #[default]
    Permanent,
    /// Unless it ended normally (a target that returned, exit code 0).
    Transient,
    /// Never, not even by a sibling's restart; once it ends it is gone
    /// from the supervisor.
    Temporary,
}

/// How a child is stopped (OTP's `shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shutdown {
    /// `SIGKILL` to its process group at once.
    BrutalKill,
    /// Its stop signal (`SIGTERM` unless told otherwise) to its process
    /// group, then `SIGKILL` if it has not exited after this long (the
    /// default: 5 s).
    Timeout(Duration),
    /// The stop signal, then wait for as long as it takes (the default
    /// for a nested supervisor, which stops its own children by their
    /// own rules).
    Infinity,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::Timeout(Duration::from_secs(5))
    }
}

/// Which children restart when one ends and is to be restarted (OTP's
/// restart strategies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strategy {
    /// Only that child (the default).
    #[default]
    OneForOne,
    /// Every child: the others are stopped (in reverse start order), then
    /// all start again in order.
    OneForAll,
    /// That child and the ones started after it: those are stopped (in
    /// reverse), then they start again in order.
    RestForOne,
}

/// When a supervisor ends by itself because its significant children
/// ended (OTP 24's `auto_shutdown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AutoShutdown {
    /// Never (the default): significant children mean nothing.
    #[default]
    Never,
    /// When any significant child ends and is not restarted.
    AnySignificant,
    /// When every significant child has ended and none is restarted.
    AllSignificant,
}

/// The pause before a child starts again after it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    reset_after: Option<Duration>,
}

impl Backoff {
    /// No pause (OTP's behaviour, and the default).
    pub fn none() -> Backoff {
        Backoff {
            first: Duration::ZERO,
            max: Duration::ZERO,
            reset_after: None,
        }
    }

    /// `first` before the first restart of a child, doubling with each
    /// restart after that, up to `max`.
    pub fn exponential(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            reset_after: None,
        }
    }

    /// A child that ran at least `d` before it ended starts again after
    /// the first pause, as if it had never failed.
    pub fn reset_after(mut self, d: Duration) -> Backoff {
        self.reset_after = Some(d);
        self
    }

    /// The pause before restart number `streak` (from 1) of a child in a
    /// row.
    pub(super) fn delay(&self, streak: u32) -> Duration {
        if self.first.is_zero() {
            return Duration::ZERO;
        }
        let doublings = streak.saturating_sub(1).min(31);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// Whether an incarnation that ran `uptime` ends a streak of restarts.
    pub(super) fn resets(&self, uptime: Duration) -> bool {
        self.reset_after.is_some_and(|d| uptime >= d)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::none()
    }
}

/// What a child is.
pub(super) enum Kind {
    /// A target run in a child process, started again from the same
    /// encoded arguments on each restart.
    Target {
        target: TargetRef,
        args: Result<Vec<u8>, String>,
        /// The descriptors of the handles in the arguments; each start
        /// sends duplicates.
        handles: Vec<OwnedHandle>,
    },
    /// Any program.
    Command(Box<tokio::process::Command>),
    /// A pool, as a task of this program.
    Pool(PoolBuilder),
    /// A supervisor, as a task of this program.
    Supervisor(Nested),
}

/// A nested supervisor: built (under its parent's path and event streams)
/// at its first start, and the same supervisor started again after that.
pub(super) struct Nested {
    builder: Option<Box<SupervisorBuilder>>,
    built: Option<Supervisor>,
}

impl Nested {
    /// The supervisor, built under `path` with `events` on first use.
    pub(super) fn get(&mut self, path: &str, events: &Events) -> Supervisor {
        if let Some(sup) = &self.built {
            return sup.clone();
        }
        let builder = self
            .builder
            .take()
            .expect("a nested supervisor is either built or not");
        let sup = builder.build_nested(path, events);
        self.built = Some(sup.clone());
        sup
    }
}

impl fmt::Debug for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Target { .. } => f.write_str("Target"),
            Kind::Command(c) => f.debug_tuple("Command").field(c.as_std()).finish(),
            Kind::Pool(_) => f.write_str("Pool"),
            Kind::Supervisor(_) => f.write_str("Supervisor"),
        }
    }
}

/// One child of a [`Supervisor`](super::Supervisor): what it runs, and by
/// which rules it is restarted, waited for and stopped (OTP's child
/// specification).
///
/// ```no_run
/// use std::time::Duration;
/// use tokio_multiprocessing as mp;
/// use mp::supervisor::{ChildSpec, Restart, Shutdown};
///
/// async fn serve(port: u16) {
///     mp::notify_ready();
///     // ... serve until stopped ...
/// }
///
/// let spec = ChildSpec::new("api", serve, 8080)
///     .restart(Restart::Permanent)
///     .shutdown(Shutdown::Timeout(Duration::from_secs(10)))
///     .ready_timeout(Duration::from_secs(5));
/// ```
#[derive(Debug)]
#[must_use]
pub struct ChildSpec {
    pub(super) name: String,
    pub(super) kind: Kind,
    pub(super) restart: Restart,
    pub(super) shutdown: Shutdown,
    pub(super) ready_timeout: Option<Duration>,
    pub(super) watchdog: Option<Duration>,
    pub(super) significant: bool,
    pub(super) capture_output: bool,
    pub(super) forward_tracing: bool,
    pub(super) stop_signal: i32,
    /// How many times the child was started, over every run of its
    /// supervisor (a nested one is restarted by its parent): a start's
    /// generation goes on from there.
    pub(super) generation: u64,
}

impl ChildSpec {
    fn with_kind(name: impl Into<String>, kind: Kind) -> ChildSpec {
        let shutdown = match kind {
            Kind::Supervisor(_) => Shutdown::Infinity,
            _ => Shutdown::default(),
        };
        ChildSpec {
            name: name.into(),
            kind,
            restart: Restart::default(),
            shutdown,
            ready_timeout: None,
            watchdog: None,
            significant: false,
            capture_output: false,
            forward_tracing: true,
            stop_signal: Signal::Terminate.number(),
            generation: 0,
        }
    }

    /// A child that runs `target(args)` in a child process, as
    /// [`Process::new`](crate::Process::new) does. The arguments are
    /// encoded once, now, and every restart runs the target on the same
    /// bytes. A target whose arguments fail to encode fails to start.
    pub fn new<A, R, M, F>(name: impl Into<String>, target: F, args: A) -> ChildSpec
    where
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
    {
        // Beside the bytes, so that every start gets copies of its own.
        let (args, handles) =
            crate::transport::handle::collect_handles_beside(|| encode_value(&args));
        ChildSpec::with_kind(
            name,
            Kind::Target {
                target: target.__target_ref().0,
                args,
                handles,
            },
        )
    }

    /// A child that runs any program. Readiness and heartbeats come
    /// through the `sd_notify` protocol, as systemd's `Type=notify`: the
    /// program finds a socket in `NOTIFY_SOCKET` and sends `READY=1` and
    /// `WATCHDOG=1` to it (and finds the watchdog interval in
    /// `WATCHDOG_USEC`). The command's own settings (arguments,
    /// environment, standard streams) are kept; it is started in a process
    /// group of its own.
    pub fn command(name: impl Into<String>, command: tokio::process::Command) -> ChildSpec {
        ChildSpec::with_kind(name, Kind::Command(Box::new(command)))
    }

    /// A child that is a [`Pool`](crate::Pool), built from `builder` on
    /// every start, as a task of this program (reach it with
    /// [`Supervisor::pool`](super::Supervisor::pool)). The pool replaces
    /// its own workers; when it cannot (the start of a replacement keeps
    /// failing, past its retry limit), it ends abnormally, even if its
    /// other workers run on: the supervisor terminates it and its strategy
    /// applies, as to any child's exit.
    pub fn pool(name: impl Into<String>, builder: PoolBuilder) -> ChildSpec {
        ChildSpec::with_kind(name, Kind::Pool(builder))
    }

    /// A child that is a supervisor of its own, as a task of this program.
    /// Its meltdown counts as one exit of this child.
    pub fn supervisor(name: impl Into<String>, builder: SupervisorBuilder) -> ChildSpec {
        ChildSpec::with_kind(
            name,
            Kind::Supervisor(Nested {
                builder: Some(Box::new(builder)),
                built: None,
            }),
        )
    }

    /// When the child is started again after it ended (default
    /// [`Restart::Permanent`]).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// How the child is stopped (default [`Shutdown::Timeout`] of 5 s;
    /// [`Shutdown::Infinity`] for a nested supervisor).
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Waits up to `d` after each start for the child to say it is ready
    /// ([`notify_ready`](crate::notify_ready), or `READY=1` for a
    /// program) before the next child starts. A child that is not ready
    /// in time, or ends first, failed to start.
    pub fn ready_timeout(mut self, d: Duration) -> Self {
        self.ready_timeout = Some(d);
        self
    }

    /// The child must send a heartbeat ([`heartbeat`](crate::heartbeat),
    /// or `WATCHDOG=1` for a program) at least every `d`, from its start
    /// (or from when it is ready, with a `ready_timeout`); a child that
    /// misses one is killed, with [`Event::WatchdogTimeout`](super::Event::WatchdogTimeout),
    /// and restarted by its rules.
    pub fn watchdog(mut self, d: Duration) -> Self {
        self.watchdog = Some(d);
        self
    }

    /// Whether the child's end may end the supervisor (see
    /// [`AutoShutdown`]).
    pub fn significant(mut self, significant: bool) -> Self {
        self.significant = significant;
        self
    }

    /// Captures the child's standard output and error as lines, which
    /// become [`Event::Log`](super::Event::Log)s and `tracing` events
    /// (default `false`), for a program and for a target alike (as
    /// [`ProcessBuilder::capture_output`](crate::ProcessBuilder::capture_output)
    /// describes). A child's `Log`s never come before its
    /// [`Started`](super::Event::Started), and keep their order within
    /// each stream. For a pool, its workers' output becomes `tracing`
    /// events only, as
    /// [`PoolBuilder::capture_output`](crate::PoolBuilder::capture_output).
    /// Nested supervisors pass it on to nothing: their children have their
    /// own specs.
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// Whether a target child or a pool's workers forward their `tracing`
    /// events to this process's subscriber (default `true`), as
    /// [`ProcessBuilder::forward_tracing`](crate::ProcessBuilder::forward_tracing).
    /// A program's output is not `tracing`; see
    /// [`capture_output`](Self::capture_output).
    pub fn forward_tracing(mut self, forward: bool) -> Self {
        self.forward_tracing = forward;
        self
    }

    /// The signal that asks the child to stop (default `SIGTERM`, 15),
    /// sent to its whole process group.
    pub fn stop_signal(mut self, signal: i32) -> Self {
        self.stop_signal = signal;
        self
    }

    /// The child's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}
