//! A thousand start+join cycles leave no zombie and no open descriptor
//! behind (counted in /proc). One case per binary, so that nothing else
//! runs alongside while descriptors are counted.

mod common;

use std::time::Duration;

use common::{case, ensure};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

async fn cycles(n: u32) -> Result<(), Failed> {
    common::start_join_cycles(n, 8).await
}

async fn thousand_cycles_leak_nothing() -> Result<(), Failed> {
    // Warm up: the runtime's and the library's lazily created descriptors.
    cycles(16).await?;
    let fds_before = common::open_fds();
    // The fork server, started by the warm-up, stays.
    let children_before = common::children();
    cycles(1000).await?;
    // The watcher tasks close their sockets just after the values arrive.
    let fds_after = common::open_fds_settled(fds_before).await;
    let zombies = common::zombie_children();
    println!("open fds: {fds_before} before, {fds_after} after 1000 cycles; zombies: {zombies:?}");
    ensure(
        fds_after <= fds_before,
        format!("descriptors grew from {fds_before} to {fds_after}"),
    )?;
    ensure(zombies.is_empty(), format!("zombies left: {zombies:?}"))?;
    let children_after = common::children();
    ensure(
        children_after == children_before,
        format!("children: {children_before:?} before, {children_after:?} after"),
    )?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    common::run(
        guard,
        vec![case(
            "thousand_cycles_leak_nothing",
            Duration::from_secs(240),
            thousand_cycles_leak_nothing,
        )],
    )
}
