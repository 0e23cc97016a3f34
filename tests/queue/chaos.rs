//! Producers on a `Queue` are SIGKILLed at random while consumers take
//! items. Consumers never wait past their timeouts, and every item whose
//! `put` returned before its producer was killed is delivered: each
//! producer's items arrive as an unbroken run 0, 1, 2, ... with no gap and
//! no duplicate. Repeated for a bounded time.
//!
//! Then producers and consumers alike, each a child process, are
//! SIGKILLed at random. Producers acknowledge each put once it returned,
//! consumers report each item once their get returned, both over their
//! own pipes. No item is delivered twice, no consumer's get overstays its
//! timeout, each producer's items reach each consumer in order, and every
//! acknowledged item is delivered, save at most one per consumer killed
//! (the item it had taken but not yet reported).
// Some cases are Unix only (see `cases`): on Windows their helpers go unused.
#![cfg_attr(windows, allow(dead_code, unused_imports))]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use libtest_mimic::Failed;
use serde_bytes::ByteBuf;
use tokio_multiprocessing as mp;

#[cfg(unix)]
use crate::common::exhaust_descriptors;
use crate::common::{Case, case, ensure};

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

/// Puts (who, 0), (who, 1), ... until killed, acknowledging each sequence
/// number on `acks` once its put returned.
fn produce_acked((q, who, acks): (mp::Queue<(u32, u32)>, u32, mp::Sender<u32>)) {
    let mut seq = 0;
    loop {
        q.blocking_put((who, seq)).expect("put");
        acks.blocking_send(&seq).expect("acknowledge");
        seq += 1;
    }
}

/// A get longer than this past its timeout counts as a hang.
const OVERDUE: Duration = Duration::from_secs(2);
/// A consumer's get timeout.
const GET_TIMEOUT: Duration = Duration::from_millis(20);

/// What a consumer tells the parent.
#[derive(Debug, Serialize, Deserialize)]
enum Report {
    /// An item, sent as soon as the get that took it returned.
    Got(u32, u32),
    /// A get that took this many milliseconds (over `GET_TIMEOUT + OVERDUE`).
    Overdue(u64),
}

/// Takes items until `stop` is set, reporting each one, and any get that
/// overstayed its timeout, on `out`.
fn consume((q, stop, out): (mp::Queue<(u32, u32)>, mp::Event, mp::Sender<Report>)) {
    while !stop.is_set() {
        let t0 = Instant::now();
        let got = q.blocking_get_timeout(GET_TIMEOUT);
        let took = t0.elapsed();
        if took > GET_TIMEOUT + OVERDUE {
            out.blocking_send(&Report::Overdue(
                u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            ))
            .expect("report");
        }
        match got {
            Ok((w, s)) => out.blocking_send(&Report::Got(w, s)).expect("report"),
            Err(mp::GetError::Empty) => {}
            Err(e) => panic!("get: {e}"),
        }
    }
}

/// Collects what a child sends until its end closes (a kill in the middle
/// of a message ends it too).
fn collect<T>(mut rx: mp::Receiver<T>) -> tokio::task::JoinHandle<Vec<T>>
where
    T: serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(m) = rx.recv().await {
            got.push(m);
        }
        got
    })
}

enum Role {
    Producer,
    Consumer(u32),
}

struct Child {
    role: Role,
    process: mp::Process<()>,
}

/// Starts producer `who` (its acknowledgements go to `acks`).
async fn start_producer(
    q: &mp::Queue<(u32, u32)>,
    who: u32,
    acks: &mut HashMap<u32, tokio::task::JoinHandle<Vec<u32>>>,
) -> Result<Child, Failed> {
    let (rx, tx) = mp::Pipe::oneway::<u32>()?;
    let process = mp::Process::new(produce_acked, (q.clone(), who, tx));
    process.start().await?;
    acks.insert(who, collect(rx));
    Ok(Child {
        role: Role::Producer,
        process,
    })
}

/// Starts consumer `who` (its reports go to `reports`).
async fn start_consumer(
    q: &mp::Queue<(u32, u32)>,
    stop: &mp::Event,
    who: u32,
    reports: &mut HashMap<u32, tokio::task::JoinHandle<Vec<Report>>>,
) -> Result<Child, Failed> {
    let (rx, tx) = mp::Pipe::oneway::<Report>()?;
    let process = mp::Process::new(consume, (q.clone(), stop.clone(), tx));
    process.start().await?;
    reports.insert(who, collect(rx));
    Ok(Child {
        role: Role::Consumer(who),
        process,
    })
}

async fn producers_and_consumers_killed_at_random() -> Result<(), Failed> {
    const PRODUCERS: usize = 3;
    const CONSUMERS: usize = 3;
    let run_for = Duration::from_secs(6);
    let q: mp::Queue<(u32, u32)> = mp::Queue::with_buffer(0, 64 * 1024)?;
    let stop = mp::Event::new()?;
    let mut acks = HashMap::new();
    let mut reports = HashMap::new();
    let (mut producers, mut consumers) = (0u32, 0u32);
    let mut live = Vec::new();
    for _ in 0..PRODUCERS {
        live.push(start_producer(&q, producers, &mut acks).await?);
        producers += 1;
    }
    for _ in 0..CONSUMERS {
        live.push(start_consumer(&q, &stop, consumers, &mut reports).await?);
        consumers += 1;
    }
    let (mut producers_killed, mut consumers_killed) = (0usize, 0usize);
    let started = Instant::now();
    while started.elapsed() < run_for {
        tokio::time::sleep(jitter(30)).await;
        // A random child dies and a new one of its kind takes its place.
        let victim = live.swap_remove(jitter(1_000).as_millis() as usize % live.len());
        victim.process.kill()?;
        victim.process.sentinel().await;
        match victim.role {
            Role::Producer => {
                producers_killed += 1;
                live.push(start_producer(&q, producers, &mut acks).await?);
                producers += 1;
            }
            Role::Consumer(_) => {
                consumers_killed += 1;
                live.push(start_consumer(&q, &stop, consumers, &mut reports).await?);
                consumers += 1;
            }
        }
    }
    // The producers left are killed too; the consumers stop of their own
    // accord, and what they left in the queue is drained here.
    for c in &live {
        if let Role::Producer = c.role {
            c.process.kill()?;
            producers_killed += 1;
        }
    }
    stop.set();
    for c in &live {
        if let Role::Consumer(who) = c.role {
            let exit = c.process.sentinel().await;
            ensure(
                exit.success(),
                format!("consumer {who} ended with {exit:?}"),
            )?;
        } else {
            c.process.sentinel().await;
        }
    }
    let mut drained = Vec::new();
    loop {
        let t0 = Instant::now();
        match q.get_timeout(Duration::from_millis(100)).await {
            Ok(item) => drained.push(item),
            Err(mp::GetError::Empty) => {
                let took = t0.elapsed();
                ensure(took < OVERDUE, format!("get_timeout took {took:?}"))?;
                break;
            }
            Err(e) => return Err(e.to_string().into()),
        }
    }

    // The queue's count agrees with its ring, and it still works.
    ensure(q.is_empty(), format!("drained, yet len() is {}", q.len()))?;
    q.put((u32::MAX, 0)).await.map_err(|e| e.to_string())?;
    ensure(q.len() == 1, format!("len() {} after one put", q.len()))?;
    ensure(
        q.get_timeout(Duration::from_secs(1)).await? == (u32::MAX, 0),
        "a put and a get after the chaos",
    )?;

    // What each producer acknowledged: 0, 1, 2, ... with no gap.
    let mut acked: HashMap<u32, u32> = HashMap::new();
    for (who, h) in acks {
        let seqs = h.await?;
        ensure(
            seqs.iter().zip(0..).all(|(s, i)| *s == i),
            format!("producer {who}: acknowledgements out of order"),
        )?;
        acked.insert(who, u32::try_from(seqs.len())?);
    }
    // What was delivered: by each consumer in order per producer, then by
    // the drain, after everything the consumers took, and once only.
    let mut delivered: HashMap<(u32, u32), u32> = HashMap::new();
    let mut last: HashMap<u32, u32> = HashMap::new();
    let mut overdue = Vec::new();
    for (who, h) in reports {
        let mut mine: HashMap<u32, u32> = HashMap::new();
        for r in h.await? {
            match r {
                Report::Got(w, s) => {
                    if let Some(prev) = mine.insert(w, s) {
                        ensure(
                            s > prev,
                            format!("consumer {who}: producer {w}'s {s} after {prev}"),
                        )?;
                    }
                    let l = last.entry(w).or_insert(s);
                    *l = (*l).max(s);
                    *delivered.entry((w, s)).or_insert(0) += 1;
                }
                Report::Overdue(ms) => overdue.push((who, ms)),
            }
        }
    }
    ensure(
        overdue.is_empty(),
        format!("gets past their timeout by over {OVERDUE:?}: {overdue:?}"),
    )?;
    let mut after: HashMap<u32, u32> = HashMap::new();
    for &(w, s) in &drained {
        let floor = after.get(&w).or(last.get(&w));
        ensure(
            floor.is_none_or(|&f| s > f),
            format!("drain: producer {w}'s {s} after {floor:?}"),
        )?;
        after.insert(w, s);
        *delivered.entry((w, s)).or_insert(0) += 1;
    }
    if let Some(((w, s), n)) = delivered.iter().find(|(_, n)| **n > 1) {
        return Err(format!("producer {w}'s {s} delivered {n} times").into());
    }
    // Nothing delivered that was never put: at most the one put each
    // producer had made but not acknowledged when it was killed.
    for &(w, s) in delivered.keys() {
        let a = acked.get(&w).copied().unwrap_or(0);
        ensure(
            s <= a,
            format!("producer {w}'s {s} delivered, {a} acknowledged"),
        )?;
    }
    let mut missing = Vec::new();
    for (&w, &a) in &acked {
        missing.extend(
            (0..a)
                .filter(|s| !delivered.contains_key(&(w, *s)))
                .map(|s| (w, s)),
        );
    }
    let total_acked: u32 = acked.values().sum();
    println!(
        "{producers_killed} producers and {consumers_killed} consumers killed in {:?}: \
         {total_acked} puts acknowledged, {} items delivered ({} by consumers, {} drained), \
         {} acknowledged items lost with a killed consumer",
        started.elapsed(),
        delivered.len(),
        delivered.len() - drained.len(),
        drained.len(),
        missing.len()
    );
    ensure(
        missing.len() <= consumers_killed,
        format!(
            "{} acknowledged items missing, {consumers_killed} consumers killed: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        ),
    )?;
    ensure(
        producers_killed >= 10 && consumers_killed >= 10 && total_acked > 0,
        "the loop ran",
    )?;
    Ok(())
}

#[cfg(unix)]
/// Takes items until the end marker (`u32::MAX`) or 3 s without one, and
/// returns their numbers. With `exhaust`, first uses up every descriptor,
/// so that `/proc` cannot be read while it waits for the queue's lock.
fn consume_numbers((q, exhaust): (mp::Queue<(u32, ByteBuf)>, bool)) -> Vec<u32> {
    let _fds = if exhaust {
        exhaust_descriptors()
    } else {
        Vec::new()
    };
    let mut got = Vec::new();
    loop {
        match q.blocking_get_timeout(Duration::from_secs(3)) {
            Ok((u32::MAX, _)) | Err(mp::GetError::Empty) => return got,
            Ok((n, _)) => got.push(n),
            Err(e) => panic!("get failed: {e}"),
        }
    }
}

// Unix only: it stops a consumer with SIGSTOP.
#[cfg(unix)]
/// A consumer is stopped (`SIGSTOP`) again and again, often while it holds
/// the queue's lock, while a second consumer that has no descriptor left
/// waits for that lock. The second must wait: the first is alive, only
/// stopped. Every item is delivered exactly once and `len` never wraps
/// (both failed when a holder that could not be looked up counted as
/// dead: the waiter took the lock from under the stopped consumer, both
/// popped the same item, and the count wrapped to 2^64 - 1).
async fn a_stopped_consumer_keeps_the_lock_from_one_out_of_descriptors() -> Result<(), Failed> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let q: mp::Queue<(u32, ByteBuf)> = mp::Queue::new()?;
    let stopped = mp::Process::new(consume_numbers, (q.clone(), false));
    let starved = mp::Process::new(consume_numbers, (q.clone(), true));
    stopped.start().await?;
    starved.start().await?;
    let pid = Pid::from_raw(stopped.pid().ok_or("no pid")? as i32);
    // Large items, so that a consumer spends most of its time copying one
    // out under the lock, where the stops land.
    let payload = ByteBuf::from(vec![7u8; 32 * 1024]);
    let producer = {
        let q = q.clone();
        // For 5 s, the queue is kept from running dry, so that the
        // consumers spend their time taking items rather than asleep.
        tokio::spawn(async move {
            let until = Instant::now() + Duration::from_secs(5);
            let mut n = 0u32;
            while Instant::now() < until {
                if q.len() >= 64 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                for _ in 0..16 {
                    q.put((n, payload.clone()))
                        .await
                        .map_err(|e| e.to_string())?;
                    n += 1;
                }
            }
            Ok::<_, String>(n)
        })
    };
    let mut stops = 0;
    let mut longest_len = 0;
    while !producer.is_finished() {
        tokio::time::sleep(jitter(10)).await;
        kill(pid, Signal::SIGSTOP)?;
        stops += 1;
        // Longer than a waiter's 50 ms look at the holder.
        let until = Instant::now() + Duration::from_millis(60) + jitter(60);
        while Instant::now() < until {
            longest_len = longest_len.max(q.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        kill(pid, Signal::SIGCONT)?;
    }
    let items = producer.await?.map_err(|e| format!("put: {e}"))?;
    for _ in 0..2 {
        q.put((u32::MAX, ByteBuf::new()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut all = stopped.join().await?;
    let from_starved = starved.join().await?;
    all.extend(&from_starved);
    while let Ok((n, _)) = q.try_get() {
        if n != u32::MAX {
            all.push(n);
        }
    }
    let delivered = all.len();
    all.sort_unstable();
    all.dedup();
    println!(
        "{stops} stops; {delivered} items delivered, {} to the consumer out of descriptors; longest queue {longest_len}",
        from_starved.len()
    );
    ensure(
        delivered == all.len(),
        format!("{} items delivered twice", delivered - all.len()),
    )?;
    ensure(
        all.len() == items as usize,
        format!("{} of {items} items delivered", all.len()),
    )?;
    ensure(
        longest_len <= 64 + 16 + 2,
        format!("len() read {longest_len}"),
    )?;
    ensure(stops >= 10, format!("only {stops} stops"))?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "producers_killed_at_random_lose_nothing",
            Duration::from_secs(60),
            producers_killed_at_random_lose_nothing,
        ),
        case(
            "producers_and_consumers_killed_at_random",
            Duration::from_secs(60),
            producers_and_consumers_killed_at_random,
        ),
    ];
    // Unix only: SIGSTOP, and descriptors run out by setrlimit.
    #[cfg(unix)]
    cases.push(case(
        "a_stopped_consumer_keeps_the_lock_from_one_out_of_descriptors",
        Duration::from_secs(90),
        a_stopped_consumer_keeps_the_lock_from_one_out_of_descriptors,
    ));
    cases
}
