//! [`PoolBuilder`]: a pool's settings, and starting it.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::path::Path;
use std::result::Result;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_bytes::ByteBuf;
use tokio::sync::{Notify, oneshot, watch};

use super::job::{Config, Counters, Shared, State};
use super::remote::{self, Heartbeat};
use super::{BuildError, Handle, Pool, WINDOW, dispatch};
use crate::connection::{Address, Listener, ListenerBuilder};
use crate::process::Environment;
use crate::target::{Target, encode_value};
use crate::wire::message::TargetRef;

/// Configures a [`Pool`] before it starts.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # use std::time::Duration;
/// fn setup(_: ()) {}
/// # async fn demo() -> mp::Result<()> {
/// let pool = mp::Pool::builder()
///     .processes(4)
///     .initializer(setup, ())
///     .max_tasks_per_child(1000)
///     .task_timeout(Duration::from_secs(30))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Default, Clone)]
#[must_use]
pub struct PoolBuilder {
    processes: usize,
    init: Option<(TargetRef, std::result::Result<ByteBuf, String>)>,
    max_tasks: Option<usize>,
    timeout: Option<Duration>,
    concurrency: Option<usize>,
    no_forward_tracing: bool,
    capture_output: bool,
    env: Environment,
    spin: Option<Duration>,
    /// `None`: the default; `Some(None)`: never.
    rest_after: Option<Option<Duration>>,
    /// Boxed: most pools do not listen.
    listen: Option<Box<ListenerBuilder>>,
    heartbeat: Option<(Duration, Duration)>,
    launch: Vec<super::LauncherCommand>,
}

/// How long a slot watches its worker's reply ring after sending jobs,
/// by default (see [`PoolBuilder::spin`]).
pub(super) const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// After how long with nothing to run a worker rests, by default (see
/// [`PoolBuilder::rest_after`]).
pub(super) const DEFAULT_REST_AFTER: Duration = Duration::from_secs(1);

impl PoolBuilder {
    /// Also takes workers on other machines: the pool listens at `address`
    /// for programs that call [`worker_main`](crate::worker_main) with the
    /// same `authkey`, each the same build of this program (checked before
    /// any task runs). They serve the same queue as the local workers.
    ///
    /// A remote worker shares no memory with the pool: every task goes
    /// over its connection, its start is a round trip (the pool's word is
    /// the gate that keeps a task from running twice), and tasks whose
    /// arguments hold handles stay with the local workers. One that
    /// vanishes (killed, cut off, or silent past the heartbeat timeout)
    /// fails the task it had started with
    /// [`TaskError::WorkerLost`](crate::TaskError::WorkerLost), and the
    /// task it held unstarted goes back to the queue. Placing and
    /// restarting remote workers is the cluster's scheduler's job
    /// (`docs/cluster.md`).
    ///
    /// An address other machines can reach needs TLS: use
    /// [`listen_with`](Self::listen_with) and
    /// [`ListenerBuilder::tls`](crate::connection::ListenerBuilder::tls).
    pub fn listen(self, address: impl Into<Address>, authkey: &[u8]) -> Self {
        self.listen_with(Listener::builder(address).authkey(authkey))
    }

    /// As [`listen`](Self::listen), with the listener configured by
    /// `listener` (TLS, deadlines). It must have an authkey.
    pub fn listen_with(mut self, listener: ListenerBuilder) -> Self {
        self.listen = Some(Box::new(listener));
        self
    }

    /// Starts remote workers with `command` once the pool listens (see
    /// [`LauncherCommand`](crate::LauncherCommand)); may be given more than
    /// once. Needs [`listen`](Self::listen).
    pub fn launch(mut self, command: super::LauncherCommand) -> Self {
        self.launch.push(command);
        self
    }

    /// How often the pool and its remote workers tell each other they are
    /// alive when they have nothing else to say (default 1 s), and how long
    /// either waits before it gives the other up (default 10 s).
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = Some((interval, timeout));
        self
    }

    /// The number of workers; 0 (the default) means the available parallelism.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// A target every worker runs once, before any task. If it panics in
    /// the first workers, [`build`](Self::build) fails.
    pub fn initializer<A, M, F>(mut self, f: F, args: A) -> Self
    where
        F: Target<A, (), M> + crate::CapturesNothing,
        A: Serialize,
    {
        let args = encode_value(&args).map(ByteBuf::from);
        self.init = Some((f.__target_ref().0, args));
        self
    }

    /// Replaces a worker after it has run `k` jobs (a task, or a chunk of
    /// a `map`), as Python's `maxtasksperchild`. `k = 0` fails the build.
    pub fn max_tasks_per_child(mut self, k: usize) -> Self {
        self.max_tasks = Some(k);
        self
    }

    /// A task running longer than `d` fails with [`TaskError::TimedOut`](crate::TaskError::TimedOut);
    /// its worker gets `SIGTERM`, then `SIGKILL` half a second later, and
    /// is replaced.
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// How many tasks a worker runs at once (default 1).
    ///
    /// Async targets interleave on the worker's runtime, so `c` of them
    /// waiting on I/O or timers take the time of one. A synchronous target
    /// holds the worker's thread while it runs, so the others pause. The
    /// tasks a worker runs share its fate: if it dies, or is killed
    /// because one of them outlived the task timeout, the others fail with
    /// [`TaskError::WorkerDied`](crate::TaskError::WorkerDied). `c = 0` fails the build.
    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = Some(c);
        self
    }

    /// Whether the workers' `tracing` events reach this process's
    /// subscriber (default `true`), as
    /// [`ProcessBuilder::forward_tracing`](crate::ProcessBuilder::forward_tracing).
    pub fn forward_tracing(mut self, forward: bool) -> Self {
        self.no_forward_tracing = !forward;
        self
    }

    /// Whether the workers' standard output and error are captured as
    /// lines (default `false`), as
    /// [`ProcessBuilder::capture_output`](crate::ProcessBuilder::capture_output):
    /// what a task prints becomes `tracing` events here, each inside the
    /// span of the worker that ran it.
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// Sets the environment variable `key` to `value` in every worker, as
    /// [`ProcessBuilder::env`](crate::ProcessBuilder::env) does for one
    /// process (in place before the initializer runs).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env.change(key.as_ref(), Some(value.as_ref()));
        self
    }

    /// How long each side watches the shared page before it sleeps
    /// (default 50 us; zero: it sleeps at once): the parent watches a
    /// worker's replies after it has sent it jobs, and a worker watches
    /// for jobs after it has replied.
    ///
    /// Jobs and replies go through memory shared with each worker; when
    /// the other side is asleep, the sender also rings it over the
    /// worker's socket, and waking costs most of a task's round trip on a
    /// machine whose idle CPUs sleep deeply. Watching takes CPU instead:
    /// at most `d` of a runtime worker thread per batch of jobs sent, at
    /// most `d` of a worker per reply, and nothing while the pool has no
    /// work (an idle pool burns no CPU). While the parent watches, that
    /// runtime thread runs nothing else, so keep `d` short (Tokio's tasks
    /// should yield within about 100 us).
    ///
    /// Measured on a 2-CPU machine in its slow wake-up regime, with the
    /// default: `pool_apply_seq` from a spawned task about 3 us (4 to 6 us
    /// in slower runs), against 70 to 80 us with neither watch;
    /// `pool_map_c1` about 1.2 us a task against 1.7 with `d` zero
    /// (`docs/pool.md`).
    pub fn spin(mut self, d: Duration) -> Self {
        self.spin = Some(d);
        self
    }

    /// After how long with nothing to run a worker rests (default 1 s;
    /// `None`: never). A resting worker gives back the pages of the
    /// program's code and constants it has mapped, and waits for its next
    /// job in the kernel, on its socket, rather than through its runtime
    /// (which would map back about a megabyte of that code on its way to
    /// sleep).
    ///
    /// A process's resident size counts every page of a file it has
    /// touched, although the machine holds each once, in the page cache,
    /// for every process that maps it; a worker that has run tasks has
    /// touched most of a program's code. Given back, the pages stay
    /// cached and shared, so this frees little memory on the machine (the
    /// page tables); what changes is what each worker shows as its own,
    /// which is what `ps`, `top` and the kernel's choice of a process to
    /// kill when memory runs out go by. Measured on a 2-CPU machine: an
    /// idle worker of the benchmark program 650 KiB resident at rest,
    /// against 5 MiB warm; the first task after a rest takes about 250 us
    /// longer, to map the code back.
    ///
    /// A worker with a task of its own on its runtime (an async target
    /// that spawned one) gives back its pages but waits through its
    /// runtime, which goes on running that task. Linux only: elsewhere a
    /// worker never rests.
    pub fn rest_after(mut self, d: Option<Duration>) -> Self {
        self.rest_after = Some(d);
        self
    }

    /// Removes the environment variable `key` from every worker's
    /// environment, as
    /// [`ProcessBuilder::env_remove`](crate::ProcessBuilder::env_remove).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.change(key.as_ref(), None);
        self
    }

    /// The workers' working directory, as
    /// [`ProcessBuilder::current_dir`](crate::ProcessBuilder::current_dir):
    /// a directory this process cannot see fails [`build`](Self::build)
    /// with [`BuildError::Start`] holding
    /// [`ProcessError::CurrentDir`](crate::ProcessError::CurrentDir).
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.env.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// Starts the workers and waits until each has run the initializer.
    ///
    /// # Errors
    ///
    /// [`BuildError::InvalidSetting`] for `max_tasks_per_child(0)` or
    /// `concurrency(0)`; [`BuildError::EncodeInit`] if the initializer's
    /// arguments did not encode; [`BuildError::Start`] if a worker process
    /// could not start (the program never called [`init`](crate::init),
    /// or this is not within a Tokio runtime), [`BuildError::Initializer`]
    /// if its initializer did not return, [`BuildError::WorkerExited`] if
    /// it died on the way. The workers already started are killed and
    /// reaped first.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future part way leaves the workers
    /// started so far to be terminated with the pool's handle.
    pub async fn build(self) -> Result<Pool, BuildError> {
        if self.max_tasks == Some(0) {
            return Err(BuildError::InvalidSetting(
                "max_tasks_per_child must be at least 1",
            ));
        }
        if self.concurrency == Some(0) {
            return Err(BuildError::InvalidSetting("concurrency must be at least 1"));
        }
        if !self.launch.is_empty() && self.listen.is_none() {
            return Err(BuildError::InvalidSetting(
                "launching remote workers needs a pool that listens",
            ));
        }
        if self.listen.as_ref().is_some_and(|l| l.key().is_none()) {
            return Err(BuildError::InvalidSetting(
                "a pool that listens for remote workers needs an authkey",
            ));
        }
        let concurrency = self.concurrency.unwrap_or(1);
        let init = match self.init {
            None => None,
            Some((t, Ok(a))) => Some((t, a)),
            Some((_, Err(e))) => return Err(BuildError::EncodeInit(e)),
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::Start(crate::ProcessError::NoRuntime));
        }
        let processes = match self.processes {
            0 => crate::process::cpu_count(),
            n => n,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            idle_notify: Notify::new(),
            state: watch::Sender::new(State::Running),
            stats: Counters::default(),
            config: Config {
                init,
                max_tasks: self.max_tasks,
                timeout: self.timeout,
                concurrency,
                window: WINDOW + concurrency,
                spin: self.spin.unwrap_or(DEFAULT_SPIN),
                rest_after: self.rest_after.unwrap_or(Some(DEFAULT_REST_AFTER)),
                forward_tracing: !self.no_forward_tracing,
                capture_output: self.capture_output,
                env: self.env,
            },
            next_id: AtomicU64::new(0),
            live_slots: AtomicUsize::new(processes),
            cancels: AtomicU64::new(0),
            cancelled: Notify::new(),
            hungry: AtomicUsize::new(0),
            ready_idle: AtomicUsize::new(0),
            runtime_gone: std::sync::atomic::AtomicBool::new(false),
            gave_up: std::sync::Mutex::new(None),
            slot_lost: tokio::sync::watch::Sender::new(None),
        });
        let mut slots = Vec::with_capacity(processes);
        let mut readies = Vec::with_capacity(processes);
        for _ in 0..processes {
            let (tx, rx) = oneshot::channel();
            slots.push(tokio::spawn(dispatch::supervise(shared.clone(), tx)));
            readies.push(rx);
        }
        let mut listening = None;
        if let Some(listener) = self.listen {
            let authkey = listener.key().map(<[u8]>::to_vec).unwrap_or_default();
            let listener = match (*listener).bind().await {
                Ok(l) => l,
                Err(e) => {
                    shared.begin_terminate();
                    return Err(BuildError::Listen(e));
                }
            };
            let address = listener.address().clone();
            listening = Some(address.clone());
            let beat = self
                .heartbeat
                .map_or_else(Heartbeat::default, |(interval, timeout)| Heartbeat {
                    interval,
                    timeout,
                });
            slots.push(tokio::spawn(remote::accept(shared.clone(), listener, beat)));
            for command in &self.launch {
                if let Err(e) = command.start(&address, &authkey) {
                    shared.begin_terminate();
                    return Err(BuildError::Io(e));
                }
            }
        }
        let pool = Pool {
            handle: Arc::new(Handle {
                shared,
                slots: Mutex::new(slots),
                processes,
                listening,
            }),
        };
        for ready in readies {
            let failure = match ready.await {
                Ok(Ok(())) => continue,
                Ok(Err(why)) => why,
                // The slot's task went without a word: its runtime shut down.
                Err(_) => BuildError::Start(crate::ProcessError::NoRuntime),
            };
            pool.terminate().await;
            return Err(failure);
        }
        Ok(pool)
    }
}
