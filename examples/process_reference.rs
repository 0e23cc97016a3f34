//! The session from the `multiprocessing.Process` reference: a sleeping
//! target is started, terminated, and shown before and after.
//!
//! ```text
//! cargo run --example process_reference
//! ```
//!
//! Prints, as Python does:
//!
//! ```text
//! <Process(Process-1, initial)> false
//! <Process(Process-1, started)> true
//! <Process(Process-1, stopped[SIGTERM])> false
//! true
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

fn sleep(secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let p = mp::Process::new(sleep, 1000);
    println!("{} {}", p, p.is_alive());
    p.start().await?;
    println!("{} {}", p, p.is_alive());
    p.terminate()?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("{} {}", p, p.is_alive());
    println!("{}", p.exitcode() == Some(-15));
    Ok(())
}
