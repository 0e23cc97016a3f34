//! `Semaphore` and `BoundedSemaphore` across processes.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn about(took: Duration, t: Duration) -> bool {
    took >= t.mul_f64(0.9) && took < t * 10
}

/// Holds a slot for a while; `inside` counts the holders (its value is
/// how many are inside). Returns the most it saw inside at once.
fn use_slot_sync((slots, inside): (mp::Semaphore, mp::Semaphore)) -> u32 {
    let _permit = slots.blocking_acquire();
    inside.release().expect("count in");
    let seen = inside.value();
    std::thread::sleep(Duration::from_millis(100));
    inside.try_acquire().expect("count out").forget();
    seen
}

async fn use_slot_async((slots, inside): (mp::Semaphore, mp::Semaphore)) -> u32 {
    let _permit = slots.acquire().await;
    inside.release().expect("count in");
    let seen = inside.value();
    tokio::time::sleep(Duration::from_millis(100)).await;
    inside.try_acquire().expect("count out").forget();
    seen
}

async fn at_most_n_processes_hold_a_permit() -> Result<(), Failed> {
    let slots = mp::Semaphore::new(2)?;
    let inside = mp::Semaphore::new(0)?;
    let t0 = Instant::now();
    let mut ps = Vec::new();
    for i in 0..6 {
        let args = (slots.clone(), inside.clone());
        let p = if i % 2 == 0 {
            mp::Process::new(use_slot_sync, args)
        } else {
            mp::Process::new(use_slot_async, args)
        };
        p.start().await?;
        ps.push(p);
    }
    let mut most = 0;
    for p in ps {
        most = most.max(p.join().await?);
    }
    ensure(most <= 2, format!("{most} inside at once with 2 permits"))?;
    ensure(
        t0.elapsed() >= Duration::from_millis(250),
        format!(
            "6 holders of 100 ms through 2 slots took {:?}",
            t0.elapsed()
        ),
    )?;
    ensure(
        slots.value() == 2,
        format!("every permit back: {}", slots.value()),
    )?;
    Ok(())
}

fn try_then_time_out((sem, ms): (mp::Semaphore, u64)) -> (bool, bool, u128) {
    let tried = sem.try_acquire().is_some();
    let t0 = Instant::now();
    let timed = sem
        .blocking_acquire_timeout(Duration::from_millis(ms))
        .is_some();
    (tried, timed, t0.elapsed().as_millis())
}

async fn async_time_out((sem, ms): (mp::Semaphore, u64)) -> (bool, u128) {
    let t0 = Instant::now();
    let got = sem
        .acquire_timeout(Duration::from_millis(ms))
        .await
        .is_some();
    (got, t0.elapsed().as_millis())
}

async fn try_acquire_and_timeouts_with_no_permit() -> Result<(), Failed> {
    let sem = mp::Semaphore::new(0)?;
    ensure(sem.try_acquire().is_none(), "no permit here")?;
    let p = mp::Process::new(try_then_time_out, (sem.clone(), 300));
    p.start().await?;
    let (tried, timed, ms) = p.join().await?;
    ensure(!tried && !timed, "no permit in the child")?;
    ensure(
        about(
            Duration::from_millis(u64::try_from(ms)?),
            Duration::from_millis(300),
        ),
        format!("sync timeout after {ms} ms"),
    )?;
    let p = mp::Process::new(async_time_out, (sem.clone(), 300));
    p.start().await?;
    let (got, ms) = p.join().await?;
    ensure(!got, "no permit for the async child")?;
    ensure(
        about(
            Duration::from_millis(u64::try_from(ms)?),
            Duration::from_millis(300),
        ),
        format!("async timeout after {ms} ms"),
    )?;
    Ok(())
}

async fn wait_for_permit(sem: mp::Semaphore) -> u128 {
    let t0 = Instant::now();
    sem.acquire().await.forget();
    t0.elapsed().as_millis()
}

fn wait_for_permit_sync(sem: mp::Semaphore) -> u128 {
    let t0 = Instant::now();
    sem.blocking_acquire().forget();
    t0.elapsed().as_millis()
}

async fn a_release_in_one_process_wakes_a_waiter_in_another() -> Result<(), Failed> {
    let sem = mp::Semaphore::new(0)?;
    let a = mp::Process::new(wait_for_permit, sem.clone());
    let b = mp::Process::new(wait_for_permit_sync, sem.clone());
    a.start().await?;
    b.start().await?;
    // Long enough for both to be waiting for a while; a start under Wine
    // can take longer than the 250 ms this checks.
    let settle = if cfg!(windows) { 1500 } else { 300 };
    tokio::time::sleep(Duration::from_millis(settle)).await;
    ensure(a.is_alive() && b.is_alive(), "both wait")?;
    sem.release()?;
    sem.release()?;
    let (wa, wb) = (a.join().await?, b.join().await?);
    ensure(wa >= 250 && wb >= 250, format!("waited {wa} and {wb} ms"))?;
    ensure(sem.value() == 0, "both permits taken")?;
    // A permit given back on drop in a child shows here.
    let p = mp::Process::new(take_and_give_back, sem.clone());
    sem.release()?;
    p.start().await?;
    ensure(p.join().await? == 0, "the child held the only permit")?;
    ensure(sem.value() == 1, "given back on drop")?;
    Ok(())
}

fn take_and_give_back(sem: mp::Semaphore) -> u32 {
    let permit = sem.blocking_acquire();
    let during = sem.value();
    drop(permit);
    during
}

fn over_release(sem: mp::BoundedSemaphore) -> (bool, String, u32) {
    let permit = sem.blocking_acquire();
    permit.forget();
    let first = sem.release().is_ok();
    let err = sem
        .release()
        .map_or_else(|e| e.to_string(), |()| "ok".to_owned());
    (first, err, sem.value())
}

async fn a_bounded_semaphore_refuses_to_pass_its_bound() -> Result<(), Failed> {
    let sem = mp::BoundedSemaphore::new(2)?;
    ensure(sem.max_value() == 2, "bound")?;
    let err = sem.release().expect_err("already at the bound");
    ensure(
        err.to_string().contains("released too many times"),
        err.to_string(),
    )?;
    ensure(sem.value() == 2, "unchanged")?;
    let p = mp::Process::new(over_release, sem.clone());
    p.start().await?;
    let (first, err, value) = p.join().await?;
    ensure(first, "one release after one acquire is fine")?;
    ensure(err.contains("released too many times"), err)?;
    ensure(value == 2, format!("value {value}"))?;
    // An unbounded semaphore goes past its initial value.
    let open = mp::Semaphore::new(1)?;
    open.release()?;
    ensure(open.value() == 2, "unbounded")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "at_most_n_processes_hold_a_permit",
            T,
            at_most_n_processes_hold_a_permit,
        ),
        case(
            "try_acquire_and_timeouts_with_no_permit",
            T,
            try_acquire_and_timeouts_with_no_permit,
        ),
        case(
            "a_release_in_one_process_wakes_a_waiter_in_another",
            T,
            a_release_in_one_process_wakes_a_waiter_in_another,
        ),
        case(
            "a_bounded_semaphore_refuses_to_pass_its_bound",
            T,
            a_bounded_semaphore_refuses_to_pass_its_bound,
        ),
    ]
}
