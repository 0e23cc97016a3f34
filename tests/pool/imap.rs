//! `Pool::imap` and friends: input order, completion order, failures that
//! do not end the stream, a bounded window over endless input, `Stream`
//! inputs, a closed pool, and dropping the stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn square(x: u64) -> u64 {
    x * x
}

fn fail_on_7(x: u64) -> u64 {
    if x % 10 == 7 {
        panic!("seven {x}");
    }
    x
}

/// Sleeps `ms` milliseconds, then returns it.
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

async fn imap_yields_every_result_in_input_order() -> Result<(), Failed> {
    let pool = mp::Pool::new(3).await?;
    let want: Vec<u64> = (0..300).map(|x| x * x).collect();
    for chunksize in [1, 7, 1000] {
        let got: Vec<u64> = pool
            .imap(square, 0..300u64)
            .chunksize(chunksize)
            .map(|r| r.expect("square does not fail"))
            .collect()
            .await;
        ensure(got == want, format!("imap chunksize {chunksize}"))?;
    }
    // A slow first item does not reorder anything.
    let got: Vec<u64> = pool
        .imap(sleep_ms, [300, 1, 2, 3, 4, 5])
        .map(|r| r.expect("no failure"))
        .collect()
        .await;
    ensure(got == [300, 1, 2, 3, 4, 5], format!("order: {got:?}"))?;
    let mut empty = pool.imap(square, Vec::<u64>::new());
    ensure(empty.next().await.is_none(), "empty input ends at once")?;
    Ok(())
}

async fn a_failure_yields_an_error_and_the_stream_goes_on() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    for chunksize in [1, 4] {
        let got: Vec<_> = pool
            .imap(fail_on_7, 0..40u64)
            .chunksize(chunksize)
            .collect()
            .await;
        ensure(
            got.len() == 40,
            format!("one result per item: {}", got.len()),
        )?;
        for (i, r) in got.iter().enumerate() {
            let ok = match r {
                Ok(v) => *v == i as u64 && i % 10 != 7,
                Err(e) => e.is_panic() && i % 10 == 7,
            };
            ensure(ok, format!("chunksize {chunksize}, item {i}: {r:?}"))?;
        }
        let unordered: Vec<_> = pool
            .imap_unordered(fail_on_7, 0..40u64)
            .chunksize(chunksize)
            .collect()
            .await;
        let failed = unordered.iter().filter(|r| r.is_err()).count();
        let mut values: Vec<u64> = unordered.into_iter().filter_map(Result::ok).collect();
        values.sort_unstable();
        let want: Vec<u64> = (0..40).filter(|i| i % 10 != 7).collect();
        ensure(failed == 4 && values == want, "imap_unordered failures")?;
    }
    Ok(())
}

async fn imap_unordered_yields_in_completion_order() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    // The slow task holds one worker; the quick ones all end before it,
    // on the other.
    let got: Vec<u64> = pool
        .imap_unordered(sleep_ms, [600, 1, 2, 3])
        .map(|r| r.expect("no failure"))
        .collect()
        .await;
    ensure(
        got.len() == 4 && got[3] == 600,
        format!("completion order: {got:?}"),
    )?;
    let got: Vec<u64> = pool
        .imap(sleep_ms, [600, 1])
        .map(|r| r.expect("no failure"))
        .collect()
        .await;
    ensure(got == [600, 1], format!("input order: {got:?}"))?;
    Ok(())
}

async fn endless_input_keeps_a_bounded_window() -> Result<(), Failed> {
    let workers = 2;
    let pool = mp::Pool::new(workers).await?;
    for unordered in [false, true] {
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = pulled.clone();
        let endless = (0u64..).inspect(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let mut stream: std::pin::Pin<Box<dyn futures::Stream<Item = _> + Send>> = if unordered {
            Box::pin(pool.imap_unordered(square, endless))
        } else {
            Box::pin(pool.imap(square, endless))
        };
        let mut most_ahead = 0;
        let mut most_queued = 0;
        let mut taken = 0usize;
        let mut sum = 0u64;
        while taken < 20_000 {
            let v: u64 = stream.next().await.expect("endless")?;
            sum = sum.wrapping_add(v);
            taken += 1;
            let ahead = pulled.load(Ordering::Relaxed) - taken;
            most_ahead = most_ahead.max(ahead);
            most_queued = most_queued.max(pool.stats().queued);
        }
        drop(stream);
        let want: u64 = (0..20_000u64).map(|x| x * x).sum();
        ensure(unordered || sum == want, "the values")?;
        // The window: twice what the workers may hold (33 jobs each).
        let window = 2 * workers * 33;
        ensure(
            most_ahead <= window + 1,
            format!("read {most_ahead} items ahead of the consumer (window {window})"),
        )?;
        ensure(
            most_queued <= window,
            format!("{most_queued} jobs queued at once (window {window})"),
        )?;
    }
    // Dropping the streams cancelled what they had in flight.
    common::eventually("the pool goes idle after the streams were dropped", || {
        let stats = pool.stats();
        stats.busy == 0 && stats.queued == 0
    })
    .await?;
    Ok(())
}

async fn a_stream_input_is_submitted_as_it_arrives() -> Result<(), Failed> {
    let pool = mp::Pool::new(2).await?;
    let (tx, rx) = futures::channel::mpsc::unbounded::<u64>();
    let mut results = pool.imap_stream(square, rx).chunksize(8);
    // Each item comes back before the next is sent: nothing waits for a
    // chunk to fill.
    for x in 0..20u64 {
        tx.unbounded_send(x).expect("the stream is alive");
        let v = tokio::time::timeout(Duration::from_secs(10), results.next())
            .await
            .map_err(|_| format!("item {x} was held back"))?
            .expect("open");
        ensure(v? == x * x, "value")?;
    }
    drop(tx);
    ensure(results.next().await.is_none(), "ends with its input")?;

    let (tx, rx) = futures::channel::mpsc::unbounded::<u64>();
    for x in 0..100 {
        tx.unbounded_send(x).expect("alive");
    }
    drop(tx);
    let mut got: Vec<u64> = pool
        .imap_unordered_stream(square, rx)
        .map(|r| r.expect("no failure"))
        .collect()
        .await;
    got.sort_unstable();
    let want: Vec<u64> = (0..100).map(|x| x * x).collect();
    ensure(got == want, "imap_unordered_stream")?;
    Ok(())
}

async fn a_closed_pool_ends_the_stream_with_one_error() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    pool.close();
    let got: Vec<_> = pool.imap(square, 0u64..).collect().await;
    ensure(
        got.len() == 1 && got[0] == Err(mp::TaskError::Closed),
        format!("{got:?}"),
    )?;
    pool.join().await?;

    // Terminated while the stream runs: what was in flight is cancelled,
    // then the stream ends.
    let pool = mp::Pool::new(1).await?;
    let mut stream = pool.imap(sleep_ms, std::iter::repeat(50u64));
    ensure(stream.next().await == Some(Ok(50)), "first value")?;
    pool.terminate().await;
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(10), stream.collect::<Vec<_>>())
        .await
        .map_err(|_| "the stream did not end after terminate")?;
    ensure(
        !rest.is_empty()
            && rest.iter().all(|r| {
                matches!(
                    r,
                    Ok(50) | Err(mp::TaskError::Cancelled | mp::TaskError::Closed)
                )
            }),
        format!("{rest:?}"),
    )?;
    ensure(
        rest.last() == Some(&Err(mp::TaskError::Closed)),
        "the last item says the pool is closed",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "imap_yields_every_result_in_input_order",
            T,
            imap_yields_every_result_in_input_order,
        ),
        case(
            "a_failure_yields_an_error_and_the_stream_goes_on",
            T,
            a_failure_yields_an_error_and_the_stream_goes_on,
        ),
        case(
            "imap_unordered_yields_in_completion_order",
            T,
            imap_unordered_yields_in_completion_order,
        ),
        case(
            "endless_input_keeps_a_bounded_window",
            T,
            endless_input_keeps_a_bounded_window,
        ),
        case(
            "a_stream_input_is_submitted_as_it_arrives",
            T,
            a_stream_input_is_submitted_as_it_arrives,
        ),
        case(
            "a_closed_pool_ends_the_stream_with_one_error",
            T,
            a_closed_pool_ends_the_stream_with_one_error,
        ),
    ]
}
