//! The parent side of one worker slot: starts a worker, feeds it jobs from
//! the pool's queue, and replaces it when it dies, times out or retires.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::worker::{Msg, Results, serve};
use super::{Job, Shared, State};
use crate::connection::{Connection, Pipe};
use crate::error::TaskError;
use crate::process::Process;

/// How long a worker past its task timeout has between `SIGTERM` and `SIGKILL`.
const GRACE: Duration = Duration::from_millis(500);

/// Why a worker's run ended.
enum End {
    /// The pool shut down; the slot ends.
    Shutdown,
    /// The worker must be replaced.
    Replace,
}

struct Worker {
    process: Process<()>,
    conn: Connection<Msg>,
}

async fn start(shared: &Shared) -> Result<Worker, String> {
    let (conn, w_conn) = Pipe::new::<Msg>().map_err(|e| e.to_string())?;
    let process = Process::builder()
        .daemon(true)
        .build(serve, (w_conn, shared.config.init.clone()));
    process.start().await.map_err(|e| e.to_string())?;
    Ok(Worker { process, conn })
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
pub(super) async fn supervise(shared: Arc<Shared>, ready: oneshot::Sender<Result<(), String>>) {
    let failure = slot(&shared, ready).await;
    let last = shared.live_slots.fetch_sub(1, Ordering::AcqRel) == 1;
    if let (true, Some(why)) = (last, failure) {
        shared.state.send_replace(State::Terminated);
        let drained: Vec<Job> = shared.lock_queue().drain(..).collect();
        for job in drained {
            deliver(&shared, job, Err(TaskError::Initializer(why.clone())));
        }
    }
}

/// The body of [`supervise`]; returns why the slot gave up, if it did.
async fn slot(shared: &Shared, ready: oneshot::Sender<Result<(), String>>) -> Option<String> {
    let mut ready = Some(ready);
    let mut state = shared.state.subscribe();
    loop {
        if *state.borrow() == State::Terminated {
            return None;
        }
        let mut worker = match start(shared).await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "pool worker failed to start");
                let why = format!("a worker failed to start: {e}");
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(why.clone()));
                }
                return Some(why);
            }
        };
        let first = tokio::select! {
            m = worker.conn.recv() => m.ok(),
            _ = state.wait_for(|s| *s == State::Terminated) => None,
        };
        match first {
            Some(Msg::Ready) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
            }
            other => {
                let code = reap(&worker.process, false).await;
                let why = match other {
                    Some(Msg::InitFailed(m)) => format!("the initializer {m}"),
                    _ => format!("the worker exited during startup (exit code {code})"),
                };
                if *state.borrow() == State::Terminated {
                    return None;
                }
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(why.clone()));
                } else {
                    // A replacement whose initializer fails would fail again:
                    // the slot gives up rather than restart forever.
                    tracing::error!(reason = %why, "pool worker could not be replaced");
                }
                return Some(why);
            }
        }
        shared.stats.workers.fetch_add(1, Ordering::Relaxed);
        let end = run(shared, &mut worker, &mut state).await;
        shared.stats.workers.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Shutdown => return None,
            End::Replace => {
                shared.stats.restarted.fetch_add(1, Ordering::Relaxed);
                tracing::info!("pool worker replaced");
            }
        }
    }
}

/// Hands a job's result over and counts it.
pub(super) fn deliver(shared: &Shared, job: Job, result: Result<Results, TaskError>) {
    match &result {
        Ok(results) => {
            let failed = results.failed();
            shared
                .stats
                .completed
                .fetch_add(results.len() - failed, Ordering::Relaxed);
            shared.stats.failed.fetch_add(failed, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::warn!(error = %e, "pool task failed");
            shared.stats.failed.fetch_add(job.len, Ordering::Relaxed);
        }
    }
    let _ = job.reply.send(result);
}

/// Puts jobs that a worker had not started back at the head of the queue.
fn requeue(shared: &Shared, rest: VecDeque<Job>) {
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

async fn run(
    shared: &Shared,
    worker: &mut Worker,
    state: &mut tokio::sync::watch::Receiver<State>,
) -> End {
    let window = shared.config.window;
    let mut inflight: VecDeque<Job> = VecDeque::new();
    let mut sent = 0usize;
    let mut front_since = Instant::now();
    let mut busy = false;
    let set_busy = |busy: &mut bool, now: bool| {
        if *busy != now {
            *busy = now;
            if now {
                shared.stats.busy.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.stats.busy.fetch_sub(1, Ordering::Relaxed);
            }
        }
    };
    let end = loop {
        // Registered before the queue is looked at, so a job pushed after
        // the look still wakes this slot.
        let notified = shared.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let current = *state.borrow_and_update();
        if current == State::Terminated {
            reap(&worker.process, false).await;
            for job in inflight.drain(..) {
                deliver(shared, job, Err(TaskError::Cancelled));
            }
            break End::Shutdown;
        }
        // Fill the window.
        let may_take = |sent: usize| shared.config.max_tasks.is_none_or(|k| sent < k);
        while inflight.len() < window && may_take(sent) {
            let Some(job) = shared.pop_job(inflight.is_empty()) else {
                break;
            };
            let msg = Msg::Job {
                id: job.id,
                target: job.target,
                args: job.args.clone(), // shares the buffer
            };
            if inflight.is_empty() {
                front_since = Instant::now();
            }
            sent += 1;
            inflight.push_back(job);
            set_busy(&mut busy, true);
            if worker.conn.send(&msg).await.is_err() {
                break;
            }
        }
        set_busy(&mut busy, !inflight.is_empty());
        if inflight.is_empty() {
            if !may_take(sent) {
                retire(&mut worker.conn, &worker.process).await;
                break End::Replace;
            }
            if current == State::Closed && shared.lock_queue().is_empty() {
                retire(&mut worker.conn, &worker.process).await;
                break End::Shutdown;
            }
        }
        let deadline = shared.config.timeout.map(|t| front_since + t);
        let room = inflight.len() < window && may_take(sent);
        tokio::select! {
            msg = worker.conn.recv() => match msg {
                Ok(Msg::Done { id, results }) => {
                    if let Some(pos) = inflight.iter().position(|j| j.id == id) {
                        let job = inflight.remove(pos).expect("position is in range");
                        // Counted idle before the result is seen, so stats
                        // read after a result agree with it.
                        set_busy(&mut busy, !inflight.is_empty());
                        deliver(shared, job, Ok(results));
                    }
                    front_since = Instant::now();
                }
                Ok(_) => {}
                Err(_) => break died(shared, worker, &mut inflight).await,
            },
            _ = worker.process.sentinel() => {
                // Replies that arrived before the exit still count.
                while let Ok(Some(Msg::Done { id, results })) = worker.conn.try_recv() {
                    if let Some(pos) = inflight.iter().position(|j| j.id == id) {
                        let job = inflight.remove(pos).expect("position is in range");
                        deliver(shared, job, Ok(results));
                    }
                }
                break died(shared, worker, &mut inflight).await;
            }
            _ = &mut notified, if room => {}
            _ = state.changed() => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                if deadline.is_some() && !inflight.is_empty() => {
                let job = inflight.pop_front().expect("a job is in flight");
                deliver(shared, job, Err(TaskError::TimedOut));
                tracing::warn!("pool task timed out; its worker is replaced");
                reap(&worker.process, true).await;
                requeue(shared, std::mem::take(&mut inflight));
                break End::Replace;
            }
        }
    };
    set_busy(&mut busy, false);
    end
}

/// The worker died: the job it was running fails, the ones behind it go
/// back to the queue.
async fn died(shared: &Shared, worker: &mut Worker, inflight: &mut VecDeque<Job>) -> End {
    let exitcode = reap(&worker.process, false).await;
    tracing::warn!(exitcode, "pool worker died");
    if let Some(job) = inflight.pop_front() {
        deliver(shared, job, Err(TaskError::WorkerDied { exitcode }));
    }
    requeue(shared, std::mem::take(inflight));
    End::Replace
}
