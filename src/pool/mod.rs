//! A pool of worker processes: [`Pool`].
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     let _guard = mp::init(); // first thing: in a child this never returns
//!     let pool = mp::Pool::new(4).await?;
//!     assert_eq!(pool.map(square, [1, 2, 3]).await?, [1, 4, 9]);
//!     assert_eq!(pool.apply(square, 12).await?, 144);
//!     pool.close();
//!     pool.join().await?;
//!     Ok(())
//! }
//! ```
//!
//! Each worker is a child [`Process`](crate::Process) running a loop that
//! takes jobs (one task, or a chunk of a `map`) from a pipe, runs them one
//! at a time in the order they came, and sends back one reply per job. In
//! the parent, one task per worker keeps a small window of jobs in flight
//! on its pipe, so the worker never waits a round trip between jobs, and
//! replaces the worker when it dies, outlives a task's timeout, or has run
//! [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child) jobs.
//!
//! # Caveats
//!
//! Dropping the last [`Pool`] handle terminates the pool: the workers are
//! killed and every unfinished task resolves with
//! [`TaskError::Cancelled`]. Workers are daemonic, so the
//! [`InitGuard`](crate::InitGuard) terminates any still running when `main`
//! ends. No worker is left a zombie: each is reaped by its supervising task.

mod error;
mod imap;
mod page;
#[cfg(fuzzing)]
pub(crate) use page::fuzz as fuzz_page;
mod supervisor;
pub(crate) mod worker;

pub use error::{BuildError, StillRunning, TaskError};
pub use imap::{Imap, ImapUnordered};

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::result::Result;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinHandle;

use crate::target::{StarTarget, Target, decode_value, encode_value};
use crate::wire::message::{Outcome, TargetRef};
use worker::{Batch, BatchBuilder, Results};

/// The most jobs a worker may have queued behind the ones it runs; how
/// many it gets depends on how long its jobs take (see the supervisor).
const WINDOW: usize = 32;

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Closed,
    Terminated,
}

/// Where a job's result goes: its own channel, or its place in the
/// results of a `map`.
enum Reply {
    One(oneshot::Sender<JobResult>),
    Part(Part),
}

/// A job's place in a [`Group`]. Dropped without a result, it fills its
/// place with [`TaskError::Cancelled`], as a dropped channel would.
struct Part {
    group: Arc<Group>,
    index: usize,
    filled: bool,
}

impl Part {
    fn fill(&mut self, result: JobResult) {
        self.group.put(self.index, result);
        self.filled = true;
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.filled {
            self.group.put(self.index, Err(TaskError::Cancelled));
        }
    }
}

impl Reply {
    /// Whether nobody wants the result any more.
    fn is_closed(&self) -> bool {
        match self {
            Reply::One(tx) => tx.is_closed(),
            Reply::Part(part) => part.group.dropped.load(Ordering::Relaxed),
        }
    }

    fn send(self, result: JobResult) {
        match self {
            Reply::One(tx) => {
                let _ = tx.send(result);
            }
            Reply::Part(mut part) => part.fill(result),
        }
    }
}

/// The results of the jobs of one `map`, gathered in place: no channel per
/// job, and a wake-up only when the result the `map` waits for next (in
/// input order) comes, so that it decodes results while later jobs run.
struct Group {
    slots: Mutex<Vec<Option<JobResult>>>,
    /// The index of the result the `map` waits for.
    awaited: AtomicUsize,
    waker: futures::task::AtomicWaker,
    /// The `map` was dropped: its jobs are unwanted.
    dropped: std::sync::atomic::AtomicBool,
}

impl Group {
    fn new(jobs: usize) -> Group {
        Group {
            slots: Mutex::new((0..jobs).map(|_| None).collect()),
            awaited: AtomicUsize::new(0),
            waker: futures::task::AtomicWaker::new(),
            dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<JobResult>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, index: usize, result: JobResult) {
        let mut slots = self.lock();
        if let Some(slot @ None) = slots.get_mut(index) {
            *slot = Some(result);
            drop(slots);
            if index == self.awaited.load(Ordering::Acquire) {
                self.waker.wake();
            }
        }
    }

    /// Waits for the result at `from`, then takes it and every result
    /// after it that has come, in order.
    async fn next_from(&self, from: usize, out: &mut Vec<JobResult>) {
        self.awaited.store(from, Ordering::Release);
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            let mut slots = self.lock();
            let ready = slots[from..].iter_mut().map_while(Option::take);
            out.extend(ready);
            if out.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
    }

    /// Whether results are still to come after `taken` were taken.
    fn unfinished(&self, taken: usize) -> bool {
        taken < self.lock().len()
    }
}

/// Marks a `map`'s group dropped if the `map` future goes before its
/// results came, so that its jobs do not run.
struct GroupGuard<'a> {
    group: &'a Arc<Group>,
    shared: &'a Shared,
    /// Every result came.
    done: bool,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.group.dropped.store(true, Ordering::Relaxed);
            self.shared.result_dropped();
        }
    }
}

/// One message's worth of work: a task, or a chunk of a `map`.
struct Job {
    id: u64,
    target: TargetRef,
    args: Batch,
    /// How many tasks the job holds.
    len: usize,
    reply: Reply,
}

#[derive(Default)]
struct Counters {
    workers: AtomicUsize,
    busy: AtomicUsize,
    completed: AtomicUsize,
    failed: AtomicUsize,
    restarted: AtomicUsize,
}

struct Config {
    init: Option<(TargetRef, ByteBuf)>,
    max_tasks: Option<usize>,
    timeout: Option<Duration>,
    /// Jobs a worker runs at once.
    concurrency: usize,
    /// The most jobs a worker may have in flight: the ones it runs and
    /// some more.
    window: usize,
}

/// What the pool's handles and its supervising tasks share.
struct Shared {
    queue: Mutex<VecDeque<Job>>,
    notify: Notify,
    state: watch::Sender<State>,
    stats: Counters,
    config: Config,
    next_id: AtomicU64,
    /// Worker slots still running.
    live_slots: AtomicUsize,
    /// Bumped when the result of a job that may be waiting in a worker is
    /// dropped; the supervisors then tell their workers to drop it.
    cancels: AtomicU64,
    cancelled: Notify,
    /// Slots whose worker is idle with nothing queued.
    hungry: AtomicUsize,
    /// The runtime that ran the slots shut down: they are gone, and their
    /// workers killed and reaped.
    runtime_gone: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job whose result someone still wants; the others are
    /// cancelled and never run.
    ///
    /// A worker that is already busy (`idle` false) gets another job only
    /// when there are more jobs than idle workers, so a short task does
    /// not wait behind a long one while a worker has nothing to do.
    fn pop_job(&self, idle: bool) -> Option<Job> {
        let mut q = self.lock_queue();
        if !idle {
            let workers = self.stats.workers.load(Ordering::Relaxed);
            let busy = self.stats.busy.load(Ordering::Relaxed);
            if q.len() <= workers.saturating_sub(busy) {
                return None;
            }
        }
        while let Some(job) = q.pop_front() {
            if !job.reply.is_closed() {
                return Some(job);
            }
        }
        None
    }

    fn submit(&self, jobs: Vec<Job>) -> std::result::Result<(), TaskError> {
        let mut q = self.lock_queue();
        if self.runtime_gone.load(Ordering::Acquire) {
            return Err(TaskError::RuntimeShutdown);
        }
        if *self.state.borrow() != State::Running {
            return Err(TaskError::Closed);
        }
        q.extend(jobs);
        drop(q);
        self.notify.notify_waiters();
        Ok(())
    }

    /// A job's result was dropped before it arrived.
    fn result_dropped(&self) {
        self.cancels.fetch_add(1, Ordering::Release);
        self.cancelled.notify_waiters();
    }

    /// Moves to `Terminated` and cancels every queued job.
    fn begin_terminate(&self) {
        self.state.send_replace(State::Terminated);
        let drained: Vec<Job> = self.lock_queue().drain(..).collect();
        for job in drained {
            supervisor::deliver(self, job, Err(TaskError::Cancelled));
        }
    }
}

/// The handle whose drop terminates the pool.
struct Handle {
    shared: Arc<Shared>,
    slots: Mutex<Vec<JoinHandle<()>>>,
    processes: usize,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.begin_terminate();
    }
}

/// A pool of worker processes that run targets in parallel.
///
/// Python's `multiprocessing.Pool`. Cloning gives another handle to the
/// same pool (an `Arc` inside), so a server can share one between its
/// handlers; dropping the last handle terminates it.
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _guard = mp::init();
///     let pool = mp::Pool::new(0).await?; // one worker per CPU
///     let pending = pool.apply_async(square, 7);
///     assert_eq!(pool.map(square, 1..=3).await?, [1, 4, 9]);
///     assert_eq!(pending.await?, 49);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Pool {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.handle.processes)
            .field("state", &*self.handle.shared.state.borrow())
            .finish()
    }
}

/// How many tasks a pool has run, is running and holds, from
/// [`Pool::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers running now.
    pub workers: usize,
    /// Workers with at least one job in flight.
    pub busy: usize,
    /// Jobs (tasks, or chunks of a `map`) waiting for a worker.
    pub queued: usize,
    /// Tasks that returned a value.
    pub completed: usize,
    /// Tasks that ended in an error.
    pub failed: usize,
    /// Workers replaced after they died, timed out or retired.
    pub restarted: usize,
}

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
#[derive(Debug, Default)]
#[must_use]
pub struct PoolBuilder {
    processes: usize,
    init: Option<(TargetRef, std::result::Result<ByteBuf, String>)>,
    max_tasks: Option<usize>,
    timeout: Option<Duration>,
    concurrency: Option<usize>,
}

impl PoolBuilder {
    /// The number of workers; 0 (the default) means the available parallelism.
    pub fn processes(mut self, n: usize) -> Self {
        self.processes = n;
        self
    }

    /// A target every worker runs once, before any task. If it panics in
    /// the first workers, [`build`](Self::build) fails.
    pub fn initializer<A, M, F>(mut self, f: F, args: A) -> Self
    where
        F: Target<A, (), M>,
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

    /// A task running longer than `d` fails with [`TaskError::TimedOut`];
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
    /// [`TaskError::WorkerDied`]. `c = 0` fails the build.
    pub fn concurrency(mut self, c: usize) -> Self {
        self.concurrency = Some(c);
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
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            state: watch::Sender::new(State::Running),
            stats: Counters::default(),
            config: Config {
                init,
                max_tasks: self.max_tasks,
                timeout: self.timeout,
                concurrency,
                window: WINDOW + concurrency,
            },
            next_id: AtomicU64::new(0),
            live_slots: AtomicUsize::new(processes),
            cancels: AtomicU64::new(0),
            cancelled: Notify::new(),
            hungry: AtomicUsize::new(0),
            runtime_gone: std::sync::atomic::AtomicBool::new(false),
        });
        let mut slots = Vec::with_capacity(processes);
        let mut readies = Vec::with_capacity(processes);
        for _ in 0..processes {
            let (tx, rx) = oneshot::channel();
            slots.push(tokio::spawn(supervisor::supervise(shared.clone(), tx)));
            readies.push(rx);
        }
        let pool = Pool {
            handle: Arc::new(Handle {
                shared,
                slots: Mutex::new(slots),
                processes,
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

impl Pool {
    /// Starts a pool of `n` workers; `n = 0` means the available parallelism.
    ///
    /// # Errors
    ///
    /// As [`PoolBuilder::build`].
    ///
    /// # Cancel safety
    ///
    /// As [`PoolBuilder::build`].
    pub async fn new(n: usize) -> Result<Pool, BuildError> {
        Pool::builder().processes(n).build().await
    }

    /// A builder for a pool with an initializer, a task timeout or a limit
    /// on tasks per worker.
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    fn job(&self, target: TargetRef, args: Batch) -> (Job, JobRx) {
        let (reply, rx) = oneshot::channel();
        let reply = Reply::One(reply);
        let rx = JobRx {
            rx,
            shared: Arc::downgrade(&self.handle.shared),
        };
        let len = args.len();
        let id = self.shared().next_id.fetch_add(1, Ordering::Relaxed);
        (
            Job {
                id,
                target,
                args,
                len,
                reply,
            },
            rx,
        )
    }

    /// Runs `f(args)` in a worker and waits for its value.
    ///
    /// # Errors
    ///
    /// Every way a task can fail: see [`TaskError`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the task reached a worker cancels the
    /// task; once a worker has it, it runs to the end and its value is
    /// dropped.
    pub async fn apply<A, R, M, F>(&self, f: F, args: A) -> std::result::Result<R, TaskError>
    where
        F: Target<A, R, M>,
        A: Serialize,
        R: DeserializeOwned,
    {
        self.apply_async(f, args).await
    }

    /// Submits `f(args)` and returns at once; the [`AsyncResult`] resolves
    /// to its value.
    ///
    /// Dropping the `AsyncResult` before the task reached a worker cancels
    /// it: it never runs.
    pub fn apply_async<A, R, M, F>(&self, f: F, args: A) -> AsyncResult<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
        R: DeserializeOwned,
    {
        let mut batch = BatchBuilder::default();
        if let Err(e) = batch.push(&args) {
            return AsyncResult::failed(TaskError::Encode(e));
        }
        let (job, rx) = self.job(f.__target_ref().0, batch.take());
        match self.shared().submit(vec![job]) {
            Ok(()) => AsyncResult::pending(rx),
            Err(e) => AsyncResult::failed(e),
        }
    }

    /// Runs `f` on every item, in chunks, and returns the values in input
    /// order.
    ///
    /// The chunk size is Python's default: the number of items divided by
    /// four times the number of workers, rounded up. With a
    /// [`task_timeout`](PoolBuilder::task_timeout), every item is a job of
    /// its own, so each task has the whole timeout.
    ///
    /// # Errors
    ///
    /// The first failure in input order, reported once every chunk has
    /// finished; the pool stays usable.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future cancels the chunks that had not reached a worker.
    pub async fn map<A, R, M, F, I>(
        &self,
        f: F,
        iterable: I,
    ) -> std::result::Result<Vec<R>, TaskError>
    where
        F: Target<A, R, M>,
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let items: Vec<A> = iterable.into_iter().collect();
        let chunksize = self.default_chunksize(items.len());
        self.map_chunked(f, items, chunksize).await
    }

    /// Python's default chunk size for `n` items: `n / (4 × workers)`,
    /// rounded up.
    fn default_chunksize(&self, n: usize) -> usize {
        n.div_ceil(4 * self.handle.processes).max(1)
    }

    /// [`map`](Self::map) with the given chunk size (0 counts as 1; with a
    /// task timeout, the chunk size is 1).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Cancel safety
    ///
    /// As [`map`](Self::map).
    pub async fn map_chunked<A, R, M, F, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> std::result::Result<Vec<R>, TaskError>
    where
        F: Target<A, R, M>,
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        self.map_refs(f.__target_ref().0, iterable, chunksize).await
    }

    /// Like [`map`](Self::map), for a function of several arguments: each
    /// item is the tuple of one call's arguments. Python's `starmap`.
    ///
    /// ```no_run
    /// # use tokio_multiprocessing as mp;
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    /// # async fn demo(pool: mp::Pool) -> Result<(), mp::TaskError> {
    /// assert_eq!(pool.starmap(power, [(2, 3), (3, 2)]).await?, [8, 9]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Cancel safety
    ///
    /// As [`map`](Self::map).
    pub async fn starmap<Args, R, M, F, I>(
        &self,
        f: F,
        iterable: I,
    ) -> std::result::Result<Vec<R>, TaskError>
    where
        F: StarTarget<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = Args>,
    {
        let items: Vec<Args> = iterable.into_iter().collect();
        let chunksize = self.default_chunksize(items.len());
        self.starmap_chunked(f, items, chunksize).await
    }

    /// [`starmap`](Self::starmap) with the given chunk size (0 counts as 1).
    ///
    /// # Errors
    ///
    /// As [`map`](Self::map).
    ///
    /// # Cancel safety
    ///
    /// As [`map`](Self::map).
    pub async fn starmap_chunked<Args, R, M, F, I>(
        &self,
        f: F,
        iterable: I,
        chunksize: usize,
    ) -> std::result::Result<Vec<R>, TaskError>
    where
        F: StarTarget<Args, R, M>,
        Args: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = Args>,
    {
        self.map_refs(f.__target_ref().0, iterable, chunksize).await
    }

    /// The chunk size to use: with a task timeout every task is its own
    /// job, so that each has its own deadline.
    fn effective_chunksize(&self, chunksize: usize) -> usize {
        if self.shared().config.timeout.is_some() {
            1
        } else {
            chunksize.max(1)
        }
    }

    async fn map_refs<A, R, I>(
        &self,
        target: TargetRef,
        iterable: I,
        chunksize: usize,
    ) -> std::result::Result<Vec<R>, TaskError>
    where
        A: Serialize,
        R: DeserializeOwned,
        I: IntoIterator<Item = A>,
    {
        let chunksize = self.effective_chunksize(chunksize);
        let mut batches = Vec::new();
        let mut chunk = BatchBuilder::default();
        let mut total = 0;
        for item in iterable {
            chunk.push(&item).map_err(TaskError::Encode)?;
            total += 1;
            if chunk.len() == chunksize {
                batches.push(chunk.take());
            }
        }
        if !chunk.is_empty() {
            batches.push(chunk.take());
        }
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        let group = Arc::new(Group::new(batches.len()));
        let jobs = batches
            .into_iter()
            .enumerate()
            .map(|(index, args)| Job {
                id: self.shared().next_id.fetch_add(1, Ordering::Relaxed),
                target,
                len: args.len(),
                args,
                reply: Reply::Part(Part {
                    group: group.clone(),
                    index,
                    filled: false,
                }),
            })
            .collect();
        self.shared().submit(jobs)?;
        let mut guard = GroupGuard {
            group: &group,
            shared: self.shared(),
            done: false,
        };
        let mut out = Vec::with_capacity(total);
        let mut first_err = None;
        let mut taken = 0;
        let mut ready = Vec::new();
        while group.unfinished(taken) {
            group.next_from(taken, &mut ready).await;
            taken += ready.len();
            for r in ready.drain(..) {
                match r {
                    Ok(results) => {
                        for item in results.map_items(decode_item::<R>) {
                            match item {
                                Ok(v) => out.push(v),
                                Err(e) => {
                                    first_err.get_or_insert(e);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        guard.done = true;
        drop(guard);
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Runs `f` on every item of `iterable`, lazily, and yields the
    /// results in input order as a [`Stream`](futures::Stream). Python's
    /// `imap`.
    ///
    /// The input is read only as the window of jobs in flight has room,
    /// so it may be endless. Every input item gives one result, an error
    /// included. See [`Imap`]; [`Imap::chunksize`] sets Python's
    /// `chunksize` (1 by default).
    ///
    /// ```no_run
    /// # use tokio_multiprocessing as mp;
    /// use futures::StreamExt;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    /// # async fn demo(pool: mp::Pool) -> Result<(), mp::TaskError> {
    /// let mut squares = pool.imap(square, 1..); // endless input
    /// let mut total = 0;
    /// while let Some(v) = squares.next().await {
    ///     total += v?;
    ///     if total > 1000 {
    ///         break; // dropping the stream cancels what has not started
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn imap<A, R, M, F, I>(&self, f: F, iterable: I) -> Imap<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        Imap::new(self, f.__target_ref().0, iter_source(iterable))
    }

    /// [`imap`](Self::imap), yielding each result as soon as it is ready
    /// rather than in input order. Python's `imap_unordered`.
    pub fn imap_unordered<A, R, M, F, I>(&self, f: F, iterable: I) -> ImapUnordered<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
        I: IntoIterator<Item = A>,
        I::IntoIter: Send + 'static,
    {
        ImapUnordered::new(self, f.__target_ref().0, iter_source(iterable))
    }

    /// [`imap`](Self::imap) over a [`Stream`](futures::Stream) of inputs:
    /// items are submitted as they arrive, within the same bounded window.
    pub fn imap_stream<A, R, M, F, S>(&self, f: F, stream: S) -> Imap<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
        S: futures::Stream<Item = A> + Send + 'static,
    {
        Imap::new(self, f.__target_ref().0, stream_source(stream))
    }

    /// [`imap_unordered`](Self::imap_unordered) over a
    /// [`Stream`](futures::Stream) of inputs.
    pub fn imap_unordered_stream<A, R, M, F, S>(&self, f: F, stream: S) -> ImapUnordered<R>
    where
        F: Target<A, R, M>,
        A: Serialize,
        S: futures::Stream<Item = A> + Send + 'static,
    {
        ImapUnordered::new(self, f.__target_ref().0, stream_source(stream))
    }

    /// Stops taking work: later submissions fail with [`TaskError::Closed`];
    /// queued tasks still run. Python's `close`.
    pub fn close(&self) {
        self.shared().state.send_if_modified(|s| match s {
            State::Running => {
                *s = State::Closed;
                true
            }
            _ => false,
        });
    }

    /// Waits for the workers to finish every queued task and exit.
    ///
    /// # Errors
    ///
    /// [`StillRunning`] unless [`close`](Self::close) or
    /// [`terminate`](Self::terminate) was called first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a later `join` goes on waiting.
    pub async fn join(&self) -> Result<(), StillRunning> {
        if *self.shared().state.borrow() == State::Running {
            return Err(StillRunning);
        }
        loop {
            let slot = self
                .handle
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match slot {
                Some(h) => {
                    let _ = h.await;
                }
                None => return Ok(()),
            }
        }
    }

    /// Kills the workers at once; every unfinished task resolves with
    /// [`TaskError::Cancelled`]. Returns once the workers are reaped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the pool is terminated from the first poll; dropping
    /// the future only stops waiting for the reaping.
    pub async fn terminate(&self) {
        self.shared().begin_terminate();
        let _ = self.join().await;
    }

    /// How many workers there are, how many are busy, and how many tasks
    /// are queued, done, failed and restarted.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared().stats;
        // Once the runtime is gone, so are the workers (killed and reaped
        // as their slots went), whatever the counts say.
        let gone = self.shared().runtime_gone.load(Ordering::Acquire);
        let live = |n: &AtomicUsize| if gone { 0 } else { n.load(Ordering::Relaxed) };
        PoolStats {
            workers: live(&c.workers),
            busy: live(&c.busy),
            queued: self.shared().lock_queue().len(),
            completed: c.completed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            restarted: c.restarted.load(Ordering::Relaxed),
        }
    }
}

fn iter_source<A, I>(iterable: I) -> imap::Source
where
    A: Serialize,
    I: IntoIterator<Item = A>,
    I::IntoIter: Send + 'static,
{
    Box::pin(futures::stream::iter(
        iterable.into_iter().map(|a| encode_value(&a)),
    ))
}

fn stream_source<A, S>(stream: S) -> imap::Source
where
    A: Serialize,
    S: futures::Stream<Item = A> + Send + 'static,
{
    use futures::StreamExt;
    Box::pin(stream.map(|a| encode_value(&a)))
}

fn decode_item<R: DeserializeOwned>(
    item: std::result::Result<&[u8], Outcome>,
) -> std::result::Result<R, TaskError> {
    match item {
        Ok(bytes) => decode_value(bytes).map_err(TaskError::Decode),
        Err(outcome) => decode_outcome(outcome),
    }
}

fn decode_outcome<R: DeserializeOwned>(o: Outcome) -> std::result::Result<R, TaskError> {
    match o {
        Outcome::Returned(b) => decode_value(&b).map_err(TaskError::Decode),
        Outcome::Panicked(info) => Err(TaskError::Panicked(info)),
        Outcome::DecodeArgs(e) => Err(TaskError::Decode(format!(
            "in the worker, the arguments: {e}"
        ))),
        Outcome::EncodeResult(e) => Err(TaskError::EncodeResult(e)),
    }
}

type JobResult = std::result::Result<Results, TaskError>;

/// The receiving end of a job's reply. Dropping it before the reply came
/// asks the supervisors to drop the job if a worker holds it unstarted.
struct JobRx {
    rx: oneshot::Receiver<JobResult>,
    shared: Weak<Shared>,
}

impl JobRx {
    fn ready(&self) -> bool {
        !self.rx.is_empty() || self.rx.is_terminated()
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(TaskError::Cancelled)))
    }
}

impl Future for JobRx {
    type Output = JobResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResult> {
        self.get_mut().poll(cx)
    }
}

impl Drop for JobRx {
    fn drop(&mut self) {
        if !self.ready() {
            if let Some(shared) = self.shared.upgrade() {
                shared.result_dropped();
            }
        }
    }
}

enum Inner {
    Pending(JobRx),
    Failed(Option<TaskError>),
}

/// The value of a task submitted with [`Pool::apply_async`], as a future.
///
/// Python's `AsyncResult`: await it for the value, or ask
/// [`ready`](Self::ready). Dropping it before the task reached a worker
/// cancels the task, which then never runs.
///
/// # Cancel safety
///
/// Awaiting it in a `select!` and dropping the poll loses nothing until
/// the `AsyncResult` itself is dropped.
#[must_use = "dropping an AsyncResult cancels its task if it has not started"]
pub struct AsyncResult<R> {
    inner: Inner,
    _value: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}

impl<R> AsyncResult<R> {
    fn pending(rx: JobRx) -> Self {
        AsyncResult {
            inner: Inner::Pending(rx),
            _value: PhantomData,
        }
    }

    fn failed(e: TaskError) -> Self {
        AsyncResult {
            inner: Inner::Failed(Some(e)),
            _value: PhantomData,
        }
    }

    /// Whether the task has ended, so that awaiting gives its result at once.
    pub fn ready(&self) -> bool {
        match &self.inner {
            Inner::Pending(rx) => rx.ready(),
            Inner::Failed(_) => true,
        }
    }

    fn poll_outcomes(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<Results, TaskError>> {
        match &mut self.inner {
            Inner::Pending(rx) => rx.poll(cx),
            Inner::Failed(e) => Poll::Ready(Err(e.take().unwrap_or(TaskError::Cancelled))),
        }
    }
}

impl<R: DeserializeOwned> Future for AsyncResult<R> {
    type Output = std::result::Result<R, TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.poll_outcomes(cx).map(|r| {
            r?.map_items(decode_item)
                .next()
                .unwrap_or_else(|| Err(TaskError::Decode("the worker sent no outcome".to_owned())))
        })
    }
}
