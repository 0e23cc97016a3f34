//! The supervisor's task: it starts the children in order, watches them,
//! applies the restart strategy, the intensity and the backoff, answers
//! the handles' calls, and stops everything in reverse order.
//!
//! One task owns every child's state and handles one thing at a time, so
//! no two decisions race: an exit, a call, a timer. What it waits for
//! (a start that must be ready, a stop that must be reaped) it waits for
//! in place, as OTP's supervisor does; what arrives meanwhile waits in the
//! queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::event::{ChildInfo, ChildStatus, Event, ExitKind};
use super::incarnation::{Context, Incarnation, Internal, What};
use super::spec::{AutoShutdown, ChildSpec, Restart, Shutdown, Strategy};
use super::{Config, RunningGroup, Shared, SupervisorError};
use crate::runtime::watch::Note;

/// A call from a handle.
pub(super) enum Cmd {
    StartChild(Box<ChildSpec>, oneshot::Sender<Result<(), SupervisorError>>),
    TerminateChild(String, oneshot::Sender<Result<(), SupervisorError>>),
    RestartChild(String, oneshot::Sender<Result<(), SupervisorError>>),
    DeleteChild(String, oneshot::Sender<Result<(), SupervisorError>>),
    Shutdown,
}

/// Where one child stands.
enum State {
    Stopped,
    Running {
        inc: Incarnation,
        ready: bool,
        /// When the next heartbeat is due, with a watchdog.
        beat_due: Option<Instant>,
        /// The watchdog fired: the exit is a `WatchdogTimeout`.
        watchdog_fired: bool,
        /// Its stop signal was sent; the engine waits for its end.
        stopping: bool,
    },
    Backoff {
        due: Instant,
    },
}

struct Entry {
    spec: ChildSpec,
    state: State,
    generation: u64,
    restarts: u32,
    /// Restarts in a row, for the backoff.
    streak: u32,
}

impl Entry {
    fn info(&self) -> ChildInfo {
        let (pid, state) = match &self.state {
            State::Stopped => (None, ChildStatus::Stopped),
            State::Running {
                inc,
                ready,
                stopping,
                ..
            } => (
                Some(inc.pid),
                if *stopping {
                    ChildStatus::Stopping
                } else if *ready || self.spec.ready_timeout.is_none() {
                    ChildStatus::Running
                } else {
                    ChildStatus::Starting
                },
            ),
            State::Backoff { .. } => (None, ChildStatus::Backoff),
        };
        ChildInfo {
            name: self.spec.name.clone(),
            pid,
            state,
            restarts: self.restarts,
            generation: self.generation,
        }
    }
}

/// How a start went.
enum Started {
    Ok,
    Failed(ExitKind),
    /// A shutdown was asked for while the child was not ready yet: it was
    /// stopped, and the supervisor is to stop.
    Interrupted,
}

/// What ended a wait for a child's readiness.
enum Woke {
    Msg(Internal),
    /// A call, or `None` for a shutdown by other means.
    Cmd(Option<Cmd>),
    Late,
}

/// Resolves when `token` is cancelled; never without one.
async fn cancelled(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

pub(super) struct Engine {
    shared: Arc<Shared>,
    strategy: Strategy,
    intensity: (u32, Duration),
    backoff: super::spec::Backoff,
    auto_shutdown: AutoShutdown,
    cancel: Option<tokio_util::sync::CancellationToken>,
    entries: Vec<Entry>,
    /// When the restarts counted against the intensity happened.
    restarts: VecDeque<Instant>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    /// Messages put aside while the engine waited for one child.
    deferred: VecDeque<Internal>,
    /// The handles' calls.
    cmds: mpsc::UnboundedReceiver<Cmd>,
    /// Calls put aside while the engine waited for one child.
    deferred_cmds: VecDeque<Cmd>,
    /// A shutdown was asked for (a call, the last handle's drop, a
    /// cancelled token, the exit rule) while the engine waited for one
    /// child; the main loop carries it out.
    stop_asked: bool,
    runtime_dir: std::path::PathBuf,
    /// The engine finished its work; dropping it does nothing more.
    finished: bool,
}

impl Engine {
    pub(super) fn new(
        shared: Arc<Shared>,
        config: Config,
        cmds: mpsc::UnboundedReceiver<Cmd>,
    ) -> Engine {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let entries = config
            .children
            .into_iter()
            .map(|spec| Entry {
                generation: spec.generation,
                spec,
                state: State::Stopped,
                restarts: 0,
                streak: 0,
            })
            .collect();
        let runtime_dir = shared.runtime_dir();
        Engine {
            shared,
            strategy: config.strategy,
            intensity: config.intensity,
            backoff: config.backoff,
            auto_shutdown: config.auto_shutdown,
            cancel: config.cancel,
            entries,
            restarts: VecDeque::new(),
            internal_tx,
            internal_rx,
            deferred: VecDeque::new(),
            cmds,
            deferred_cmds: VecDeque::new(),
            stop_asked: false,
            runtime_dir,
            finished: false,
        }
    }

    /// Gives the configuration back (the children's specs with it), for
    /// a later start.
    pub(super) fn into_config(mut self) -> Config {
        self.finished = true;
        Config {
            strategy: self.strategy,
            intensity: self.intensity,
            backoff: self.backoff,
            auto_shutdown: self.auto_shutdown,
            cancel: self.cancel.take(),
            children: std::mem::take(&mut self.entries)
                .into_iter()
                .map(|e| ChildSpec {
                    generation: e.generation,
                    ..e.spec
                })
                .collect(),
        }
    }

    fn path_of(&self, name: &str) -> String {
        format!("{}/{}", self.shared.path, name)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.name == name)
    }

    /// Publishes where every child stands, for `which_children` and for
    /// the exit rule.
    fn publish(&self) {
        let infos = self.entries.iter().map(Entry::info).collect();
        let groups = self
            .entries
            .iter()
            .filter_map(|e| match &e.state {
                State::Running { inc, .. } => match &inc.what {
                    What::Process(p) => Some(RunningGroup {
                        pgid: inc.pid,
                        process: Some(p.clone()),
                        stop_signal: e.spec.stop_signal,
                        timeout: stop_timeout(e.spec.shutdown),
                    }),
                    What::Program => Some(RunningGroup {
                        pgid: inc.pid,
                        process: None,
                        stop_signal: e.spec.stop_signal,
                        timeout: stop_timeout(e.spec.shutdown),
                    }),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        self.shared.publish(infos, groups);
    }

    /// Starts the children in order, each ready before the next. A failed
    /// start stops the ones started, in reverse, and is the error.
    pub(super) async fn start_all(&mut self) -> Result<(), SupervisorError> {
        for i in 0..self.entries.len() {
            match self.start_one(i).await {
                Started::Ok => {}
                Started::Failed(exit) => {
                    let child = self.path_of(&self.entries[i].spec.name);
                    self.stop_range(0, i).await;
                    self.publish();
                    return Err(SupervisorError::StartFailed { child, exit });
                }
                Started::Interrupted => {
                    self.stop_range(0, i).await;
                    self.publish();
                    return Err(SupervisorError::Stopped);
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Starts child `i`, and waits for it to be ready if it must be.
    async fn start_one(&mut self, i: usize) -> Started {
        let entry = &mut self.entries[i];
        entry.generation += 1;
        let generation = entry.generation;
        let path = format!("{}/{}", self.shared.path, entry.spec.name);
        let name = entry.spec.name.clone();
        let cx = Context {
            path: &path,
            generation,
            index_name: &name,
            to_engine: &self.internal_tx,
            events: &self.shared.events,
            runtime_dir: &self.runtime_dir,
        };
        let mut inc = match Incarnation::start(&mut entry.spec, cx).await {
            Ok(inc) => inc,
            Err(exit) => {
                tracing::warn!(
                    supervisor = %self.shared.path,
                    child = %path,
                    generation,
                    reason = %exit,
                    "a supervised child failed to start"
                );
                entry.state = State::Stopped;
                return Started::Failed(exit);
            }
        };
        let pid = inc.pid;
        // Its captured output waits for its `Started`.
        let output_gate = inc.output_gate.take();
        tracing::info!(
            supervisor = %self.shared.path,
            child = %path,
            pid,
            generation,
            "supervised child started"
        );
        if let What::Pool(pool) = &inc.what {
            self.shared.set_pool(&name, Some(pool.clone()));
        }
        let watchdog = entry.spec.watchdog;
        let ready_timeout = entry.spec.ready_timeout;
        entry.state = State::Running {
            inc,
            ready: false,
            beat_due: watchdog.map(|d| Instant::now() + d),
            watchdog_fired: false,
            stopping: false,
        };
        // Published before the event, so that a reader of the event sees
        // it in `which_children` too.
        self.publish();
        self.shared.events.emit(Event::Started {
            child: path.clone(),
            pid,
            generation,
        });
        drop(output_gate);
        let Some(limit) = ready_timeout else {
            return Started::Ok;
        };
        // Wait for this child's readiness; everything else waits, but a
        // shutdown asked for meanwhile ends the wait.
        let deadline = tokio::time::Instant::now() + limit;
        let cancel = self.cancel.clone();
        let exiting = self.shared.exiting.clone();
        loop {
            let woke = tokio::select! {
                Some(m) = self.internal_rx.recv() => Woke::Msg(m),
                c = self.cmds.recv() => Woke::Cmd(c),
                () = tokio::time::sleep_until(deadline) => Woke::Late,
                () = cancelled(cancel.as_ref()) => Woke::Cmd(None),
                () = exiting.cancelled() => Woke::Cmd(None),
            };
            match woke {
                Woke::Msg(Internal::Note {
                    name: n,
                    generation: g,
                    note: Note::Ready,
                }) if n == name && g == generation => {
                    self.mark_ready(i, pid, &path);
                    return Started::Ok;
                }
                Woke::Msg(Internal::Exited {
                    name: n,
                    generation: g,
                    exit,
                }) if n == name && g == generation => {
                    self.finish(i, exit.clone(), false);
                    return Started::Failed(exit);
                }
                Woke::Msg(other) => self.deferred.push_back(other),
                Woke::Cmd(Some(Cmd::Shutdown) | None) => {
                    self.stop_asked = true;
                    self.stop_one(i, None).await;
                    return Started::Interrupted;
                }
                Woke::Cmd(Some(cmd)) => self.deferred_cmds.push_back(cmd),
                Woke::Late => {
                    // Not ready in time: stop it; the start failed.
                    tracing::warn!(
                        supervisor = %self.shared.path,
                        child = %path,
                        pid,
                        generation,
                        timeout = ?limit,
                        "a supervised child was not ready in time"
                    );
                    self.stop_one(i, Some(ExitKind::ReadyTimeout)).await;
                    return Started::Failed(ExitKind::ReadyTimeout);
                }
            }
        }
    }

    fn mark_ready(&mut self, i: usize, pid: u32, path: &str) {
        let watchdog = self.entries[i].spec.watchdog;
        if let State::Running {
            ready, beat_due, ..
        } = &mut self.entries[i].state
        {
            if !*ready {
                *ready = true;
                if let Some(d) = watchdog {
                    *beat_due = Some(Instant::now() + d);
                }
                self.shared.events.emit(Event::Ready {
                    child: path.to_owned(),
                    pid,
                });
                self.publish();
            }
        }
    }

    /// Records that child `i`'s running incarnation ended with `exit`, and
    /// says so (`Exited`, and an event: `WARN` for a child that ended
    /// abnormally by itself, `INFO` for the others, among them the ones
    /// this supervisor `stopped`). Returns the uptime.
    fn finish(&mut self, i: usize, exit: ExitKind, stopped: bool) -> Duration {
        let path = self.path_of(&self.entries[i].spec.name);
        let entry = &mut self.entries[i];
        let State::Running { inc, .. } = std::mem::replace(&mut entry.state, State::Stopped) else {
            return Duration::ZERO;
        };
        let uptime = inc.started_at.elapsed();
        if matches!(inc.what, What::Pool(_)) {
            self.shared.set_pool(&entry.spec.name, None);
        }
        // A timeout was its own warning already.
        let told = matches!(exit, ExitKind::ReadyTimeout | ExitKind::WatchdogTimeout);
        if stopped || told || exit.is_normal() {
            tracing::info!(
                supervisor = %self.shared.path,
                child = %path,
                pid = inc.pid,
                generation = inc.generation,
                exit = %exit,
                "supervised child exited"
            );
        } else {
            tracing::warn!(
                supervisor = %self.shared.path,
                child = %path,
                pid = inc.pid,
                generation = inc.generation,
                exit = %exit,
                "supervised child exited"
            );
        }
        self.shared.events.emit(Event::Exited {
            child: path,
            pid: inc.pid,
            exit,
            uptime,
        });
        self.publish();
        uptime
    }

    /// Stops child `i` if it runs, by its shutdown rule; its exit is an
    /// explicit one (no restart, not counted). `as_exit` overrides the
    /// exit kind reported (a start that was not ready in time).
    async fn stop_one(&mut self, i: usize, as_exit: Option<ExitKind>) {
        let path = self.path_of(&self.entries[i].spec.name);
        if let State::Running { stopping, .. } = &mut self.entries[i].state {
            *stopping = true;
            self.publish();
        }
        let entry = &mut self.entries[i];
        match &mut entry.state {
            State::Running { inc, .. } => {
                let pid = inc.pid;
                if inc.exit().is_none() {
                    self.shared.events.emit(Event::Stopping {
                        child: path.clone(),
                        pid,
                    });
                }
                let (exit, killed) = inc.stop(entry.spec.shutdown, entry.spec.stop_signal).await;
                if killed {
                    tracing::warn!(
                        supervisor = %self.shared.path,
                        child = %path,
                        pid,
                        "a supervised child outlived its shutdown timeout and was killed"
                    );
                    self.shared.events.emit(Event::Killed { child: path, pid });
                }
                self.finish(i, as_exit.unwrap_or(exit), true);
            }
            State::Backoff { .. } => {
                entry.state = State::Stopped;
                self.publish();
            }
            State::Stopped => {}
        }
    }

    /// Stops children `from..to`, in reverse order, each reaped before the
    /// next is signalled.
    async fn stop_range(&mut self, from: usize, to: usize) {
        for i in (from..to).rev() {
            self.stop_one(i, None).await;
        }
    }

    /// The main loop; returns how the supervisor ended.
    pub(super) async fn run(&mut self) -> Result<(), SupervisorError> {
        let cancel = self.cancel.clone();
        let exiting = self.shared.exiting.clone();
        loop {
            if self.stop_asked || exiting.is_cancelled() {
                // Asked to stop (the exit rule, or a shutdown that came
                // while a child was starting): nothing restarts now.
                self.stop_range(0, self.entries.len()).await;
                return Ok(());
            }
            if let Some(msg) = self.deferred.pop_front() {
                if let Some(end) = self.on_internal(msg).await {
                    return end;
                }
                continue;
            }
            if let Some(cmd) = self.deferred_cmds.pop_front() {
                if let Some(end) = self.on_cmd(cmd).await {
                    return end;
                }
                continue;
            }
            let timer = self.next_timer();
            if timer.is_some_and(|t| t <= Instant::now()) {
                // Due already (a restart without backoff): at once, not at
                // the timer wheel's next millisecond.
                if let Some(end) = self.on_timers().await {
                    return end;
                }
                continue;
            }
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    Some(Cmd::Shutdown) | None => self.stop_asked = true,
                    Some(cmd) => {
                        if let Some(end) = self.on_cmd(cmd).await {
                            return end;
                        }
                    }
                },
                Some(msg) = self.internal_rx.recv() => {
                    if let Some(end) = self.on_internal(msg).await {
                        return end;
                    }
                }
                () = sleep_until(timer) => {
                    if let Some(end) = self.on_timers().await {
                        return end;
                    }
                }
                () = cancelled(cancel.as_ref()) => self.stop_asked = true,
                () = exiting.cancelled() => {}
            }
        }
    }

    /// The nearest backoff or heartbeat deadline.
    fn next_timer(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| match &e.state {
                State::Backoff { due } => Some(*due),
                State::Running {
                    beat_due,
                    watchdog_fired: false,
                    ..
                } => *beat_due,
                _ => None,
            })
            .min()
    }

    async fn on_timers(&mut self) -> Option<Result<(), SupervisorError>> {
        let now = Instant::now();
        // Heartbeats missed.
        for i in 0..self.entries.len() {
            let path = self.path_of(&self.entries[i].spec.name);
            if let State::Running {
                inc,
                beat_due: Some(due),
                watchdog_fired,
                ..
            } = &mut self.entries[i].state
                && !*watchdog_fired
                && *due <= now
            {
                *watchdog_fired = true;
                tracing::warn!(
                    supervisor = %self.shared.path,
                    child = %path,
                    pid = inc.pid,
                    generation = inc.generation,
                    "a supervised child missed its heartbeat; it is killed"
                );
                self.shared.events.emit(Event::WatchdogTimeout {
                    child: path,
                    pid: inc.pid,
                });
                match &inc.what {
                    What::Process(_) | What::Program => {
                        inc.signal(crate::sys::Signal::Kill.number())
                    }
                    What::Pool(pool) => pool.terminate().await,
                    What::Supervisor(sup) => {
                        let _ = sup.shutdown().await;
                    }
                }
            }
        }
        // Backoffs over, in start order.
        for i in 0..self.entries.len() {
            if matches!(self.entries[i].state, State::Backoff { due } if due <= now) {
                self.entries[i].state = State::Stopped;
                if let Started::Failed(exit) = self.start_one(i).await {
                    // A failed restart is an exit like any other.
                    let name = self.entries[i].spec.name.clone();
                    self.deferred
                        .push_back(Internal::StartFailed { name, exit });
                }
            }
        }
        None
    }

    async fn on_cmd(&mut self, cmd: Cmd) -> Option<Result<(), SupervisorError>> {
        match cmd {
            Cmd::StartChild(spec, reply) => {
                if self.index(&spec.name).is_some() {
                    let _ = reply.send(Err(SupervisorError::DuplicateChild(spec.name)));
                    return None;
                }
                self.entries.push(Entry {
                    spec: *spec,
                    state: State::Stopped,
                    generation: 0,
                    restarts: 0,
                    streak: 0,
                });
                let i = self.entries.len() - 1;
                match self.start_one(i).await {
                    Started::Ok => {
                        let _ = reply.send(Ok(()));
                    }
                    Started::Failed(exit) => {
                        let entry = self.entries.remove(i);
                        self.publish();
                        let _ = reply.send(Err(SupervisorError::StartFailed {
                            child: self.path_of(&entry.spec.name),
                            exit,
                        }));
                    }
                    Started::Interrupted => {
                        self.entries.remove(i);
                        self.publish();
                        let _ = reply.send(Err(SupervisorError::Stopped));
                    }
                }
            }
            Cmd::TerminateChild(name, reply) => match self.index(&name) {
                None => {
                    let _ = reply.send(Err(SupervisorError::NoSuchChild(name)));
                }
                Some(i) => {
                    self.stop_one(i, None).await;
                    if self.entries[i].spec.restart == Restart::Temporary {
                        self.entries.remove(i);
                        self.publish();
                    }
                    let _ = reply.send(Ok(()));
                }
            },
            Cmd::RestartChild(name, reply) => match self.index(&name) {
                None => {
                    let _ = reply.send(Err(SupervisorError::NoSuchChild(name)));
                }
                Some(i) if matches!(self.entries[i].state, State::Running { .. }) => {
                    let _ = reply.send(Err(SupervisorError::ChildRunning(name)));
                }
                Some(i) => {
                    self.entries[i].state = State::Stopped;
                    let result = match self.start_one(i).await {
                        Started::Ok => Ok(()),
                        Started::Failed(exit) => Err(SupervisorError::StartFailed {
                            child: self.path_of(&name),
                            exit,
                        }),
                        Started::Interrupted => Err(SupervisorError::Stopped),
                    };
                    let _ = reply.send(result);
                }
            },
            Cmd::DeleteChild(name, reply) => match self.index(&name) {
                None => {
                    let _ = reply.send(Err(SupervisorError::NoSuchChild(name)));
                }
                Some(i) if matches!(self.entries[i].state, State::Running { .. }) => {
                    let _ = reply.send(Err(SupervisorError::ChildRunning(name)));
                }
                Some(i) => {
                    self.entries.remove(i);
                    self.publish();
                    let _ = reply.send(Ok(()));
                }
            },
            Cmd::Shutdown => unreachable!("handled by the loop"),
        }
        None
    }

    async fn on_internal(&mut self, msg: Internal) -> Option<Result<(), SupervisorError>> {
        match msg {
            Internal::Note {
                name,
                generation,
                note,
            } => {
                let i = self.index(&name)?;
                if self.entries[i].generation != generation {
                    return None;
                }
                let path = self.path_of(&name);
                let watchdog = self.entries[i].spec.watchdog;
                match note {
                    Note::Ready => {
                        if let State::Running { inc, .. } = &self.entries[i].state {
                            let pid = inc.pid;
                            self.mark_ready(i, pid, &path);
                        }
                    }
                    Note::Heartbeat => {
                        if let (State::Running { beat_due, .. }, Some(d)) =
                            (&mut self.entries[i].state, watchdog)
                        {
                            *beat_due = Some(Instant::now() + d);
                        }
                    }
                }
                None
            }
            Internal::StartFailed { name, exit } => {
                let i = self.index(&name)?;
                self.after_exit(i, &name, exit, Duration::ZERO).await
            }
            Internal::Exited {
                name,
                generation,
                exit,
            } => {
                let i = self.index(&name)?;
                let current = matches!(
                    &self.entries[i].state,
                    State::Running { inc, .. } if inc.generation == generation
                );
                if !current {
                    // An incarnation already handled (stopped, or restarted).
                    return None;
                }
                let exit = match &self.entries[i].state {
                    State::Running {
                        watchdog_fired: true,
                        ..
                    } => ExitKind::WatchdogTimeout,
                    _ => exit,
                };
                let uptime = self.finish(i, exit.clone(), false);
                self.after_exit(i, &name, exit, uptime).await
            }
        }
    }

    /// Applies the restart rules to child `i`, which ended by itself with
    /// `exit` after `uptime`.
    async fn after_exit(
        &mut self,
        i: usize,
        name: &str,
        exit: ExitKind,
        uptime: Duration,
    ) -> Option<Result<(), SupervisorError>> {
        let restart = match self.entries[i].spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !exit.is_normal(),
            Restart::Temporary => false,
        };
        let significant = self.entries[i].spec.significant;
        if !restart {
            if self.entries[i].spec.restart == Restart::Temporary {
                self.entries.remove(i);
                self.publish();
            }
            if significant {
                let all = self.entries.iter().filter(|e| e.spec.significant).count();
                let end = match self.auto_shutdown {
                    AutoShutdown::Never => false,
                    AutoShutdown::AnySignificant => true,
                    // Temporary significant children left the list.
                    AutoShutdown::AllSignificant => {
                        self.entries
                            .iter()
                            .filter(|e| e.spec.significant)
                            .all(|e| matches!(e.state, State::Stopped))
                            || all == 0
                    }
                };
                if end {
                    self.stop_range(0, self.entries.len()).await;
                    return Some(Ok(()));
                }
            }
            return None;
        }
        // Intensity: one more restart in the period.
        let (max, period) = self.intensity;
        let now = Instant::now();
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > period)
        {
            self.restarts.pop_front();
        }
        let count = u32::try_from(self.restarts.len()).unwrap_or(u32::MAX);
        if count > max {
            let child = self.path_of(name);
            tracing::error!(
                supervisor = %self.shared.path,
                child = %child,
                restarts = count,
                period = ?period,
                exit = %exit,
                "supervisor intensity exceeded; every child is stopped"
            );
            self.shared.events.emit(Event::IntensityExceeded {
                supervisor: self.shared.path.clone(),
                child,
                restarts: count,
            });
            self.stop_range(0, self.entries.len()).await;
            return Some(Err(SupervisorError::IntensityExceeded {
                child: self.path_of(name),
                restarts: count,
                period,
                last_exit: exit,
            }));
        }
        // Which children restart with it.
        let group: Vec<usize> = match self.strategy {
            Strategy::OneForOne => vec![i],
            Strategy::OneForAll => (0..self.entries.len()).collect(),
            Strategy::RestForOne => (i..self.entries.len()).collect(),
        };
        // The others in the group stop first, in reverse order.
        for &j in group.iter().rev() {
            if j != i {
                self.stop_one(j, None).await;
            }
        }
        // Temporary ones are never restarted: they leave.
        let mut restarting = Vec::new();
        for &j in &group {
            if j == i || self.entries[j].spec.restart != Restart::Temporary {
                restarting.push(self.entries[j].spec.name.clone());
            }
        }
        self.entries
            .retain(|e| e.spec.restart != Restart::Temporary || e.spec.name == name);
        let k = self.index(name).expect("the child that ended is kept");
        let entry = &mut self.entries[k];
        if self.backoff.resets(uptime) {
            entry.streak = 0;
        }
        entry.streak += 1;
        entry.restarts += 1;
        let delay = self.backoff.delay(entry.streak);
        let due = Instant::now() + delay;
        let ended = self.path_of(name);
        for n in &restarting {
            let Some(j) = self.index(n) else { continue };
            let child = self.path_of(n);
            let generation = self.entries[j].generation + 1;
            if j == k {
                tracing::info!(
                    supervisor = %self.shared.path,
                    child = %child,
                    generation,
                    reason = %exit,
                    delay = ?delay,
                    "restarting a supervised child"
                );
            } else {
                tracing::info!(
                    supervisor = %self.shared.path,
                    child = %child,
                    generation,
                    reason = %format_args!("restarted with {ended}"),
                    delay = ?delay,
                    "restarting a supervised child"
                );
            }
            self.shared.events.emit(Event::RestartScheduled {
                child: self.path_of(n),
                delay,
                restarts_in_period: count,
            });
            if j != k {
                self.entries[j].restarts += 1;
            }
            self.entries[j].state = State::Backoff { due };
        }
        // A zero delay is due at once: the loop's timer fires next.
        self.publish();
        None
    }

    /// Stops every running child from a thread with no runtime (the
    /// runtime that ran this engine shut down), in reverse order.
    fn stop_blocking(&mut self) {
        for entry in self.entries.iter_mut().rev() {
            if let State::Running { inc, .. } = &entry.state {
                inc.stop_blocking(stop_timeout(entry.spec.shutdown), entry.spec.stop_signal);
            }
            entry.state = State::Stopped;
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if !self.finished {
            // Dropped with its runtime, before it could stop its children:
            // they go now, in reverse order, from this thread.
            self.stop_blocking();
            self.shared.publish(Vec::new(), Vec::new());
            self.shared
                .run
                .send_replace(super::Run::Stopped(Err(SupervisorError::Stopped)));
        }
    }
}

/// The longest a child's stop may wait for it, from a thread.
fn stop_timeout(shutdown: Shutdown) -> Duration {
    match shutdown {
        Shutdown::BrutalKill => Duration::ZERO,
        Shutdown::Timeout(d) => d,
        Shutdown::Infinity => Duration::from_secs(60),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
