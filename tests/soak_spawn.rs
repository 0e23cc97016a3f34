//! Ten thousand start+join cycles: no growth in open descriptors, zombies
//! or resident memory beyond a small bound (read from /proc). One case per
//! binary, so that nothing else runs alongside while it counts.

mod common;

use std::time::{Duration, Instant};

use common::{case, ensure};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

/// This process's resident set, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn cycles(n: u32) -> Result<(), Failed> {
    common::start_join_cycles(n, 16).await
}

async fn ten_thousand_cycles() -> Result<(), Failed> {
    cycles(200).await?;
    let (fds0, rss0, children0) = (common::open_fds(), rss_kib(), common::children());
    let t0 = Instant::now();
    cycles(10_000).await?;
    let took = t0.elapsed();
    let fds1 = common::open_fds_settled(fds0).await;
    let (rss1, zombies, children1) = (rss_kib(), common::zombie_children(), common::children());
    println!(
        "10,000 cycles in {took:?}: fds {fds0} -> {fds1}, RSS {rss0} KiB -> {rss1} KiB, zombies {zombies:?}"
    );
    ensure(
        fds1 <= fds0,
        format!("descriptors grew from {fds0} to {fds1}"),
    )?;
    ensure(zombies.is_empty(), format!("zombies: {zombies:?}"))?;
    ensure(
        children1 == children0,
        format!("children {children0:?} -> {children1:?}"),
    )?;
    ensure(
        rss1 <= rss0 + 8 * 1024,
        format!("RSS grew from {rss0} KiB to {rss1} KiB"),
    )?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    common::run(
        guard,
        vec![case(
            "ten_thousand_cycles",
            Duration::from_secs(300),
            ten_thousand_cycles,
        )],
    )
}
