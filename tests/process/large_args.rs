//! Large arguments: the frame limit is checked against their encoded
//! length, with advice in the error, and encoding them leaves the
//! runtime's other tasks running.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde_bytes::ByteBuf;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure, test};

const T: Duration = Duration::from_secs(60);

fn len_of_vec(b: Vec<u8>) -> usize {
    b.len()
}

fn len_of_buf(b: ByteBuf) -> usize {
    b.len()
}

/// Under a 1 MiB limit, 768 KiB of 0xFF as a `Vec<u8>` encode to about
/// twice that: refused, with the encoded length and the advice; the same
/// bytes as a `ByteBuf` go.
async fn bytes_over_the_limit_say_how_to_fit() -> Result<(), Failed> {
    const LIMIT: usize = 1 << 20;
    const N: usize = 768 << 10;
    let p = mp::Process::builder()
        .max_frame(LIMIT)
        .build(len_of_vec, vec![0xFFu8; N]);
    let err = p.start().await.expect_err("over the limit");
    let said = err.to_string();
    ensure(
        matches!(err, mp::ProcessError::Oversized { len, max: LIMIT } if len > 2 * N)
            && said.contains("max_frame")
            && said.contains("serde_bytes::ByteBuf")
            && said.contains("Pipe"),
        format!("{err:?}: {said}"),
    )?;
    ensure(p.pid().is_none(), "nothing was started")?;
    let p = mp::Process::builder()
        .max_frame(LIMIT)
        .build(len_of_buf, ByteBuf::from(vec![0xFFu8; N]));
    p.start().await?;
    ensure(p.join().await? == N, "the child got every byte")
}

/// A 16 MiB `Vec<u8>` (an array of integers: slow to encode, seconds in
/// a debug build) built and started from a task on a one-worker runtime:
/// a 10 ms ticker on the same worker keeps ticking meanwhile. Encoding on
/// the worker stalled it for 2.5 s (debug build, quiet machine); the bound
/// is 1 s, since cases run side by side on two cores.
fn a_large_argument_leaves_the_runtime_running() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        tokio::time::timeout(T, async {
            let ticks = Arc::new(AtomicU64::new(0));
            let longest = Arc::new(AtomicU64::new(0));
            let ticker = tokio::spawn({
                let (ticks, longest) = (ticks.clone(), longest.clone());
                async move {
                    let mut last = Instant::now();
                    loop {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        let gap = u64::try_from(last.elapsed().as_millis()).unwrap_or(u64::MAX);
                        longest.fetch_max(gap, Ordering::Relaxed);
                        ticks.fetch_add(1, Ordering::Relaxed);
                        last = Instant::now();
                    }
                }
            });
            // Let it settle on the worker first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            longest.store(0, Ordering::Relaxed);
            let before = ticks.load(Ordering::Relaxed);
            let took = tokio::spawn(async {
                let t0 = Instant::now();
                let p = mp::Process::new(len_of_vec, vec![7u8; 16 << 20]);
                p.start().await?;
                let took = t0.elapsed();
                let n = p.join().await?;
                Ok::<_, mp::ProcessError>((took, n))
            })
            .await?;
            let (took, n) = took?;
            ticker.abort();
            let (ticks, longest) = (
                ticks.load(Ordering::Relaxed) - before,
                longest.load(Ordering::Relaxed),
            );
            ensure(n == 16 << 20, "the child got every byte")?;
            ensure(
                longest < 1000,
                format!(
                    "the ticker stalled for {longest} ms while the argument was built and \
                     sent in {took:?} ({ticks} ticks)"
                ),
            )
        })
        .await
        .map_err(|_| format!("watchdog: not within {T:?}"))?
    })
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "bytes_over_the_limit_say_how_to_fit",
            T,
            bytes_over_the_limit_say_how_to_fit,
        ),
        test(
            "a_large_argument_leaves_the_runtime_running",
            a_large_argument_leaves_the_runtime_running,
        ),
    ]
}
