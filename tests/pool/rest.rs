//! An idle worker rests: after a second with nothing to run it gives back
//! the pages of its code and waits on its socket in the kernel, so its
//! resident size is what it owns; the next job wakes it as any job does.
//! A worker with a task of its own on its runtime keeps waiting through
//! the runtime, which goes on running that task; one told never to rest
//! keeps its pages.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

fn square(x: u64) -> u64 {
    x * x
}

/// After work, the worker's resident size falls below 2 MiB and below
/// half of what it was warm; a `map` then wakes it, is answered in full
/// by the same worker (none replaced), and brings code back.
async fn an_idle_worker_rests_and_wakes() -> Result<(), Failed> {
    let pool = mp::Pool::builder().processes(1).build().await?;
    let out = pool.map_chunked(square, 0..2000u64, 1).await?;
    ensure(out.len() == 2000, "the warm-up")?;
    let workers = common::started_children();
    let [worker] = workers[..] else {
        return Err(format!("one worker, found {workers:?}").into());
    };
    let warm = common::rss_kib(worker);
    ensure(warm > 2048, format!("a worker at work holds {warm} KiB"))?;
    common::eventually("the idle worker rests", || {
        let now = common::rss_kib(worker);
        now < 2048 && now < warm / 2
    })
    .await?;
    let rested = common::rss_kib(worker);
    let out = pool.map_chunked(square, 0..1000u64, 1).await?;
    ensure(
        out == (0..1000u64).map(square).collect::<Vec<_>>(),
        "the values after the rest",
    )?;
    ensure(pool.apply(square, 12).await? == 144, "an apply after it")?;
    ensure(
        common::started_children() == [worker] && pool.stats().restarted == 0,
        format!(
            "the same worker answered: {:?}, {} restarted",
            common::started_children(),
            pool.stats().restarted
        ),
    )?;
    let after = common::rss_kib(worker);
    ensure(
        after > rested,
        format!("its code came back as it ran: {rested} KiB at rest, {after} KiB after"),
    )?;
    pool.close();
    pool.join().await?;
    Ok(())
}

/// `rest_after(None)`: a worker idle for twice the default keeps its
/// pages.
async fn a_worker_told_never_to_rest_keeps_its_pages() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(1)
        .rest_after(None)
        .build()
        .await?;
    pool.map_chunked(square, 0..2000u64, 1).await?;
    let workers = common::started_children();
    let [worker] = workers[..] else {
        return Err(format!("one worker, found {workers:?}").into());
    };
    let warm = common::rss_kib(worker);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = common::rss_kib(worker);
    pool.terminate().await;
    ensure(
        later > warm / 2 && later > 2048,
        format!("{warm} KiB warm, {later} KiB 2 s later"),
    )?;
    Ok(())
}

/// Spawns, on the worker's runtime, a task that writes a growing count to
/// the file at `path` every 10 ms, and returns.
async fn start_ticker(path: String) {
    tokio::spawn(async move {
        for n in 1u64.. {
            let _ = std::fs::write(&path, n.to_string());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn ticks(path: &std::path::Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A worker whose runtime holds a task of its own does not wait in the
/// kernel when idle: the task keeps running past the second after which
/// the worker would have rested.
async fn a_worker_with_a_task_of_its_own_keeps_running_it() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tmp-rest-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("ticks");
    let pool = mp::Pool::builder().processes(1).build().await?;
    pool.apply(start_ticker, path.to_string_lossy().into_owned())
        .await?;
    // Past the worker's rest at 1 s.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = ticks(&path);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = ticks(&path);
    pool.terminate().await;
    let _ = std::fs::remove_dir_all(&dir);
    ensure(
        before > 0 && after >= before + 20,
        format!("the worker's own task ticked {before} times by 1.5 s and {after} by 2.5 s"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_alone(
            "an_idle_worker_rests_and_wakes",
            Duration::from_secs(60),
            an_idle_worker_rests_and_wakes,
        ),
        case_alone(
            "a_worker_told_never_to_rest_keeps_its_pages",
            Duration::from_secs(60),
            a_worker_told_never_to_rest_keeps_its_pages,
        ),
        case_alone(
            "a_worker_with_a_task_of_its_own_keeps_running_it",
            Duration::from_secs(60),
            a_worker_with_a_task_of_its_own_keeps_running_it,
        ),
    ]
}
