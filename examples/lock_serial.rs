//! Three processes that each take a shared `Lock`, print and sleep; started
//! and joined one after another, so they run in series.
//!
//! ```text
//! cargo run --example lock_serial
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

fn f((lock, i): (mp::Lock, u32)) {
    let _held = lock.blocking_lock();
    println!("hello world {i}");
    std::thread::sleep(Duration::from_millis(100));
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let lock = mp::Lock::new()?;
    for num in 0..3 {
        let p = mp::Process::new(f, (lock.clone(), num));
        p.start().await?;
        p.join().await?;
    }
    Ok(())
}
