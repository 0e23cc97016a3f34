//! A process supervisor: [`Supervisor`] keeps a tree of children running
//! by policy, the way Erlang/OTP's `supervisor` does, for OS processes.
//!
//! ```no_run
//! use std::time::Duration;
//! use tokio_multiprocessing as mp;
//! use mp::supervisor::{ChildSpec, Restart, Strategy, Supervisor};
//!
//! async fn serve_db(port: u16) {
//!     mp::notify_ready();
//!     // ... serve ...
//!     mp::shutdown_requested().await; // SIGTERM from the supervisor
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let sup = Supervisor::builder()
//!     .name("root")
//!     .strategy(Strategy::OneForOne)
//!     .intensity(3, Duration::from_secs(5))
//!     .child(
//!         ChildSpec::new("db", serve_db, 5432)
//!             .restart(Restart::Permanent)
//!             .ready_timeout(Duration::from_secs(10)),
//!     )
//!     .child(ChildSpec::command("proxy", tokio::process::Command::new("some-daemon")))
//!     .start()
//!     .await?;
//! sup.wait().await?; // until it stops by itself, or by sup.shutdown()
//! # Ok(()) }
//! ```
//!
//! Children start in order, each ready (if it has a `ready_timeout`)
//! before the next, and stop in reverse order, each reaped before the next
//! is signalled. Every supervised child leads a process group of its own:
//! the stop signal goes to the whole group, and what is left of the group
//! is killed once its leader is gone, so grandchildren do not outlive it,
//! and a replacement never runs beside a remnant of the incarnation before
//! it. See `docs/supervisor.md` for the rules and how they map to OTP,
//! systemd and supervisord.
//!
//! # Caveats
//!
//! A supervisor runs as a task on the runtime that started it. Dropping
//! the last [`Supervisor`] handle shuts it down in the background; if that
//! runtime shuts down first, the children are stopped from the thread that
//! drops it, in reverse order, each by its stop signal and timeout. The
//! [`InitGuard`](crate::InitGuard) stops what a supervisor still runs when
//! `main` ends, before it joins the other children.

mod engine;
mod error;
mod event;
mod incarnation;
mod spec;

pub use error::SupervisorError;
pub use event::{ChildInfo, ChildStatus, Event, EventStream, ExitKind, OutputStream};
pub use spec::{AutoShutdown, Backoff, ChildSpec, Restart, Shutdown, Strategy};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::process::Process;
use crate::runtime::watch::Note;
use engine::{Cmd, Engine};

/// How many events a slow reader may fall behind before it gets
/// [`Event::Lagged`].
const EVENT_BUFFER: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where a supervisor's events go: its own stream, and those of the
/// supervisors above it (a nested supervisor's events appear on the
/// root's stream too, with their full paths).
#[derive(Clone, Debug)]
pub(crate) struct Events {
    senders: Vec<broadcast::Sender<Event>>,
}

impl Events {
    fn emit(&self, event: Event) {
        for tx in &self.senders {
            let _ = tx.send(event.clone());
        }
    }
}

/// What a supervisor runs, and by which rules: its builder's settings,
/// handed to the engine at each start and back at its end.
#[derive(Debug)]
struct Config {
    strategy: Strategy,
    intensity: (u32, Duration),
    backoff: Backoff,
    auto_shutdown: AutoShutdown,
    cancel: Option<CancellationToken>,
    children: Vec<ChildSpec>,
}

/// Where a supervisor is in its life.
#[derive(Debug, Clone)]
enum Run {
    Idle,
    Running,
    Stopped(Result<(), SupervisorError>),
}

/// A process group a supervisor runs, for stopping it from a thread at
/// exit.
struct RunningGroup {
    pgid: u32,
    process: Option<Arc<Process<IgnoredAny>>>,
    stop_signal: i32,
    timeout: Duration,
}

/// What a supervisor's handles and its engine share.
struct Shared {
    path: String,
    events: Events,
    config: Mutex<Option<Config>>,
    run: watch::Sender<Run>,
    children: Mutex<Vec<ChildInfo>>,
    groups: Mutex<Vec<RunningGroup>>,
    pools: Mutex<HashMap<String, Pool>>,
    runtime_dir: OnceLock<PathBuf>,
    /// Whether this supervisor is no other's child (the exit rule asks
    /// only these to stop; each stops its own nested supervisors).
    root: bool,
    /// Cancelled by the exit rule: the engine stops every child and ends,
    /// restarting none.
    exiting: CancellationToken,
}

impl Shared {
    fn publish(&self, children: Vec<ChildInfo>, groups: Vec<RunningGroup>) {
        *lock(&self.children) = children;
        *lock(&self.groups) = groups;
    }

    fn set_pool(&self, name: &str, pool: Option<Pool>) {
        let mut pools = lock(&self.pools);
        match pool {
            Some(p) => {
                pools.insert(name.to_owned(), p);
            }
            None => {
                pools.remove(name);
            }
        }
    }

    /// A private directory (mode 0700) for the `sd_notify` sockets of this
    /// supervisor's programs.
    fn runtime_dir(&self) -> PathBuf {
        self.runtime_dir
            .get_or_init(|| {
                let mut nonce = [0u8; 8];
                let _ = getrandom::fill(&mut nonce);
                let dir = std::env::temp_dir().join(format!(
                    "tokio-mp-{}-{:016x}",
                    std::process::id(),
                    u64::from_ne_bytes(nonce)
                ));
                if let Err(e) = crate::sys::create_private_dir(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "no directory for sd_notify sockets");
                }
                dir
            })
            .clone()
    }

    /// Stops, from this thread, the process groups the supervisor still
    /// runs, in reverse order: the exit rule's last word.
    fn stop_groups_blocking(&self) {
        let groups = std::mem::take(&mut *lock(&self.groups));
        for g in groups.iter().rev() {
            let _ = crate::sys::signal_group(g.pgid, g.stop_signal);
            let deadline = Instant::now() + g.timeout;
            while crate::sys::group_exists(g.pgid) && Instant::now() < deadline {
                match &g.process {
                    Some(p) => {
                        p.wait_blocking(Duration::from_millis(5));
                    }
                    None => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            if crate::sys::group_exists(g.pgid) {
                let _ = crate::sys::signal_group(g.pgid, crate::sys::Signal::Kill.number());
            }
            if let Some(p) = &g.process {
                p.wait_blocking(Duration::from_secs(1));
            }
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(dir) = self.runtime_dir.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Every supervisor of this program, for the exit rule.
static LIVE: Mutex<Vec<Weak<Shared>>> = Mutex::new(Vec::new());

/// Asks every supervisor to stop (as `shutdown` does, each in its own
/// order), waits, from this thread, for them to finish, up to `grace`;
/// then stops whatever process groups any supervisor still runs. Part of
/// the exit rule, before it joins the children.
pub(crate) fn stop_all_blocking(grace: Duration) {
    let live: Vec<Arc<Shared>> = {
        let mut live = lock(&LIVE);
        live.retain(|w| w.strong_count() > 0);
        live.iter().filter_map(Weak::upgrade).collect()
    };
    // A supervisor left running would restart the children stopped from
    // here below; its engine stops them itself, restarting none.
    for shared in live.iter().filter(|s| s.root) {
        shared.exiting.cancel();
    }
    let deadline = Instant::now() + grace;
    for shared in &live {
        while matches!(*shared.run.borrow(), Run::Running) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for shared in live.iter().rev() {
        shared.stop_groups_blocking();
    }
}

/// Configures a [`Supervisor`]: its name, rules and children.
#[derive(Debug)]
#[must_use]
pub struct SupervisorBuilder {
    name: String,
    config: Config,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        SupervisorBuilder {
            name: "supervisor".to_owned(),
            config: Config {
                strategy: Strategy::default(),
                intensity: (3, Duration::from_secs(5)),
                backoff: Backoff::none(),
                auto_shutdown: AutoShutdown::Never,
                cancel: None,
                children: Vec::new(),
            },
        }
    }
}

impl SupervisorBuilder {
    /// The supervisor's name (default `"supervisor"`). Names form the
    /// paths of events: `"root/sub/db"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Which children restart with one that ended (default
    /// [`Strategy::OneForOne`]).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.config.strategy = strategy;
        self
    }

    /// At most `max_restarts` restarts within `period` (default 3 in 5 s);
    /// one more stops every child and ends the supervisor with
    /// [`SupervisorError::IntensityExceeded`].
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.config.intensity = (max_restarts, period);
        self
    }

    /// The pause before a child starts again (default none, as OTP).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Whether significant children ending ends the supervisor (default
    /// [`AutoShutdown::Never`]).
    pub fn auto_shutdown(mut self, auto: AutoShutdown) -> Self {
        self.config.auto_shutdown = auto;
        self
    }

    /// The supervisor shuts down when `token` is cancelled.
    pub fn cancel_on(mut self, token: CancellationToken) -> Self {
        self.config.cancel = Some(token);
        self
    }

    /// Adds a child, started after the ones added before it.
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.config.children.push(spec);
        self
    }

    /// Builds the supervisor without starting it (so that
    /// [`events`](Supervisor::events) can be taken before the start).
    pub fn build(self) -> Supervisor {
        self.build_under(String::new(), Vec::new())
    }

    /// Builds and starts the supervisor; see [`Supervisor::start`].
    ///
    /// # Errors
    ///
    /// As [`Supervisor::start`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: children started before the future is dropped run
    /// on, under a supervisor nobody holds (it shuts down at once).
    pub async fn start(self) -> Result<Supervisor, SupervisorError> {
        let sup = self.build();
        sup.start().await?;
        Ok(sup)
    }

    /// A supervisor under another: its path under `parent`, its events
    /// also on the parent's streams.
    fn build_nested(self, path: &str, parent: &Events) -> Supervisor {
        self.build_under(path.to_owned(), parent.senders.clone())
    }

    fn build_under(self, path: String, above: Vec<broadcast::Sender<Event>>) -> Supervisor {
        let root = above.is_empty();
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        let mut senders = vec![tx];
        senders.extend(above);
        let path = if path.is_empty() {
            self.name.clone()
        } else {
            path
        };
        let shared = Arc::new(Shared {
            path,
            events: Events { senders },
            config: Mutex::new(Some(self.config)),
            run: watch::Sender::new(Run::Idle),
            children: Mutex::new(Vec::new()),
            groups: Mutex::new(Vec::new()),
            pools: Mutex::new(HashMap::new()),
            runtime_dir: OnceLock::new(),
            root,
            exiting: CancellationToken::new(),
        });
        lock(&LIVE).push(Arc::downgrade(&shared));
        Supervisor {
            handle: Arc::new(Handle {
                shared,
                cmds: Mutex::new(None),
            }),
        }
    }
}

/// The handle whose drop shuts the supervisor down.
struct Handle {
    shared: Arc<Shared>,
    /// The running engine's calls; dropping it (with the last handle)
    /// shuts the engine down.
    cmds: Mutex<Option<mpsc::UnboundedSender<Cmd>>>,
}

/// A supervisor of child processes (and pools, and other supervisors).
///
/// `Clone` gives another handle to the same supervisor (an `Arc` inside);
/// every method takes `&self`. See the [module docs](self).
#[derive(Clone)]
pub struct Supervisor {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("path", &self.handle.shared.path)
            .field("children", &*lock(&self.handle.shared.children))
            .finish()
    }
}

impl Supervisor {
    /// A builder for a supervisor.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// Starts the children in order, each ready (if it has a
    /// `ready_timeout`) before the next, then supervises them in a task of
    /// the current runtime. A supervisor that stopped may be started
    /// again.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::StartFailed`] if a child did not start or was not
    /// ready in time (the ones started before it are stopped first, in
    /// reverse); [`SupervisorError::AlreadyStarted`] if it runs;
    /// [`SupervisorError::NoRuntime`] outside a Tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: children started before the future is dropped are
    /// stopped by the supervisor in the background.
    pub async fn start(&self) -> Result<(), SupervisorError> {
        match self.launch()?.await {
            Ok(result) => result,
            Err(_) => Err(SupervisorError::Stopped),
        }
    }

    /// Spawns the engine; the receiver says how the start went. (Not
    /// async, so that a nested supervisor's start, awaited in its
    /// parent's engine, holds no future of this one's.)
    fn launch(&self) -> Result<oneshot::Receiver<Result<(), SupervisorError>>, SupervisorError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SupervisorError::NoRuntime);
        }
        let shared = self.shared().clone();
        let config = lock(&shared.config)
            .take()
            .ok_or(SupervisorError::AlreadyStarted)?;
        shared.run.send_replace(Run::Running);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        *lock(&self.handle.cmds) = Some(cmd_tx);
        let (started_tx, started_rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut engine = Engine::new(shared.clone(), config, cmd_rx);
            let started = engine.start_all().await;
            let mut started_tx = Some(started_tx);
            let end = match started {
                Ok(()) => {
                    if let Some(tx) = started_tx.take() {
                        let _ = tx.send(Ok(()));
                    }
                    engine.run().await
                }
                // A shutdown asked for while the children started: the
                // start did not happen, the stop did.
                Err(SupervisorError::Stopped) => Ok(()),
                Err(ref e) => Err(e.clone()),
            };
            // Everything is back in place before anyone hears of the end:
            // the configuration for a later start, the empty list.
            *lock(&shared.config) = Some(engine.into_config());
            shared.publish(Vec::new(), Vec::new());
            shared.run.send_replace(Run::Stopped(end));
            if let Some(tx) = started_tx {
                let _ = tx.send(started);
            }
        });
        Ok(started_rx)
    }

    /// The events from now on (a child started, was ready, exited, was
    /// scheduled to restart, stopped, killed; a watchdog fired; the
    /// intensity was exceeded; captured output), with those of the
    /// supervisors under this one.
    pub fn events(&self) -> EventStream {
        EventStream::new(self.shared().events.senders[0].subscribe())
    }

    /// Where each child stands, in start order.
    pub fn which_children(&self) -> Vec<ChildInfo> {
        lock(&self.shared().children).clone()
    }

    /// The pool child named `name`, while it runs.
    pub fn pool(&self, name: &str) -> Option<Pool> {
        lock(&self.shared().pools).get(name).cloned()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, SupervisorError>>) -> Cmd,
    ) -> Result<T, SupervisorError> {
        let (tx, rx) = oneshot::channel();
        {
            let cmds = lock(&self.handle.cmds);
            let sender = cmds.as_ref().ok_or(SupervisorError::Stopped)?;
            sender
                .send(make(tx))
                .map_err(|_| SupervisorError::Stopped)?;
        }
        rx.await.map_err(|_| SupervisorError::Stopped)?
    }

    /// Adds a child at the end and starts it (ready, if it must be,
    /// before this returns).
    ///
    /// # Errors
    ///
    /// [`SupervisorError::DuplicateChild`],
    /// [`SupervisorError::StartFailed`] (the child is not kept),
    /// [`SupervisorError::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// The call goes to the supervisor at once and is carried out whether
    /// or not the future is polled to its end.
    pub async fn start_child(&self, spec: ChildSpec) -> Result<(), SupervisorError> {
        self.call(|tx| Cmd::StartChild(Box::new(spec), tx)).await
    }

    /// Stops a child by its [`Shutdown`] rule; it is not restarted, and
    /// this counts as no restart. A child waiting out its backoff does
    /// not start. A temporary child is deleted.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::NoSuchChild`], [`SupervisorError::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// As [`start_child`](Self::start_child).
    pub async fn terminate_child(&self, name: &str) -> Result<(), SupervisorError> {
        let name = name.to_owned();
        self.call(|tx| Cmd::TerminateChild(name, tx)).await
    }

    /// Starts a terminated child again.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::ChildRunning`] if it runs,
    /// [`SupervisorError::NoSuchChild`], [`SupervisorError::StartFailed`],
    /// [`SupervisorError::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// As [`start_child`](Self::start_child).
    pub async fn restart_child(&self, name: &str) -> Result<(), SupervisorError> {
        let name = name.to_owned();
        self.call(|tx| Cmd::RestartChild(name, tx)).await
    }

    /// Forgets a terminated child.
    ///
    /// # Errors
    ///
    /// [`SupervisorError::ChildRunning`] if it runs,
    /// [`SupervisorError::NoSuchChild`], [`SupervisorError::Stopped`].
    ///
    /// # Cancel safety
    ///
    /// As [`start_child`](Self::start_child).
    pub async fn delete_child(&self, name: &str) -> Result<(), SupervisorError> {
        let name = name.to_owned();
        self.call(|tx| Cmd::DeleteChild(name, tx)).await
    }

    /// Stops every child, in reverse start order, each by its
    /// [`Shutdown`] rule and reaped before the next is signalled, and ends
    /// the supervisor.
    ///
    /// # Errors
    ///
    /// The supervisor's own end, if it had ended before: see
    /// [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the shutdown goes on in the background; a later
    /// `wait` sees its end.
    pub async fn shutdown(&self) -> Result<(), SupervisorError> {
        if let Some(cmds) = lock(&self.handle.cmds).as_ref() {
            let _ = cmds.send(Cmd::Shutdown);
        }
        self.wait().await
    }

    /// Waits until the supervisor has stopped, by itself or by
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Errors
    ///
    /// [`SupervisorError::IntensityExceeded`] after a meltdown;
    /// [`SupervisorError::StartFailed`] if its start failed;
    /// [`SupervisorError::Stopped`] if it was never started.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait(&self) -> Result<(), SupervisorError> {
        let mut run = self.shared().run.subscribe();
        let state = run
            .wait_for(|r| !matches!(r, Run::Running))
            .await
            .map(|r| r.clone())
            .unwrap_or(Run::Stopped(Err(SupervisorError::Stopped)));
        match state {
            Run::Stopped(end) => end,
            Run::Idle | Run::Running => Err(SupervisorError::Stopped),
        }
    }
}

// ---------------------------------------------------------- in a child

/// Tells this process's supervisor that it is ready: the supervisor starts
/// the next child (for a child with a `ready_timeout`) and emits
/// [`Event::Ready`]. A no-op in a process that is not a supervised child.
pub fn notify_ready() {
    crate::runtime::bootstrap::notify(Note::Ready);
}

/// Tells this process's supervisor that it is alive, for a child with a
/// [`watchdog`](ChildSpec::watchdog). A no-op in a process that is not a
/// supervised child.
pub fn heartbeat() {
    crate::runtime::bootstrap::notify(Note::Heartbeat);
}

/// Resolves when the supervisor asks this child to stop (its stop signal,
/// `SIGTERM` by default). A target that awaits it can clean up and return;
/// one that never calls it is ended by the signal as before. The first
/// call installs the signal's handler, from then on the signal no longer
/// ends the process by itself. In a process that is not a supervised child
/// it resolves on `SIGTERM` too.
///
/// # Panics
///
/// Outside a Tokio runtime.
///
/// # Cancel safety
///
/// Cancel safe: every call waits for the next signal, and one that came
/// before (once the handler is installed) is not lost.
pub async fn shutdown_requested() {
    static STOP: OnceLock<watch::Receiver<bool>> = OnceLock::new();
    let mut rx = STOP
        .get_or_init(|| {
            let (tx, rx) = watch::channel(false);
            match crate::sys::TerminateSignal::listen() {
                Ok(mut sig) => {
                    tokio::spawn(async move {
                        sig.recv().await;
                        tx.send_replace(true);
                        // Keep the handler (and so the stream) for good.
                        std::future::pending::<()>().await;
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGTERM"),
            }
            rx
        })
        .clone();
    let _ = rx.wait_for(|stop| *stop).await;
}
