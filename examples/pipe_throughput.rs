//! Seed 001's Pipe benchmark: for 10^4, 10^5 and 10^6 numbers, a daemonic
//! reader child receives numbers until 'DONE' while the parent sends them,
//! and the parent prints how long the sending took, up to the reader's end.
//!
//! ```text
//! cargo run --release --example pipe_throughput
//! ```
//!
//! Python mixes ints with the string 'DONE' on one pipe; here a message is
//! an `Option<u64>`, and `None` says done. The parent's sends are
//! coalesced, so a million small messages take a few dozen writes.

use std::time::Instant;

use tokio_multiprocessing as mp;

/// Reads from the pipe until 'DONE'; this runs in the child.
fn reader_proc(mut p_output: mp::Receiver<Option<u64>>) {
    // Python closes p_input here; our reader was given only its own end.
    while let Ok(Some(_number)) = p_output.blocking_recv() {}
}

/// Writes `count` numbers into the pipe, then 'DONE'.
async fn writer(count: u64, p_input: &mp::Sender<Option<u64>>) -> mp::Result<()> {
    for ii in 0..count {
        p_input.send(&Some(ii)).await?;
    }
    p_input.send(&None).await?;
    Ok(())
}

#[mp::main]
async fn main() -> mp::Result<()> {
    for count in [10u64.pow(4), 10u64.pow(5), 10u64.pow(6)] {
        // Pipes are unidirectional with two endpoints: p_input ------> p_output
        let (p_output, mut p_input) = mp::Pipe::oneway::<Option<u64>>()?;
        // Moving p_output into the reader's arguments closes it here, as
        // Python's p_output.close() does.
        let reader_p = mp::Process::builder()
            .daemon(true)
            .build(reader_proc, p_output);
        reader_p.start().await?;

        let start = Instant::now();
        writer(count, &p_input).await?;
        p_input.close();
        reader_p.join().await?;
        println!(
            "Sending {count} numbers to Pipe() took {} seconds",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
