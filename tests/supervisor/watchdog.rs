//! Watchdogs: a child that calls `mp::heartbeat()` often enough keeps
//! running; one that stops is killed (`WatchdogTimeout`, then `Exited`
//! with `ExitKind::WatchdogTimeout`) and restarted; with a
//! `ready_timeout`, the watchdog counts from readiness, not from the start.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, ChildStatus, Event, ExitKind, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::is_running;
use crate::common::{Case, case, ensure};
use crate::strategies::kit::{self, READY, barrier, labels, pid_of, record};

/// How often [`beat`] sends a heartbeat.
const BEAT: Duration = Duration::from_millis(50);

/// A ready child that sends a heartbeat every [`BEAT`] for `for_ms`
/// milliseconds (for good with `None`), then goes on without.
async fn beat(for_ms: Option<u64>) {
    tokio::spawn(async move {
        let end = for_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
        while end.is_none_or(|end| Instant::now() < end) {
            mp::heartbeat();
            tokio::time::sleep(BEAT).await;
        }
    });
    kit::serve(()).await;
}

/// A child that sends heartbeats well within its watchdog is left alone:
/// same process, first generation, no watchdog event.
async fn heartbeats_keep_a_child_running() -> Result<(), Failed> {
    let watchdog = Duration::from_secs(1);
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("a", beat, None::<u64>)
                .ready_timeout(READY)
                .watchdog(watchdog),
        )
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let pid = pid_of(&sup, "a")?;
    tokio::time::sleep(watchdog * 3).await;
    barrier(&sup).await?;
    let seen = kit::drain(&mut events);
    ensure(
        seen.is_empty(),
        format!("events while it sent heartbeats: {seen:#?}"),
    )?;
    let a = &sup.which_children()[0];
    ensure(
        a.pid == Some(pid) && a.generation == 1 && a.state == ChildStatus::Running,
        format!("a: {a:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A child that stops sending heartbeats is killed once the watchdog runs
/// out after its last one: `WatchdogTimeout`, then `Exited` with
/// `ExitKind::WatchdogTimeout` for the same pid, then a restart.
async fn a_silent_child_is_killed_and_restarted() -> Result<(), Failed> {
    let watchdog = Duration::from_secs(1);
    let beats_for = Duration::from_millis(1500);
    let t0 = Instant::now();
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("a", beat, Some(u64::try_from(beats_for.as_millis())?))
                .ready_timeout(READY)
                .watchdog(watchdog),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = pid_of(&sup, "a")?;
    let seen = record(&mut events, |e| matches!(e, Event::WatchdogTimeout { .. })).await?;
    let fired = t0.elapsed();
    // The last heartbeat came no earlier than `beats_for` minus one beat
    // after the start, and the watchdog ran from there.
    ensure(
        fired >= beats_for - BEAT + watchdog,
        format!("the watchdog fired {fired:?} after the start, despite the heartbeats"),
    )?;
    let rest = record(&mut events, |e| kit::is_started(e, "a", 2)).await?;
    let all: Vec<Event> = seen.into_iter().chain(rest).collect();
    ensure(
        labels(&all, &["watchdog", "exited", "scheduled", "started"])
            == [
                "started a#1",
                "watchdog a",
                "exited a",
                "scheduled a",
                "started a#2",
            ],
        format!("events: {all:#?}"),
    )?;
    ensure(
        all.iter().any(|e| {
            *e == Event::WatchdogTimeout {
                child: "root/a".into(),
                pid: first,
            }
        }),
        format!("WatchdogTimeout names the first pid: {all:#?}"),
    )?;
    ensure(
        all.iter().any(|e| {
            matches!(e,
            Event::Exited { pid, exit: ExitKind::WatchdogTimeout, .. } if *pid == first)
        }),
        format!("Exited with WatchdogTimeout for the first pid: {all:#?}"),
    )?;
    barrier(&sup).await?;
    ensure(!is_running(first), "the silent child is gone")?;
    ensure(pid_of(&sup, "a")? != first, "a new process")?;
    sup.shutdown().await?;
    Ok(())
}

/// With a `ready_timeout`, the watchdog runs from readiness: a child that
/// is ready late is not killed for the heartbeats it did not send before.
async fn the_watchdog_starts_from_readiness() -> Result<(), Failed> {
    let late = Duration::from_secs(1);
    let watchdog = Duration::from_millis(400);
    let t0 = Instant::now();
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("a", kit::ready_after, u64::try_from(late.as_millis())?)
                .ready_timeout(READY)
                .watchdog(watchdog),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let seen = record(&mut events, |e| kit::is_exited(e, "a")).await?;
    let fired = t0.elapsed();
    ensure(
        labels(&seen, &["started", "ready", "watchdog", "exited"])
            == ["started a#1", "ready a", "watchdog a", "exited a"],
        format!("events: {seen:#?}"),
    )?;
    ensure(
        kit::exit_of(&seen, "a") == Some(ExitKind::WatchdogTimeout),
        format!("a missed its heartbeat: {seen:#?}"),
    )?;
    ensure(
        fired >= late + watchdog,
        format!("the watchdog fired {fired:?} after the start, before readiness plus {watchdog:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "heartbeats_keep_a_child_running",
            Duration::from_secs(30),
            heartbeats_keep_a_child_running,
        ),
        case(
            "a_silent_child_is_killed_and_restarted",
            Duration::from_secs(30),
            a_silent_child_is_killed_and_restarted,
        ),
        case(
            "the_watchdog_starts_from_readiness",
            Duration::from_secs(30),
            the_watchdog_starts_from_readiness,
        ),
    ]
}
