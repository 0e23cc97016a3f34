//! A million pool tasks: `map` with default chunks for most, 20,000
//! `apply_async` calls and 20,000 tasks through `map_chunked` with chunk
//! size 1, with `max_tasks_per_child` low enough that the workers are
//! replaced many times. No growth in open descriptors, zombies, children
//! or resident memory beyond a small bound (read from /proc). The case runs
//! alone, so that nothing else runs alongside while it counts.
//!
//! On Windows there is no /proc (under Wine, /proc is Linux's: the
//! descriptors and memory of Wine's own process, with Linux pids): the
//! same million tasks run, with every value, the counters and the
//! replacements checked, but not the descriptors, children or memory.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

const WORKERS: usize = 4;
/// Jobs (a task, or a chunk of a map) a worker runs before it is replaced.
const JOBS_PER_CHILD: usize = 25;

fn inc(x: u64) -> u64 {
    x + 1
}

/// One block of 100,000 tasks: a default-chunk map of 90,000, then 2,000
/// `apply_async` (all in flight at once), 2,000 through chunk size 1, and
/// 6,000 through chunk size 100. Every value is checked.
/// `stage`, failed with the pool's counts if it takes over a minute (a
/// block takes well under a second): a hang says where it is and what the
/// pool held, before the case's watchdog.
async fn within<T>(
    pool: &mp::Pool,
    stage: &str,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Failed> {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .map_err(|_| format!("{stage} hung for 60 s: {:?}", pool.stats()).into())
}

async fn block(pool: &mp::Pool, base: u64) -> Result<usize, Failed> {
    let mut done = 0;
    let got = within(pool, "map", pool.map(inc, base..base + 90_000)).await??;
    ensure(
        got.iter().zip(base..).all(|(v, x)| *v == x + 1),
        "default-chunk map values",
    )?;
    done += got.len();
    let base = base + 90_000;
    let pending: Vec<_> = (base..base + 2_000)
        .map(|x| pool.apply_async(inc, x))
        .collect();
    for (x, r) in (base..).zip(pending) {
        ensure(
            within(pool, "apply_async", r).await?? == x + 1,
            "apply_async value",
        )?;
        done += 1;
    }
    let base = base + 2_000;
    for (n, chunk) in [(2_000, 1), (6_000, 100)] {
        let got = within(
            pool,
            "map_chunked",
            pool.map_chunked(inc, base..base + n, chunk),
        )
        .await??;
        ensure(
            got.iter().zip(base..).all(|(v, x)| *v == x + 1),
            format!("map_chunked({chunk}) values"),
        )?;
        done += got.len();
    }
    Ok(done)
}

/// Waits (up to two seconds) until the pool has all its workers and no
/// retired worker is left unreaped, twice in a row: replacements go on for
/// a moment after the last value arrives.
#[cfg(unix)]
async fn settled(pool: &mp::Pool, children: usize) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut calm = 0;
    while calm < 2 && Instant::now() < deadline {
        let whole = pool.stats().workers == WORKERS
            && common::started_children().len() == children
            && common::zombie_children().is_empty();
        calm = if whole { calm + 1 } else { 0 };
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every task of `blocks` blocks ran, once, and none failed (`warm` more
/// in the warm-up); workers were replaced as often as their limit says.
fn check_counts(
    tasks: usize,
    warm: usize,
    blocks: u64,
    stats: &mp::PoolStats,
) -> Result<(), Failed> {
    ensure(tasks as u64 == blocks * 100_000, format!("{tasks} tasks"))?;
    ensure(
        stats.completed == tasks + warm && stats.failed == 0,
        format!("{stats:?}"),
    )?;
    // Every job retires its worker after JOBS_PER_CHILD: 4,000 jobs of one
    // task and 20 chunks per block.
    ensure(
        stats.restarted >= usize::try_from(blocks)? * (4_000 + 60 + 16) / JOBS_PER_CHILD - WORKERS,
        format!("too few replacements: {stats:?}"),
    )
}

/// Blocks of 100,000 tasks; `SOAK_POOL_BLOCKS` sets how many (10 by default).
fn blocks() -> u64 {
    std::env::var("SOAK_POOL_BLOCKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

#[cfg(unix)]
async fn a_million_tasks() -> Result<(), Failed> {
    // The fork server is a child of this process; start it before the
    // baseline.
    common::start_join_cycles(1, 1).await?;
    let (fds_idle, children_idle) = (common::open_fds(), common::started_children());
    let pool = mp::Pool::builder()
        .processes(WORKERS)
        .max_tasks_per_child(JOBS_PER_CHILD)
        .build()
        .await?;
    // Warm up: the allocator's pools and the queue's capacity settle.
    let warm = block(&pool, 0).await?;
    // The baseline is taken with every worker in place: one being
    // replaced holds a descriptor fewer or more for a moment.
    settled(&pool, children_idle.len() + WORKERS).await;
    let (fds0, rss0) = (common::open_fds(), common::rss_kib("self"));
    let t0 = Instant::now();
    let mut tasks = 0;
    let mut rss_max = rss0;
    let blocks = blocks();
    for b in 0..blocks {
        tasks += block(&pool, 1_000_000 + b * 100_000).await?;
        let rss = common::rss_kib("self");
        rss_max = rss_max.max(rss);
        println!(
            "{tasks:>9} tasks, {:>6.2} s: fds {}, RSS {rss} KiB, zombies {}, {:?}",
            t0.elapsed().as_secs_f64(),
            common::open_fds(),
            common::zombie_children().len(),
            pool.stats()
        );
    }
    let took = t0.elapsed();
    settled(&pool, children_idle.len() + WORKERS).await;
    let stats = pool.stats();
    let fds1 = common::open_fds_settled(fds0).await;
    let (rss1, zombies) = (common::rss_kib("self"), common::zombie_children());
    println!(
        "{tasks} tasks in {took:?} ({:.2} us/task), {} workers replaced: fds {fds0} -> {fds1}, \
         RSS {rss0} KiB -> {rss1} KiB (peak {rss_max} KiB), zombies {zombies:?}",
        took.as_secs_f64() * 1e6 / tasks as f64,
        stats.restarted
    );
    check_counts(tasks, warm, blocks, &stats)?;
    ensure(
        fds1 <= fds0,
        format!("descriptors grew from {fds0} to {fds1}"),
    )?;
    ensure(zombies.is_empty(), format!("zombies: {zombies:?}"))?;
    ensure(
        rss1 <= rss0 + 8 * 1024,
        format!("RSS grew from {rss0} KiB to {rss1} KiB"),
    )?;
    ensure(
        common::started_children().len() == children_idle.len() + WORKERS,
        format!("children: {:?}", common::started_children()),
    )?;

    pool.terminate().await;
    drop(pool);
    let fds2 = common::open_fds_settled(fds_idle).await;
    ensure(
        fds2 <= fds_idle,
        format!("descriptors after terminate: {fds_idle} -> {fds2}"),
    )?;
    ensure(
        common::zombie_children().is_empty(),
        "zombies after terminate",
    )?;
    ensure(
        common::started_children() == children_idle,
        format!(
            "children {children_idle:?} -> {:?} after terminate",
            common::started_children()
        ),
    )?;
    Ok(())
}

/// The same million tasks on Windows, without the counts from /proc.
#[cfg(windows)]
async fn a_million_tasks() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(WORKERS)
        .max_tasks_per_child(JOBS_PER_CHILD)
        .build()
        .await?;
    let warm = block(&pool, 0).await?;
    let t0 = Instant::now();
    let mut tasks = 0;
    let blocks = blocks();
    for b in 0..blocks {
        tasks += block(&pool, 1_000_000 + b * 100_000).await?;
        println!(
            "{tasks:>9} tasks, {:>6.2} s: {:?}",
            t0.elapsed().as_secs_f64(),
            pool.stats()
        );
    }
    let took = t0.elapsed();
    // Replacements go on for a moment after the last value arrives.
    common::eventually("the pool has all its workers", || {
        pool.stats().workers == WORKERS
    })
    .await?;
    let stats = pool.stats();
    println!(
        "{tasks} tasks in {took:?} ({:.2} us/task), {} workers replaced",
        took.as_secs_f64() * 1e6 / tasks as f64,
        stats.restarted
    );
    check_counts(tasks, warm, blocks, &stats)?;
    pool.terminate().await;
    ensure(pool.stats().workers == 0, "workers after terminate")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case_alone(
        "a_million_tasks",
        Duration::from_secs(300),
        a_million_tasks,
    )]
}
