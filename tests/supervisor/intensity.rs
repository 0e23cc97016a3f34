//! Restart intensity and backoff: one restart past `max_restarts` within
//! the period stops every child in reverse order and ends the supervisor
//! with `IntensityExceeded`; restarts spread wider than the period do not;
//! explicit stops never count. The backoff's delays grow and reset, a
//! child terminated during its backoff stays stopped, and a replacement
//! never starts while anything of the incarnation before it runs.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use mp::supervisor::{Backoff, ChildStatus, Event, Supervisor, SupervisorError};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::common::{is_running, kill_hard as kill};
use crate::os::killed;
use crate::strategies::kit::{self, barrier, labels, pid_of, record, served};
#[cfg(unix)]
use crate::strategies::kit::{READY, group_members};

/// The `RestartScheduled` in `events`: (delay, restarts in period).
fn scheduled(events: &[Event]) -> Vec<(Duration, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RestartScheduled {
                delay,
                restarts_in_period,
                ..
            } => Some((*delay, *restarts_in_period)),
            _ => None,
        })
        .collect()
}

/// Kills child `name` and waits until generation `next` of it is ready;
/// returns the events in between and when the kill was sent.
async fn kill_and_await(
    sup: &Supervisor,
    events: &mut mp::supervisor::EventStream,
    name: &str,
    next: u64,
) -> Result<(Vec<Event>, Instant), Failed> {
    let pid = pid_of(sup, name)?;
    let sent = Instant::now();
    kill(pid)?;
    let seen = record(events, |e| kit::is_started(e, name, next)).await?;
    barrier(sup).await?;
    Ok((seen, sent))
}

/// One restart past the intensity stops every child in reverse start
/// order, emits `IntensityExceeded` and ends `wait()` with the child, the
/// count, the period and the last exit; no child process is left.
async fn exceeding_the_intensity_stops_everything() -> Result<(), Failed> {
    let period = Duration::from_secs(60);
    let sup = Supervisor::builder()
        .name("root")
        .intensity(2, period)
        .child(served("a"))
        .child(served("b"))
        .child(served("c"))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let mut all = Vec::new();
    for next in 2..=3 {
        let (seen, _) = kill_and_await(&sup, &mut events, "b", next).await?;
        all.extend(seen);
    }
    kill(pid_of(&sup, "b")?)?;
    let seen = record(&mut events, |e| kit::is_exited(e, "a")).await?;
    ensure(
        labels(&seen, &["exited", "stopping", "intensity", "started"])
            == [
                "exited b",
                "intensity b",
                "stopping c",
                "exited c",
                "stopping a",
                "exited a",
            ],
        format!("events of the meltdown: {seen:#?}"),
    )?;
    ensure(
        seen.iter().any(|e| {
            *e == Event::IntensityExceeded {
                supervisor: "root".into(),
                child: "root/b".into(),
                restarts: 3,
            }
        }),
        format!("the IntensityExceeded event: {seen:#?}"),
    )?;
    match sup.wait().await {
        Err(SupervisorError::IntensityExceeded {
            child,
            restarts: 3,
            period: p,
            last_exit,
        }) if child == "root/b" && p == period && last_exit == killed() => {}
        other => return Err(format!("wait() gave {other:?}").into()),
    }
    all.extend(seen);
    let pids = kit::started_pids(&all);
    ensure(
        pids.len() == 5,
        format!("three starts and two restarts: {pids:?}"),
    )?;
    for pid in pids {
        ensure(!is_running(pid), format!("pid {pid} outlived the meltdown"))?;
    }
    ensure(
        sup.which_children().is_empty(),
        format!("children after the meltdown: {:?}", sup.which_children()),
    )?;
    ensure(
        matches!(
            sup.shutdown().await,
            Err(SupervisorError::IntensityExceeded { .. })
        ),
        "shutdown() after the end reports the same end",
    )?;
    Ok(())
}

/// Restarts further apart than the period never add up: each one counts
/// alone, and the supervisor runs on.
async fn restarts_spread_beyond_the_period_do_not_melt_down() -> Result<(), Failed> {
    // Longer on Windows, where a start under Wine may take a good part of
    // 300 ms on a loaded machine.
    let period = Duration::from_millis(if cfg!(windows) { 1000 } else { 300 });
    let sup = Supervisor::builder()
        .name("root")
        .intensity(1, period)
        .child(served("a"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let mut counts = Vec::new();
    for next in 2..=4 {
        // Twice the period after the last restart was handled.
        tokio::time::sleep(period * 2).await;
        let (seen, _) = kill_and_await(&sup, &mut events, "a", next).await?;
        counts.extend(scheduled(&seen).into_iter().map(|(_, n)| n));
    }
    ensure(
        counts == [1, 1, 1],
        format!("restarts in period: {counts:?}"),
    )?;
    let a = &sup.which_children()[0];
    ensure(
        a.state == ChildStatus::Running && a.generation == 4 && a.restarts == 3,
        format!("a: {a:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// terminate_child and shutdown never restart a child and never count
/// toward the intensity, even an intensity of 0; a crash does.
async fn explicit_stops_do_not_count() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .intensity(0, Duration::from_secs(60))
        .child(served("a"))
        .child(served("b"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    for generation in 2..=3 {
        let pid = pid_of(&sup, "a")?;
        sup.terminate_child("a").await?;
        barrier(&sup).await?;
        let a = &sup.which_children()[0];
        ensure(
            a.state == ChildStatus::Stopped && a.pid.is_none() && !is_running(pid),
            format!("a after terminate_child: {a:?}"),
        )?;
        sup.restart_child("a").await?;
        ensure(
            pid_of(&sup, "a")? != pid,
            "restart_child started a new process",
        )?;
        let a = &sup.which_children()[0];
        ensure(
            a.generation == generation && a.restarts == 0,
            format!("a after restart_child: {a:?}"),
        )?;
    }
    ensure(sup.shutdown().await.is_ok(), "shutdown ends it cleanly")?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, &["scheduled", "intensity"]).is_empty(),
        format!("no restart was scheduled: {seen:#?}"),
    )?;

    // The same supervisor, started again: a crash is one restart too many.
    sup.start().await?;
    kill(pid_of(&sup, "b")?)?;
    match sup.wait().await {
        Err(SupervisorError::IntensityExceeded {
            child, restarts: 1, ..
        }) if child == "root/b" => Ok(()),
        other => Err(format!("after a crash, wait() gave {other:?}").into()),
    }
}

/// `Backoff::exponential` doubles the delay with each restart in a row up
/// to its maximum, and no restart comes before its delay is over.
async fn backoff_delays_grow_to_the_maximum() -> Result<(), Failed> {
    let ms = Duration::from_millis;
    let sup = Supervisor::builder()
        .name("root")
        .intensity(10, Duration::from_secs(60))
        .backoff(Backoff::exponential(ms(100), ms(400)))
        .child(served("a"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let mut delays = Vec::new();
    for next in 2..=5 {
        let (seen, sent) = kill_and_await(&sup, &mut events, "a", next).await?;
        let waited = sent.elapsed();
        let [(delay, count)] = scheduled(&seen)[..] else {
            return Err(format!("one restart scheduled: {seen:#?}").into());
        };
        ensure(
            count == u32::try_from(next - 1)?,
            format!("restarts in period {count} at generation {next}"),
        )?;
        ensure(
            waited >= delay,
            format!(
                "generation {next} started {waited:?} after the kill, before its delay {delay:?}"
            ),
        )?;
        delays.push(delay);
    }
    ensure(
        delays == [ms(100), ms(200), ms(400), ms(400)],
        format!("delays: {delays:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// With `reset_after(d)`, a child that ran at least `d` before it ended
/// starts again after the first delay, as if it had never failed.
async fn backoff_resets_after_a_long_run() -> Result<(), Failed> {
    let ms = Duration::from_millis;
    let long_run = Duration::from_secs(2);
    let sup = Supervisor::builder()
        .name("root")
        .intensity(10, Duration::from_secs(60))
        .backoff(Backoff::exponential(ms(100), ms(1600)).reset_after(long_run))
        .child(served("a"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let mut delays = Vec::new();
    for next in 2..=3 {
        let (seen, _) = kill_and_await(&sup, &mut events, "a", next).await?;
        delays.extend(scheduled(&seen).into_iter().map(|(d, _)| d));
    }
    tokio::time::sleep(long_run + ms(300)).await;
    for next in 4..=5 {
        let (seen, _) = kill_and_await(&sup, &mut events, "a", next).await?;
        delays.extend(scheduled(&seen).into_iter().map(|(d, _)| d));
    }
    ensure(
        delays == [ms(100), ms(200), ms(100), ms(200)],
        format!("delays: {delays:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A child terminated while it waits out its backoff is not started when
/// the backoff ends; restart_child starts it, as its next generation.
async fn terminate_during_the_backoff_keeps_it_stopped() -> Result<(), Failed> {
    let delay = Duration::from_secs(2);
    let sup = Supervisor::builder()
        .name("root")
        .backoff(Backoff::exponential(delay, delay))
        .child(served("a"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let killed = Instant::now();
    kill(pid_of(&sup, "a")?)?;
    record(&mut events, |e| matches!(e, Event::RestartScheduled { .. })).await?;
    sup.terminate_child("a").await?;
    let a = &sup.which_children()[0];
    ensure(
        a.state == ChildStatus::Stopped && a.pid.is_none(),
        format!("a after terminate_child: {a:?}"),
    )?;
    // Well past the end of the backoff.
    tokio::time::sleep((delay + Duration::from_millis(500)).saturating_sub(killed.elapsed())).await;
    barrier(&sup).await?;
    let a = &sup.which_children()[0];
    ensure(
        a.state == ChildStatus::Stopped && a.generation == 1,
        format!("a after its backoff: {a:?}"),
    )?;
    sup.restart_child("a").await?;
    let seen = record(&mut events, |e| kit::is_started(e, "a", 2)).await?;
    ensure(
        labels(&seen, kit::ORDER) == ["started a#2"],
        format!("events after terminate_child: {seen:#?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A child whose process group has a second process in it (on
/// /dev/null, so that a straggler holds no pipe of the test open).
#[cfg(unix)]
async fn leader_with_grandchild(_: ()) {
    use std::process::Stdio;
    let grandchild = std::process::Command::new("sleep")
        .arg("120")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    kit::serve(()).await;
    drop(grandchild);
}

/// The replacement of a child starts only once the incarnation before it
/// is gone: its leader and the rest of its process group.
#[cfg(unix)]
async fn a_replacement_never_overlaps_its_predecessor() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .intensity(10, Duration::from_secs(60))
        .child(mp::supervisor::ChildSpec::new("a", leader_with_grandchild, ()).ready_timeout(READY))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    for next in 2..=4 {
        let leader = pid_of(&sup, "a")?;
        let mut group = Vec::new();
        // The grandchild is spawned before the child says it is ready.
        crate::common::eventually("the grandchild in the group", || {
            group = group_members(leader);
            group.len() == 2
        })
        .await?;
        kill(leader)?;
        let seen = record(&mut events, |e| kit::is_started(e, "a", next)).await?;
        let alive: Vec<_> = group.iter().filter(|p| is_running(**p)).collect();
        ensure(
            alive.is_empty(),
            format!("at the start of generation {next}, {alive:?} of group {group:?} still ran"),
        )?;
        ensure(
            kit::exit_of(&seen, "a") == Some(killed()),
            format!("a was killed: {seen:#?}"),
        )?;
        barrier(&sup).await?;
    }
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "exceeding_the_intensity_stops_everything",
            Duration::from_secs(30),
            exceeding_the_intensity_stops_everything,
        ),
        case(
            "restarts_spread_beyond_the_period_do_not_melt_down",
            Duration::from_secs(30),
            restarts_spread_beyond_the_period_do_not_melt_down,
        ),
        case(
            "explicit_stops_do_not_count",
            Duration::from_secs(30),
            explicit_stops_do_not_count,
        ),
        case(
            "backoff_delays_grow_to_the_maximum",
            Duration::from_secs(30),
            backoff_delays_grow_to_the_maximum,
        ),
        case(
            "backoff_resets_after_a_long_run",
            Duration::from_secs(30),
            backoff_resets_after_a_long_run,
        ),
        case(
            "terminate_during_the_backoff_keeps_it_stopped",
            Duration::from_secs(30),
            terminate_during_the_backoff_keeps_it_stopped,
        ),
    ];
    // Unix only: it reads the child's process group from /proc and its
    // grandchild is `sleep`. (On Windows the group is a Job Object; the
    // portable suite checks that a stopped child's grandchildren end.)
    #[cfg(unix)]
    cases.push(case(
        "a_replacement_never_overlaps_its_predecessor",
        Duration::from_secs(40),
        a_replacement_never_overlaps_its_predecessor,
    ));
    cases
}
