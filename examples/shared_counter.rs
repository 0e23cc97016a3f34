//! A `Value<u64>` in shared memory, incremented 10000 times by each of 4
//! processes under its lock: Python's `Value('Q', 0)` with
//! `with counter.get_lock(): counter.value += 1`. Prints 40000.
//!
//! ```text
//! cargo run --example shared_counter
//! ```

use tokio_multiprocessing as mp;

fn count(counter: mp::Value<u64>) {
    for _ in 0..10_000 {
        *counter.blocking_lock().expect("no holder died") += 1;
    }
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    let _guard = mp::init();

    let counter = mp::Value::new(0u64)?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let p = mp::Process::new(count, counter.clone());
        p.start().await?;
        workers.push(p);
    }
    for p in workers {
        p.join().await?;
    }
    println!("{}", counter.get().await);
    Ok(())
}
