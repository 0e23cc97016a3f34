//! A program that keeps `#[tokio::main]` and starts children as fast as
//! `#[mp::main]` does: `mp::init_before_main!()` recognises a child and the
//! fork server before `main`. It starts and joins `n` processes with an
//! empty target (the first argument, default 200) and prints the
//! nanoseconds they took; the bench driver's `spawn_tokio_main` case runs
//! it.
//!
//! ```text
//! cargo run --release --example spawn_tokio_main -- 200
//! ```

use std::time::Instant;

use tokio_multiprocessing as mp;

mp::init_before_main!();

fn empty(_: ()) {}

#[tokio::main]
async fn main() -> mp::Result<()> {
    let _guard = mp::init();
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    // Warm up: the fork server starts at the first start.
    for _ in 0..3 {
        let p = mp::Process::new(empty, ());
        p.start().await?;
        p.join().await?;
    }
    let t0 = Instant::now();
    for _ in 0..n {
        let p = mp::Process::new(empty, ());
        p.start().await?;
        p.join().await?;
    }
    println!("{}", t0.elapsed().as_nanos());
    Ok(())
}
