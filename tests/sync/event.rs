//! `Event` across processes.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn about(took: Duration, t: Duration) -> bool {
    took >= t.mul_f64(0.9) && took < t * 10
}

async fn wait_async((event, ready): (mp::Event, mp::Semaphore)) -> u128 {
    let t0 = Instant::now();
    ready.release().expect("ready");
    event.wait().await;
    t0.elapsed().as_millis()
}

fn wait_sync((event, ready): (mp::Event, mp::Semaphore)) -> u128 {
    let t0 = Instant::now();
    ready.release().expect("ready");
    event.blocking_wait();
    t0.elapsed().as_millis()
}

async fn a_set_wakes_waiters_in_every_process() -> Result<(), Failed> {
    let event = mp::Event::new()?;
    let ready = mp::Semaphore::new(0)?;
    let mut ps = Vec::new();
    for i in 0..4 {
        let args = (event.clone(), ready.clone());
        let p = if i % 2 == 0 {
            mp::Process::new(wait_async, args)
        } else {
            mp::Process::new(wait_sync, args)
        };
        p.start().await?;
        ps.push(p);
    }
    for _ in 0..4 {
        ready.acquire().await.forget();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &ps {
        ensure(p.is_alive(), "waits until the set")?;
    }
    let set_at = Instant::now();
    event.set();
    for p in ps {
        let waited = p.join().await?;
        ensure(waited >= 250, format!("waited {waited} ms"))?;
    }
    ensure(
        set_at.elapsed() < Duration::from_secs(3),
        format!("all joined {:?} after the set", set_at.elapsed()),
    )?;
    Ok(())
}

fn time_out_sync((event, ms): (mp::Event, u64)) -> (bool, u128) {
    let t0 = Instant::now();
    let set = event.blocking_wait_timeout(Duration::from_millis(ms));
    (set, t0.elapsed().as_millis())
}

async fn time_out_async((event, ms): (mp::Event, u64)) -> (bool, u128) {
    let t0 = Instant::now();
    let set = event.wait_timeout(Duration::from_millis(ms)).await;
    (set, t0.elapsed().as_millis())
}

async fn wait_timeout_is_false_after_about_t() -> Result<(), Failed> {
    let event = mp::Event::new()?;
    let a = mp::Process::new(time_out_sync, (event.clone(), 300));
    let b = mp::Process::new(time_out_async, (event.clone(), 300));
    a.start().await?;
    b.start().await?;
    for (set, ms) in [a.join().await?, b.join().await?] {
        ensure(!set, "not set")?;
        ensure(
            about(
                Duration::from_millis(u64::try_from(ms)?),
                Duration::from_millis(300),
            ),
            format!("timed out after {ms} ms"),
        )?;
    }
    let t0 = Instant::now();
    ensure(
        !event.wait_timeout(Duration::from_millis(200)).await,
        "not set here either",
    )?;
    ensure(
        about(t0.elapsed(), Duration::from_millis(200)),
        format!("{:?}", t0.elapsed()),
    )?;
    event.set();
    let p = mp::Process::new(time_out_async, (event.clone(), 5000));
    p.start().await?;
    let (set, ms) = p.join().await?;
    ensure(
        set && ms < 1000,
        format!("a set event returns at once: {set}, {ms} ms"),
    )?;
    Ok(())
}

fn flip(event: mp::Event) -> (bool, bool) {
    let before = event.is_set();
    event.set();
    (before, event.is_set())
}

async fn set_clear_and_is_set_are_shared() -> Result<(), Failed> {
    let event = mp::Event::new()?;
    ensure(!event.is_set(), "starts clear")?;
    let p = mp::Process::new(flip, event.clone());
    p.start().await?;
    ensure(
        p.join().await? == (false, true),
        "the child saw it clear, then set",
    )?;
    ensure(event.is_set(), "set by the child")?;
    event.clear();
    let p = mp::Process::new(flip, event.clone());
    p.start().await?;
    ensure(!p.join().await?.0, "the child saw the clear")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_set_wakes_waiters_in_every_process",
            T,
            a_set_wakes_waiters_in_every_process,
        ),
        case(
            "wait_timeout_is_false_after_about_t",
            T,
            wait_timeout_is_false_after_about_t,
        ),
        case(
            "set_clear_and_is_set_are_shared",
            T,
            set_clear_and_is_set_are_shared,
        ),
    ]
}
