//! [`ProcessBuilder`]: a process's name, flags and start method.

use std::marker::PhantomData;
use std::sync::Mutex;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Process, ProcessError, Spec};
use crate::runtime::forkserver::StartMethod;
use crate::runtime::identity::{current, next_identity};
use crate::runtime::watch::ChildState;
use crate::sys::OwnedHandle;
use crate::target::{Target, encode_value};
use crate::wire::frame::DEFAULT_MAX_FRAME;
use crate::wire::message::{Identity, TargetRef};

/// Configures a [`Process`] before it is built or started.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # fn work(_: ()) {}
/// # async fn demo() -> mp::Result<()> {
/// let p = mp::Process::builder().name("worker").daemon(true).spawn(work, ()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ProcessBuilder {
    name: Option<String>,
    daemon: bool,
    detached: bool,
    max_frame: Option<usize>,
    start_method: Option<StartMethod>,
    supervised: bool,
    no_forward_tracing: bool,
    capture_output: bool,
}

impl ProcessBuilder {
    /// The process's name; the default is `Process-N`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A daemonic process is terminated, not joined, when its parent
    /// leaves `main`, and may not start children of its own.
    pub fn daemon(mut self, daemon: bool) -> Self {
        self.daemon = daemon;
        self
    }

    /// A detached process outlives its parent: it does not exit when the
    /// parent dies, the exit rule leaves it alone, and it starts in a
    /// session of its own.
    pub fn detached(mut self, detached: bool) -> Self {
        self.detached = detached;
        self
    }

    /// The largest frame accepted on the control channel, in bytes (default
    /// 128 MiB). Arguments and return values must fit.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = Some(bytes);
        self
    }

    /// How to start this process; the default is the program's
    /// [`get_start_method`](crate::get_start_method).
    pub fn start_method(mut self, method: StartMethod) -> Self {
        self.start_method = Some(method);
        self
    }

    /// Whether the child's `tracing` events reach this process's subscriber
    /// (default `true`): see [Logs from children](crate#logs-from-children).
    /// Off, the child's events go nowhere, unless it sets up a subscriber of
    /// its own.
    pub fn forward_tracing(mut self, forward: bool) -> Self {
        self.no_forward_tracing = !forward;
        self
    }

    /// Whether the child's standard output and error are captured (default
    /// `false`): each line it writes becomes a `tracing` event here, at
    /// INFO with target `tokio_multiprocessing::child`, inside the child's
    /// `child{process, pid}` span, with a `stream` field (`"stdout"` or
    /// `"stderr"`) and the line as its message. Off, the child writes to
    /// this process's own stdout and stderr.
    ///
    /// The two streams are pipes, in place before the target runs (under
    /// either start method), inherited by what the child starts. Lines
    /// keep their order within each stream; a line longer than 64 KiB
    /// comes in pieces, bytes that are not UTF-8 are replaced, and a last
    /// line without a newline counts. A child that writes faster than this
    /// process reads waits on its pipe; nothing is lost. [`join`] returns
    /// only once both streams have ended, so every line has been emitted
    /// by then, unless some other process (a grandchild) keeps them open:
    /// it waits for that at most 2 s after the child exited.
    ///
    /// [`join`]: crate::Process::join
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// A child of a `Supervisor`: it leads a process group of its own, and
    /// its readiness and heartbeats reach [`Process::notes`].
    pub(crate) fn supervised(mut self, supervised: bool) -> Self {
        self.supervised = supervised;
        self
    }

    /// Builds the process without starting it.
    pub fn build<A, R, M, F>(self, target: F, args: A) -> Process<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
    {
        let (args, fds) = crate::transport::handle::collect_handles(|| encode_value(&args));
        self.build_encoded(target.__target_ref().0, args, fds)
    }

    /// Builds a process from a target and arguments encoded already.
    pub(crate) fn build_encoded<R>(
        self,
        target: TargetRef,
        args: Result<Vec<u8>, String>,
        fds: Vec<OwnedHandle>,
    ) -> Process<R> {
        let (default_name, path) = next_identity();
        let cur = current();
        let identity = Identity {
            name: self.name.unwrap_or(default_name),
            path,
            authkey: cur.authkey.clone().into(),
            daemon: self.daemon,
            detached: self.detached,
            parent_pid: std::process::id(),
            supervised: self.supervised,
            // Set at `start`, from the subscriber this process has then.
            log_level: 0,
            capture_output: self.capture_output,
        };
        Process {
            state: ChildState::new(&identity.name, self.daemon, self.detached),
            spec: Mutex::new(Some(Spec { target, args, fds })),
            authkey: cur.authkey.clone(),
            identity,
            max_frame: self.max_frame.unwrap_or(DEFAULT_MAX_FRAME),
            start_method: self.start_method,
            forward_tracing: !self.no_forward_tracing,
            _result: PhantomData,
        }
    }

    /// Builds the process and starts it.
    ///
    /// # Errors
    ///
    /// As [`Process::start`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped after the child was
    /// spawned, the child runs on, with no handle left to join it (the exit
    /// rule still reaps it).
    pub async fn spawn<A, R, M, F>(
        self,
        target: F,
        args: A,
    ) -> std::result::Result<Process<R>, ProcessError>
    where
        F: Target<A, R, M>,
        A: Serialize,
        R: DeserializeOwned,
    {
        let p = self.build(target, args);
        p.start().await?;
        Ok(p)
    }
}
