//! Smoke cases: one of each kind of child, started, restarted, stopped.

use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, ChildStatus, Event, EventStream, Shutdown, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::common::{is_running, kill_hard as kill};
use crate::os::KILLED_BY_SUPERVISOR;

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// The next event that passes `want`.
async fn until(
    events: &mut EventStream,
    mut want: impl FnMut(&Event) -> bool,
) -> Result<Event, Failed> {
    loop {
        let e = events.next().await.ok_or("the event stream ended")?;
        if want(&e) {
            return Ok(e);
        }
    }
}

async fn restarts_a_killed_target() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("a", serve, ()).ready_timeout(Duration::from_secs(10)))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = sup.which_children()[0].pid.ok_or("a pid")?;
    kill(first)?;
    until(
        &mut events,
        |e| matches!(e, Event::Ready { pid, .. } if *pid != first),
    )
    .await?;
    sup.shutdown().await?;
    ensure(
        sup.which_children().is_empty(),
        "no children after shutdown",
    )?;
    Ok(())
}

// Unix only: the program is an `sh` script that runs `systemd-notify`.
#[cfg(unix)]
async fn restarts_a_killed_program() -> Result<(), Failed> {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg("systemd-notify --ready; exec sleep 1000");
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::command("p", cmd).ready_timeout(Duration::from_secs(10)))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = sup.which_children()[0].pid.ok_or("a pid")?;
    kill(first)?;
    until(
        &mut events,
        |e| matches!(e, Event::Ready { pid, .. } if *pid != first),
    )
    .await?;
    sup.shutdown().await?;
    Ok(())
}

fn double(x: u32) -> u32 {
    x * 2
}

async fn runs_a_pool_and_a_nested_supervisor() -> Result<(), Failed> {
    let inner = Supervisor::builder()
        .name("inner")
        .child(ChildSpec::new("x", serve, ()));
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::pool("pool", mp::Pool::builder().processes(2)))
        .child(ChildSpec::supervisor("sub", inner))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let pool = sup.pool("pool").ok_or("the pool")?;
    let out = pool.map(double, vec![1, 2, 3]).await?;
    ensure(out == vec![2, 4, 6], "the pool works")?;
    // The nested supervisor's child, on the root's stream, by its path.
    until(
        &mut events,
        |e| matches!(e, Event::Started { child, .. } if child == "root/sub/x"),
    )
    .await?;
    sup.shutdown().await?;
    Ok(())
}

/// Says it is ready with its stop handler in place, then ignores the stop.
async fn stubborn(_: ()) {
    let stop = mp::shutdown_requested();
    tokio::pin!(stop);
    // Polled once, so that the handler is in place before it is ready.
    let _ = futures::poll!(&mut stop);
    mp::notify_ready();
    stop.await;
    std::future::pending::<()>().await;
}

/// While its stop is under way a child is `Stopping`; past its timeout
/// it is killed (`Killed`, then `Exited` by SIGKILL). On Windows there is
/// no stop to ignore: the stop ends the child's job at once, with no
/// `Killed` (`Shutdown::Timeout` ends it as `BrutalKill` does).
async fn a_child_being_stopped_is_stopping_then_killed() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("s", stubborn, ())
                .ready_timeout(Duration::from_secs(10))
                .shutdown(Shutdown::Timeout(Duration::from_millis(500))),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let pid = sup.which_children()[0].pid.ok_or("a pid")?;
    let stopping = tokio::spawn({
        let sup = sup.clone();
        async move { sup.shutdown().await }
    });
    if cfg!(windows) {
        stopping.await??;
        until(
            &mut events,
            |e| matches!(e, Event::Stopping { pid: p, .. } if *p == pid),
        )
        .await?;
        let exited = until(&mut events, |e| {
            matches!(e, Event::Exited { .. } | Event::Killed { .. })
        })
        .await?;
        ensure(
            matches!(&exited, Event::Exited { exit, pid: p, .. } if *p == pid && *exit == KILLED_BY_SUPERVISOR),
            format!("{exited:?}"),
        )?;
    } else {
        crate::common::eventually("the child is Stopping", || {
            sup.which_children()
                .first()
                .is_some_and(|c| c.state == ChildStatus::Stopping && c.pid == Some(pid))
        })
        .await?;
        stopping.await??;
        until(
            &mut events,
            |e| matches!(e, Event::Killed { pid: p, .. } if *p == pid),
        )
        .await?;
        let exited = until(&mut events, |e| matches!(e, Event::Exited { .. })).await?;
        ensure(
            matches!(&exited, Event::Exited { exit, pid: p, .. } if *p == pid && *exit == KILLED_BY_SUPERVISOR),
            format!("{exited:?}"),
        )?;
    }
    ensure(!is_running(pid), "the child is gone")?;
    Ok(())
}

/// Never says it is ready.
async fn never_ready(_: ()) {
    mp::shutdown_requested().await;
}

/// A shutdown asked for while a child is not ready yet ends the wait:
/// the child is stopped, `start()` says the supervisor is not running,
/// `wait()` that it stopped as asked. (The ready timeout is far beyond
/// the case's watchdog: waiting it out fails the case.)
async fn a_shutdown_during_a_start_ends_it() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("a", serve, ()).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::new("slow", never_ready, ()).ready_timeout(Duration::from_secs(600)))
        .build();
    let mut events = sup.events();
    let starting = tokio::spawn({
        let sup = sup.clone();
        async move { sup.start().await }
    });
    let slow = until(
        &mut events,
        |e| matches!(e, Event::Started { child, .. } if child == "root/slow"),
    )
    .await?;
    let Event::Started { pid: slow_pid, .. } = slow else {
        return Err("not a start".into());
    };
    sup.shutdown().await?;
    let started = starting.await?;
    ensure(
        started == Err(mp::SupervisorError::Stopped),
        format!("start() gave {started:?}"),
    )?;
    ensure(sup.wait().await.is_ok(), "stopped as asked")?;
    ensure(!is_running(slow_pid), "the slow child is gone")?;
    ensure(sup.which_children().is_empty(), "no children")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "a_shutdown_during_a_start_ends_it",
            Duration::from_secs(30),
            a_shutdown_during_a_start_ends_it,
        ),
        case(
            "a_child_being_stopped_is_stopping_then_killed",
            Duration::from_secs(30),
            a_child_being_stopped_is_stopping_then_killed,
        ),
        case(
            "restarts_a_killed_target",
            Duration::from_secs(30),
            restarts_a_killed_target,
        ),
        case(
            "runs_a_pool_and_a_nested_supervisor",
            Duration::from_secs(30),
            runs_a_pool_and_a_nested_supervisor,
        ),
    ];
    // Unix only: an `sh` script that runs `systemd-notify`.
    #[cfg(unix)]
    cases.push(case(
        "restarts_a_killed_program",
        Duration::from_secs(30),
        restarts_a_killed_program,
    ));
    cases
}
