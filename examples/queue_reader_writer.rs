//! A writer puts A, B and C on a `Queue` with random pauses; a reader takes
//! items forever; the parent joins the writer and terminates the reader.
//!
//! ```text
//! cargo run --example queue_reader_writer
//! ```

use std::time::Duration;

use tokio_multiprocessing as mp;

/// A pause of up to one second, random enough for the demo.
fn random_pause() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos % 1000))
}

fn write(q: mp::Queue<String>) {
    println!("Process to write: {}", std::process::id());
    for value in ["A", "B", "C"] {
        println!("Put {value} to queue...");
        q.blocking_put(value.to_owned()).expect("put");
        std::thread::sleep(random_pause());
    }
}

fn read(q: mp::Queue<String>) {
    println!("Process to read: {}", std::process::id());
    loop {
        let value = q.blocking_get().expect("get");
        println!("Get {value} from queue.");
    }
}

#[mp::main]
async fn main() -> mp::Result<()> {
    let q = mp::Queue::new()?;
    let pw = mp::Process::new(write, q.clone());
    let pr = mp::Process::new(read, q.clone());
    pw.start().await?;
    pr.start().await?;
    pw.join().await?;
    // The reader loops forever: terminate it.
    pr.terminate()?;
    pr.sentinel().await;
    Ok(())
}
