//! `Barrier` across processes: indexes, the action, reuse for many rounds,
//! breaking by timeout and abort, repair by reset.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(120);

fn about(took: Duration, t: Duration) -> bool {
    took >= t.mul_f64(0.9) && took < t * 10
}

/// Where the action counts rounds: each process that takes part sets it
/// from its arguments, and the action, a plain `fn()`, finds it there.
static ROUNDS: OnceLock<mp::Semaphore> = OnceLock::new();

fn count_round() {
    ROUNDS
        .get()
        .expect("the party set the counter")
        .release()
        .expect("room to count");
}

const ROUNDS_N: u32 = 1000;

/// Waits `ROUNDS_N` times; returns its index in each round and whether the
/// action had always run (for that round) by the time the party was
/// released.
fn party_sync((barrier, rounds): (mp::Barrier, mp::Semaphore)) -> (Vec<u8>, bool) {
    let _ = ROUNDS.set(rounds.clone());
    let mut indexes = Vec::with_capacity(ROUNDS_N as usize);
    let mut action_first = true;
    for round in 0..ROUNDS_N {
        let i = barrier.blocking_wait().expect("not broken");
        indexes.push(u8::try_from(i).expect("a few parties"));
        action_first &= rounds.value() > round;
    }
    (indexes, action_first)
}

async fn party_async((barrier, rounds): (mp::Barrier, mp::Semaphore)) -> (Vec<u8>, bool) {
    let _ = ROUNDS.set(rounds.clone());
    let mut indexes = Vec::with_capacity(ROUNDS_N as usize);
    let mut action_first = true;
    for round in 0..ROUNDS_N {
        let i = barrier.wait().await.expect("not broken");
        indexes.push(u8::try_from(i).expect("a few parties"));
        action_first &= rounds.value() > round;
    }
    (indexes, action_first)
}

async fn five_processes_meet_a_thousand_times() -> Result<(), Failed> {
    let rounds = mp::Semaphore::new(0)?;
    let barrier = mp::Barrier::with_action(5, count_round)?;
    let t0 = Instant::now();
    let mut ps = Vec::new();
    for i in 0..5 {
        let args = (barrier.clone(), rounds.clone());
        let p = if i < 3 {
            mp::Process::new(party_sync, args)
        } else {
            mp::Process::new(party_async, args)
        };
        p.start().await?;
        ps.push(p);
    }
    let mut all = Vec::new();
    for p in ps {
        let (indexes, action_first) = p.join().await?;
        ensure(
            action_first,
            "the action ran before the parties were released",
        )?;
        ensure(indexes.len() == ROUNDS_N as usize, "every round")?;
        all.push(indexes);
    }
    for round in 0..ROUNDS_N as usize {
        let mut seen: Vec<u8> = all.iter().map(|v| v[round]).collect();
        seen.sort_unstable();
        ensure(
            seen == [0, 1, 2, 3, 4],
            format!("round {round}: indexes {seen:?}"),
        )?;
    }
    ensure(
        rounds.value() == ROUNDS_N,
        format!(
            "the action ran {} times in {ROUNDS_N} rounds",
            rounds.value()
        ),
    )?;
    ensure(!barrier.is_broken(), "still whole")?;
    eprintln!("{ROUNDS_N} rounds of 5 processes in {:?}", t0.elapsed());
    Ok(())
}

fn wait_once(barrier: mp::Barrier) -> Result<usize, String> {
    barrier.blocking_wait().map_err(|e| e.to_string())
}

async fn wait_once_async(barrier: mp::Barrier) -> Result<usize, String> {
    barrier.wait().await.map_err(|e| e.to_string())
}

async fn until_waiting(barrier: &mp::Barrier, n: u32) -> Result<(), Failed> {
    let t0 = Instant::now();
    while barrier.n_waiting() < n {
        ensure(t0.elapsed() < Duration::from_secs(10), "parties arrive")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn a_timeout_breaks_it_for_everyone_and_reset_repairs_it() -> Result<(), Failed> {
    let barrier = mp::Barrier::new(4)?;
    let a = mp::Process::new(wait_once, barrier.clone());
    let b = mp::Process::new(wait_once_async, barrier.clone());
    a.start().await?;
    b.start().await?;
    until_waiting(&barrier, 2).await?;
    let t0 = Instant::now();
    let r = barrier.wait_timeout(Duration::from_millis(300)).await;
    ensure(r.is_err(), "the round did not fill")?;
    ensure(
        about(t0.elapsed(), Duration::from_millis(300)),
        format!("broke after {:?}", t0.elapsed()),
    )?;
    for p in [a, b] {
        let r = p.join().await?;
        ensure(
            r.as_ref().is_err_and(|e| e.contains("broken")),
            format!("a waiter got {r:?}"),
        )?;
    }
    ensure(barrier.is_broken(), "broken")?;
    ensure(
        matches!(barrier.try_wait_now(), Err(mp::sync::BrokenBarrier { .. })),
        "a new arrival fails at once",
    )?;
    barrier.reset();
    ensure(!barrier.is_broken(), "repaired")?;
    let mut ps = Vec::new();
    for _ in 0..3 {
        let p = mp::Process::new(wait_once, barrier.clone());
        p.start().await?;
        ps.push(p);
    }
    let mut indexes = vec![barrier.wait().await?];
    for p in ps {
        indexes.push(p.join().await?.map_err(Failed::from)?);
    }
    indexes.sort_unstable();
    ensure(
        indexes == [0, 1, 2, 3],
        format!("a full round after reset: {indexes:?}"),
    )
}

trait TryNow {
    fn try_wait_now(&self) -> Result<usize, mp::sync::BrokenBarrier>;
}

impl TryNow for mp::Barrier {
    /// An arrival that gives up at once: fails fast on a broken barrier.
    fn try_wait_now(&self) -> Result<usize, mp::sync::BrokenBarrier> {
        self.blocking_wait_timeout(Duration::from_millis(1))
    }
}

async fn abort_breaks_waiting_parties() -> Result<(), Failed> {
    let barrier = mp::Barrier::new(3)?;
    let a = mp::Process::new(wait_once, barrier.clone());
    let b = mp::Process::new(wait_once_async, barrier.clone());
    a.start().await?;
    b.start().await?;
    until_waiting(&barrier, 2).await?;
    barrier.abort();
    for p in [a, b] {
        ensure(p.join().await?.is_err(), "aborted")?;
    }
    ensure(barrier.is_broken(), "broken until reset")?;
    barrier.reset();
    ensure(!barrier.is_broken() && barrier.n_waiting() == 0, "reset")
}

async fn reset_while_parties_wait_breaks_their_round() -> Result<(), Failed> {
    let barrier = mp::Barrier::new(3)?;
    let a = mp::Process::new(wait_once, barrier.clone());
    a.start().await?;
    until_waiting(&barrier, 1).await?;
    barrier.reset();
    let r = a.join().await?;
    ensure(
        r.is_err(),
        format!("the waiter of the reset round got {r:?}"),
    )?;
    ensure(!barrier.is_broken(), "not broken after the reset")?;
    // The barrier works again with a fresh round.
    let b = mp::Process::new(wait_once, barrier.clone());
    let c = mp::Process::new(wait_once_async, barrier.clone());
    b.start().await?;
    c.start().await?;
    let mine = barrier.wait().await?;
    let mut indexes = vec![
        mine,
        b.join().await?.map_err(Failed::from)?,
        c.join().await?.map_err(Failed::from)?,
    ];
    indexes.sort_unstable();
    ensure(indexes == [0, 1, 2], format!("{indexes:?}"))
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "five_processes_meet_a_thousand_times",
            T,
            five_processes_meet_a_thousand_times,
        ),
        case(
            "a_timeout_breaks_it_for_everyone_and_reset_repairs_it",
            T,
            a_timeout_breaks_it_for_everyone_and_reset_repairs_it,
        ),
        case(
            "abort_breaks_waiting_parties",
            T,
            abort_breaks_waiting_parties,
        ),
        case(
            "reset_while_parties_wait_breaks_their_round",
            T,
            reset_while_parties_wait_breaks_their_round,
        ),
    ]
}
