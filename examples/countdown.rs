//! Two processes counting down, from 10 and from 20, in parallel.
//!
//! ```text
//! cargo run --example countdown
//! ```

use tokio_multiprocessing as mp;

fn countdown(mut count: u32) {
    while count > 0 {
        println!("Count value {count}");
        count -= 1;
    }
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let p1 = mp::Process::new(countdown, 10);
    p1.start().await?;
    let p2 = mp::Process::new(countdown, 20);
    p2.start().await?;

    p1.join().await?;
    p2.join().await?;
    Ok(())
}
