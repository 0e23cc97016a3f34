//! Jobs and where they wait: a job (a task, or a chunk of a `map`), where
//! its result goes, the results of a `map` gathered in place, and the
//! state the pool's handles share with its dispatching tasks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::sync::{Notify, oneshot, watch};

use super::TaskError;
use super::worker::{Batch, Results};
use crate::wire::message::TargetRef;

/// Where the pool is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Running,
    Closed,
    Terminated,
}

/// Where a job's result goes: its own channel, or its place in the
/// results of a `map`.
pub(super) enum Reply {
    One(oneshot::Sender<JobResult>),
    Part(Part),
}

/// A job's place in a [`Group`]. Dropped without a result, it fills its
/// place with [`TaskError::Cancelled`], as a dropped channel would.
pub(super) struct Part {
    pub(super) group: Arc<Group>,
    pub(super) index: usize,
    pub(super) filled: bool,
}

impl Part {
    pub(super) fn fill(&mut self, result: JobResult) {
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
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Reply::One(tx) => tx.is_closed(),
            Reply::Part(part) => part.group.dropped.load(Ordering::Relaxed),
        }
    }

    pub(super) fn send(self, result: JobResult) {
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
pub(super) struct Group {
    pub(super) slots: Mutex<Vec<Option<JobResult>>>,
    /// The index of the result the `map` waits for: the results before it
    /// were taken.
    pub(super) awaited: AtomicUsize,
    /// How many results came (changed under the `slots` lock).
    filled: AtomicUsize,
    /// How many results must be waiting, the awaited one among them,
    /// before the `map` is woken to take them (or all of them came).
    batch: usize,
    pub(super) waker: futures::task::AtomicWaker,
    /// The `map` was dropped: its jobs are unwanted.
    pub(super) dropped: std::sync::atomic::AtomicBool,
}

impl Group {
    pub(super) fn new(jobs: usize) -> Group {
        Group {
            slots: Mutex::new((0..jobs).map(|_| None).collect()),
            awaited: AtomicUsize::new(0),
            filled: AtomicUsize::new(0),
            // The `map` returns only once every result is in: waking it
            // for each one (a thread's wake-up, when it waits on another
            // thread) would cost more than the decoding it gets ahead
            // with. It is woken about 16 times, to decode in batches
            // while the workers go on.
            batch: (jobs / GROUP_WAKES).max(1),
            waker: futures::task::AtomicWaker::new(),
            dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Vec<Option<JobResult>>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn put(&self, index: usize, result: JobResult) {
        let mut slots = self.lock();
        if let Some(slot @ None) = slots.get_mut(index) {
            *slot = Some(result);
            let filled = self.filled.fetch_add(1, Ordering::Relaxed) + 1;
            let awaited = self.awaited.load(Ordering::Acquire);
            // Every result comes exactly once, so the last one always
            // wakes the `map`: waking it less often loses nothing.
            let wake = filled == slots.len()
                || (slots.get(awaited).is_some_and(Option::is_some)
                    && filled.saturating_sub(awaited) >= self.batch);
            drop(slots);
            if wake {
                self.waker.wake();
            }
        }
    }

    /// Waits for the result at `from`, then takes it and every result
    /// after it that has come, in order.
    pub(super) async fn next_from(&self, from: usize, out: &mut Vec<JobResult>) {
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
    pub(super) fn unfinished(&self, taken: usize) -> bool {
        taken < self.lock().len()
    }
}

/// About how many times a `map` is woken for its results.
const GROUP_WAKES: usize = 16;

/// Marks a `map`'s group dropped if the `map` future goes before its
/// results came, so that its jobs do not run.
pub(super) struct GroupGuard<'a> {
    pub(super) group: &'a Arc<Group>,
    pub(super) shared: &'a Shared,
    /// Every result came.
    pub(super) done: bool,
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
pub(super) struct Job {
    pub(super) id: u64,
    pub(super) target: TargetRef,
    pub(super) args: Batch,
    /// How many tasks the job holds.
    pub(super) len: usize,
    pub(super) reply: Reply,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) workers: AtomicUsize,
    pub(super) busy: AtomicUsize,
    pub(super) completed: AtomicUsize,
    pub(super) failed: AtomicUsize,
    pub(super) restarted: AtomicUsize,
    /// Workers on other machines (counted in `workers` too).
    pub(super) remote: AtomicUsize,
}

pub(super) struct Config {
    pub(super) init: Option<(TargetRef, ByteBuf)>,
    pub(super) max_tasks: Option<usize>,
    pub(super) timeout: Option<Duration>,
    /// Jobs a worker runs at once.
    pub(super) concurrency: usize,
    /// The most jobs a worker may have in flight: the ones it runs and
    /// some more.
    pub(super) window: usize,
    /// How long a slot watches for replies after sending jobs before it
    /// sleeps.
    pub(super) spin: Duration,
    /// After how long with nothing to run a worker rests (`None`: never).
    pub(super) rest_after: Option<Duration>,
    /// Whether workers forward their `tracing` events.
    pub(super) forward_tracing: bool,
    /// Whether workers' stdout and stderr are captured.
    pub(super) capture_output: bool,
    /// What the workers' environment and directory differ by.
    pub(super) env: crate::process::Environment,
}

/// What the pool's handles and its supervising tasks share.
pub(super) struct Shared {
    pub(super) queue: Mutex<VecDeque<Job>>,
    /// Wakes every slot waiting for work.
    pub(super) notify: Notify,
    /// Wakes one idle slot (one counted in `hungry`): when the queue holds
    /// no more jobs than there are idle slots, the slots with busy workers
    /// would not take them, and waking them all would only move the
    /// pool's tasks between the runtime's threads.
    pub(super) idle_notify: Notify,
    pub(super) state: watch::Sender<State>,
    pub(super) stats: Counters,
    pub(super) config: Config,
    pub(super) next_id: AtomicU64,
    /// Worker slots still running.
    pub(super) live_slots: AtomicUsize,
    /// Bumped when the result of a job that may be waiting in a worker is
    /// dropped; the slots then tell their workers to drop it.
    pub(super) cancels: AtomicU64,
    pub(super) cancelled: Notify,
    /// Slots whose worker is idle with nothing queued.
    pub(super) hungry: AtomicUsize,
    /// Those of the `hungry` slots whose worker has not stalled: the ones
    /// a stalled worker leaves the queue to. A stalled worker that is idle
    /// is hungry too, but must not count here: when every idle worker had
    /// stalled, each left the jobs to the others and none took them.
    pub(super) ready_idle: AtomicUsize,
    /// The runtime that ran the slots shut down: they are gone, and their
    /// workers killed and reaped.
    pub(super) runtime_gone: std::sync::atomic::AtomicBool,
    /// Why the pool ended by itself: its last worker could not be
    /// replaced, or its runtime shut down.
    pub(super) gave_up: Mutex<Option<String>>,
    /// Why the first slot that gave up did (its worker could not be
    /// replaced), while the others may run on: for a supervisor, the pool
    /// could not keep its workers.
    pub(super) slot_lost: tokio::sync::watch::Sender<Option<String>>,
}

impl Shared {
    pub(super) fn lock_queue(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next job whose result someone still wants; the others are
    /// cancelled and never run.
    ///
    /// A worker that is already busy (`idle` false) gets another job only
    /// when there are more jobs than idle workers, so a short task does
    /// not wait behind a long one while a worker has nothing to do.
    pub(super) fn pop_job(&self, idle: bool) -> Option<Job> {
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

    /// As [`pop_job`](Self::pop_job) for an idle slot that can take only
    /// the jobs `fits` accepts (a remote one: no handles); the others keep
    /// their places.
    pub(super) fn pop_job_where(&self, fits: impl Fn(&Job) -> bool) -> Option<Job> {
        let mut q = self.lock_queue();
        while q.front().is_some_and(|job| job.reply.is_closed()) {
            q.pop_front();
        }
        let at = q
            .iter()
            .position(|job| !job.reply.is_closed() && fits(job))?;
        q.remove(at)
    }

    pub(super) fn submit(&self, jobs: Vec<Job>) -> std::result::Result<(), TaskError> {
        let mut q = self.lock_queue();
        if self.runtime_gone.load(Ordering::Acquire) {
            return Err(TaskError::RuntimeShutdown);
        }
        if *self.state.borrow() != State::Running {
            return Err(TaskError::Closed);
        }
        q.extend(jobs);
        let queued = q.len();
        drop(q);
        // Read after the queue's lock is let go: a slot counts itself
        // hungry before it looks at the queue (under the lock) once more,
        // so either it sees these jobs or this sees it.
        let idle = self.hungry.load(Ordering::SeqCst);
        if queued <= idle {
            for _ in 0..queued {
                self.idle_notify.notify_last();
            }
        } else {
            self.notify.notify_waiters();
        }
        Ok(())
    }

    /// A job's result was dropped before it arrived.
    pub(super) fn result_dropped(&self) {
        self.cancels.fetch_add(1, Ordering::Release);
        self.cancelled.notify_waiters();
    }

    /// Moves to `Terminated` and cancels every queued job.
    pub(super) fn begin_terminate(&self) {
        self.state.send_replace(State::Terminated);
        let drained: Vec<Job> = self.lock_queue().drain(..).collect();
        for job in drained {
            deliver(self, job, Err(TaskError::Cancelled));
        }
    }
}

pub(super) type JobResult = std::result::Result<Results, TaskError>;

/// The receiving end of a job's reply. Dropping it before the reply came
/// asks the slots to drop the job if a worker holds it unstarted.
pub(super) struct JobRx {
    pub(super) rx: oneshot::Receiver<JobResult>,
    pub(super) shared: Weak<Shared>,
}

impl JobRx {
    pub(super) fn ready(&self) -> bool {
        !self.rx.is_empty() || self.rx.is_terminated()
    }

    pub(super) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<JobResult> {
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

/// Hands a job's result over and counts it.
pub(super) fn deliver(shared: &Shared, job: Job, result: Result<Results, TaskError>) {
    match &result {
        Ok(results) => {
            for (index, outcome) in results.failures() {
                tracing::warn!(
                    task = job.id,
                    index,
                    error = %super::worker::describe(outcome),
                    "pool task failed"
                );
            }
            let failed = results.failed();
            shared
                .stats
                .completed
                .fetch_add(results.len() - failed, Ordering::Relaxed);
            shared.stats.failed.fetch_add(failed, Ordering::Relaxed);
        }
        Err(e) => {
            if e.is_lost() {
                tracing::warn!(task = job.id, error = %e, "pool task failed");
            } else {
                // The pool's own end (terminated, closed, its last worker
                // gone), already told once by its own event.
                tracing::debug!(task = job.id, error = %e, "pool task failed");
            }
            shared.stats.failed.fetch_add(job.len, Ordering::Relaxed);
        }
    }
    job.reply.send(result);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use futures::FutureExt;
    use futures::task::{ArcWake, waker};

    use super::*;

    struct Count(AtomicUsize);

    impl ArcWake for Count {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Takes what `next_from(from)` gives now, registering `w`.
    fn poll_from(group: &Group, from: usize, w: &std::task::Waker) -> Option<usize> {
        let mut out = Vec::new();
        let mut fut = Box::pin(group.next_from(from, &mut out));
        match fut.poll_unpin(&mut Context::from_waker(w)) {
            Poll::Ready(()) => {
                drop(fut);
                Some(out.len())
            }
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_map_is_woken_in_batches_and_always_by_its_last_result() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let w = waker(count.clone());
        // In order: about GROUP_WAKES wakes for 160 results, not 160.
        let group = Group::new(160);
        assert_eq!(poll_from(&group, 0, &w), None);
        let mut taken = 0;
        for i in 0..160 {
            group.put(i, Err(TaskError::Cancelled));
            if count.0.load(Ordering::SeqCst) > 0 {
                count.0.store(0, Ordering::SeqCst);
                let got = poll_from(&group, taken, &w).expect("woken with results");
                taken += got;
                assert!(got >= group.batch || taken == 160, "woken for {got}");
            }
        }
        assert_eq!(taken, 160, "the last result woke the map");
        // Backwards: nothing is in order until the first comes, which is
        // also the last: it wakes the map.
        let group = Group::new(40);
        assert_eq!(poll_from(&group, 0, &w), None);
        for i in (1..40).rev() {
            group.put(i, Err(TaskError::Cancelled));
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        group.put(0, Err(TaskError::Cancelled));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_from(&group, 0, &w), Some(40));
        // A map of one job is woken by it.
        let group = Group::new(1);
        assert_eq!(poll_from(&group, 0, &w), None);
        group.put(0, Err(TaskError::Cancelled));
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
