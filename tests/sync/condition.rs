//! `Condition` across processes: exact notification counts, timeouts.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn about(took: Duration, t: Duration) -> bool {
    took >= t.mul_f64(0.9) && took < t * 10
}

/// The shared parts of a notification test: the condition, a count of
/// parties about to wait (released under the lock, so once the notifier
/// holds the lock with the count full, every party is inside `wait`), and
/// a count of parties woken.
type Party = (mp::Condition, mp::Semaphore, mp::Semaphore);

async fn party_async((cond, sleeping, woken): Party) {
    let guard = cond.lock().await.expect("not poisoned");
    sleeping.release().expect("count");
    let guard = cond.wait(guard).await.expect("not poisoned");
    woken.release().expect("count");
    drop(guard);
}

fn party_sync((cond, sleeping, woken): Party) {
    let guard = cond.blocking_lock().expect("not poisoned");
    sleeping.release().expect("count");
    let guard = cond.blocking_wait(guard).expect("not poisoned");
    woken.release().expect("count");
    drop(guard);
}

/// Lets the woken parties report, then reads how many did.
async fn settle(woken: &mp::Semaphore) -> u32 {
    tokio::time::sleep(Duration::from_millis(400)).await;
    woken.value()
}

async fn notify_wakes_exactly_as_many_as_asked() -> Result<(), Failed> {
    let cond = mp::Condition::new()?;
    let sleeping = mp::Semaphore::new(0)?;
    let woken = mp::Semaphore::new(0)?;
    let mut ps = Vec::new();
    for i in 0..6 {
        let args = (cond.clone(), sleeping.clone(), woken.clone());
        let p = if i % 2 == 0 {
            mp::Process::new(party_async, args)
        } else {
            mp::Process::new(party_sync, args)
        };
        p.start().await?;
        ps.push(p);
    }
    for _ in 0..6 {
        sleeping.acquire().await.forget();
    }
    {
        let _g = cond.lock().await?;
        ensure(
            cond.waiters() == 6,
            format!("6 waiting, saw {}", cond.waiters()),
        )?;
        ensure(cond.notify_one() == 1, "notify_one picks one")?;
    }
    let n = settle(&woken).await;
    ensure(n == 1, format!("notify_one woke {n}"))?;
    {
        let _g = cond.lock().await?;
        ensure(cond.notify(2) == 2, "notify(2) picks two")?;
    }
    let n = settle(&woken).await;
    ensure(n == 3, format!("after notify(2): {n} woken in all"))?;
    {
        let _g = cond.lock().await?;
        ensure(cond.notify_all() == 3, "notify_all picks the rest")?;
    }
    for p in ps {
        p.join().await?;
    }
    ensure(
        woken.value() == 6,
        format!("{} woken in all", woken.value()),
    )?;
    ensure(cond.notify_all() == 0, "nobody left to wake")?;
    Ok(())
}

fn wait_with_timeout_sync((cond, ms): (mp::Condition, u64)) -> (bool, u128, bool) {
    let guard = cond.blocking_lock().expect("not poisoned");
    let t0 = Instant::now();
    let (guard, r) = cond
        .blocking_wait_timeout(guard, Duration::from_millis(ms))
        .expect("not poisoned");
    let took = t0.elapsed().as_millis();
    let relocked = cond.as_lock().is_locked();
    drop(guard);
    (r.timed_out(), took, relocked)
}

async fn wait_with_timeout_async((cond, ms): (mp::Condition, u64)) -> (bool, u128, bool) {
    let guard = cond.lock().await.expect("not poisoned");
    let t0 = Instant::now();
    let (guard, r) = cond
        .wait_timeout(guard, Duration::from_millis(ms))
        .await
        .expect("not poisoned");
    let took = t0.elapsed().as_millis();
    let relocked = cond.as_lock().is_locked();
    drop(guard);
    (r.timed_out(), took, relocked)
}

async fn wait_timeout_times_out_after_about_t_with_the_lock_back() -> Result<(), Failed> {
    let cond = mp::Condition::new()?;
    // A notification given while nobody waits is lost.
    ensure(cond.notify_one() == 0, "nobody to notify")?;
    let a = mp::Process::new(wait_with_timeout_sync, (cond.clone(), 300));
    let b = mp::Process::new(wait_with_timeout_async, (cond.clone(), 300));
    a.start().await?;
    b.start().await?;
    for (timed_out, ms, relocked) in [a.join().await?, b.join().await?] {
        ensure(timed_out, "timed out")?;
        ensure(relocked, "holds the lock again")?;
        ensure(
            about(
                Duration::from_millis(u64::try_from(ms)?),
                Duration::from_millis(300),
            ),
            format!("after {ms} ms"),
        )?;
    }
    ensure(cond.waiters() == 0, "timed-out waiters are gone")?;
    // A notified waiter reports no timeout.
    let p = mp::Process::new(wait_with_timeout_async, (cond.clone(), 10_000));
    p.start().await?;
    let t0 = Instant::now();
    while cond.waiters() == 0 && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure(cond.notify_one() == 1, "one waiter")?;
    let (timed_out, ms, relocked) = p.join().await?;
    ensure(!timed_out && relocked, "notified")?;
    ensure(ms < 5000, format!("woken after {ms} ms"))?;
    Ok(())
}

async fn a_dropped_wait_passes_its_notification_on() -> Result<(), Failed> {
    let cond = mp::Condition::new()?;
    let sleeping = mp::Semaphore::new(0)?;
    let woken = mp::Semaphore::new(0)?;
    let p = mp::Process::new(party_async, (cond.clone(), sleeping.clone(), woken.clone()));
    p.start().await?;
    sleeping.acquire().await.forget();
    // A local waiter that gives up.
    let g = cond.lock().await?;
    let r = tokio::time::timeout(Duration::from_millis(100), cond.wait(g)).await;
    ensure(r.is_err(), "the local wait was cut short")?;
    ensure(
        cond.waiters() == 1,
        format!("the child still waits alone: {}", cond.waiters()),
    )?;
    {
        let _g = cond.lock().await?;
        ensure(cond.notify_one() == 1, "one picked")?;
    }
    p.join().await?;
    ensure(woken.value() == 1, "the child was the one woken")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "notify_wakes_exactly_as_many_as_asked",
            T,
            notify_wakes_exactly_as_many_as_asked,
        ),
        case(
            "wait_timeout_times_out_after_about_t_with_the_lock_back",
            T,
            wait_timeout_times_out_after_about_t_with_the_lock_back,
        ),
        case(
            "a_dropped_wait_passes_its_notification_on",
            T,
            a_dropped_wait_passes_its_notification_on,
        ),
    ]
}
