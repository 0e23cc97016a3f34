//! Handles in a pool task's arguments travel with the job over the
//! worker's socket, and handles in a task's value come back the same way;
//! a handle put into a Queue by a task is still refused.

use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

fn put_n((q, n): (mp::Queue<u32>, u32)) -> u32 {
    for i in 0..n {
        q.blocking_put(i).expect("put");
    }
    n
}

async fn put_n_async((q, n): (mp::Queue<u32>, u32)) -> u32 {
    for i in 0..n {
        q.put(100 + i).await.expect("put");
    }
    n
}

/// A lock made in the worker, held there when `held`, and a queue made
/// there with `n` items in it.
fn make_handles((held, n): (bool, u32)) -> (mp::Lock, mp::Queue<u32>) {
    let lock = mp::Lock::new().expect("lock");
    if held {
        // Held by the worker, which keeps running: the parent must see it
        // taken.
        std::mem::forget(lock.blocking_lock().expect("lock"));
    }
    let q = mp::Queue::new().expect("queue");
    for i in 0..n {
        q.blocking_put(i).expect("put");
    }
    (lock, q)
}

async fn make_pipe_end(greeting: String) -> mp::Connection<String> {
    let (mine, theirs) = mp::Pipe::new::<String>().expect("pipe");
    mine.send(&greeting).await.expect("send");
    // Kept open in the worker only until this task ends: the message is
    // already in the socket.
    theirs
}

/// Puts a queue (a handle) into a queue: refused, since a Queue's items
/// live in shared memory.
fn put_a_handle(q: mp::Queue<mp::Queue<u32>>) -> String {
    let inner = mp::Queue::new().expect("queue");
    match q.blocking_put(inner) {
        Err(e) => e.to_string(),
        Ok(()) => "accepted".to_owned(),
    }
}

async fn drain(q: &mp::Queue<u32>, n: usize) -> Result<Vec<u32>, Failed> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(q.get_timeout(Duration::from_secs(10)).await?);
    }
    got.sort_unstable();
    Ok(got)
}

async fn a_queue_in_the_arguments() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    let q = mp::Queue::<u32>::new()?;
    // apply, sync target
    let n = pool.apply(put_n, (q.clone(), 3)).await?;
    ensure(n == 3, n)?;
    ensure(drain(&q, 3).await? == vec![0, 1, 2], "apply's items")?;
    // apply, async target
    pool.apply(put_n_async, (q.clone(), 2)).await?;
    ensure(drain(&q, 2).await? == vec![100, 101], "async apply's items")?;
    // map: several arguments, each with its own handle, in one job
    let counts = pool
        .map_chunked(put_n, (1..=4).map(|n| (q.clone(), n)), 4)
        .await?;
    ensure(counts == vec![1, 2, 3, 4], format!("{counts:?}"))?;
    ensure(drain(&q, 10).await?.len() == 10, "map's items")?;
    // imap, whose items are encoded as they are pulled
    let items: Vec<_> = (1..=3).map(|n| (q.clone(), n)).collect();
    let done: Vec<_> = pool.imap(put_n, items).collect().await;
    ensure(done.iter().all(Result::is_ok), format!("{done:?}"))?;
    ensure(drain(&q, 6).await?.len() == 6, "imap's items")?;
    pool.close();
    pool.join().await?;
    Ok(())
}

async fn handles_in_values_come_back() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    // apply, sync target: the lock is the worker's, held by it.
    let (lock, q) = pool.apply(make_handles, (true, 3)).await?;
    ensure(
        matches!(lock.try_lock(), Err(mp::sync::TryLockError::WouldBlock)),
        "the worker's lock is free here",
    )?;
    ensure(drain(&q, 3).await? == vec![0, 1, 2], "the worker's items")?;
    // The queue is shared, not copied: a put here reaches a clone in a
    // later task.
    q.put(7).await?;
    let n = pool.apply(put_n, (q.clone(), 1)).await?;
    ensure(n == 1, n)?;
    ensure(
        drain(&q, 2).await? == vec![0, 7],
        "items through the returned queue",
    )?;
    // apply, async target: a Pipe end whose peer already wrote.
    let mut conn = pool.apply(make_pipe_end, "hello".to_owned()).await?;
    let got = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await??;
    ensure(got == "hello", &got)?;
    // map: several values in one reply, each with its own descriptors,
    // mixed with values without any.
    let pairs = pool
        .map_chunked(make_handles, (0..6).map(|n| (false, n)), 3)
        .await?;
    for ((lock, q), n) in pairs.into_iter().zip(0u32..) {
        ensure(lock.try_lock().is_ok(), format!("lock {n} cannot be taken"))?;
        let want: Vec<u32> = (0..n).collect();
        ensure(drain(&q, want.len()).await? == want, format!("queue {n}"))?;
    }
    // imap too.
    let streamed: Vec<_> = pool
        .imap(make_handles, [(false, 1), (false, 2)])
        .collect()
        .await;
    ensure(streamed.len() == 2, streamed.len())?;
    for (n, r) in streamed.into_iter().enumerate() {
        let (_, q) = r?;
        ensure(
            drain(&q, n + 1).await?.len() == n + 1,
            format!("imap queue {n}"),
        )?;
    }
    pool.close();
    pool.join().await?;
    Ok(())
}

async fn a_handle_into_a_queue_is_still_refused() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let q = mp::Queue::<mp::Queue<u32>>::new()?;
    let text = pool.apply(put_a_handle, q.clone()).await?;
    ensure(
        text.contains("shared memory") && text.contains("Pipe"),
        &text,
    )?;
    // The worker goes on.
    let q = mp::Queue::<u32>::new()?;
    pool.apply(put_n, (q.clone(), 1)).await?;
    ensure(drain(&q, 1).await? == vec![0], "after the refusal")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_queue_in_the_arguments",
            Duration::from_secs(60),
            a_queue_in_the_arguments,
        ),
        case(
            "handles_in_values_come_back",
            Duration::from_secs(60),
            handles_in_values_come_back,
        ),
        case(
            "a_handle_into_a_queue_is_still_refused",
            Duration::from_secs(60),
            a_handle_into_a_queue_is_still_refused,
        ),
    ]
}
