//! `Pool` workers that die or hang: the task they ran fails, the tasks
//! behind them run elsewhere, and the worker is replaced.

mod common;

use std::time::{Duration, Instant};

use common::{case, ensure};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

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
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!("SIGKILL")
        }
        Death::Abort => std::process::abort(),
        Death::Exit(code) => std::process::exit(code),
    }
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

async fn a_worker_dying_mid_task_fails_only_that_task() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    for (n, (how, want)) in [(Death::Kill, -9), (Death::Abort, -6), (Death::Exit(7), 7)]
        .into_iter()
        .enumerate()
    {
        let doomed = pool.apply_async(die, how);
        let behind: Vec<_> = (0..5u64).map(|x| pool.apply_async(square, x)).collect();
        match doomed.await {
            Err(mp::TaskError::WorkerDied { exitcode }) => {
                ensure(exitcode == want, format!("{how:?}: exit code {exitcode}"))?
            }
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
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
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
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
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
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
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
        matches!(killed, Err(mp::TaskError::WorkerDied { exitcode: -9 })),
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

fn main() {
    let guard = mp::init();
    let tests = vec![
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
        case(
            "a_replacement_killed_while_starting_is_replaced_again",
            T,
            a_replacement_killed_while_starting_is_replaced_again,
        ),
    ];
    common::run(guard, tests)
}
