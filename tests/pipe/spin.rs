//! `PipeBuilder::spin`: a receive right after a send watches the socket
//! for a while before it parks. Messages still arrive whatever their
//! timing, a slow reply costs the spin time in CPU and no more, and the
//! setting goes with an end sent to another process.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Echoes each value after the delay (ms) it asks for, with the CPU time
/// (us) its thread spent from its previous reply to this request: in its
/// receive right after a send, which watches the socket, then parks.
fn echo(mut conn: mp::Connection<(u64, u64)>) {
    let mut since = None;
    while let Ok((v, delay)) = conn.blocking_recv() {
        let spent = since.map_or(0, |t: Duration| {
            u64::try_from((thread_cpu() - t).as_micros()).unwrap_or(u64::MAX)
        });
        std::thread::sleep(Duration::from_millis(delay));
        if conn.blocking_send(&(v, spent)).is_err() {
            break;
        }
        since = Some(thread_cpu());
    }
}

/// Round trips through a spinning pipe, quick and slow replies alike,
/// both ways; a slow reply costs the spin time in CPU, not the wait.
async fn spinning_ends_carry_every_message(spin: Duration) -> Result<u64, Failed> {
    let (mut ours, theirs) = mp::PipeBuilder::default()
        .spin(spin)
        .duplex::<(u64, u64)>()?;
    let child = mp::Process::new(echo, theirs);
    child.start().await?;
    // The first reply, then the child's receive after its send: the
    // parent waits 300 ms before it sends again.
    ours.send(&(1, 0)).await?;
    ensure(ours.recv().await?.0 == 1, "first echo")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ours.send(&(2, 0)).await?;
    let (v, child_spent_us) = ours.recv().await?;
    ensure(v == 2, "second echo")?;
    // Quick and slow replies: the parent's receive watches, then parks.
    for (i, delay) in [0u64, 0, 50, 0, 120, 0].into_iter().enumerate() {
        let before = thread_cpu();
        ours.send(&(10 + i as u64, delay)).await?;
        let (back, _) = tokio::time::timeout(Duration::from_secs(10), ours.recv()).await??;
        ensure(back == 10 + i as u64, format!("echo {i}: {back}"))?;
        let spent = thread_cpu() - before;
        // Generous: a spin of at most 30 ms, and a loaded machine.
        ensure(
            spent < spin + Duration::from_millis(40),
            format!("{spent:?} of CPU for a reply {delay} ms late, spin {spin:?}"),
        )?;
    }
    drop(ours);
    child.join().await?;
    Ok(child_spent_us)
}

async fn spin_goes_with_the_end() -> Result<(), Failed> {
    // The child's receive after its send waits 300 ms: it spins for the
    // spin time (CPU), then parks (none).
    let spun = spinning_ends_carry_every_message(Duration::from_millis(30)).await?;
    ensure(
        spun >= 10_000,
        format!("the child's end spun {spun} us of its 30 ms: the setting was lost"),
    )?;
    ensure(
        spun < 200_000,
        format!("the child's end spun {spun} us: it did not park after 30 ms"),
    )?;
    let still = spinning_ends_carry_every_message(Duration::ZERO).await?;
    ensure(
        still < 5_000,
        format!("without spin, the child's receive took {still} us of CPU"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "spin_goes_with_the_end",
        Duration::from_secs(60),
        spin_goes_with_the_end,
    )]
}
