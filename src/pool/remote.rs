//! Pool workers on other machines: the pool's listener, a slot for each
//! worker that joins, and the worker's side ([`worker_main`]).
//!
//! A remote worker shares no memory with the pool, so everything goes over
//! its connection, and the gate that says which jobs a worker started is
//! a message: the worker asks to start job `seq` (`Start`) and runs it
//! only when the slot says `Go`; the slot counts the job started when it
//! sends `Go`, and answers `Skip` for a job whose result nobody wants. So
//! when the connection breaks, the jobs that had their `Go` fail with
//! [`TaskError::WorkerLost`] and the others go back to the queue: no job
//! runs twice, and none is lost. A slot holds one job for its worker at
//! a time (remote work is coarse; a job never waits behind another in a
//! remote worker while a local one is idle).
//!
//! Both sides send `Alive` when they have sent nothing else for the
//! heartbeat interval, and give the other up when they have heard nothing
//! for the heartbeat timeout: a worker cut off or stopped is noticed by
//! the pool, and a pool that is gone by the worker.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use super::TaskError;
use super::job::{Job, Shared, State, deliver};
use super::worker::{Batch, Results, run_remote_job};
use crate::connection::{Address, ClientBuilder, Connection, Listener, NetError};
use crate::target::fingerprint;
use crate::wire::ChannelError;
use crate::wire::message::TargetRef;

/// How long a worker that connected has to say who it is.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The messages between a remote worker and its slot.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Remote {
    /// Worker to pool, first: the build it runs, and where it is.
    Hello {
        fingerprint: u64,
        pid: u32,
        host: String,
    },
    /// Pool to worker: the worker may serve; how often to send `Alive`,
    /// and after how long a silent pool is given up (ms); the initializer.
    Welcome {
        heartbeat_ms: u64,
        timeout_ms: u64,
        init: Option<(TargetRef, ByteBuf)>,
    },
    /// Pool to worker: it runs another build (or is refused for this
    /// reason).
    Refused(String),
    /// Worker to pool: the initializer did not return.
    InitFailed(String),
    /// Pool to worker: a job, numbered in the order sent.
    Job {
        seq: u64,
        id: u64,
        target: TargetRef,
        args: Batch,
    },
    /// Worker to pool: it asks to start job `seq`.
    Start { seq: u64 },
    /// Pool to worker: start job `seq`; it counts as started from now.
    Go { seq: u64 },
    /// Pool to worker: drop job `seq` unstarted.
    Skip { seq: u64 },
    /// Worker to pool: job `id` ended.
    Done { id: u64, results: Results },
    /// Either way: nothing else to say.
    Alive,
}

/// How often each side says it is alive, and how long the other waits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heartbeat {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Accepts workers while the pool runs; each gets a slot. Once the pool
/// is closed or terminated it stops listening, and returns when every
/// remote slot has ended, so that [`Pool::join`](crate::Pool::join)
/// waits for the tasks remote workers hold.
pub(super) async fn accept(shared: Arc<Shared>, mut listener: Listener, beat: Heartbeat) {
    let mut state = shared.state.subscribe();
    let mut slots = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            c = listener.accept::<Remote>() => c,
            Some(_) = slots.join_next(), if !slots.is_empty() => continue,
            _ = state.wait_for(|s| *s != State::Running) => break,
        };
        match conn {
            Ok(conn) => {
                slots.spawn(slot(shared.clone(), conn, beat));
            }
            Err(e @ NetError::Io { .. }) => {
                // Out of descriptors, say: a pause rather than a busy loop.
                tracing::warn!(error = %e, "pool listener could not accept a worker");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => tracing::warn!(error = %e, "a remote pool worker failed its handshake"),
        }
    }
    drop(listener);
    while slots.join_next().await.is_some() {}
}

/// The job a remote worker holds.
struct Sent {
    seq: u64,
    job: Job,
    /// Whether the worker was told `Go`.
    started: bool,
}

/// Serves one remote worker until it vanishes or the pool ends.
async fn slot(shared: Arc<Shared>, mut conn: Connection<Remote>, beat: Heartbeat) {
    let hello = tokio::time::timeout(HELLO_TIMEOUT, conn.recv()).await;
    let name = match hello {
        Ok(Ok(Remote::Hello {
            fingerprint: theirs,
            pid,
            host,
        })) => {
            if theirs != fingerprint() {
                let why = "the worker runs another build of the program than the pool";
                tracing::warn!(pid, host = %host, "remote pool worker refused: {why}");
                let _ = send_within(&conn, &Remote::Refused(why.to_owned()), HELLO_TIMEOUT).await;
                return;
            }
            format!("{host}:{pid}")
        }
        _ => return,
    };
    let welcome = Remote::Welcome {
        heartbeat_ms: millis(beat.interval),
        timeout_ms: millis(beat.timeout),
        init: shared.config.init.clone(),
    };
    if send_within(&conn, &welcome, beat.timeout).await.is_err() {
        return;
    }
    tracing::info!(worker = %name, "remote pool worker joined");
    shared.stats.workers.fetch_add(1, Ordering::Relaxed);
    shared.stats.remote.fetch_add(1, Ordering::Relaxed);
    let mut held = None;
    let why = serve(&shared, &mut conn, &mut held, beat).await;
    shared.stats.workers.fetch_sub(1, Ordering::Relaxed);
    shared.stats.remote.fetch_sub(1, Ordering::Relaxed);
    match release(&shared, &mut held) {
        Some(s) if s.started => deliver(
            &shared,
            s.job,
            Err(TaskError::WorkerLost {
                worker: name.clone(),
                reason: why.clone(),
            }),
        ),
        Some(s) => super::dispatch::requeue(&shared, VecDeque::from([s.job])),
        None => {}
    }
    tracing::info!(worker = %name, reason = %why, "remote pool worker left");
}

/// Sends `msg`, giving up after `within`: a peer that stopped reading
/// (stopped, or cut off with the socket's buffers full) must not hold a
/// side in a send past the heartbeat timeout.
async fn send_within(
    conn: &Connection<Remote>,
    msg: &Remote,
    within: Duration,
) -> Result<(), ChannelError> {
    match tokio::time::timeout(within, conn.send(msg)).await {
        Ok(sent) => sent,
        Err(_) => Err(ChannelError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the peer took nothing for {within:?}"),
        ))),
    }
}

/// Takes the job the worker held, if any, out of the pool's busy count.
fn release(shared: &Shared, held: &mut Option<Sent>) -> Option<Sent> {
    let s = held.take()?;
    shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
    Some(s)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The body of [`slot`]: returns why the worker is gone.
async fn serve(
    shared: &Shared,
    conn: &mut Connection<Remote>,
    held: &mut Option<Sent>,
    beat: Heartbeat,
) -> String {
    let mut state = shared.state.subscribe();
    let mut next_seq = 0u64;
    let mut heard = Instant::now();
    let mut said = Instant::now();
    let mut rung = false;
    loop {
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let current = *state.borrow_and_update();
        if current == State::Terminated {
            if let Some(s) = release(shared, held) {
                deliver(shared, s.job, Err(TaskError::Cancelled));
            }
            conn.close();
            return "the pool was terminated".to_owned();
        }
        let mut fed = false;
        if held.is_none() {
            // Jobs with handles stay for the local workers: their
            // descriptors cannot cross a network.
            if let Some(job) = shared.pop_job_where(|j| !j.args.has_handles()) {
                let msg = Remote::Job {
                    seq: next_seq,
                    id: job.id,
                    target: job.target,
                    args: job.args.clone(),
                };
                *held = Some(Sent {
                    seq: next_seq,
                    job,
                    started: false,
                });
                next_seq += 1;
                shared.stats.busy.fetch_add(1, Ordering::Relaxed);
                fed = true;
                if let Err(e) = send_within(conn, &msg, beat.timeout).await {
                    return format!("its connection broke: {e}");
                }
                said = Instant::now();
            }
        }
        if std::mem::take(&mut rung) && !fed && !shared.lock_queue().is_empty() {
            shared.notify.notify_waiters();
        }
        if held.is_none() && current == State::Closed && shared.lock_queue().is_empty() {
            conn.close();
            return "the pool was closed".to_owned();
        }
        let hungry = (held.is_none() && current == State::Running)
            .then(|| super::dispatch::Hungry::new(shared, true));
        let idle_bell = shared.idle_notify.notified();
        tokio::pin!(idle_bell);
        if hungry.is_some() {
            idle_bell.as_mut().enable();
            if !shared.lock_queue().is_empty() {
                continue;
            }
        }
        tokio::select! {
            msg = conn.recv() => {
                heard = Instant::now();
                match msg {
                    Ok(Remote::Start { seq }) => {
                        let answer = match held.as_mut().filter(|s| s.seq == seq) {
                            Some(s) if !s.job.reply.is_closed() => {
                                s.started = true;
                                Remote::Go { seq }
                            }
                            Some(_) => {
                                if let Some(s) = release(shared, held) {
                                    deliver(shared, s.job, Err(TaskError::Cancelled));
                                }
                                Remote::Skip { seq }
                            }
                            None => Remote::Skip { seq },
                        };
                        if let Err(e) = send_within(conn, &answer, beat.timeout).await {
                            return format!("its connection broke: {e}");
                        }
                        said = Instant::now();
                    }
                    Ok(Remote::Done { id, results }) => {
                        if held.as_ref().is_some_and(|s| s.job.id == id && s.started) {
                            if let Some(s) = release(shared, held) {
                                deliver(shared, s.job, Ok(results));
                            }
                        }
                    }
                    Ok(Remote::InitFailed(why)) => return format!("its initializer failed: {why}"),
                    Ok(_) => {}
                    Err(ChannelError::Closed) => return "it closed its connection".to_owned(),
                    Err(e) => return format!("its connection broke: {e}"),
                }
            }
            _ = &mut notified, if held.is_none() => {}
            _ = &mut idle_bell, if hungry.is_some() => rung = true,
            _ = state.changed() => {}
            _ = tokio::time::sleep_until(said + beat.interval) => {
                if let Err(e) = send_within(conn, &Remote::Alive, beat.timeout).await {
                    return format!("its connection broke: {e}");
                }
                said = Instant::now();
            }
            _ = tokio::time::sleep_until(heard + beat.timeout) => {
                return format!("it said nothing for {:?}", beat.timeout);
            }
        }
    }
}

/// Why a remote worker stopped serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// It could not reach the pool, or the handshake failed (a wrong
    /// authkey, say).
    #[error(transparent)]
    Connect(#[from] NetError),
    /// The pool refused it: it runs another build of the program.
    #[error("the pool refused this worker: {0}")]
    Refused(String),
    /// The initializer did not return.
    #[error("the pool's initializer failed in this worker: {0}")]
    Initializer(String),
    /// The connection to the pool broke, or the pool said nothing for
    /// longer than its heartbeat timeout.
    #[error("lost the pool: {0}")]
    Lost(String),
}

/// Joins the pool listening at `address` as one of its workers, and serves
/// its tasks until the pool closes (`Ok`) or is lost. Python has no
/// counterpart; the pool is [`PoolBuilder::listen`](crate::PoolBuilder::listen)'s.
///
/// The worker must be the same build of the same program as the pool (its
/// fingerprint is checked before any task), and `authkey` the pool's.
/// Start it from a multi-threaded runtime or a current-thread one: tasks
/// run on the runtime's blocking threads, so a long synchronous task does
/// not stop the heartbeats.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # async fn demo() -> Result<(), mp::WorkerError> {
/// mp::worker_main("pool.internal:7000", b"the pool's key").await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// See [`WorkerError`].
pub async fn worker_main(address: impl Into<Address>, authkey: &[u8]) -> Result<(), WorkerError> {
    worker_main_with(crate::connection::Client::builder(address).authkey(authkey)).await
}

/// As [`worker_main`], with the connection configured by `client` (TLS,
/// deadlines). It must have the pool's authkey.
///
/// # Errors
///
/// See [`WorkerError`].
pub async fn worker_main_with(client: ClientBuilder) -> Result<(), WorkerError> {
    let mut conn = client.connect::<Remote>().await?;
    let lost = |e: ChannelError| WorkerError::Lost(e.to_string());
    let hello = Remote::Hello {
        fingerprint: worker_fingerprint(),
        pid: std::process::id(),
        host: crate::sys::host_name(),
    };
    conn.send(&hello).await.map_err(lost)?;
    let beat = match conn.recv().await.map_err(lost)? {
        Remote::Welcome {
            heartbeat_ms,
            timeout_ms,
            init,
        } => {
            if let Some((target, args)) = init {
                if let Err(why) = run_remote_init(target, args).await {
                    let _ = conn.send(&Remote::InitFailed(why.clone())).await;
                    let _ = conn.flush().await;
                    return Err(WorkerError::Initializer(why));
                }
            }
            Heartbeat {
                interval: Duration::from_millis(heartbeat_ms),
                timeout: Duration::from_millis(timeout_ms),
            }
        }
        Remote::Refused(why) => return Err(WorkerError::Refused(why)),
        other => return Err(WorkerError::Lost(format!("{other:?} before the welcome"))),
    };
    work(&mut conn, beat).await
}

/// The fingerprint this worker gives (a test can make it wrong).
fn worker_fingerprint() -> u64 {
    #[cfg(feature = "test-support")]
    if std::env::var_os("MP_TEST_REMOTE_WRONG_BUILD").is_some() {
        return fingerprint() ^ 1;
    }
    fingerprint()
}

async fn run_remote_init(target: TargetRef, args: ByteBuf) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Handle::current();
        rt.block_on(super::worker::run_init(target, &args))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The worker's loop: takes jobs, asks to start each, runs it on a
/// blocking thread, answers; says `Alive` when quiet.
async fn work(conn: &mut Connection<Remote>, beat: Heartbeat) -> Result<(), WorkerError> {
    let lost = |e: ChannelError| WorkerError::Lost(e.to_string());
    let mut waiting: VecDeque<(u64, u64, TargetRef, Batch)> = VecDeque::new();
    let mut asked: Option<u64> = None;
    let mut running: Option<tokio::task::JoinHandle<(u64, Results)>> = None;
    let mut heard = Instant::now();
    let mut said = Instant::now();
    loop {
        if running.is_none() && asked.is_none() {
            if let Some(&(seq, ..)) = waiting.front() {
                send_within(conn, &Remote::Start { seq }, beat.timeout)
                    .await
                    .map_err(lost)?;
                said = Instant::now();
                asked = Some(seq);
            }
        }
        tokio::select! {
            msg = conn.recv() => {
                heard = Instant::now();
                match msg {
                    Ok(Remote::Job { seq, id, target, args }) => waiting.push_back((seq, id, target, args)),
                    Ok(Remote::Go { seq }) if asked == Some(seq) => {
                        asked = None;
                        if let Some((_, id, target, args)) = waiting.pop_front() {
                            running = Some(tokio::task::spawn_blocking(move || {
                                tokio::runtime::Handle::current()
                                    .block_on(run_remote_job(id, seq, target, args))
                            }));
                        }
                    }
                    Ok(Remote::Skip { seq }) => {
                        if asked == Some(seq) {
                            asked = None;
                        }
                        waiting.retain(|(s, ..)| *s != seq);
                    }
                    Ok(_) => {}
                    // The pool closed: its work here is done.
                    Err(ChannelError::Closed) => return Ok(()),
                    Err(e) => return Err(lost(e)),
                }
            }
            done = async { running.as_mut().expect("guarded").await }, if running.is_some() => {
                running = None;
                let (id, results) = done.map_err(|e| WorkerError::Lost(e.to_string()))?;
                send_within(conn, &Remote::Done { id, results }, beat.timeout)
                    .await
                    .map_err(lost)?;
                said = Instant::now();
            }
            _ = tokio::time::sleep_until(said + beat.interval) => {
                send_within(conn, &Remote::Alive, beat.timeout)
                    .await
                    .map_err(lost)?;
                said = Instant::now();
            }
            _ = tokio::time::sleep_until(heard + beat.timeout) => {
                return Err(WorkerError::Lost(format!("the pool said nothing for {:?}", beat.timeout)));
            }
        }
    }
}

/// The environment variable that makes [`init`](crate::init) join a pool
/// as a remote worker instead of running the program: the pool's address.
pub(crate) const JOIN_ENV: &str = "MP_POOL_JOIN";

/// The authkey for [`JOIN_ENV`], in hexadecimal.
pub(crate) const JOIN_KEY_ENV: &str = "MP_POOL_JOIN_KEY";

/// Starts remote workers with a command, for
/// [`PoolBuilder::launch`](crate::PoolBuilder::launch): `ssh {host} {exe}`,
/// `srun ... {exe}`, or `{exe}` alone for workers on this machine.
///
/// Each argument may hold placeholders: `{exe}` (this program's path),
/// `{address}` (where the pool listens), `{host}` (the next of
/// [`hosts`](Self::hosts), in turn) and `{index}` (the worker's number,
/// from 0). The command runs with `MP_POOL_JOIN` (the address) and
/// `MP_POOL_JOIN_KEY` (the authkey, in hexadecimal) in its environment;
/// a copy of this program started with them joins the pool from
/// [`init`](crate::init) (or `#[mp::main]`) and exits when the pool closes.
/// A command that crosses machines must carry them itself (`ssh` does not
/// pass the environment): prefer a way that keeps the key off command
/// lines, which other users can read.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # async fn demo() -> Result<(), mp::BuildError> {
/// let pool = mp::Pool::builder()
///     .listen("127.0.0.1:0", b"key")
///     .launch(mp::LauncherCommand::new(["{exe}"]).workers(4))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct LauncherCommand {
    argv: Vec<String>,
    workers: Option<usize>,
    hosts: Vec<String>,
}

impl LauncherCommand {
    /// A command, program first, with placeholders in any argument.
    pub fn new<I, S>(argv: I) -> LauncherCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        LauncherCommand {
            argv: argv.into_iter().map(Into::into).collect(),
            workers: None,
            hosts: Vec::new(),
        }
    }

    /// How many workers to start (default: one per host, or one).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The hosts `{host}` takes, in turn.
    pub fn hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }

    /// The command lines, placeholders filled in.
    fn lines(&self, address: &Address) -> std::io::Result<Vec<Vec<String>>> {
        let exe = std::env::current_exe()?.display().to_string();
        let n = self.workers.unwrap_or(self.hosts.len().max(1));
        Ok((0..n)
            .map(|i| {
                let host = if self.hosts.is_empty() {
                    ""
                } else {
                    &self.hosts[i % self.hosts.len()]
                };
                self.argv
                    .iter()
                    .map(|a| {
                        a.replace("{exe}", &exe)
                            .replace("{address}", &address.to_string())
                            .replace("{host}", host)
                            .replace("{index}", &i.to_string())
                    })
                    .collect()
            })
            .collect())
    }

    /// Starts the workers; a task reaps each.
    pub(super) fn start(&self, address: &Address, authkey: &[u8]) -> std::io::Result<usize> {
        let key: String = authkey.iter().map(|b| format!("{b:02x}")).collect();
        let lines = self.lines(address)?;
        for line in &lines {
            let Some((program, args)) = line.split_first() else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an empty launcher command",
                ));
            };
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .env(JOIN_ENV, address.to_string())
                .env(JOIN_KEY_ENV, &key)
                .stdin(std::process::Stdio::null())
                .spawn()?;
            tokio::spawn(async move {
                if let Ok(status) = child.wait().await {
                    tracing::debug!(%status, "a launched pool worker exited");
                }
            });
        }
        Ok(lines.len())
    }
}

/// Joins the pool the environment names ([`JOIN_ENV`]), if it names one,
/// and exits with the worker's end: 0 when the pool closed, 1 otherwise.
/// Called by [`init`](crate::init) before the program's own code runs.
pub(crate) fn join_if_asked() {
    let Some(address) = std::env::var_os(JOIN_ENV) else {
        return;
    };
    let key = std::env::var(JOIN_KEY_ENV).unwrap_or_default();
    // SAFETY: `init` runs before the program starts any thread (the fork
    // server, forwarding and runtimes start later), so nothing reads the
    // environment concurrently. Removed so that processes this worker
    // starts do not join the pool too.
    unsafe {
        std::env::remove_var(JOIN_ENV);
        std::env::remove_var(JOIN_KEY_ENV);
    }
    let key: Option<Vec<u8>> = (0..key.len())
        .step_by(2)
        .map(|i| {
            key.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let code = match (key, address.into_string()) {
        (Some(key), Ok(address)) => {
            let ran = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map(|rt| rt.block_on(worker_main(address.as_str(), &key)));
            match ran {
                Ok(Ok(())) => 0,
                Ok(Err(e)) => {
                    eprintln!("tokio-multiprocessing: pool worker: {e}");
                    1
                }
                Err(e) => {
                    eprintln!("tokio-multiprocessing: pool worker: no runtime: {e}");
                    1
                }
            }
        }
        _ => {
            eprintln!("tokio-multiprocessing: {JOIN_ENV} or {JOIN_KEY_ENV} is malformed");
            2
        }
    };
    std::process::exit(code);
}
