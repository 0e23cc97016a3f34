//! Producers on a `Queue` are SIGKILLed at random while consumers take
//! items. Consumers never wait past their timeouts, and every item whose
//! `put` returned before its producer was killed is delivered: each
//! producer's items arrive as an unbroken run 0, 1, 2, ... with no gap and
//! no duplicate. Repeated for a bounded time.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{case, ensure};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

/// Puts (who, 0), (who, 1), ... until killed.
fn produce((q, who): (mp::Queue<(u32, u32)>, u32)) {
    let mut seq = 0;
    loop {
        q.blocking_put((who, seq)).expect("put");
        seq += 1;
    }
}

/// A little pseudo-randomness from the clock, enough to vary kill times.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms.max(1))
}

async fn producers_killed_at_random_lose_nothing() -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(6);
    // A small buffer, so producers also block for room while being killed.
    let q: mp::Queue<(u32, u32)> = mp::Queue::with_buffer(0, 64 * 1024)?;
    let mut next: HashMap<u32, u32> = HashMap::new();
    let mut who = 0;
    let mut kills = 0;
    while Instant::now() < deadline {
        // Three producers at a time, each killed after a random while.
        let mut ps = Vec::new();
        for _ in 0..3 {
            let p = mp::Process::new(produce, (q.clone(), who));
            p.start().await?;
            ps.push((who, p));
            who += 1;
        }
        for (_, p) in &ps {
            // Take some items meanwhile, so the kills land mid-put.
            let until = Instant::now() + jitter(40);
            while Instant::now() < until {
                if let Ok((w, s)) = q.get_timeout(Duration::from_millis(5)).await {
                    let want = next.entry(w).or_insert(0);
                    ensure(
                        s == *want,
                        format!("producer {w}: got {s}, expected {want}"),
                    )?;
                    *want += 1;
                }
            }
            p.kill()?;
            kills += 1;
        }
        for (_, p) in &ps {
            p.sentinel().await;
        }
        // Drain: everything put must come out, in order, and a get on the
        // empty queue must keep its timeout.
        loop {
            let t0 = Instant::now();
            match q.get_timeout(Duration::from_millis(200)).await {
                Ok((w, s)) => {
                    let want = next.entry(w).or_insert(0);
                    ensure(
                        s == *want,
                        format!("producer {w}: got {s}, expected {want}"),
                    )?;
                    *want += 1;
                }
                Err(mp::GetError::Empty) => {
                    let took = t0.elapsed();
                    ensure(
                        took < Duration::from_secs(2),
                        format!("get_timeout took {took:?}"),
                    )?;
                    break;
                }
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }
    let total: u32 = next.values().sum();
    println!("{kills} producers killed, {total} items delivered in order");
    ensure(kills >= 6 && total > 0, "the loop ran")?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    common::run(
        guard,
        vec![case(
            "producers_killed_at_random_lose_nothing",
            Duration::from_secs(60),
            producers_killed_at_random_lose_nothing,
        )],
    )
}
