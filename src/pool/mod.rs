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
//! # Handles
//!
//! A task's arguments may hold handles (`pool.apply(f, (queue.clone(), 3))`
//! where `f` puts into the queue): their descriptors go with the job over
//! the worker's socket, and again if the job moves to another worker. So
//! may its value (a [`Lock`](crate::Lock) or a [`Pipe`](crate::Pipe) end
//! made in the worker): a reply holding one comes back over the socket
//! rather than through the shared page, which cannot carry a descriptor.
//!
//! # Caveats
//!
//! Dropping the last [`Pool`] handle terminates the pool: the workers are
//! killed and every unfinished task resolves with
//! [`TaskError::Cancelled`]. Workers are daemonic, so the
//! [`InitGuard`](crate::InitGuard) terminates any still running when `main`
//! ends. No worker is left a zombie: each is reaped by its supervising task.

mod builder;
mod dispatch;
mod error;
mod imap;
mod job;
mod page;
mod record;
#[cfg(fuzzing)]
pub(crate) use record::fuzz as fuzz_records;
mod remote;
mod result;
pub(crate) mod worker;

pub use builder::PoolBuilder;
pub use error::{BuildError, StillRunning, TaskError};
pub use imap::{Imap, ImapUnordered};
#[cfg(fuzzing)]
pub(crate) use page::fuzz as fuzz_page;
pub(crate) use remote::join_if_asked;
pub use remote::{LauncherCommand, WorkerError, worker_main, worker_main_with};
pub use result::AsyncResult;

use job::{Group, GroupGuard, Job, JobRx, Part, Reply, Shared, State};
use result::decode_item;

use std::result::Result;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::target::{StarTarget, Target, encode_value};
use crate::transport::handle::{self, FdList};
use crate::wire::message::TargetRef;
use worker::{Batch, BatchBuilder};

/// The most jobs a worker may have queued behind the ones it runs; how
/// many it gets depends on how long its jobs take (see `dispatch`).
const WINDOW: usize = 32;

/// The handle whose drop terminates the pool.
struct Handle {
    shared: Arc<Shared>,
    slots: Mutex<Vec<JoinHandle<()>>>,
    processes: usize,
    /// Where remote workers join, if they may.
    listening: Option<crate::connection::Address>,
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
    /// Of `workers`, those on other machines, joined through
    /// [`PoolBuilder::listen`].
    pub remote_workers: usize,
}

impl Pool {
    /// Where workers on other machines join this pool (with the port the
    /// system chose), if it listens: see [`PoolBuilder::listen`].
    pub fn listen_address(&self) -> Option<&crate::connection::Address> {
        self.handle.listening.as_ref()
    }

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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: StarTarget<Args, R, M> + crate::CapturesNothing,
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
        F: StarTarget<Args, R, M> + crate::CapturesNothing,
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
        let mut all = BatchBuilder::default();
        for item in iterable {
            all.push(&item).map_err(TaskError::Encode)?;
        }
        let total = all.len();
        let batches = all.take_chunks(chunksize);
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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: Target<A, R, M> + crate::CapturesNothing,
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
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
        S: futures::Stream<Item = A> + Send + 'static,
    {
        Imap::new(self, f.__target_ref().0, stream_source(stream))
    }

    /// [`imap_unordered`](Self::imap_unordered) over a
    /// [`Stream`](futures::Stream) of inputs.
    pub fn imap_unordered_stream<A, R, M, F, S>(&self, f: F, stream: S) -> ImapUnordered<R>
    where
        F: Target<A, R, M> + crate::CapturesNothing,
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

    /// Waits until the pool has ended, or can no longer keep its workers:
    /// `Some(why)` when a worker could not be replaced (even if others run
    /// on) or its runtime shut down, `None` when it was terminated or
    /// closed and joined. What a supervisor watches.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(crate) async fn ended(&self) -> Option<String> {
        let mut state = self.shared().state.subscribe();
        let mut lost = self.shared().slot_lost.subscribe();
        tokio::select! {
            _ = state.wait_for(|s| *s == State::Terminated) => {}
            // One worker that cannot be replaced is enough: the pool no
            // longer has the workers it was built with.
            Ok(why) = lost.wait_for(Option::is_some) => return why.clone(),
        }
        // A closed pool ends when its slots do.
        self.shared()
            .gave_up
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
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
            remote_workers: live(&c.remote),
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
        iterable.into_iter().map(|a| encode_arg(&a)),
    ))
}

fn stream_source<A, S>(stream: S) -> imap::Source
where
    A: Serialize,
    S: futures::Stream<Item = A> + Send + 'static,
{
    use futures::StreamExt;
    Box::pin(stream.map(|a| encode_arg(&a)))
}

/// Encodes one argument, with the descriptors of the handles in it.
fn encode_arg<A: Serialize>(a: &A) -> Result<(Vec<u8>, FdList), String> {
    let (bytes, fds, carried) = handle::encode_noting(|| encode_value(a));
    Ok((bytes?, FdList::noting(fds, carried)))
}
