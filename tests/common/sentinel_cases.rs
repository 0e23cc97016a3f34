//! Sentinel and `wait` cases, run by the `sentinel` module of the `process`
//! test binary on the pidfd path and, in runs of their own with
//! `TOKIO_MULTIPROCESSING_NO_PIDFD` set, on the fallback path. On Windows
//! they run once, on the process handle.

#[cfg(unix)]
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

/// How many pidfds this process holds open.
#[cfg(unix)]
fn open_pidfds() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().contains("pidfd"))
        .count()
}

async fn sentinel_in_select(expect_pidfd: bool) -> Result<(), Failed> {
    let p = mp::Process::new(sleep_ms, 100);
    p.start().await?;
    // Windows has no pidfds: a sentinel waits on the process handle.
    #[cfg(unix)]
    {
        let pidfds = open_pidfds();
        ensure(
            (pidfds > 0) == expect_pidfd,
            format!("{pidfds} pidfds open while a child runs; expected pidfd use: {expect_pidfd}"),
        )?;
    }
    #[cfg(windows)]
    let _ = expect_pidfd;
    let mut sentinel = p.sentinel();
    let mut ticks = 0;
    let status = loop {
        tokio::select! {
            status = &mut sentinel => break status,
            _ = tokio::time::sleep(Duration::from_millis(10)) => ticks += 1,
        }
    };
    ensure(status.success(), format!("{status:?}"))?;
    ensure(
        ticks >= 3,
        format!("the select loop ran while the child slept ({ticks} ticks)"),
    )?;
    // Once ready it stays ready: the same sentinel, a clone, and a new one.
    ensure(
        (&mut sentinel).await.success(),
        "polled again after completion",
    )?;
    ensure(sentinel.clone().await.success(), "a clone is ready")?;
    ensure(p.sentinel().is_ready(), "a new sentinel is ready")?;
    ensure(
        p.sentinel().exit_status().is_some_and(|s| s.success()),
        "exit status kept",
    )?;
    Ok(())
}

async fn sentinel_taken_before_start_waits_for_start_and_exit() -> Result<(), Failed> {
    let p = mp::Process::new(exit_with, 4);
    let mut sentinel = p.sentinel();
    let early = tokio::time::timeout(Duration::from_millis(100), &mut sentinel).await;
    ensure(early.is_err(), "pending before start")?;
    p.start().await?;
    let status = tokio::time::timeout(Duration::from_secs(10), &mut sentinel).await?;
    ensure(status.code() == Some(4), format!("{status:?}"))?;
    Ok(())
}

async fn wait_on_nothing_returns_at_once() -> Result<(), Failed> {
    let t0 = Instant::now();
    let ready = mp::wait::<mp::Sentinel>(&[], Some(Duration::from_secs(10))).await;
    ensure(ready.is_empty(), "empty")?;
    let ready = mp::wait::<mp::Sentinel>(&[], None).await;
    ensure(ready.is_empty(), "empty without a timeout")?;
    ensure(
        t0.elapsed() < Duration::from_millis(100),
        format!("took {:?}", t0.elapsed()),
    )?;
    Ok(())
}

async fn wait_times_out_with_nothing_ready() -> Result<(), Failed> {
    let a = mp::Process::new(sleep_ms, 60_000);
    let b = mp::Process::new(sleep_ms, 60_000);
    a.start().await?;
    b.start().await?;
    let t0 = Instant::now();
    let ready = mp::wait(
        &[a.sentinel(), b.sentinel()],
        Some(Duration::from_millis(250)),
    )
    .await;
    let took = t0.elapsed();
    ensure(ready.is_empty(), format!("nothing ready, got {ready:?}"))?;
    ensure(
        took >= Duration::from_millis(240),
        format!("returned early, after {took:?}"),
    )?;
    ensure(
        took < Duration::from_secs(2),
        format!("returned late, after {took:?}"),
    )?;
    a.kill()?;
    b.kill()?;
    let ready = mp::wait(&[a.sentinel(), b.sentinel()], Some(Duration::from_secs(10))).await;
    ensure(!ready.is_empty(), "killed children become ready")?;
    Ok(())
}

async fn wait_returns_ready_indexes_ascending() -> Result<(), Failed> {
    let slow = mp::Process::new(sleep_ms, 60_000);
    let fast = mp::Process::new(sleep_ms, 0);
    let slow2 = mp::Process::new(sleep_ms, 60_000);
    for p in [&slow, &fast, &slow2] {
        p.start().await?;
    }
    let objs = [slow.sentinel(), fast.sentinel(), slow2.sentinel()];
    let ready = mp::wait(&objs, Some(Duration::from_secs(10))).await;
    ensure(ready == vec![1], format!("only the fast one: {ready:?}"))?;
    // Ready stays ready: waiting again returns it at once.
    let t0 = Instant::now();
    let again = mp::wait(&objs, Some(Duration::from_secs(10))).await;
    ensure(
        again == vec![1] && t0.elapsed() < Duration::from_millis(100),
        format!("{again:?}"),
    )?;

    slow2.kill()?;
    slow.kill()?;
    let mut ready = Vec::new();
    while ready.len() < 3 {
        ready = mp::wait(&objs, Some(Duration::from_secs(10))).await;
        if ready.len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    ensure(ready == vec![0, 1, 2], format!("ascending: {ready:?}"))?;
    let status = slow.sentinel().await;
    // On Windows `kill()` is `TerminateProcess`, reported as -15 (as
    // Python does there); its raw status is the library's exit code.
    #[cfg(unix)]
    ensure(
        status.signal() == Some(9),
        format!("killed by 9: {status:?}"),
    )?;
    #[cfg(windows)]
    ensure(
        !status.success() && slow.exitcode() == Some(-15),
        format!("killed: {status:?}, exitcode {:?}", slow.exitcode()),
    )?;

    // Mixed kinds through `&dyn Waitable`.
    let s = fast.sentinel();
    let mixed: [&dyn mp::Waitable; 2] = [&s, &objs[0]];
    ensure(
        mp::wait(&mixed, Some(Duration::from_secs(1))).await == vec![0, 1],
        "dyn waitables",
    )?;
    Ok(())
}

async fn many_sentinels_at_once() -> Result<(), Failed> {
    let mut procs = Vec::new();
    for i in 0..16u64 {
        let p = mp::Process::new(sleep_ms, (i % 4) * 30);
        p.start().await?;
        procs.push(p);
    }
    let sentinels: Vec<mp::Sentinel> = procs.iter().map(|p| p.sentinel()).collect();
    let mut done = vec![false; sentinels.len()];
    while done.iter().any(|d| !d) {
        for i in mp::wait(&sentinels, Some(Duration::from_secs(10))).await {
            done[i] = true;
        }
    }
    for p in &procs {
        ensure(p.exitcode() == Some(0), format!("{p}"))?;
        p.join().await?;
    }
    Ok(())
}

/// Runs `body` on a current-thread runtime of its own, on a thread of its
/// own, so that a body that never yields cannot stall the case's runtime:
/// the case fails by its watchdog instead.
async fn on_a_current_thread_runtime<F, Fut>(body: F) -> Result<(), Failed>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(body()));
        let _ = tx.send(result);
    });
    Ok(rx.await.map_err(|_| "the runtime's thread panicked")??)
}

/// How long the busy loops below may spin before they give up: enough for
/// a child that sleeps 200 ms to end many times over.
const SPIN_LIMIT: Duration = Duration::from_secs(10);

/// A loop that calls `wait` again and again, while one object is always
/// ready, yields to the runtime: on a current-thread runtime the task that
/// sees the other child exit runs, and so does a task of the program's own.
async fn wait_in_a_busy_loop_lets_other_tasks_run() -> Result<(), Failed> {
    on_a_current_thread_runtime(|| async {
        let quick = mp::Process::new(sleep_ms, 0);
        quick.start().await.map_err(|e| e.to_string())?;
        quick.join().await.map_err(|e| e.to_string())?;
        let slow = mp::Process::new(sleep_ms, 200);
        slow.start().await.map_err(|e| e.to_string())?;
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            set.store(true, Ordering::SeqCst);
        });
        let sentinels = [quick.sentinel(), slow.sentinel()];
        let deadline = Instant::now() + SPIN_LIMIT;
        let mut calls = 0u64;
        loop {
            let ready = mp::wait(&sentinels, None).await;
            calls += 1;
            if ready == [0, 1] && flag.load(Ordering::SeqCst) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {calls} calls in {SPIN_LIMIT:?}: ready {ready:?}, flag {}",
                    flag.load(Ordering::SeqCst)
                ));
            }
        }
        slow.join().await.map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
}

/// The same with a ready sentinel awaited again and again.
async fn ready_sentinel_in_a_busy_loop_lets_other_tasks_run() -> Result<(), Failed> {
    on_a_current_thread_runtime(|| async {
        let quick = mp::Process::new(sleep_ms, 0);
        quick.start().await.map_err(|e| e.to_string())?;
        let mut sentinel = quick.sentinel();
        let slow = mp::Process::new(sleep_ms, 200);
        slow.start().await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + SPIN_LIMIT;
        let mut polls = 0u64;
        while !slow.sentinel().is_ready() {
            (&mut sentinel).await;
            polls += 1;
            if Instant::now() > deadline {
                return Err(format!(
                    "after {polls} awaits in {SPIN_LIMIT:?} the slow child is not seen to end"
                ));
            }
        }
        slow.join().await.map_err(|e| e.to_string())?;
        quick.join().await.map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
}

/// The cases; `expect_pidfd` says which reaping path the process forces.
pub(crate) fn all(expect_pidfd: bool) -> Vec<Case> {
    vec![
        case("sentinel_in_select", T, move || {
            sentinel_in_select(expect_pidfd)
        }),
        case(
            "sentinel_taken_before_start_waits_for_start_and_exit",
            T,
            sentinel_taken_before_start_waits_for_start_and_exit,
        ),
        case(
            "wait_on_nothing_returns_at_once",
            T,
            wait_on_nothing_returns_at_once,
        ),
        case(
            "wait_times_out_with_nothing_ready",
            T,
            wait_times_out_with_nothing_ready,
        ),
        case(
            "wait_returns_ready_indexes_ascending",
            T,
            wait_returns_ready_indexes_ascending,
        ),
        case("many_sentinels_at_once", T, many_sentinels_at_once),
        case(
            "wait_in_a_busy_loop_lets_other_tasks_run",
            T,
            wait_in_a_busy_loop_lets_other_tasks_run,
        ),
        case(
            "ready_sentinel_in_a_busy_loop_lets_other_tasks_run",
            T,
            ready_sentinel_in_a_busy_loop_lets_other_tasks_run,
        ),
    ]
}
