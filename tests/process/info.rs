//! `active_children()` and `cpu_count()`.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

fn nap(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The live children are listed with their names, pids and daemon flags,
/// in the order they started; one that ended is left out (and reaped).
/// Other cases run beside this one, so only these children are looked at.
async fn active_children_lists_the_live_ones() -> Result<(), Failed> {
    let a = mp::Process::builder()
        .name("active-a")
        .build::<_, (), _, _>(nap, 30_000);
    let b = mp::Process::builder()
        .name("active-b")
        .daemon(true)
        .build::<_, (), _, _>(nap, 30_000);
    let quick = mp::Process::builder()
        .name("active-quick")
        .build::<_, (), _, _>(nap, 0);
    let unstarted = mp::Process::builder()
        .name("active-unstarted")
        .build::<_, (), _, _>(nap, 0);
    a.start().await?;
    b.start().await?;
    quick.start().await?;
    quick.sentinel().await;

    let mine: Vec<mp::ProcessInfo> = mp::active_children()
        .into_iter()
        .filter(|c| c.name().starts_with("active-"))
        .collect();
    let names: Vec<&str> = mine.iter().map(mp::ProcessInfo::name).collect();
    ensure(names == ["active-a", "active-b"], format!("{names:?}"))?;
    ensure(Some(mine[0].pid()) == a.pid(), "a's pid")?;
    ensure(Some(mine[1].pid()) == b.pid(), "b's pid")?;
    ensure(!mine[0].daemon() && mine[1].daemon(), "daemon flags")?;
    ensure(mine.iter().all(mp::ProcessInfo::is_child), "children")?;
    ensure(
        mine[0].authkey() == mp::current_process().authkey(),
        "a child inherits the authkey",
    )?;
    ensure(quick.exitcode() == Some(0), "the quick one ended")?;

    a.kill()?;
    a.sentinel().await;
    let names: Vec<String> = mp::active_children()
        .into_iter()
        .map(|c| c.name().to_owned())
        .filter(|n| n.starts_with("active-"))
        .collect();
    ensure(names == ["active-b"], format!("{names:?}"))?;
    b.kill()?;
    let _ = b.join().await;
    let _ = a.join().await;
    drop(unstarted);
    Ok(())
}

/// The CPUs this process may use: at least one, as the standard library
/// counts them.
async fn cpu_count_counts_usable_cpus() -> Result<(), Failed> {
    let n = mp::cpu_count();
    ensure(n >= 1, "at least one")?;
    ensure(
        n == std::thread::available_parallelism()?.get(),
        format!("{n}"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "active_children_lists_the_live_ones",
            T,
            active_children_lists_the_live_ones,
        ),
        case(
            "cpu_count_counts_usable_cpus",
            T,
            cpu_count_counts_usable_cpus,
        ),
    ]
}
