//! Handles in a pool task's arguments travel with the job over the
//! worker's socket; a handle in a task's value is refused with an error
//! that names the ways it can travel.

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

fn make_lock(_: ()) -> mp::Lock {
    mp::Lock::new().expect("lock")
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

async fn a_handle_in_a_value_is_a_clear_error() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let err = pool.apply(make_lock, ()).await.unwrap_err();
    let text = err.to_string();
    ensure(
        matches!(err, mp::TaskError::EncodeResult(_)) && text.contains("Pipe message"),
        &text,
    )?;
    // The worker goes on.
    let q = mp::Queue::<u32>::new()?;
    pool.apply(put_n, (q.clone(), 1)).await?;
    ensure(drain(&q, 1).await? == vec![0], "after the error")?;
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
            "a_handle_in_a_value_is_a_clear_error",
            Duration::from_secs(60),
            a_handle_in_a_value_is_a_clear_error,
        ),
    ]
}
