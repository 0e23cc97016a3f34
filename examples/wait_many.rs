//! Starts eight children that sleep for different times and reports each
//! one as it finishes, by waiting on all their sentinels at once.
//!
//! ```text
//! cargo run --example wait_many
//! ```

use std::time::{Duration, Instant};

use tokio_multiprocessing as mp;

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[mp::main]
async fn main() -> mp::Result<()> {
    // Sleeps in a shuffled order, so finishing order differs from start order.
    let sleeps = [350u64, 50, 650, 200, 500, 125, 425, 275];
    let mut procs = Vec::new();
    for ms in sleeps {
        let p = mp::Process::new(nap, ms);
        p.start().await?;
        procs.push(p);
    }
    let sentinels: Vec<mp::Sentinel> = procs.iter().map(|p| p.sentinel()).collect();

    let started = Instant::now();
    let mut pending: Vec<usize> = (0..procs.len()).collect();
    while !pending.is_empty() {
        let waiting: Vec<&mp::Sentinel> = pending.iter().map(|&i| &sentinels[i]).collect();
        let ready = mp::wait(&waiting, None).await;
        // Remove from the back so the earlier indexes stay valid.
        for &j in ready.iter().rev() {
            let i = pending.remove(j);
            let p = &procs[i];
            println!(
                "{} (slept {} ms) finished after {} ms with exit code {:?}",
                p.name(),
                sleeps[i],
                started.elapsed().as_millis(),
                p.exitcode()
            );
        }
    }
    for p in &procs {
        p.join().await?;
    }
    Ok(())
}
