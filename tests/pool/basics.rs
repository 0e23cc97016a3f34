//! `Pool`: results in input order, failures, lifecycle, cancellation,
//! initializers, retirement and stats.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

async fn async_square(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    x * x
}

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn fail_on_13(x: u64) -> u64 {
    if x == 13 {
        panic!("unlucky {x}");
    }
    std::thread::sleep(Duration::from_millis(2));
    x
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Serializes into an error: a result that cannot leave the worker.
#[derive(Debug, Deserialize)]
struct Unsendable;

impl Serialize for Unsendable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("Unsendable refuses"))
    }
}

fn unsendable(_: ()) -> Unsendable {
    Unsendable
}

async fn results_come_in_input_order() -> Result<(), Failed> {
    let pool = mp::Pool::new(3).await?;
    let want: Vec<u64> = (0..500).map(|x| x * x).collect();
    ensure(pool.map(square, 0..500).await? == want, "map")?;
    for chunksize in [1, 7, 1000] {
        let got = pool.map_chunked(square, 0..500, chunksize).await?;
        ensure(got == want, format!("map_chunked({chunksize})"))?;
    }
    let got = pool.map(async_square, 0..50).await?;
    ensure(got == want[..50], "async target")?;
    let start = Instant::now();
    let empty = pool.map(square, Vec::<u64>::new()).await?;
    ensure(
        empty.is_empty() && start.elapsed() < Duration::from_millis(50),
        "empty input",
    )?;
    ensure(pool.apply(square, 12).await? == 144, "apply")?;
    let pending: Vec<_> = (0..100).map(|x| pool.apply_async(square, x)).collect();
    for (x, r) in pending.into_iter().enumerate() {
        ensure(r.await? == (x * x) as u64, "apply_async")?;
    }
    let stats = pool.stats();
    ensure(
        stats.workers == 3 && stats.restarted == 0 && stats.queued == 0,
        format!("{stats:?}"),
    )?;
    ensure(
        stats.completed == 500 * 4 + 50 + 1 + 100,
        format!("{stats:?}"),
    )?;
    pool.close();
    pool.join().await?;
    Ok(())
}

async fn a_failing_item_fails_map_after_the_rest() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    match pool.map_chunked(fail_on_13, 0..100, 5).await {
        Err(mp::TaskError::Panicked(info)) => ensure(info.message == "unlucky 13", &info.message)?,
        other => return Err(format!("{other:?}").into()),
    }
    // Every other chunk ran before the error came back.
    let stats = pool.stats();
    ensure(
        stats.completed == 99 && stats.failed == 1,
        format!("{stats:?}"),
    )?;
    ensure(stats.queued == 0 && stats.busy == 0, format!("{stats:?}"))?;
    ensure(
        pool.map(square, [1, 2, 3]).await? == [1, 4, 9],
        "usable after",
    )?;
    ensure(
        pool.stats().restarted == 0,
        "a panic does not kill the worker",
    )?;
    Ok(())
}

async fn a_result_that_fails_to_encode_is_reported() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let before = pool.apply(pid, ()).await?;
    match pool.apply(unsendable, ()).await {
        Err(mp::TaskError::EncodeResult(msg)) => ensure(msg.contains("Unsendable refuses"), msg)?,
        other => return Err(format!("{other:?}").into()),
    }
    ensure(
        pool.apply(pid, ()).await? == before,
        "the same worker goes on",
    )?;
    Ok(())
}

async fn close_join_and_terminate() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    ensure(
        matches!(pool.join().await, Err(mp::StillRunning)),
        "join before close",
    )?;
    let queued: Vec<_> = (0..6).map(|_| pool.apply_async(sleep_ms, 50)).collect();
    pool.close();
    ensure(
        matches!(pool.apply(square, 1).await, Err(mp::TaskError::Closed)),
        "apply after close",
    )?;
    ensure(
        matches!(pool.map(square, [1]).await, Err(mp::TaskError::Closed)),
        "map after close",
    )?;
    pool.join().await?;
    for r in queued {
        ensure(r.ready(), "join waited for every queued task")?;
        ensure(r.await? == 50, "value")?;
    }
    ensure(pool.stats().workers == 0, "the workers exited")?;

    let pool = mp::Pool::new(2).await?;
    let running = pool.apply_async(sleep_ms, 10_000);
    let many: Vec<_> = (0..10_000).map(|_| pool.apply_async(sleep_ms, 1)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    pool.terminate().await;
    ensure(
        start.elapsed() < Duration::from_secs(2),
        format!("terminate took {:?}", start.elapsed()),
    )?;
    ensure(
        matches!(running.await, Err(mp::TaskError::Cancelled)),
        "the running task",
    )?;
    let mut cancelled = 0;
    for r in many {
        match r.await {
            Err(mp::TaskError::Cancelled) => cancelled += 1,
            Ok(1) => {}
            other => return Err(format!("{other:?}").into()),
        }
    }
    ensure(cancelled > 9_000, format!("only {cancelled} cancelled"))?;
    ensure(pool.stats().workers == 0, "workers gone")?;
    ensure(
        matches!(pool.apply(square, 1).await, Err(mp::TaskError::Closed)),
        "apply after terminate",
    )?;
    pool.join().await?;
    Ok(())
}

fn touch(path: String) {
    std::fs::write(path, b"ran").unwrap();
}

fn scratch(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("mp-pool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    path.to_string_lossy().into_owned()
}

async fn a_dropped_async_result_never_runs() -> Result<(), Failed> {
    let (dropped_path, kept_path) = (scratch("dropped"), scratch("kept"));
    let pool = mp::Pool::new(1).await?;
    // Fill the worker's window so the next tasks wait in the pool's queue.
    let busy: Vec<_> = (0..6).map(|_| pool.apply_async(sleep_ms, 100)).collect();
    let dropped = pool.apply_async(touch, dropped_path.clone());
    let kept = pool.apply_async(touch, kept_path.clone());
    drop(dropped);
    for r in busy {
        r.await?;
    }
    kept.await?;
    ensure(
        std::path::Path::new(&kept_path).exists(),
        "the kept task ran",
    )?;
    ensure(
        !std::path::Path::new(&dropped_path).exists(),
        "the dropped task never ran",
    )?;
    Ok(())
}

fn init_panics(dir: String) {
    std::fs::write(format!("{dir}/{}", std::process::id()), b"").unwrap();
    panic!("no config file");
}

fn init_ok(_: ()) {}

async fn a_failing_initializer_fails_build() -> Result<(), Failed> {
    let dir = scratch("init");
    std::fs::create_dir_all(&dir)?;
    let start = Instant::now();
    let built = mp::Pool::builder()
        .processes(3)
        .initializer(init_panics, dir.clone())
        .build()
        .await;
    match built {
        Err(mp::BuildError::Initializer(msg)) => ensure(msg.contains("no config file"), &msg)?,
        other => return Err(format!("{other:?}").into()),
    }
    ensure(start.elapsed() < Duration::from_secs(10), "no restart loop")?;
    // Every worker that ran the initializer is gone, reaped (not a zombie).
    for entry in std::fs::read_dir(&dir)? {
        let pid: u32 = entry?.file_name().to_string_lossy().parse()?;
        ensure(common::is_gone(pid), format!("worker {pid} not reaped"))?;
    }
    let pool = mp::Pool::builder()
        .processes(2)
        .initializer(init_ok, ())
        .build()
        .await?;
    ensure(pool.apply(square, 5).await? == 25, "a working initializer")?;
    Ok(())
}

/// Records its pid; the third worker to get here panics, the others
/// succeed.
fn init_third_fails(dir: String) {
    std::fs::write(format!("{dir}/pid-{}", std::process::id()), b"").unwrap();
    for k in 0.. {
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(format!("{dir}/slot-{k}"))
            .is_ok();
        if claimed {
            assert!(k != 2, "the third worker fails");
            return;
        }
    }
}

async fn a_failing_kth_worker_fails_build_and_the_others_are_reaped() -> Result<(), Failed> {
    let dir = scratch("kth");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let built = mp::Pool::builder()
        .processes(4)
        .initializer(init_third_fails, dir.clone())
        .build()
        .await;
    match built {
        Err(mp::BuildError::Initializer(msg)) => {
            ensure(msg.contains("the third worker fails"), &msg)?
        }
        other => return Err(format!("{other:?}").into()),
    }
    let pids: Vec<u32> = std::fs::read_dir(&dir)?
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_prefix("pid-")?.parse().ok()
        })
        .collect();
    ensure(pids.len() >= 3, format!("{} workers started", pids.len()))?;
    // The workers whose initializer succeeded are terminated and reaped
    // too, before build returns.
    for pid in pids {
        ensure(common::is_gone(pid), format!("worker {pid} not reaped"))?;
    }
    Ok(())
}

/// Succeeds until the file at `path` exists.
fn init_until(path: String) {
    assert!(!std::path::Path::new(&path).exists(), "the switch is on");
}

fn exit_now(_: ()) -> u64 {
    std::process::exit(3)
}

async fn a_worker_that_cannot_be_replaced_fails_the_queue() -> Result<(), Failed> {
    let switch = scratch("switch");
    let pool = mp::Pool::builder()
        .processes(1)
        .initializer(init_until, switch.clone())
        .build()
        .await?;
    std::fs::write(&switch, b"")?;
    let doomed = pool.apply_async(exit_now, ());
    let behind = pool.apply_async(square, 2);
    ensure(
        matches!(doomed.await, Err(mp::TaskError::WorkerDied { exitcode: 3 })),
        "the task that exited",
    )?;
    match behind.await {
        Err(mp::TaskError::Initializer(msg)) => ensure(msg.contains("the switch is on"), msg)?,
        other => return Err(format!("{other:?}").into()),
    }
    let later = pool.apply(square, 2).await;
    ensure(
        matches!(later, Err(mp::TaskError::Closed)),
        format!("{later:?}"),
    )?;
    pool.join().await?;
    Ok(())
}

async fn max_tasks_per_child_retires_workers() -> Result<(), Failed> {
    ensure(
        mp::Pool::builder()
            .max_tasks_per_child(0)
            .build()
            .await
            .is_err(),
        "k = 0 is an error",
    )?;
    let pool = mp::Pool::builder()
        .processes(1)
        .max_tasks_per_child(3)
        .build()
        .await?;
    let mut pids = Vec::new();
    for _ in 0..9 {
        pids.push(pool.apply(pid, ()).await?);
    }
    pids.dedup();
    ensure(pids.len() == 3, format!("pids {pids:?}"))?;
    ensure(pool.stats().restarted >= 2, format!("{:?}", pool.stats()))?;
    Ok(())
}

async fn dropping_the_last_handle_terminates() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    let other = pool.clone();
    let worker = pool.apply(pid, ()).await?;
    let slow = pool.apply_async(sleep_ms, 10_000);
    drop(pool);
    ensure(other.apply(square, 2).await? == 4, "a clone keeps it alive")?;
    drop(other);
    let got = slow.await;
    ensure(
        matches!(got, Err(mp::TaskError::Cancelled)),
        format!("{got:?}"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::is_running(worker) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure(!common::is_running(worker), "the worker is gone")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "results_come_in_input_order",
            T,
            results_come_in_input_order,
        ),
        case(
            "a_failing_item_fails_map_after_the_rest",
            T,
            a_failing_item_fails_map_after_the_rest,
        ),
        case(
            "a_result_that_fails_to_encode_is_reported",
            T,
            a_result_that_fails_to_encode_is_reported,
        ),
        case("close_join_and_terminate", T, close_join_and_terminate),
        case(
            "a_failing_kth_worker_fails_build_and_the_others_are_reaped",
            T,
            a_failing_kth_worker_fails_build_and_the_others_are_reaped,
        ),
        case(
            "a_dropped_async_result_never_runs",
            T,
            a_dropped_async_result_never_runs,
        ),
        case(
            "a_failing_initializer_fails_build",
            T,
            a_failing_initializer_fails_build,
        ),
        case(
            "a_worker_that_cannot_be_replaced_fails_the_queue",
            T,
            a_worker_that_cannot_be_replaced_fails_the_queue,
        ),
        case(
            "max_tasks_per_child_retires_workers",
            T,
            max_tasks_per_child_retires_workers,
        ),
        case(
            "dropping_the_last_handle_terminates",
            T,
            dropping_the_last_handle_terminates,
        ),
    ]
}
