//! One run of one child: starting it, watching it until it and its whole
//! process group are gone, and stopping it.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use tokio::sync::{mpsc, oneshot, watch};

use super::event::{Event, ExitKind, OutputStream};
use super::spec::{ChildSpec, Kind, Shutdown};
use super::{Events, Supervisor};
use crate::pool::Pool;
use crate::process::{Process, ProcessError};
use crate::runtime::capture::{self, OutputHook, Stream};
use crate::runtime::watch::Note;
use crate::sys::{self, Signal};

/// How long, after a child's leader is gone, the rest of its process group
/// has to die of its `SIGKILL` before the supervisor goes on without it.
const GROUP_GRACE: Duration = Duration::from_secs(2);

/// What the incarnations tell the engine.
pub(super) enum Internal {
    Exited {
        name: String,
        generation: u64,
        exit: ExitKind,
    },
    Note {
        name: String,
        generation: u64,
        note: Note,
    },
    /// A restart failed: an exit like any other (put aside by the engine
    /// itself).
    StartFailed { name: String, exit: ExitKind },
}

/// What an incarnation is.
pub(super) enum What {
    /// A target in a child process, leading its own process group.
    Process(Arc<Process<IgnoredAny>>),
    /// A program, leading its own process group.
    Program,
    /// A pool, a task of this program.
    Pool(Pool),
    /// A nested supervisor, a task of this program.
    Supervisor(Supervisor),
}

/// A running incarnation of a child.
pub(super) struct Incarnation {
    pub(super) pid: u32,
    pub(super) generation: u64,
    pub(super) started_at: Instant,
    pub(super) what: What,
    /// Set once the incarnation has ended and its process group is gone.
    ended: watch::Receiver<Option<ExitKind>>,
    /// Holds back the child's captured output until dropped: the engine
    /// drops it once it has emitted the child's `Started`, so that no
    /// `Event::Log` of the child comes before it.
    pub(super) output_gate: Option<oneshot::Sender<()>>,
}

/// Where an incarnation tells what happens to it.
pub(super) struct Context<'a> {
    /// The child's path, for events and logs.
    pub(super) path: &'a str,
    pub(super) generation: u64,
    pub(super) index_name: &'a str,
    pub(super) to_engine: &'a mpsc::UnboundedSender<Internal>,
    pub(super) events: &'a Events,
    /// A private directory for the `sd_notify` sockets of programs.
    pub(super) runtime_dir: &'a Path,
}

impl Incarnation {
    /// Starts the child `spec` describes.
    pub(super) async fn start(
        spec: &mut ChildSpec,
        cx: Context<'_>,
    ) -> Result<Incarnation, ExitKind> {
        let (ended_tx, ended) = watch::channel(None);
        let (output_gate, gate) = oneshot::channel();
        let mut gate = Some(gate);
        let notes = NoteSink {
            name: cx.index_name.to_owned(),
            generation: cx.generation,
            to_engine: cx.to_engine.clone(),
        };
        let exited = ExitSink {
            name: cx.index_name.to_owned(),
            generation: cx.generation,
            to_engine: cx.to_engine.clone(),
            ended: ended_tx,
        };
        let (pid, what) = match &mut spec.kind {
            Kind::Target {
                target,
                args,
                handles,
            } => {
                let mut fds = Vec::with_capacity(handles.len());
                for h in handles.iter() {
                    fds.push(
                        h.try_clone()
                            .map_err(|e| ExitKind::SpawnFailed(e.to_string()))?,
                    );
                }
                let builder = Process::builder()
                    .name(cx.path)
                    .supervised(true)
                    .forward_tracing(spec.forward_tracing)
                    .capture_output(spec.capture_output);
                let process: Process<IgnoredAny> =
                    Process::from_encoded(builder, *target, args.clone(), fds);
                let note_rx = process.notes();
                if spec.capture_output {
                    let (child, events) = (cx.path.to_owned(), cx.events.clone());
                    process.on_output(OutputHook {
                        gate: gate.take(),
                        on_line: Some(Arc::new(move |pid, stream, line: &str| {
                            events.emit(Event::Log {
                                child: child.clone(),
                                pid,
                                stream: output_stream(stream),
                                line: line.to_owned(),
                            });
                        })),
                    });
                }
                process
                    .start()
                    .await
                    .map_err(|e| ExitKind::SpawnFailed(e.to_string()))?;
                let pid = process.pid().unwrap_or(0);
                let process = Arc::new(process);
                tokio::spawn(watch_process(process.clone(), note_rx, notes, exited));
                (pid, What::Process(process))
            }
            Kind::Command(command) => {
                let pid = start_program(
                    command,
                    spec.watchdog,
                    spec.capture_output.then(|| gate.take()).flatten(),
                    &cx,
                    notes,
                    exited,
                )?;
                (pid, What::Program)
            }
            Kind::Pool(builder) => {
                let mut builder = builder.clone();
                if !spec.forward_tracing {
                    builder = builder.forward_tracing(false);
                }
                if spec.capture_output {
                    builder = builder.capture_output(true);
                }
                let pool = builder
                    .build()
                    .await
                    .map_err(|e| ExitKind::SpawnFailed(e.to_string()))?;
                let watched = pool.clone();
                tokio::spawn(async move {
                    let exit = match watched.ended().await {
                        Some(why) => {
                            // Its other workers may run on: they go
                            // before the exit is told (and a new pool
                            // started).
                            watched.terminate().await;
                            ExitKind::Failed(why)
                        }
                        None => ExitKind::Normal,
                    };
                    exited.send(exit);
                });
                (std::process::id(), What::Pool(pool))
            }
            Kind::Supervisor(nested) => {
                let sup = nested.get(cx.path, cx.events);
                let started = sup.launch().map_err(|e| ExitKind::Failed(e.to_string()))?;
                match started.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(ExitKind::Failed(e.to_string())),
                    Err(_) => return Err(ExitKind::Failed("its task was lost".to_owned())),
                }
                let watched = sup.clone();
                tokio::spawn(async move {
                    let exit = match watched.wait().await {
                        Ok(()) => ExitKind::Normal,
                        Err(e) => ExitKind::Failed(e.to_string()),
                    };
                    exited.send(exit);
                });
                (std::process::id(), What::Supervisor(sup))
            }
        };
        Ok(Incarnation {
            pid,
            generation: cx.generation,
            started_at: Instant::now(),
            what,
            ended,
            output_gate: Some(output_gate),
        })
    }

    /// How it ended, if it has (and its group is gone).
    pub(super) fn exit(&self) -> Option<ExitKind> {
        self.ended.borrow().clone()
    }

    /// Waits until it has ended and its group is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(super) async fn ended(&mut self) -> ExitKind {
        match self.ended.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or(ExitKind::Normal),
            // The watcher went without a word (its runtime shut down).
            Err(_) => ExitKind::Failed("its watcher was lost".to_owned()),
        }
    }

    /// Whether it leads a process group that signals reach.
    fn group(&self) -> Option<u32> {
        match self.what {
            What::Process(_) | What::Program => Some(self.pid),
            What::Pool(_) | What::Supervisor(_) => None,
        }
    }

    /// Sends `signo` to its whole process group.
    pub(super) fn signal(&self, signo: i32) {
        if let Some(pgid) = self.group()
            && let Err(e) = sys::signal_group(pgid, signo)
        {
            tracing::warn!(pgid, error = %e, "could not signal a supervised child");
        }
    }

    /// Stops it by `shutdown`, asking first with `stop_signal`; returns
    /// how it ended and whether it had to be killed.
    pub(super) async fn stop(&mut self, shutdown: Shutdown, stop_signal: i32) -> (ExitKind, bool) {
        if let Some(exit) = self.exit() {
            return (exit, false);
        }
        match &self.what {
            What::Pool(pool) => {
                pool.terminate().await;
                return (self.ended().await, false);
            }
            What::Supervisor(sup) => {
                let sup = sup.clone();
                match shutdown {
                    Shutdown::Timeout(d) => {
                        let _ = tokio::time::timeout(d, sup.shutdown()).await;
                    }
                    _ => {
                        let _ = sup.shutdown().await;
                    }
                }
                return (self.ended().await, false);
            }
            What::Process(_) | What::Program => {}
        }
        let kill = Signal::Kill.number();
        let mut killed = false;
        match shutdown {
            Shutdown::BrutalKill => self.signal(kill),
            Shutdown::Timeout(d) => {
                self.signal(stop_signal);
                if tokio::time::timeout(d, self.ended()).await.is_err() {
                    self.signal(kill);
                    killed = true;
                }
            }
            Shutdown::Infinity => self.signal(stop_signal),
        }
        (self.ended().await, killed)
    }

    /// Stops it from a thread with no runtime left (the runtime that ran
    /// the supervisor shut down): the stop signal, up to `timeout`, then
    /// `SIGKILL`, for children that are processes; pools and nested
    /// supervisors stop with their own runtimes' end.
    pub(super) fn stop_blocking(&self, timeout: Duration, stop_signal: i32) {
        let Some(pgid) = self.group() else {
            return;
        };
        let _ = sys::signal_group(pgid, stop_signal);
        let deadline = Instant::now() + timeout;
        let gone = |deadline: Instant| {
            while sys::group_exists(pgid) && Instant::now() < deadline {
                if let What::Process(p) = &self.what {
                    // Reaps the leader, so its group can empty.
                    p.wait_blocking(Duration::from_millis(5));
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            !sys::group_exists(pgid)
        };
        if !gone(deadline) {
            let _ = sys::signal_group(pgid, Signal::Kill.number());
            gone(Instant::now() + GROUP_GRACE);
        }
    }
}

/// Forwards what a child notifies to the engine.
struct NoteSink {
    name: String,
    generation: u64,
    to_engine: mpsc::UnboundedSender<Internal>,
}

impl NoteSink {
    fn send(&self, note: Note) {
        let _ = self.to_engine.send(Internal::Note {
            name: self.name.clone(),
            generation: self.generation,
            note,
        });
    }
}

/// Tells the engine, and whoever waits on the incarnation, how it ended.
struct ExitSink {
    name: String,
    generation: u64,
    to_engine: mpsc::UnboundedSender<Internal>,
    ended: watch::Sender<Option<ExitKind>>,
}

impl ExitSink {
    fn send(self, exit: ExitKind) {
        self.ended.send_replace(Some(exit.clone()));
        let _ = self.to_engine.send(Internal::Exited {
            name: self.name,
            generation: self.generation,
            exit,
        });
    }
}

/// Once the leader of group `pgid` is gone (and reaped), kills what is
/// left of the group and waits (a little) until it is empty, so that a
/// replacement never runs beside a remnant of the incarnation before it.
/// The remnants this process adopted (as a child subreaper, or init) are
/// its to reap: a zombie keeps the group in existence.
async fn clear_group(pgid: u32) {
    sys::reap_group(pgid);
    if !sys::group_exists(pgid) {
        // A member that died just now, adopted by this process.
        sys::reap_group(pgid);
        return;
    }
    let _ = sys::signal_group(pgid, Signal::Kill.number());
    let deadline = Instant::now() + GROUP_GRACE;
    let mut pause = Duration::from_micros(200);
    loop {
        sys::reap_group(pgid);
        if !sys::group_exists(pgid) {
            // What died since the reap above, if it is ours.
            sys::reap_group(pgid);
            break;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    if sys::group_exists(pgid) {
        tracing::warn!(
            pgid,
            "a process of a supervised child's group outlived SIGKILL; going on without it"
        );
    }
}

/// How a target child ended, from its join.
fn target_exit(result: Result<IgnoredAny, ProcessError>, exitcode: Option<i32>) -> ExitKind {
    match result {
        Ok(_) => ExitKind::Normal,
        Err(ProcessError::Panicked(info)) => ExitKind::Panicked(info.message),
        Err(ProcessError::Signaled { signal }) => ExitKind::Signal(signal),
        // `std::process::exit(0)` before the target returned: a normal
        // exit all the same (a transient child is not restarted).
        Err(ProcessError::Exited { code: 0 }) => ExitKind::Normal,
        Err(ProcessError::Exited { code }) => ExitKind::Code(code),
        Err(_) => match exitcode {
            Some(0) => ExitKind::Normal,
            Some(code) if code < 0 => ExitKind::Signal(-code),
            Some(code) => ExitKind::Code(code),
            None => ExitKind::Failed("its control channel broke".to_owned()),
        },
    }
}

async fn watch_process(
    process: Arc<Process<IgnoredAny>>,
    mut note_rx: mpsc::UnboundedReceiver<Note>,
    notes: NoteSink,
    exited: ExitSink,
) {
    let pgid = process.pid().unwrap_or(0);
    let join = process.join();
    tokio::pin!(join);
    let result = loop {
        tokio::select! {
            biased;
            Some(note) = note_rx.recv() => notes.send(note),
            r = &mut join => break r,
        }
    };
    // Notes that came before the end still count.
    while let Ok(note) = note_rx.try_recv() {
        notes.send(note);
    }
    let exit = target_exit(result, process.exitcode());
    clear_group(pgid).await;
    exited.send(exit);
}

/// Starts a program in a process group of its own, with an `sd_notify`
/// socket, and the task that watches it.
fn start_program(
    command: &mut tokio::process::Command,
    watchdog: Option<Duration>,
    capture: Option<oneshot::Receiver<()>>,
    cx: &Context<'_>,
    notes: NoteSink,
    exited: ExitSink,
) -> Result<u32, ExitKind> {
    let spawn_failed = |e: std::io::Error| ExitKind::SpawnFailed(e.to_string());
    let socket_path = cx.runtime_dir.join(format!(
        "notify-{}-{}",
        sanitize(cx.index_name),
        cx.generation
    ));
    let _ = std::fs::remove_file(&socket_path);
    let socket = sys::notify::NotifySocket::bind(&socket_path).map_err(spawn_failed)?;
    // Its own group, and killed if this program dies (this task runs on a
    // worker thread of the runtime, which lives as long as the runtime).
    sys::own_group_tied_to_us(command);
    command.kill_on_drop(false);
    command.env("NOTIFY_SOCKET", socket.path());
    match watchdog {
        Some(d) => {
            command.env("WATCHDOG_USEC", d.as_micros().to_string());
        }
        None => {
            command.env_remove("WATCHDOG_USEC");
        }
    }
    command.env_remove("WATCHDOG_PID");
    if capture.is_some() {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    }
    let mut child = command.spawn().map_err(spawn_failed)?;
    let pid = child
        .id()
        .ok_or_else(|| ExitKind::SpawnFailed("the program ended at once".to_owned()))?;
    if let Err(e) = sys::place_program(pid) {
        // Not in a group we can end as one: ended alone, and not started.
        let _ = child.start_kill();
        return Err(spawn_failed(e));
    }
    if let Some(gate) = capture {
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (path, events) = (cx.path.to_owned(), cx.events.clone());
        tokio::spawn(capture::read_both(
            stdout,
            stderr,
            Some(gate),
            move |stream, line| {
                capture::emit_line(&path, pid, stream, &line);
                events.emit(Event::Log {
                    child: path.clone(),
                    pid,
                    stream: output_stream(stream),
                    line,
                });
            },
        ));
    }
    tokio::spawn(async move {
        let status = loop {
            tokio::select! {
                biased;
                n = socket.recv() => match n {
                    Ok(n) => {
                        // Only the program's own group may speak for it.
                        let ours = n.pid.is_some_and(|p| {
                            p == pid || sys::notify::process_group_of(p) == Some(pid)
                        });
                        if ours {
                            for line in n.text.lines() {
                                match line {
                                    "READY=1" => notes.send(Note::Ready),
                                    "WATCHDOG=1" => notes.send(Note::Heartbeat),
                                    _ => {}
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "sd_notify socket"),
                },
                status = child.wait() => break status,
            }
        };
        drop(socket);
        let exit = match status {
            Ok(status) => match sys::python_exitcode(status) {
                0 => ExitKind::Normal,
                code if code < 0 => ExitKind::Signal(-code),
                code => ExitKind::Code(code),
            },
            Err(e) => ExitKind::Failed(e.to_string()),
        };
        clear_group(pid).await;
        exited.send(exit);
    });
    Ok(pid)
}

/// A child name made fit for a file name.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The event's name for a captured stream.
fn output_stream(stream: Stream) -> OutputStream {
    match stream {
        Stream::Stdout => OutputStream::Stdout,
        Stream::Stderr => OutputStream::Stderr,
    }
}
