//! `PoolBuilder::spin`: after sending jobs, a slot watches its worker's
//! reply ring before it sleeps. It watches only then: an idle pool burns
//! no CPU; and a slow reply costs the spin time, no more.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

/// CPU time (user and system) of this process, all its threads.
fn own_cpu() -> Duration {
    // SAFETY: `getrusage` writes into the zeroed struct it is given.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0) * 1000,
        )
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of process `pid` from `/proc` (clock ticks of 10 ms).
fn cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

fn square(x: u64) -> u64 {
    x * x
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// After work, an idle pool (with the default spin) costs no CPU, in the
/// parent or in its workers. `POOL_IDLE_SECS` sets how long it watches
/// (1 s by default).
async fn an_idle_pool_burns_no_cpu() -> Result<(), Failed> {
    let secs: u64 = std::env::var("POOL_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let pool = mp::Pool::new(2).await?;
    let out = pool.map_chunked(square, 0..2000u64, 1).await?;
    ensure(out.len() == 2000, "the work")?;
    for _ in 0..50 {
        pool.apply(square, 3).await?;
    }
    let workers = common::started_children();
    ensure(workers.len() == 2, format!("workers {workers:?}"))?;
    let (me0, w0): (Duration, Vec<Duration>) =
        (own_cpu(), workers.iter().map(|&p| cpu_of(p)).collect());
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let idle = t0.elapsed();
    let me = own_cpu() - me0;
    let theirs: Duration = workers
        .iter()
        .zip(&w0)
        .map(|(&p, &c)| cpu_of(p).saturating_sub(c))
        .sum();
    println!("idle pool over {idle:?}: parent {me:?} of CPU, workers {theirs:?}");
    ensure(
        me < idle / 50 && theirs <= Duration::from_millis(20) * u32::try_from(secs)?,
        format!("an idle pool used {me:?} (parent) and {theirs:?} (workers) in {idle:?}"),
    )?;
    pool.close();
    pool.join().await?;
    Ok(())
}

/// The parent's CPU time while one task of `ms` runs, with `spin`.
async fn cpu_for_one_slow_task(spin: Duration, ms: u64) -> Result<Duration, Failed> {
    let pool = mp::Pool::builder().processes(1).spin(spin).build().await?;
    pool.apply(square, 1).await?;
    let before = own_cpu();
    ensure(pool.apply(nap, ms).await? == ms, "the nap")?;
    let spent = own_cpu() - before;
    pool.close();
    pool.join().await?;
    Ok(spent)
}

/// A reply slower than the spin costs the spin in CPU, then the slot
/// sleeps; with no spin, next to nothing.
async fn a_slow_reply_costs_the_spin_and_no_more() -> Result<(), Failed> {
    let spun = cpu_for_one_slow_task(Duration::from_millis(30), 300).await?;
    ensure(
        spun >= Duration::from_millis(15),
        format!("a 30 ms spin took {spun:?} of CPU: it did not watch"),
    )?;
    ensure(
        spun < Duration::from_millis(150),
        format!("a 30 ms spin took {spun:?} of CPU over a 300 ms task: it did not sleep"),
    )?;
    let still = cpu_for_one_slow_task(Duration::ZERO, 300).await?;
    ensure(
        still < Duration::from_millis(15),
        format!("without spin, one slow task took {still:?} of the parent's CPU"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_alone(
            "an_idle_pool_burns_no_cpu",
            Duration::from_secs(120),
            an_idle_pool_burns_no_cpu,
        ),
        case_alone(
            "a_slow_reply_costs_the_spin_and_no_more",
            Duration::from_secs(60),
            a_slow_reply_costs_the_spin_and_no_more,
        ),
    ]
}
