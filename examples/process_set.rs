//! Starts four workers that take different times and prints each result as
//! it comes in, from a `ProcessSet`: the quickest first, whatever the order
//! they were started in.
//!
//! ```text
//! cargo run --example process_set
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

/// Works for `ms` milliseconds, then returns the square of `n`.
fn work((n, ms): (u64, u64)) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    n * n
}

fn main() -> mp::Result<()> {
    let _guard = mp::init();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut set = mp::ProcessSet::new();
        // Distinct durations, started out of order: they finish 1, 2, 3, 4.
        for (n, ms) in [(3, 450), (1, 50), (4, 600), (2, 250)] {
            let builder = mp::Process::builder().name(format!("worker-{n}"));
            set.spawn_with(builder, work, (n, ms)).await?;
        }
        println!("started {} workers", set.len());
        while let Some((name, result)) = set.join_next().await {
            println!("{name} finished: {}", result?);
        }
        println!("all done");
        Ok(())
    })
}
