//! `Queue` and `JoinableQueue` across many processes: exactly-once
//! delivery, per-producer order, `join` with workers, and a producer
//! killed in the middle of its puts.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

type Item = Option<(u32, u32)>;

async fn produce((q, who, n): (mp::Queue<Item>, u32, u32)) {
    for seq in 0..n {
        q.put(Some((who, seq))).await.expect("put");
    }
}

fn consume(q: mp::Queue<Item>) -> Vec<(u32, u32)> {
    let mut got = Vec::new();
    while let Some(item) = q.blocking_get().expect("get") {
        got.push(item);
    }
    got
}

async fn many_producers_and_consumers_see_each_item_once() -> Result<(), Failed> {
    const PRODUCERS: u32 = 3;
    const CONSUMERS: usize = 3;
    const N: u32 = 3000;
    let q: mp::Queue<Item> = mp::Queue::new()?;
    let mut consumers = Vec::new();
    for _ in 0..CONSUMERS {
        let p = mp::Process::new(consume, q.clone());
        p.start().await?;
        consumers.push(p);
    }
    let mut producers = Vec::new();
    for who in 0..PRODUCERS {
        let p = mp::Process::new(produce, (q.clone(), who, N));
        p.start().await?;
        producers.push(p);
    }
    for p in &producers {
        p.join().await?;
    }
    for _ in 0..CONSUMERS {
        q.put(None).await?;
    }
    let mut seen = HashSet::new();
    let mut per_consumer = Vec::new();
    for p in &consumers {
        let got = p.join().await?;
        // Each consumer sees each producer's items in the order put.
        for who in 0..PRODUCERS {
            let seqs: Vec<u32> = got
                .iter()
                .filter(|(w, _)| *w == who)
                .map(|(_, s)| *s)
                .collect();
            ensure(
                seqs.windows(2).all(|w| w[0] < w[1]),
                format!("producer {who} out of order"),
            )?;
        }
        per_consumer.push(got.len());
        for item in got {
            ensure(seen.insert(item), format!("{item:?} delivered twice"))?;
        }
    }
    ensure(
        seen.len() == (PRODUCERS * N) as usize,
        format!("{} of {} items", seen.len(), PRODUCERS * N),
    )?;
    println!("items per consumer: {per_consumer:?}");
    Ok(())
}

fn work((q, done): (mp::JoinableQueue<u32>, mp::Queue<u32>)) {
    loop {
        match q.blocking_get_timeout(Duration::from_secs(5)) {
            Ok(u32::MAX) => {
                q.task_done().expect("task_done");
                return;
            }
            Ok(item) => {
                std::thread::sleep(Duration::from_millis(1));
                done.blocking_put(item).expect("put");
                q.task_done().expect("task_done");
            }
            Err(e) => panic!("worker: {e}"),
        }
    }
}

async fn joinable_queue_join_waits_for_four_workers() -> Result<(), Failed> {
    let q: mp::JoinableQueue<u32> = mp::JoinableQueue::new()?;
    ensure(
        q.task_done().is_err(),
        "task_done with nothing put is an error",
    )?;
    let done: mp::Queue<u32> = mp::Queue::new()?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let p = mp::Process::new(work, (q.clone(), done.clone()));
        p.start().await?;
        workers.push(p);
    }
    for i in 0..200 {
        q.put(i).await?;
    }
    q.join().await;
    // Every item was processed before join returned.
    ensure(
        done.len() == 200,
        format!("{} items processed when join returned", done.len()),
    )?;
    for _ in 0..4 {
        q.put(u32::MAX).await?;
    }
    q.join().await;
    for p in &workers {
        p.join().await?;
    }
    ensure(
        q.task_done().is_err(),
        "task_done past the puts is an error",
    )?;
    Ok(())
}

fn flood(q: mp::Queue<Vec<u8>>) {
    let item = vec![1u8; 4096];
    loop {
        if q.blocking_put(item.clone()).is_err() {
            return;
        }
    }
}

fn produce_marked((q, n): (mp::Queue<Vec<u8>>, u32)) {
    for i in 0..n {
        q.blocking_put(i.to_be_bytes().to_vec()).expect("put");
    }
}

async fn a_producer_killed_mid_put_does_not_hang_consumers() -> Result<(), Failed> {
    // A small buffer, so that the flooding producer also waits for room.
    let q: mp::Queue<Vec<u8>> = mp::Queue::with_buffer(0, 256 * 1024)?;
    for round in 0..5 {
        let p = mp::Process::new(flood, q.clone());
        p.start().await?;
        tokio::time::sleep(Duration::from_millis(20 + round * 7)).await;
        p.kill()?;
        p.sentinel().await;
        // Drain what it put, with a timeout that must hold.
        loop {
            let t0 = Instant::now();
            match q.get_timeout(Duration::from_millis(300)).await {
                Ok(item) => ensure(item.len() == 4096, "whole items only")?,
                Err(mp::GetError::Empty) => {
                    ensure(
                        t0.elapsed() < Duration::from_secs(2),
                        format!("get_timeout took {:?}", t0.elapsed()),
                    )?;
                    break;
                }
                Err(e) => return Err(e.to_string().into()),
            }
        }
    }
    // Later items still arrive, in order.
    let p = mp::Process::new(produce_marked, (q.clone(), 100));
    p.start().await?;
    for want in 0..100u32 {
        let got = q.get_timeout(Duration::from_secs(5)).await?;
        ensure(got == want.to_be_bytes().to_vec(), format!("item {want}"))?;
    }
    p.join().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "many_producers_and_consumers_see_each_item_once",
            T,
            many_producers_and_consumers_see_each_item_once,
        ),
        case(
            "joinable_queue_join_waits_for_four_workers",
            T,
            joinable_queue_join_waits_for_four_workers,
        ),
        case(
            "a_producer_killed_mid_put_does_not_hang_consumers",
            T,
            a_producer_killed_mid_put_does_not_hang_consumers,
        ),
    ]
}
