//! The parent side of one worker slot: starts a worker, feeds it jobs from
//! the pool's queue, and replaces it when it dies, times out or retires.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::job::{Job, Shared, State, deliver};
use super::page::{MAX_JOB, Page};
use super::worker::{Msg, decode_reply_record, encode_job_record, serve};
use super::{BuildError, TaskError};
use crate::connection::{Connection, Pipe};
use crate::process::Process;

/// How long a worker past its task timeout has between `SIGTERM` and `SIGKILL`.
const GRACE: Duration = Duration::from_millis(500);

/// Starts of a replacement worker that may fail in a row before its slot
/// gives up.
const MAX_START_FAILURES: u32 = 5;

/// The pause before retrying a failed start, times the failures so far.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Why a worker's run ended.
enum End {
    /// The pool shut down; the slot ends.
    Shutdown,
    /// The worker must be replaced, for this reason.
    Replace(Why),
}

/// Why a worker is replaced, as its slot's event says.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// It died, with this exit code (`-N`: signal N).
    Died(i32),
    /// Task `task` ran past the task timeout; the worker was killed.
    TimedOut { task: u64 },
    /// It ran its `max_tasks_per_child` and was retired.
    Retired,
    /// It broke its reply ring and was killed.
    BrokenRing,
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Died(code) => write!(f, "died ({})", super::error::describe_exit(*code)),
            Why::TimedOut { task } => write!(f, "task {task} timed out"),
            Why::Retired => f.write_str("retired after its tasks"),
            Why::BrokenRing => f.write_str("broke its reply ring"),
        }
    }
}

/// Says that a worker was replaced: at `DEBUG` when it retired (which is
/// the plan), at `INFO` otherwise.
fn replaced(old: &Old, new: &Worker) {
    let (process, pid, why) = (&old.process, old.pid, old.why);
    let new_pid = new.process.pid();
    match why {
        Why::Retired => tracing::debug!(
            process = %process,
            pid,
            new_pid,
            reason = %why,
            "pool worker replaced"
        ),
        Why::Died(exitcode) => tracing::info!(
            process = %process,
            pid,
            new_pid,
            exitcode,
            reason = %why,
            "pool worker replaced"
        ),
        Why::TimedOut { task } => tracing::info!(
            process = %process,
            pid,
            new_pid,
            task,
            reason = %why,
            "pool worker replaced"
        ),
        Why::BrokenRing => tracing::info!(
            process = %process,
            pid,
            new_pid,
            reason = %why,
            "pool worker replaced"
        ),
    }
}

/// The worker a slot is replacing, for the event that says so.
struct Old {
    process: String,
    pid: Option<u32>,
    why: Why,
}

struct Worker {
    process: Process<()>,
    conn: Connection<Msg>,
    page: Page,
}

/// How long a worker left running by a slot that was dropped (its runtime
/// shut down) may take to die of its `SIGKILL` before it is left to the
/// exit rule.
const DROPPED_REAP: Duration = Duration::from_secs(1);

impl Drop for Worker {
    fn drop(&mut self) {
        // Every way a slot ends reaps its worker first, but a slot dropped
        // with its runtime: then the worker goes with it, on this thread.
        if self.process.is_alive() {
            self.process.kill_and_reap_blocking(DROPPED_REAP);
        }
    }
}

async fn start(shared: &Shared) -> Result<Worker, BuildError> {
    let (conn, w_conn) = Pipe::new::<Msg>().map_err(BuildError::Io)?;
    let page = Page::new().map_err(BuildError::Io)?;
    // Named as Python names its pool workers (`ForkPoolWorker-N`), so that
    // their logs say what they are.
    static WORKERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = WORKERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let process = Process::builder()
        .name(format!("PoolWorker-{n}"))
        .daemon(true)
        .forward_tracing(shared.config.forward_tracing)
        .capture_output(shared.config.capture_output)
        .environment(shared.config.env.clone())
        .build(
            serve,
            (
                w_conn,
                shared.config.init.clone(),
                shared.config.concurrency,
                page.clone(),
                super::worker::Waiting {
                    spin: shared.config.spin,
                    rest_after: shared.config.rest_after,
                },
            ),
        );
    process.start().await.map_err(BuildError::Start)?;
    Ok(Worker {
        process,
        conn,
        page,
    })
}

/// Kills a worker and waits for it; returns its exit code (`-N` for signal N).
async fn reap(process: &Process<()>, gentle: bool) -> i32 {
    if gentle {
        let _ = process.terminate();
        if tokio::time::timeout(GRACE, process.sentinel())
            .await
            .is_err()
        {
            let _ = process.kill();
        }
    } else {
        let _ = process.kill();
    }
    let _ = process.join().await;
    process.exitcode().unwrap_or(-1)
}

/// Closes an idle worker's pipe, which ends its loop, and reaps it; kills
/// it if it has not exited within the grace period.
async fn retire(conn: &mut Connection<Msg>, process: &Process<()>) {
    conn.close();
    if process.join_timeout(GRACE).await.is_none() {
        reap(process, false).await;
    }
}

/// Runs one worker slot until the pool shuts down. `ready` hears whether
/// the first worker started (and its initializer ran).
///
/// When the last slot ends because its worker could not be replaced, no
/// worker is left to run anything: the pool stops taking work and every
/// queued task fails with [`TaskError::Initializer`].
pub(super) async fn supervise(shared: Arc<Shared>, ready: oneshot::Sender<Result<(), BuildError>>) {
    let mut guard = SlotGuard {
        shared: &shared,
        finished: false,
    };
    let failure = slot(&shared, ready).await;
    guard.finished = true;
    if let Some(why) = &failure {
        shared.slot_lost.send_if_modified(|lost| {
            let first = lost.is_none();
            if first {
                *lost = Some(why.clone());
            }
            first
        });
    }
    let last = shared.live_slots.fetch_sub(1, Ordering::AcqRel) == 1;
    if let (true, Some(why)) = (last, failure) {
        shared
            .gave_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| why.clone());
        shared.state.send_replace(State::Terminated);
        let drained: Vec<Job> = shared.lock_queue().drain(..).collect();
        for job in drained {
            deliver(&shared, job, Err(TaskError::Initializer(why.clone())));
        }
    }
}

/// Dropped with the slot's task. If the task did not finish, its runtime
/// shut down: nothing supervises the pool any more, so it fails every
/// task it holds and every later call with [`TaskError::RuntimeShutdown`]
/// (the slot's worker is killed and reaped as the task's locals go: see
/// `Worker`'s `Drop`).
struct SlotGuard<'a> {
    shared: &'a Shared,
    finished: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let shared = self.shared;
        if !shared.runtime_gone.swap(true, Ordering::AcqRel) {
            tracing::warn!("the runtime that ran a pool shut down; the pool is terminated");
        }
        shared
            .gave_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| TaskError::RuntimeShutdown.to_string());
        shared.state.send_replace(State::Terminated);
        let drained: Vec<Job> = shared.lock_queue().drain(..).collect();
        for job in drained {
            deliver(shared, job, Err(TaskError::RuntimeShutdown));
        }
    }
}

/// The body of [`supervise`]; returns why the slot gave up, if it did.
async fn slot(shared: &Shared, ready: oneshot::Sender<Result<(), BuildError>>) -> Option<String> {
    let mut ready = Some(ready);
    let mut state = shared.state.subscribe();
    let mut failures = 0u32;
    // The worker being replaced, said once its replacement runs.
    let mut old: Option<Old> = None;
    loop {
        if *state.borrow() == State::Terminated {
            return None;
        }
        let worker = match start(shared).await {
            Ok(mut worker) => {
                let first = tokio::select! {
                    m = worker.conn.recv() => m.ok(),
                    _ = state.wait_for(|s| *s == State::Terminated) => None,
                };
                match first {
                    Some(Msg::Ready) => Ok(worker),
                    other => {
                        let exitcode = reap(&worker.process, false).await;
                        Err(match other {
                            Some(Msg::InitFailed(m)) => BuildError::Initializer(m),
                            _ => BuildError::WorkerExited { exitcode },
                        })
                    }
                }
            }
            Err(e) => Err(e),
        };
        let mut worker = match worker {
            Ok(worker) => worker,
            Err(why) => {
                if *state.borrow() == State::Terminated {
                    return None;
                }
                if let Some(r) = ready.take() {
                    let text = why.to_string();
                    let _ = r.send(Err(why));
                    return Some(text);
                }
                failures += 1;
                // An initializer that failed would fail again, and so
                // would a start that keeps failing: the slot gives up
                // rather than restart forever. A replacement killed while
                // it started (by a signal from outside, say) is retried.
                if why.is_permanent() || failures >= MAX_START_FAILURES {
                    tracing::error!(
                        process = old.as_ref().map(|o| o.process.as_str()),
                        pid = old.as_ref().and_then(|o| o.pid),
                        reason = %why,
                        "pool worker could not be replaced"
                    );
                    return Some(why.to_string());
                }
                tracing::warn!(reason = %why, failures, "pool worker failed to start; retrying");
                tokio::time::sleep(RETRY_PAUSE * failures).await;
                continue;
            }
        };
        failures = 0;
        if let Some(old) = old.take() {
            replaced(&old, &worker);
        }
        // Counted before the pool is ready, so dispatch sees every worker
        // from the start.
        shared.stats.workers.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(()));
        }
        let end = run(shared, &mut worker, &mut state).await;
        shared.stats.workers.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Shutdown => return None,
            End::Replace(why) => {
                shared.stats.restarted.fetch_add(1, Ordering::Relaxed);
                old = Some(Old {
                    process: worker.process.name().to_owned(),
                    pid: worker.process.pid(),
                    why,
                });
            }
        }
    }
}

/// Puts jobs that a worker had not started back at the head of the queue.
pub(super) fn requeue(shared: &Shared, rest: VecDeque<Job>) {
    if rest.is_empty() {
        return;
    }
    let mut q = shared.lock_queue();
    for job in rest.into_iter().rev() {
        q.push_front(job);
    }
    drop(q);
    shared.notify.notify_waiters();
}

/// A job sent to the worker, with when it started there (if it has).
struct Sent {
    job: Job,
    sent_at: Instant,
    /// Its place among the jobs sent to this worker, from 0.
    seq: u64,
    /// When the slot first saw it started (through the gate).
    since: Option<Instant>,
}

/// The jobs sent to one worker, oldest first. The worker starts them in
/// that order, through the gate in its page: job `seq` has started once
/// `seq` is below the page's started count. So the started ones are
/// always a prefix of the list.
struct Inflight {
    jobs: VecDeque<Sent>,
    concurrency: usize,
    sent: u64,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        // Every way a slot ends empties the list, but a slot dropped with
        // its runtime: its jobs end with it.
        for sent in self.jobs.drain(..) {
            sent.job.reply.send(Err(TaskError::RuntimeShutdown));
        }
    }
}

impl Inflight {
    fn len(&self) -> usize {
        self.jobs.len()
    }

    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    fn push(&mut self, job: Job, now: Instant) {
        self.jobs.push_back(Sent {
            job,
            sent_at: now,
            seq: self.sent,
            since: None,
        });
        self.sent += 1;
    }

    fn remove(&mut self, id: u64) -> Option<Sent> {
        let pos = self.jobs.iter().position(|s| s.job.id == id)?;
        self.jobs.remove(pos)
    }

    /// Stamps the jobs the gate says have started (`started` of them, in
    /// the order sent) and that were not seen started before.
    fn observe(&mut self, started: u64, now: Instant) {
        for sent in self.jobs.iter_mut().take_while(|s| s.seq < started) {
            sent.since.get_or_insert(now);
        }
    }

    /// The running job that started first, and when it must end.
    fn oldest(&self, timeout: Duration) -> Option<(u64, Instant)> {
        self.jobs
            .iter()
            .filter_map(|s| s.since.map(|t| (s.job.id, t + timeout)))
            .min_by_key(|&(_, t)| t)
    }

    /// Whether a job the worker has not started has a result nobody wants.
    fn holds_unwanted(&self, started: u64) -> bool {
        self.jobs
            .iter()
            .any(|s| s.seq >= started && s.job.reply.is_closed())
    }

    /// Whether the worker holds jobs it has not started.
    fn holds_unstarted(&self, started: u64) -> bool {
        self.jobs.back().is_some_and(|s| s.seq >= started)
    }

    /// Since when the worker has been busy without taking the next job it
    /// holds: since its running job that started first, or, when it runs
    /// none, since the first job it has not started was sent (a worker
    /// that is stopped or hung before its first job).
    fn blocked_since(&self, started: u64) -> Option<Instant> {
        let running = self
            .jobs
            .iter()
            .take_while(|s| s.seq < started)
            .filter_map(|s| s.since)
            .min();
        running.or_else(|| {
            self.jobs
                .iter()
                .find(|s| s.seq >= started)
                .map(|s| s.sent_at)
        })
    }

    /// Takes out the jobs numbered `started` and on: the ones the worker
    /// had not started when the gate closed. In the order they were sent.
    fn take_back(&mut self, started: u64) -> VecDeque<Job> {
        let (kept, back): (VecDeque<Sent>, VecDeque<Sent>) =
            self.jobs.drain(..).partition(|s| s.seq < started);
        self.jobs = kept;
        back.into_iter().map(|s| s.job).collect()
    }

    /// Empties the list: the jobs the worker had started (the first
    /// `started` sent), and the rest.
    fn split(&mut self, started: u64) -> (Vec<Job>, VecDeque<Job>) {
        let (mut ran, mut rest) = (Vec::new(), VecDeque::new());
        for sent in self.jobs.drain(..) {
            if sent.seq < started {
                ran.push(sent.job);
            } else {
                rest.push_back(sent.job);
            }
        }
        (ran, rest)
    }
}

/// How long a job may run before the jobs queued behind it in its worker
/// are handed to an idle worker.
const STUCK_AFTER: Duration = Duration::from_millis(2);

/// How long a worker that did not start its jobs in time waits, once it
/// has none, before it is counted idle again.
const STALL_RETRY: Duration = Duration::from_millis(100);

/// Counts a slot among the idle ones while it lives, and among the ready
/// ones unless its worker stalled (`Shared::ready_idle`). A stuck slot
/// looks at the counts every [`STUCK_AFTER`], so an idle one need wake
/// nobody.
pub(super) struct Hungry<'a> {
    shared: &'a Shared,
    ready: bool,
}

impl<'a> Hungry<'a> {
    pub(super) fn new(shared: &'a Shared, ready: bool) -> Hungry<'a> {
        if ready {
            shared.ready_idle.fetch_add(1, Ordering::SeqCst);
        }
        shared.hungry.fetch_add(1, Ordering::SeqCst);
        Hungry { shared, ready }
    }
}

impl Drop for Hungry<'_> {
    fn drop(&mut self) {
        self.shared.hungry.fetch_sub(1, Ordering::AcqRel);
        if self.ready {
            self.shared.ready_idle.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How much work, in expected run time, a worker may hold queued behind
/// the jobs it runs: enough that it never waits a round trip for the next
/// job, little enough that a job queued behind a long one waits little
/// longer than it would in the pool's own queue.
const PREFETCH_BUDGET: Duration = Duration::from_micros(500);

/// How long a worker's jobs take, which sets how many it may hold.
struct Pace {
    /// A moving average of the time a job runs, in nanoseconds.
    average_ns: Option<f64>,
    last_done: Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            average_ns: None,
            last_done: Instant::now(),
        }
    }

    /// A job sent at `sent_at` ended now: it ran from when it was sent or
    /// the job before it ended, whichever came later.
    fn done(&mut self, sent_at: Instant, now: Instant) {
        let ran = now.duration_since(sent_at.max(self.last_done)).as_nanos() as f64;
        self.last_done = now;
        self.average_ns = Some(match self.average_ns {
            None => ran,
            Some(avg) => 0.8 * avg + 0.2 * ran,
        });
    }

    /// Jobs the worker may have in flight: the ones it runs, plus as many
    /// as fit the prefetch budget, within `[concurrency + 1, max]`.
    fn window(&self, concurrency: usize, max: usize) -> usize {
        let extra = match self.average_ns {
            None => 3,
            // A float cast to an integer saturates; the clamp below bounds it.
            #[allow(clippy::cast_possible_truncation)]
            Some(avg) => (PREFETCH_BUDGET.as_nanos() as f64 / avg.max(1.0)) as usize,
        };
        (concurrency + extra).clamp(concurrency + 1, max.max(concurrency + 1))
    }
}

async fn run(
    shared: &Shared,
    worker: &mut Worker,
    state: &mut tokio::sync::watch::Receiver<State>,
) -> End {
    let mut pace = Pace::new();
    let mut inflight = Inflight {
        jobs: VecDeque::new(),
        concurrency: shared.config.concurrency.max(1),
        sent: 0,
    };
    let mut busy = false;
    // Where a job is encoded for the ring.
    let mut scratch = Vec::new();
    let mut cancels_seen = shared.cancels.load(Ordering::Acquire);
    // The worker did not start its first job in time, and its jobs were
    // handed to others; until it starts one numbered `stalled_at` or
    // later, it is not counted idle and gets jobs only when no other
    // worker is.
    let mut stalled = false;
    let mut stalled_at = 0u64;
    // When it stalled. A stalled worker left with no job is counted idle
    // again after `STALL_RETRY`: it may have been only slow (descheduled on
    // a loaded machine), and while it is not counted, a blocked worker
    // keeps the jobs queued behind its long one.
    let mut stalled_since = Instant::now();
    // The slot was rung as an idle one (`Shared::idle_notify`): the jobs
    // queued are meant for it and the other idle slots, which were not
    // woken. If it takes none (a stalled worker, say), it wakes every
    // slot, so that no job waits for a slot nobody rang.
    let mut rung = false;
    let end = loop {
        // Registered before the queue is looked at, so a job pushed after
        // the look still wakes this slot.
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let cancelled = shared.cancelled.notified();
        tokio::pin!(cancelled);
        cancelled.as_mut().enable();
        let current = *state.borrow_and_update();
        if current == State::Terminated {
            reap(&worker.process, false).await;
            for sent in inflight.jobs.drain(..) {
                deliver(shared, sent.job, Err(TaskError::Cancelled));
            }
            break End::Shutdown;
        }
        // The clock is read once a round: what this round decides, it
        // decides as of now.
        let round = Instant::now();
        let drained = drain_ring(
            shared,
            worker,
            &mut inflight,
            Some(&mut pace),
            &mut busy,
            (round, &mut scratch),
        );
        if let Err(e) = drained {
            tracing::error!(
                process = worker.process.name(),
                pid = worker.process.pid(),
                error = %e,
                "pool worker broke its reply ring; it is replaced"
            );
            died(shared, worker, &mut inflight, None).await;
            break End::Replace(Why::BrokenRing);
        }
        // Which jobs the worker has started is the gate's word, read once
        // per round.
        let started = worker.page.started_count();
        inflight.observe(started, round);
        if stalled && started > stalled_at {
            stalled = false;
        }
        // Take back the jobs the worker has not started, when some of
        // their results were dropped (those end as cancelled), or when a
        // worker sits idle while this one is blocked: on a long job, or
        // stopped or hung before its next one (they go back to the queue,
        // for the idle worker). The gate in the shared page makes this
        // exact even while a synchronous task holds the worker's thread.
        let blocked = inflight
            .blocked_since(started)
            .is_some_and(|t| round.saturating_duration_since(t) >= STUCK_AFTER);
        let cancels = shared.cancels.load(Ordering::Acquire);
        let unwanted = cancels != cancels_seen && inflight.holds_unwanted(started);
        cancels_seen = cancels;
        // Only a ready worker takes what this one would hand over.
        let idle_elsewhere = blocked && shared.ready_idle.load(Ordering::Acquire) > 0;
        if inflight.holds_unstarted(started) && (unwanted || idle_elsewhere) {
            let started = worker.page.fence();
            if idle_elsewhere && inflight.jobs.front().is_none_or(|s| s.seq >= started) {
                // It had not even started its first job: until it does,
                // the others go first.
                stalled = true;
                stalled_at = started;
                stalled_since = round;
            }
            let mut wanted = VecDeque::new();
            for job in inflight.take_back(started) {
                if job.reply.is_closed() {
                    deliver(shared, job, Err(TaskError::Cancelled));
                } else {
                    wanted.push_back(job);
                }
            }
            requeue(shared, wanted);
        }
        // Fill the window; the jobs go out together, in one write. Behind
        // a job that runs long, none wait while a worker is idle: they
        // would wait for it.
        let window = if idle_elsewhere {
            inflight.concurrency
        } else {
            pace.window(inflight.concurrency, shared.config.window)
        };
        // Jobs sent to this worker so far, against `max_tasks_per_child`.
        let may_take = |sent: u64| shared.config.max_tasks.is_none_or(|k| sent < k as u64);
        let mut fed = false;
        let mut doorbell = false;
        let mut over_socket = false;
        let mut ring_broken = false;
        let now = round;
        // A worker that stalled before its first job gets work only when
        // no other worker is idle and ready: idle ones that stalled too do
        // not count, or each would leave the jobs to the others.
        let may_feed = !stalled || shared.ready_idle.load(Ordering::Acquire) == 0;
        while may_feed && inflight.len() < window && may_take(inflight.sent) {
            let Some(job) = shared.pop_job(inflight.is_empty()) else {
                break;
            };
            let msg = Msg::Job {
                id: job.id,
                target: job.target,
                args: job.args.clone(), // shares the buffer
            };
            if worker.page.fenced() {
                // Open the gate at this job, past the ones taken back,
                // before the worker can see it.
                worker.page.reopen(inflight.sent);
            }
            match hand_over(worker, &msg, &mut scratch) {
                Some(Via::Ring { bell }) => doorbell |= bell,
                Some(Via::Socket) => over_socket = true,
                None => {
                    // The ring is full: the worker has not taken the jobs
                    // it holds. This one waits in the queue for room. A
                    // worker holding none cannot have filled the ring.
                    ring_broken = inflight.is_empty();
                    requeue(shared, VecDeque::from([job]));
                    break;
                }
            }
            inflight.push(job, now);
            set_busy(shared, &mut busy, true);
            fed = true;
        }
        if std::mem::take(&mut rung) && !fed && !shared.lock_queue().is_empty() {
            shared.notify.notify_waiters();
        }
        if ring_broken {
            tracing::error!(
                process = worker.process.name(),
                pid = worker.process.pid(),
                "pool worker's job ring is full with no job in flight; it is replaced"
            );
            died(shared, worker, &mut inflight, None).await;
            break End::Replace(Why::BrokenRing);
        }
        if doorbell {
            // A failed write shows as the worker's death below.
            let _ = worker.conn.feed(&Msg::Ring);
        }
        if doorbell || over_socket {
            // Not awaited: while large jobs wait for room in the socket,
            // this task must go on reading the worker's replies, or both
            // sides would wait on each other. A failed write shows as the
            // worker's death below.
            worker.conn.flush_soon();
        }
        set_busy(shared, &mut busy, !inflight.is_empty());
        if inflight.is_empty() {
            if !may_take(inflight.sent) {
                retire(&mut worker.conn, &worker.process).await;
                break End::Replace(Why::Retired);
            }
            if current == State::Closed && shared.lock_queue().is_empty() {
                retire(&mut worker.conn, &worker.process).await;
                break End::Shutdown;
            }
        }
        // Only jobs the worker has started can time out. Every job is seen
        // started here, or is waited for below until it is.
        let started = worker.page.started_count();
        inflight.observe(started, round);
        let oldest = shared.config.timeout.and_then(|t| inflight.oldest(t));
        let room = inflight.len() < window && may_take(inflight.sent);
        let waiting = inflight.holds_unstarted(started);
        // When to look again at the gate, if the worker holds jobs it has
        // not started: to see them start (their timeouts count from then),
        // or, once it is blocked, every `STUCK_AFTER` for an idle worker.
        let stuck_at = if !waiting {
            None
        } else if blocked {
            Some(round + STUCK_AFTER)
        } else {
            inflight.blocked_since(started).map(|t| t + STUCK_AFTER)
        };
        // Jobs just went out: their replies often come sooner than a
        // wake-up would (see `PoolBuilder::spin`). Only then: a slot with
        // nothing sent does not watch, so an idle pool burns no CPU.
        if fed && !inflight.is_empty() && worker.page.watch(shared.config.spin) {
            continue;
        }
        if !inflight.is_empty() && worker.page.sleep() {
            // Replies came while the window was filled.
            continue;
        }
        // An idle worker with nothing queued says so, so that a blocked one
        // hands over the jobs it holds; one that stalled does not, until
        // `STALL_RETRY` has passed.
        let retry_at = stalled_since + STALL_RETRY;
        let stall_over = !stalled || round >= retry_at;
        let hungry = (inflight.is_empty() && stall_over && current == State::Running)
            .then(|| Hungry::new(shared, !stalled));
        let stall_wait = stalled && !stall_over && inflight.is_empty();
        // An idle slot also hears the bell for one job (see
        // `Shared::idle_notify`), armed after it counted itself idle, then
        // looks at the queue once more: a job submitted in between is seen
        // here, or rings the bell.
        let idle_bell = shared.idle_notify.notified();
        tokio::pin!(idle_bell);
        if hungry.is_some() {
            idle_bell.as_mut().enable();
            if may_feed && !shared.lock_queue().is_empty() {
                continue;
            }
        }
        tokio::select! {
            msg = worker.conn.recv() => {
                worker.page.wake();
                let Ok(mut msg) = msg else {
                    let exitcode = died(shared, worker, &mut inflight, None).await;
                    break End::Replace(Why::Died(exitcode));
                };
                // Every reply that came in the same read is handled before
                // the window is refilled, so the refill is one write.
                let now = Instant::now();
                loop {
                    on_reply(shared, &mut inflight, Some((&mut pace, now)), &mut busy, msg);
                    match worker.conn.take_buffered() {
                        Ok(Some(next)) => msg = next,
                        _ => break,
                    }
                }
            }
            _ = worker.process.sentinel() => {
                // Replies that arrived before the exit still count.
                while let Ok(Some(msg)) = worker.conn.try_recv() {
                    on_reply(shared, &mut inflight, None, &mut busy, msg);
                }
                let exitcode = died(shared, worker, &mut inflight, None).await;
                break End::Replace(Why::Died(exitcode));
            }
            _ = &mut notified, if room => {}
            _ = &mut idle_bell, if hungry.is_some() => rung = true,
            _ = &mut cancelled, if waiting => {}
            _ = tokio::time::sleep_until(stuck_at.unwrap_or_else(Instant::now)),
                if stuck_at.is_some() => {}
            _ = tokio::time::sleep_until(retry_at), if stall_wait => {}
            _ = state.changed() => {}
            _ = tokio::time::sleep_until(oldest.map_or_else(Instant::now, |(_, t)| t)),
                if oldest.is_some() => {
                let late = oldest.map(|(id, _)| id);
                // The task's failure is the warning; the replacement follows.
                died(shared, worker, &mut inflight, late).await;
                break End::Replace(Why::TimedOut { task: late.unwrap_or_default() });
            }
        }
    };
    set_busy(shared, &mut busy, false);
    end
}

/// How a job went to its worker.
enum Via {
    /// Through the shared page's job ring; `bell` if the worker sleeps
    /// and must hear the doorbell.
    Ring { bell: bool },
    /// Over the socket, a marker standing for it in the ring.
    Socket,
}

/// Sends a job to its worker: through the job ring when it fits and holds
/// no handles, otherwise over the socket with a marker in the ring that
/// keeps its place in line. `None` if the ring has no room (nothing was
/// sent).
fn hand_over(worker: &Worker, msg: &Msg, scratch: &mut Vec<u8>) -> Option<Via> {
    let Msg::Job { args, .. } = msg else {
        return None;
    };
    if !args.has_handles() && args.encoded_len() <= MAX_JOB {
        scratch.clear();
        if encode_job_record(scratch, msg).is_ok() && scratch.len() <= MAX_JOB {
            return worker.page.push_job(scratch).map(|bell| Via::Ring { bell });
        }
    }
    // An empty record: the marker.
    worker.page.push_job(&[])?;
    // The frame wakes a sleeping worker by itself. A failed write shows as
    // the worker's death.
    let _ = worker.conn.feed(msg);
    Some(Via::Socket)
}

/// Records whether this slot's worker has jobs in flight, in the pool's
/// count of busy workers.
fn set_busy(shared: &Shared, busy: &mut bool, now: bool) {
    if *busy != now {
        *busy = now;
        if now {
            shared.stats.busy.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Handles one message from a worker: a reply resolves its job.
fn on_reply(
    shared: &Shared,
    inflight: &mut Inflight,
    pace: Option<(&mut Pace, Instant)>,
    busy: &mut bool,
    msg: Msg,
) {
    let Msg::Done { id, results } = msg else {
        return;
    };
    let result = Ok(results);
    let Some(sent) = inflight.remove(id) else {
        return;
    };
    if let (Some((pace, now)), true) = (pace, result.is_ok()) {
        pace.done(sent.sent_at, now);
    }
    if inflight.is_empty() {
        // Counted idle before the result is seen, so stats read after a
        // result agree with it.
        set_busy(shared, busy, false);
    }
    deliver(shared, sent.job, result);
}

/// Handles every reply waiting in the worker's ring.
fn drain_ring(
    shared: &Shared,
    worker: &Worker,
    inflight: &mut Inflight,
    mut pace: Option<&mut Pace>,
    busy: &mut bool,
    (now, bytes): (Instant, &mut Vec<u8>),
) -> Result<(), String> {
    while worker.page.pop_into(bytes)? {
        let msg = decode_reply_record(bytes).map_err(|e| format!("a reply in the ring: {e}"))?;
        on_reply(
            shared,
            inflight,
            pace.as_deref_mut().map(|p| (p, now)),
            busy,
            msg,
        );
    }
    Ok(())
}

/// The worker died, or is killed because job `late` outlived the task
/// timeout: `late` fails with [`TaskError::TimedOut`], the other jobs it
/// had started with [`TaskError::WorkerDied`], and the ones it had not
/// started (its shared page says which) go back to the queue. Returns the
/// worker's exit code.
async fn died(
    shared: &Shared,
    worker: &mut Worker,
    inflight: &mut Inflight,
    late: Option<u64>,
) -> i32 {
    if let Some(id) = late {
        // Failed before the worker is reaped, which may take the grace
        // period.
        if let Some(pos) = inflight.jobs.iter().position(|s| s.job.id == id) {
            if let Some(sent) = inflight.jobs.remove(pos) {
                deliver(shared, sent.job, Err(TaskError::TimedOut));
            }
        }
    }
    let exitcode = reap(&worker.process, late.is_some()).await;
    // Read once the worker is gone, so its last word is in.
    // Replies it published before it died count.
    if let Err(e) = drain_ring(
        shared,
        worker,
        inflight,
        None,
        &mut false,
        (Instant::now(), &mut Vec::new()),
    ) {
        tracing::warn!(
            process = worker.process.name(),
            pid = worker.process.pid(),
            error = %e,
            "a dead pool worker left a broken reply ring"
        );
    }
    let (ran, rest) = inflight.split(worker.page.started_count());
    for job in ran {
        deliver(shared, job, Err(TaskError::WorkerDied { exitcode }));
    }
    requeue(shared, rest);
    exitcode
}
