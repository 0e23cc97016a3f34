//! `Pool::starmap`, async concurrency inside a worker, cancelling a task a
//! worker holds but has not started, and the task timeout inside chunks
//! and among concurrent tasks.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn power(base: u64, exp: u32) -> u64 {
    base.pow(exp)
}

fn describe(name: String, age: u8, tall: bool) -> String {
    format!("{name}:{age}:{tall}")
}

fn six(a: u8, b: u16, c: u32, d: u64, e: i8, f: i16) -> i64 {
    i64::from(a) + i64::from(b) + i64::from(c) + d as i64 + i64::from(e) + i64::from(f)
}

fn negate(x: i64) -> i64 {
    -x
}

async fn async_concat(a: String, b: String) -> String {
    tokio::time::sleep(Duration::from_millis(1)).await;
    a + &b
}

fn checked_div(a: u32, b: u32) -> u32 {
    a / b // panics on zero
}

async fn starmap_spreads_each_tuple_over_the_arguments() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    let got = pool.starmap(power, [(2u64, 3u32), (3, 2), (10, 0)]).await?;
    ensure(got == [8, 9, 1], format!("power: {got:?}"))?;
    let got = pool
        .starmap(
            describe,
            [("ann".to_owned(), 31u8, true), ("bo".to_owned(), 4, false)],
        )
        .await?;
    ensure(got == ["ann:31:true", "bo:4:false"], format!("{got:?}"))?;
    let got = pool
        .starmap(six, [(1u8, 2u16, 3u32, 4u64, -5i8, -6i16)])
        .await?;
    ensure(got == [-1], "six arguments")?;
    let got = pool.starmap(negate, [(1i64,), (2,)]).await?;
    ensure(got == [-1, -2], "one argument")?;
    let got = pool
        .starmap(
            async_concat,
            [
                ("a".to_owned(), "b".to_owned()),
                ("c".to_owned(), "d".to_owned()),
            ],
        )
        .await?;
    ensure(got == ["ab", "cd"], "async target")?;
    let want: Vec<u64> = (0..200u64).map(|x| x.pow(2)).collect();
    for chunksize in [1, 9] {
        let got = pool
            .starmap_chunked(power, (0..200u64).map(|x| (x, 2u32)), chunksize)
            .await?;
        ensure(got == want, format!("starmap_chunked({chunksize})"))?;
    }
    let empty: Vec<u64> = pool.starmap(power, Vec::<(u64, u32)>::new()).await?;
    ensure(empty.is_empty(), "empty input")?;
    match pool
        .starmap(checked_div, [(4u32, 2u32), (1, 0), (9, 3)])
        .await
    {
        Err(e) => ensure(e.is_panic(), format!("{e}"))?,
        Ok(v) => return Err(format!("a division by zero returned {v:?}").into()),
    }
    ensure(
        pool.apply(power_tuple, (3, 3)).await? == 27,
        "apply takes the tuple as one argument",
    )?;
    Ok(())
}

fn power_tuple((base, exp): (u64, u32)) -> u64 {
    base.pow(exp)
}

fn rendezvous_dir(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("mp-features-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.to_string_lossy().into_owned()
}

/// Marks its arrival in `dir`, then waits (asynchronously) until `n`
/// tasks have arrived, or gives up after three seconds. True if all met.
async fn meet((dir, i, n): (String, usize, usize)) -> bool {
    std::fs::write(format!("{dir}/{i}"), b"").unwrap();
    for _ in 0..300 {
        if std::fs::read_dir(&dir).unwrap().count() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

async fn async_tasks_run_concurrently_in_one_worker() -> Result<(), Failed> {
    let n = 8;
    let pool = mp::Pool::builder()
        .processes(1)
        .concurrency(n)
        .build()
        .await?;
    let dir = rendezvous_dir("meet");
    let args: Vec<_> = (0..n).map(|i| (dir.clone(), i, n)).collect();
    let met = pool.map_chunked(meet, args, 1).await?;
    ensure(
        met.iter().all(|m| *m),
        format!("all {n} tasks were running at once in the one worker: {met:?}"),
    )?;

    // One at a time (the default), they cannot all meet.
    let pool = mp::Pool::new(1).await?;
    let dir = rendezvous_dir("alone");
    let args: Vec<_> = (0..2).map(|i| (dir.clone(), i, 2)).collect();
    let met = pool.map_chunked(meet, args, 1).await?;
    ensure(met == [false, true], format!("sequential: {met:?}"))?;

    let refused = mp::Pool::builder()
        .processes(1)
        .concurrency(0)
        .build()
        .await;
    ensure(
        matches!(refused, Err(mp::BuildError::InvalidSetting(_))),
        format!("concurrency(0): {refused:?}"),
    )?;
    Ok(())
}

fn scratch(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("mp-features-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

fn touch(path: String) {
    std::fs::write(path, b"ran").unwrap();
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Holds its worker until `go` is set (30 s at most); returns 400.
fn held_until(go: mp::Event) -> u64 {
    go.blocking_wait_timeout(Duration::from_secs(30));
    400
}

async fn a_dropped_result_held_by_a_worker_never_runs() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    // The first task holds the worker until the drops below have been
    // acted on, however slow the machine.
    let go = mp::Event::new()?;
    let slow = pool.apply_async(held_until, go.clone());
    let paths: Vec<String> = (0..3).map(|i| scratch(&format!("held-{i}"))).collect();
    let mut held: Vec<_> = paths
        .iter()
        .map(|p| Some(pool.apply_async(touch, p.clone())))
        .collect();
    // Wait until the worker holds all four: nothing left in the queue.
    common::eventually("the tasks reach the worker", || pool.stats().queued == 0).await?;
    ensure(!slow.ready(), "the slow task is still running")?;
    drop(held[0].take());
    drop(held[2].take());
    let kept = held[1].take().expect("kept");
    // The worker has not started them: the pool takes them back and ends
    // them as cancelled (counted as failed) while it still holds the first.
    common::eventually("the dropped tasks are taken back", || {
        pool.stats().failed == 2
    })
    .await?;
    go.set();
    ensure(slow.await? == 400, "slow task")?;
    kept.await?;
    ensure(Path::new(&paths[1]).exists(), "the kept task ran")?;
    ensure(
        !Path::new(&paths[0]).exists() && !Path::new(&paths[2]).exists(),
        "the dropped tasks never ran, though the worker held them",
    )?;
    // The worker is the same one, and it goes on.
    ensure(pool.stats().restarted == 0, "no worker was replaced")?;
    ensure(pool.apply(sleep_ms, 1).await? == 1, "the pool goes on")?;
    Ok(())
}

fn slow_on_3(x: u64) -> u64 {
    if x == 3 {
        std::thread::sleep(Duration::from_secs(30));
    }
    x
}

async fn the_timeout_applies_to_each_task_of_a_map() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(500))
        .build()
        .await?;
    // Forty items of 20 ms each: as one chunk they would take 800 ms, past
    // the timeout, yet each task alone is well inside it.
    let got = pool.map_chunked(sleep_ms, vec![20u64; 40], 40).await?;
    ensure(got == vec![20u64; 40], "no task timed out")?;
    // The one slow item fails alone; the rest give their values.
    let got: Vec<_> = pool.imap(slow_on_3, 0..8u64).chunksize(8).collect().await;
    for (i, r) in got.iter().enumerate() {
        let ok = match r {
            Ok(v) => *v == i as u64 && i != 3,
            Err(e) => i == 3 && *e == mp::TaskError::TimedOut,
        };
        ensure(ok, format!("item {i}: {r:?}"))?;
    }
    ensure(
        matches!(
            pool.map(slow_on_3, 0..8u64).await,
            Err(mp::TaskError::TimedOut)
        ),
        "map reports the timeout",
    )?;
    Ok(())
}

async fn nap(ms: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(ms)).await;
    ms
}

async fn a_timeout_among_concurrent_tasks() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(1)
        .concurrency(4)
        .task_timeout(Duration::from_millis(600))
        .build()
        .await?;
    let stuck = pool.apply_async(nap, 60_000);
    let quick: Vec<_> = (0..6).map(|_| pool.apply_async(nap, 50)).collect();
    ensure(
        stuck.await == Err(mp::TaskError::TimedOut),
        "the stuck task timed out",
    )?;
    for q in quick {
        // Each quick task ended long before the stuck one timed out, so
        // none shared the killed worker's fate.
        ensure(q.await? == 50, "a quick task")?;
    }
    common::eventually("the worker is replaced", || pool.stats().restarted > 0).await?;
    ensure(pool.apply(nap, 1).await? == 1, "the new worker serves")?;
    ensure(pool.stats().restarted == 1, "one worker was replaced")?;
    Ok(())
}

async fn dropping_an_imap_cancels_what_has_not_started() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let paths: Vec<String> = (0..20).map(|i| scratch(&format!("imap-{i}"))).collect();
    let mut stream = pool.imap(touch_after_100ms, paths.clone());
    stream.next().await.expect("first")?;
    drop(stream);
    // Give the worker time to run whatever it still would.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ran = paths.iter().filter(|p| Path::new(p).exists()).count();
    // The first ran; the second may have started before the drop arrived.
    ensure(
        (1..=2).contains(&ran),
        format!("{ran} of 20 ran after the stream was dropped"),
    )?;
    Ok(())
}

fn echo_bytes(v: Vec<u8>) -> Vec<u8> {
    v
}

async fn large_jobs_and_replies_flow_both_ways_at_once() -> Result<(), Failed> {
    // Chunks of 256 KiB each way, more than a socket holds: the parent
    // must go on reading replies while its jobs wait for room.
    let pool = mp::Pool::new(1).await?;
    let items: Vec<Vec<u8>> = (0..4096u32).map(|i| vec![(i % 251) as u8; 1024]).collect();
    for round in 0..2 {
        let got = pool.map_chunked(echo_bytes, items.clone(), 256).await?;
        ensure(got == items, format!("round {round}"))?;
    }
    let got: Vec<_> = pool
        .imap(echo_bytes, items.clone())
        .chunksize(256)
        .collect()
        .await;
    ensure(
        got.into_iter()
            .map(|r| r.expect("echo"))
            .eq(items.iter().cloned()),
        "imap",
    )?;
    Ok(())
}

/// How many tasks this worker process ran before this one, and the
/// length of its argument.
fn place_in_worker(v: Vec<u8>) -> (u64, usize) {
    static RAN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (
        RAN.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        v.len(),
    )
}

async fn long_sum(v: Vec<u8>) -> u64 {
    tokio::task::yield_now().await;
    v.iter().map(|&b| u64::from(b)).sum()
}

/// Small jobs go through the shared page's ring, and one too big for it
/// over the socket, with a marker in the ring: the worker must still run
/// them in the order sent, each once.
async fn jobs_too_big_for_the_ring_keep_their_place() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let sizes: Vec<usize> = (0..600)
        .map(|i| match i % 5 {
            0 => 40_000,
            3 => 17_000,
            _ => i % 97,
        })
        .collect();
    let pending: Vec<_> = sizes
        .iter()
        .map(|&n| pool.apply_async(place_in_worker, vec![7u8; n]))
        .collect();
    for (i, (p, &n)) in pending.into_iter().zip(&sizes).enumerate() {
        let (place, len) = p.await?;
        ensure(
            len == n,
            format!("task {i}: argument of {len} bytes, sent {n}"),
        )?;
        ensure(
            place == i as u64,
            format!("task {i} ran as the worker's task {place}"),
        )?;
    }
    ensure(pool.stats().restarted == 0, "no worker was replaced")?;
    // The same through a worker running several async tasks at once.
    let pool = mp::Pool::builder()
        .processes(2)
        .concurrency(4)
        .build()
        .await?;
    let args: Vec<Vec<u8>> = (0..400u32)
        .map(|i| vec![(i % 7) as u8 + 1; if i % 3 == 0 { 30_000 } else { 10 }])
        .collect();
    let want: Vec<u64> = args
        .iter()
        .map(|v| v.iter().map(|&b| u64::from(b)).sum())
        .collect();
    let got = pool.map_chunked(long_sum, args, 1).await?;
    ensure(got == want, "every async task's sum, in order")?;
    Ok(())
}

async fn a_task_queued_behind_a_long_one_moves_to_an_idle_worker() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    for round in 0..3 {
        // Trivial tasks first, so that the workers prefetch deeply.
        pool.map_chunked(sleep_ms, vec![0u64; 200], 1).await?;
        let slow = pool.apply_async(sleep_ms, 3000);
        let quick: Vec<_> = (0..40).map(|_| pool.apply_async(sleep_ms, 5)).collect();
        for q in quick {
            ensure(q.await? == 5, "a quick task")?;
        }
        ensure(
            !slow.ready(),
            format!("round {round}: a quick task waited for the slow one"),
        )?;
        ensure(slow.await? == 3000, "the slow task")?;
    }
    ensure(pool.stats().restarted == 0, "no worker was replaced")?;
    Ok(())
}

fn touch_after_100ms(path: String) {
    std::fs::write(path, b"ran").unwrap();
    std::thread::sleep(Duration::from_millis(100));
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "starmap_spreads_each_tuple_over_the_arguments",
            T,
            starmap_spreads_each_tuple_over_the_arguments,
        ),
        case(
            "async_tasks_run_concurrently_in_one_worker",
            T,
            async_tasks_run_concurrently_in_one_worker,
        ),
        case(
            "a_dropped_result_held_by_a_worker_never_runs",
            T,
            a_dropped_result_held_by_a_worker_never_runs,
        ),
        case(
            "the_timeout_applies_to_each_task_of_a_map",
            T,
            the_timeout_applies_to_each_task_of_a_map,
        ),
        case(
            "a_timeout_among_concurrent_tasks",
            T,
            a_timeout_among_concurrent_tasks,
        ),
        case(
            "large_jobs_and_replies_flow_both_ways_at_once",
            T,
            large_jobs_and_replies_flow_both_ways_at_once,
        ),
        case(
            "jobs_too_big_for_the_ring_keep_their_place",
            T,
            jobs_too_big_for_the_ring_keep_their_place,
        ),
        case(
            "a_task_queued_behind_a_long_one_moves_to_an_idle_worker",
            T,
            a_task_queued_behind_a_long_one_moves_to_an_idle_worker,
        ),
        case(
            "dropping_an_imap_cancels_what_has_not_started",
            T,
            dropping_an_imap_cancels_what_has_not_started,
        ),
    ]
}
