//! Logs from children: three processes and a pool of two log with
//! `tracing`, and the parent prints every event, each child's labelled.
//!
//! ```text
//! cargo run --example logs
//! RUST_LOG=info cargo run --example logs     # no DEBUG lines, from anyone
//! ```
//!
//! The parent calls `init()` first, then installs its subscriber (the
//! order the docs teach: a child never gets past `init()`, so it never
//! installs one; the crate forwards its events instead). The filter comes
//! from `RUST_LOG` (`Targets` syntax: `level` or `target=level`, separated
//! by commas), by default `info,logs=debug`: this example's own events
//! down to DEBUG, everyone else's down to INFO. The `chatty` target's
//! DEBUG events are therefore not printed, though the children send them.
//!
//! A child's line carries its label, then its own spans:
//!
//! ```text
//! 2026-01-01T00:00:00.000000Z  INFO child{process="worker-1" pid=4242}:job{n=1}: logs: step one step=1
//! ```
//!
//! What it prints is checked by `tests/examples.rs`.

use std::time::Duration;

use tokio_multiprocessing as mp;
use tracing::{debug, info, info_span, warn};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A child: logs four steps, in order, at three levels, inside a span of
/// its own; `chatty` DEBUG events too, which the default filter drops.
fn work(n: u32) -> u32 {
    let span = info_span!("job", n);
    let _job = span.enter();
    info!(step = 1, "step one");
    debug!(step = 2, detail = "a detail", "step two");
    debug!(target: "chatty", step = 2, "a chatty detail");
    std::thread::sleep(Duration::from_millis(10 * u64::from(n)));
    warn!(step = 3, late_ms = 10 * n, "step three is late");
    info!(step = 4, "done");
    n * 10
}

/// A pool task: one event per task, and a DEBUG one.
fn square(x: u64) -> u64 {
    info!(x, "squaring");
    debug!(x, result = x * x, "squared");
    x * x
}

fn main() -> mp::Result<()> {
    // First: in a child, this runs the child's work and never returns.
    let guard = mp::init();
    // Then the parent's subscriber, on stdout, without colours.
    let filter: Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            "info,logs=debug"
                .parse()
                .expect("the default filter parses")
        });
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(false))
        .init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run())?;
    drop(rt);
    drop(guard);
    Ok(())
}

async fn run() -> mp::Result<()> {
    info!("the parent starts three children");
    let mut children = Vec::new();
    for n in 1..=3 {
        let p = mp::Process::builder()
            .name(format!("worker-{n}"))
            .build(work, n);
        p.start().await?;
        info!(
            process = p.name(),
            pid = p.pid().unwrap_or_default(),
            "started a child"
        );
        children.push(p);
    }
    for p in &children {
        let value = p.join().await?;
        debug!(process = p.name(), value, "joined a child");
    }

    info!("the parent maps on a pool of two");
    let pool = mp::Pool::new(2).await?;
    let squares = pool.map(square, 1..=4u64).await?;
    info!(?squares, "the pool is done");
    pool.close();
    pool.join().await?;
    Ok(())
}
