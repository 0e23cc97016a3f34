//! Start+join cycles leave nothing behind (counted in /proc): a thousand
//! leave no zombie and no open descriptor; ten thousand show no growth in
//! open descriptors, zombies or resident memory beyond a small bound. Each
//! case runs alone, so that nothing else runs alongside while it counts.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;

use crate::common::{self, Case, case_alone, ensure};

async fn cycles_of_8(n: u32) -> Result<(), Failed> {
    common::start_join_cycles(n, 8).await
}

async fn thousand_cycles_leak_nothing() -> Result<(), Failed> {
    // Warm up: the runtime's and the library's lazily created descriptors.
    cycles_of_8(16).await?;
    let fds_before = common::open_fds();
    // The fork server, started by the warm-up, stays.
    let children_before = common::started_children();
    cycles_of_8(1000).await?;
    // The watcher tasks close their sockets just after the values arrive.
    let fds_after = common::open_fds_settled(fds_before).await;
    let zombies = common::zombie_children();
    println!("open fds: {fds_before} before, {fds_after} after 1000 cycles; zombies: {zombies:?}");
    ensure(
        fds_after <= fds_before,
        format!("descriptors grew from {fds_before} to {fds_after}"),
    )?;
    ensure(zombies.is_empty(), format!("zombies left: {zombies:?}"))?;
    let children_after = common::started_children();
    ensure(
        children_after == children_before,
        format!("children: {children_before:?} before, {children_after:?} after"),
    )?;
    Ok(())
}

async fn cycles_of_16(n: u32) -> Result<(), Failed> {
    common::start_join_cycles(n, 16).await
}

async fn ten_thousand_cycles() -> Result<(), Failed> {
    cycles_of_16(200).await?;
    let (fds0, rss0, children0) = (
        common::open_fds(),
        common::rss_kib("self"),
        common::started_children(),
    );
    let t0 = Instant::now();
    cycles_of_16(10_000).await?;
    let took = t0.elapsed();
    let fds1 = common::open_fds_settled(fds0).await;
    let (rss1, zombies, children1) = (
        common::rss_kib("self"),
        common::zombie_children(),
        common::started_children(),
    );
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

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_alone(
            "thousand_cycles_leak_nothing",
            Duration::from_secs(240),
            thousand_cycles_leak_nothing,
        ),
        case_alone(
            "ten_thousand_cycles",
            Duration::from_secs(300),
            ten_thousand_cycles,
        ),
    ]
}
