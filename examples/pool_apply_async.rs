//! Five tasks of random length on a pool of four workers, submitted with
//! `apply_async`; the parent closes the pool and joins it.
//!
//! ```text
//! cargo run --example pool_apply_async
//! ```
//!
//! Prints, in an order that varies from run to run:
//!
//! ```text
//! Parent process 669.
//! Waiting for all subprocesses done...
//! Run task 0 (671)...
//! Run task 1 (672)...
//! Task 1 runs 0.14 seconds.
//! ...
//! All subprocesses done.
//! ```

use std::time::{Duration, Instant};

use tokio_multiprocessing as mp;

/// A number in `[0, 1)`, from the clock and the pid: enough to vary the
/// sleeps without a random number crate.
fn random() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mixed = (u64::from(nanos) ^ u64::from(std::process::id()).rotate_left(17))
        .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

fn long_time_task(name: u32) {
    println!("Run task {name} ({})...", std::process::id());
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(random() * 3.0));
    println!(
        "Task {name} runs {:.2} seconds.",
        start.elapsed().as_secs_f64()
    );
}

#[mp::main]
async fn main() -> mp::Result<()> {
    println!("Parent process {}.", std::process::id());
    let pool = mp::Pool::new(4).await?;
    // Python drops the AsyncResults too, but its tasks still run; here a
    // dropped AsyncResult cancels its task, so keep them until the join.
    let tasks: Vec<_> = (0..5)
        .map(|i| pool.apply_async(long_time_task, i))
        .collect();
    println!("Waiting for all subprocesses done...");
    pool.close();
    pool.join().await?;
    for task in tasks {
        task.await?;
    }
    println!("All subprocesses done.");
    Ok(())
}
