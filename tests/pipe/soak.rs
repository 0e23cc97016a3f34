//! Hundreds of pipes, each with an end sent to a child and used both ways
//! from sync and async code, leave no descriptor open behind them. The
//! case runs alone, so that nothing else runs while descriptors are
//! counted.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

fn echo_once(mut conn: mp::Connection<u32>) {
    let v = conn.blocking_recv().unwrap();
    conn.blocking_send(&(v + 1)).unwrap();
}

async fn async_echo_once(mut conn: mp::Connection<u32>) {
    let v = conn.recv().await.unwrap();
    conn.send(&(v + 1)).await.unwrap();
}

async fn cycles(n: u32) -> Result<(), Failed> {
    const BATCH: u32 = 8;
    for start in (0..n).step_by(BATCH as usize) {
        let mut open = Vec::new();
        for i in start..(start + BATCH).min(n) {
            let (here, there) = mp::Pipe::new::<u32>()?;
            let p = if i % 2 == 0 {
                mp::Process::new(echo_once, there)
            } else {
                mp::Process::new(async_echo_once, there)
            };
            p.start().await?;
            here.send(&i).await?;
            open.push((i, here, p));
        }
        for (i, mut here, p) in open {
            ensure(here.recv().await? == i + 1, "the answer")?;
            // Half are closed, half dropped; unused pipes go too.
            if i % 3 == 0 {
                here.close();
            }
            drop(mp::Pipe::oneway::<u8>()?);
            p.join().await?;
        }
    }
    Ok(())
}

async fn hundreds_of_pipes_leak_nothing() -> Result<(), Failed> {
    cycles(16).await?;
    let fds_before = common::open_fds();
    cycles(400).await?;
    let fds_after = common::open_fds_settled(fds_before).await;
    println!("open fds: {fds_before} before, {fds_after} after 400 pipes");
    ensure(
        fds_after <= fds_before,
        format!("descriptors grew from {fds_before} to {fds_after}"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case_alone(
        "hundreds_of_pipes_leak_nothing",
        Duration::from_secs(240),
        hundreds_of_pipes_leak_nothing,
    )]
}
