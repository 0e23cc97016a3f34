//! `Pool` workers that die or hang: the task they ran fails, the tasks
//! behind them run elsewhere, and the worker is replaced.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
enum Death {
    Kill,
    Abort,
    Exit(i32),
}

fn die(how: Death) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    match how {
        Death::Kill => {
            let _ = common::kill_hard(std::process::id());
            // A kill of oneself may return before the process has ended.
            std::thread::sleep(Duration::from_secs(60));
            unreachable!("killed")
        }
        Death::Abort => std::process::abort(),
        Death::Exit(code) => std::process::exit(code),
    }
}

/// The exit code of a worker that called `abort()`, as the pool reports
/// it: `-SIGABRT` (on Windows, Rust's `abort()` is a fast fail, which the
/// library reports as `SIGABRT` too).
const ABORTED: i32 = -6;

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

async fn a_worker_dying_mid_task_fails_only_that_task() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    for (n, (how, want)) in [
        (Death::Kill, None),
        (Death::Abort, Some(ABORTED)),
        (Death::Exit(7), Some(7)),
    ]
    .into_iter()
    .enumerate()
    {
        let doomed = pool.apply_async(die, how);
        let behind: Vec<_> = (0..5u64).map(|x| pool.apply_async(square, x)).collect();
        match doomed.await {
            Err(mp::TaskError::WorkerDied { exitcode }) => ensure(
                exitcode == want.unwrap_or(common::KILLED_EXITCODE),
                format!("{how:?}: exit code {exitcode}"),
            )?,
            other => return Err(format!("{how:?}: {other:?}").into()),
        }
        for (x, r) in behind.into_iter().enumerate() {
            ensure(r.await? == (x * x) as u64, "a task behind the dead one")?;
        }
        ensure(
            pool.stats().restarted == n + 1,
            format!("{:?}", pool.stats()),
        )?;
    }
    let msg = mp::TaskError::WorkerDied { exitcode: -9 }.to_string();
    ensure(msg.contains("SIGKILL"), msg)?;
    ensure(
        pool.map(square, 0..20).await?.len() == 20,
        "the pool goes on",
    )?;
    Ok(())
}

async fn killing_an_idle_worker_disturbs_nothing() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    let victim = pool.apply(pid, ()).await?;
    common::kill_hard(victim)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.stats().restarted == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = pool.map_chunked(square, 0..40, 1).await?;
    ensure(got.len() == 40, "map after the kill")?;
    let stats = pool.stats();
    ensure(
        stats.restarted == 1 && stats.failed == 0,
        format!("{stats:?}"),
    )?;
    ensure(stats.workers == 2, format!("{stats:?}"))?;
    Ok(())
}

async fn a_task_past_its_timeout_fails_and_its_worker_is_replaced() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .await?;
    let before = pool.apply(pid, ()).await?;
    let start = Instant::now();
    let slow = pool.apply_async(sleep_ms, 30_000);
    let behind = pool.apply_async(sleep_ms, 10);
    ensure(
        matches!(slow.await, Err(mp::TaskError::TimedOut)),
        "timed out",
    )?;
    ensure(
        start.elapsed() < Duration::from_secs(3),
        format!("{:?}", start.elapsed()),
    )?;
    ensure(behind.await? == 10, "the task behind it ran")?;
    ensure(!common::is_running(before), "the old worker is gone")?;
    ensure(pool.apply(pid, ()).await? != before, "a new worker")?;
    ensure(pool.stats().restarted == 1, format!("{:?}", pool.stats()))?;
    Ok(())
}

/// Returns the worker's pid; fails (with a panic) in the worker whose pid
/// is `dead`, which the test killed before the task was submitted.
fn pid_unless(dead: u32) -> u32 {
    assert_ne!(std::process::id(), dead, "ran in a dead worker");
    std::process::id()
}

/// A task submitted just after an idle worker was killed, before its slot
/// has seen the death, never started there: it runs on the replacement
/// rather than failing with the death of a worker it never reached.
async fn a_task_sent_to_a_just_killed_idle_worker_runs_elsewhere() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let mut lost = Vec::new();
    for round in 0..20 {
        let victim = pool.apply(pid, ()).await?;
        common::kill_hard(victim)?;
        match pool.apply(pid_unless, victim).await {
            Ok(p) => ensure(p != victim, "a new worker")?,
            Err(e) => lost.push((round, e)),
        }
    }
    ensure(
        lost.is_empty(),
        format!(
            "{} of 20 tasks failed although no worker had started them: {lost:?}",
            lost.len()
        ),
    )?;
    Ok(())
}

/// An initializer that SIGKILLs its own worker the second time it runs
/// (counted in the file at `path`), as if the worker were killed from
/// outside while it started.
fn second_start_is_killed(path: std::path::PathBuf) {
    let runs = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    std::fs::write(&path, runs.to_string()).expect("count the starts");
    if runs == 2 {
        let _ = common::kill_hard(std::process::id());
        // A kill of oneself may return before the process has ended.
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A worker killed before it is ready (here inside the initializer, which
/// had not failed) is not an initializer failure: the slot starts another.
async fn a_replacement_killed_while_starting_is_replaced_again() -> Result<(), Failed> {
    let path = std::env::temp_dir().join(format!("pool-deaths-starts-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let pool = mp::Pool::builder()
        .processes(1)
        .initializer(second_start_is_killed, path.clone())
        .build()
        .await?;
    let killed = pool.apply(die, Death::Kill).await;
    ensure(
        matches!(killed, Err(mp::TaskError::WorkerDied { exitcode }) if exitcode == common::KILLED_EXITCODE),
        format!("{killed:?}"),
    )?;
    // The replacement dies while it starts; the one after it serves.
    let after = pool.apply(square, 3).await;
    let starts = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    ensure(
        matches!(after, Ok(9)),
        format!("after a replacement was killed while starting: {after:?} (starts: {starts})"),
    )?;
    ensure(starts.trim() == "3", format!("starts: {starts}"))?;
    let stats = pool.stats();
    ensure(stats.workers == 1, format!("{stats:?}"))?;
    Ok(())
}

/// Sleeps `ms`, then says which worker ran it.
fn sleep_then_pid(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// An idle worker of `Pool(2)` is stopped (`SIGSTOP`), then 40 tasks of
/// 20 ms are mapped. The jobs the stopped worker was sent but never
/// started go to the running worker through the gate: the map completes,
/// every task ran in the running worker, and with a task timeout none
/// fails `TimedOut` for a task that never started. (Before, the map hung
/// with the other worker idle, or failed `TimedOut`.)
#[cfg(unix)]
async fn a_stopped_idle_worker_strands_no_job() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    for timeout in [None, Some(Duration::from_secs(2))] {
        let mut builder = mp::Pool::builder().processes(2);
        if let Some(t) = timeout {
            builder = builder.task_timeout(t);
        }
        let pool = builder.build().await?;
        let mut workers = std::collections::HashSet::new();
        for _ in 0..50 {
            workers.extend(pool.map_chunked(sleep_then_pid, [30, 30], 1).await?);
            if workers.len() == 2 {
                break;
            }
        }
        ensure(workers.len() == 2, format!("found the workers {workers:?}"))?;
        let victim = *workers.iter().next().expect("two workers");
        let victim_pid = nix::unistd::Pid::from_raw(victim as i32);
        kill(victim_pid, Signal::SIGSTOP)?;
        let t0 = Instant::now();
        let mapped = tokio::time::timeout(
            Duration::from_secs(20),
            pool.map_chunked(sleep_then_pid, vec![20u64; 40], 1),
        )
        .await;
        let took = t0.elapsed();
        kill(victim_pid, Signal::SIGCONT)?;
        println!("timeout {timeout:?}: the map took {took:?} with a worker stopped");
        let ran_in = match mapped {
            Ok(Ok(ran_in)) => ran_in,
            Ok(Err(e)) => return Err(format!("timeout {timeout:?}: the map failed: {e}").into()),
            Err(_) => {
                return Err(
                    format!("timeout {timeout:?}: the map hung behind a stopped worker").into(),
                );
            }
        };
        ensure(
            ran_in.iter().all(|&p| p != victim),
            format!("timeout {timeout:?}: a task ran in the stopped worker"),
        )?;
        ensure(
            took < Duration::from_secs(10),
            format!("timeout {timeout:?}: the map took {took:?}"),
        )?;
        let stats = pool.stats();
        ensure(
            stats.restarted == 0,
            format!("no worker replaced: {stats:?}"),
        )?;
        pool.terminate().await;
    }
    Ok(())
}

/// A worker that was stopped while it held jobs (they went to the other
/// worker, and it was marked as not starting its jobs) is counted idle
/// again once it runs: a task queued behind a long one in the other worker
/// moves to it. Before, it was never counted idle again, and 40 quick
/// tasks waited 3 s for the long one (seen on loaded CI machines, where a
/// worker descheduled for 2 ms looks stopped).
#[cfg(unix)]
async fn a_worker_once_stopped_is_idle_again() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    let pool = mp::Pool::builder().processes(2).build().await?;
    let mut workers = std::collections::HashSet::new();
    for _ in 0..50 {
        workers.extend(pool.map_chunked(sleep_then_pid, [30, 30], 1).await?);
        if workers.len() == 2 {
            break;
        }
    }
    ensure(workers.len() == 2, format!("found the workers {workers:?}"))?;
    let victim = *workers.iter().next().expect("two workers");
    let victim_pid = nix::unistd::Pid::from_raw(victim as i32);
    kill(victim_pid, Signal::SIGSTOP)?;
    // Its jobs are taken back; then trivial tasks, so that the other
    // worker queues deeply.
    let first = pool.map_chunked(sleep_then_pid, vec![20u64; 40], 1).await;
    let second = pool.map_chunked(sleep_then_pid, vec![0u64; 300], 1).await;
    kill(victim_pid, Signal::SIGCONT)?;
    ensure(
        first?.iter().chain(second?.iter()).all(|&p| p != victim),
        "nothing ran in the stopped worker",
    )?;
    let slow = pool.apply_async(sleep_then_pid, 3000);
    let quick: Vec<_> = (0..40)
        .map(|_| pool.apply_async(sleep_then_pid, 5))
        .collect();
    let mut ran_in = Vec::new();
    for q in quick {
        ran_in.push(q.await?);
    }
    ensure(
        !slow.ready(),
        "the quick tasks waited for the slow one: the worker that was stopped was never idle again",
    )?;
    let slow_in = slow.await?;
    ensure(
        slow_in == victim || ran_in.contains(&victim),
        "the worker that was stopped ran tasks again",
    )?;
    ensure(pool.stats().restarted == 0, "no worker was replaced")?;
    pool.terminate().await;
    Ok(())
}

/// A pool built on a runtime that then shuts down: its slots went with
/// the runtime, so it cannot go on. Every call from another runtime fails
/// at once with `RuntimeShutdown`, `stats` counts no worker, and the
/// workers were killed and reaped as the runtime went (no zombie). Before,
/// `apply` hung, `stats` counted two zombies as workers, and `terminate`
/// reaped nothing.
async fn a_pool_whose_runtime_shut_down_fails_at_once() -> Result<(), Failed> {
    // Runtime A lives on a thread of its own, as dropping a runtime may
    // not happen inside another's tasks.
    let (pool, workers) = std::thread::spawn(|| {
        let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        let built = rt.block_on(async {
            let pool = mp::Pool::new(2).await?;
            let mut workers = std::collections::HashSet::new();
            for _ in 0..50 {
                workers.extend(pool.map_chunked(sleep_then_pid, [30, 30], 1).await?);
                if workers.len() == 2 {
                    break;
                }
            }
            Ok::<_, mp::Error>((pool, workers))
        });
        drop(rt);
        built.map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "runtime A's thread panicked")??;
    ensure(workers.len() == 2, format!("found the workers {workers:?}"))?;
    let t0 = Instant::now();
    let got = tokio::time::timeout(Duration::from_secs(10), pool.apply(square, 3)).await;
    ensure(
        matches!(got, Ok(Err(mp::TaskError::RuntimeShutdown))),
        format!("apply from another runtime: {got:?}"),
    )?;
    ensure(t0.elapsed() < Duration::from_secs(1), "failed at once")?;
    let mapped = pool.map(square, [1, 2, 3]).await;
    ensure(
        matches!(mapped, Err(mp::TaskError::RuntimeShutdown)),
        format!("map: {mapped:?}"),
    )?;
    let stats = pool.stats();
    ensure(stats.workers == 0, format!("no worker is left: {stats:?}"))?;
    for pid in &workers {
        ensure(
            common::is_gone(*pid),
            format!("worker {pid} was killed and reaped"),
        )?;
    }
    tokio::time::timeout(Duration::from_secs(5), pool.terminate()).await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_worker_dying_mid_task_fails_only_that_task",
            T,
            a_worker_dying_mid_task_fails_only_that_task,
        ),
        case(
            "killing_an_idle_worker_disturbs_nothing",
            T,
            killing_an_idle_worker_disturbs_nothing,
        ),
        case(
            "a_task_past_its_timeout_fails_and_its_worker_is_replaced",
            T,
            a_task_past_its_timeout_fails_and_its_worker_is_replaced,
        ),
        case(
            "a_task_sent_to_a_just_killed_idle_worker_runs_elsewhere",
            T,
            a_task_sent_to_a_just_killed_idle_worker_runs_elsewhere,
        ),
        // Unix only: SIGSTOP.
        #[cfg(unix)]
        case(
            "a_stopped_idle_worker_strands_no_job",
            T,
            a_stopped_idle_worker_strands_no_job,
        ),
        // Unix only: SIGSTOP.
        #[cfg(unix)]
        case(
            "a_worker_once_stopped_is_idle_again",
            T,
            a_worker_once_stopped_is_idle_again,
        ),
        case(
            "a_pool_whose_runtime_shut_down_fails_at_once",
            T,
            a_pool_whose_runtime_shut_down_fails_at_once,
        ),
        case(
            "a_replacement_killed_while_starting_is_replaced_again",
            T,
            a_replacement_killed_while_starting_is_replaced_again,
        ),
    ]
}
