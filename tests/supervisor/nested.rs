//! Nested supervisors (`ChildSpec::supervisor`): a task of the program
//! whose children's events reach the root's stream with their full paths;
//! its meltdown counts as one exit in its parent, which applies its own
//! strategy; its children start with it and stop with it, in order.

use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::SupervisorError;
use mp::supervisor::{ChildSpec, Event, ExitKind, Strategy, Supervisor, SupervisorBuilder};
use tokio::process::Command;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::common::{is_running, kill_hard as kill};
use crate::containment::{collect_until, drain, started, until};
use crate::os::killed;

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// A target child that must be ready before the next starts.
fn target(name: &str) -> ChildSpec {
    ChildSpec::new(name, serve, ()).ready_timeout(Duration::from_secs(10))
}

/// A nested supervisor `sub` with targets `x` and `y`.
fn sub() -> SupervisorBuilder {
    Supervisor::builder()
        .name("sub")
        .child(target("x"))
        .child(target("y"))
}

/// Each event as (what, path): the order of things, without pids.
fn shape(events: &[Event]) -> Vec<(&'static str, String)> {
    events
        .iter()
        .filter_map(|e| {
            Some(match e {
                Event::Started { child, .. } => ("started", child.clone()),
                Event::Ready { child, .. } => ("ready", child.clone()),
                Event::Stopping { child, .. } => ("stopping", child.clone()),
                Event::Exited { child, .. } => ("exited", child.clone()),
                Event::RestartScheduled { child, .. } => ("restart", child.clone()),
                Event::IntensityExceeded { supervisor, .. } => ("meltdown", supervisor.clone()),
                _ => return None,
            })
        })
        .collect()
}

fn step(what: &'static str, path: &str) -> (&'static str, String) {
    (what, path.to_owned())
}

/// Inner events reach the root with full paths, in order; the nested one has the program's pid.
async fn inner_events_reach_the_root_with_full_paths() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::supervisor("sub", sub()))
        .child(target("z"))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Ready { child, .. } if child == "root/z"),
    )
    .await?;
    ensure(
        shape(&seen)
            == [
                step("started", "root/sub/x"),
                step("ready", "root/sub/x"),
                step("started", "root/sub/y"),
                step("ready", "root/sub/y"),
                step("started", "root/sub"),
                step("started", "root/z"),
                step("ready", "root/z"),
            ],
        format!("the start, in order: {seen:?}"),
    )?;
    let me = std::process::id();
    let x1 = match &seen[0] {
        Event::Started { pid, .. } => *pid,
        _ => unreachable!("checked above"),
    };
    ensure(
        matches!(&seen[4], Event::Started { pid, generation: 1, .. } if *pid == me),
        format!(
            "the nested supervisor's pid is the program's: {:?}",
            seen[4]
        ),
    )?;
    ensure(x1 != me, "an inner target is a process of its own")?;
    kill(x1)?;
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Ready { child, .. } if child == "root/sub/x"),
    )
    .await?;
    ensure(
        shape(&seen)
            == [
                step("exited", "root/sub/x"),
                step("restart", "root/sub/x"),
                step("started", "root/sub/x"),
                step("ready", "root/sub/x"),
            ],
        format!("the inner restart: {seen:?}"),
    )?;
    ensure(
        matches!(&seen[0], Event::Exited { pid, exit, .. } if *pid == x1 && *exit == killed()),
        format!("x was killed: {:?}", seen[0]),
    )?;
    let kids = sup.which_children();
    ensure(
        kids[0].name == "sub"
            && kids[0].pid == Some(me)
            && kids[0].generation == 1
            && kids[0].restarts == 0,
        format!("the root restarted nothing: {kids:?}"),
    )?;
    sup.shutdown().await?;
    let seen = drain(sup, events).await?;
    ensure(
        seen.iter().any(|e| {
            matches!(e, Event::Exited { child, pid, exit: ExitKind::Normal, .. }
                if child == "root/sub" && *pid == me)
        }),
        format!("the nested supervisor's exit carries the program's pid: {seen:?}"),
    )?;
    Ok(())
}

/// An inner meltdown is one exit in the parent, which applies its strategy; generations go on.
async fn an_inner_meltdown_is_one_exit_in_the_parent() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .strategy(Strategy::RestForOne)
        .intensity(1, Duration::from_secs(60))
        .child(target("a"))
        .child(ChildSpec::supervisor(
            "sub",
            sub().intensity(1, Duration::from_secs(60)),
        ))
        .child(target("b"))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let a1 = started(&mut events, "root/a", 1).await?;
    let x1 = started(&mut events, "root/sub/x", 1).await?;
    let b1 = started(&mut events, "root/b", 1).await?;
    kill(x1)?;
    let x2 = started(&mut events, "root/sub/x", 2).await?;
    until(
        &mut events,
        |e| matches!(e, Event::Ready { pid, .. } if *pid == x2),
    )
    .await?;
    kill(x2)?;
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Ready { child, .. } if child == "root/b"),
    )
    .await?;
    ensure(
        shape(&seen)
            == [
                step("exited", "root/sub/x"),
                step("meltdown", "root/sub"),
                step("stopping", "root/sub/y"),
                step("exited", "root/sub/y"),
                step("exited", "root/sub"),
                step("stopping", "root/b"),
                step("exited", "root/b"),
                step("restart", "root/sub"),
                step("restart", "root/b"),
                step("started", "root/sub/x"),
                step("ready", "root/sub/x"),
                step("started", "root/sub/y"),
                step("ready", "root/sub/y"),
                step("started", "root/sub"),
                step("started", "root/b"),
                step("ready", "root/b"),
            ],
        format!("the inner meltdown and the parent's RestForOne: {seen:?}"),
    )?;
    let find = |want: &dyn Fn(&Event) -> bool| seen.iter().find(|e| want(e)).cloned();
    ensure(
        find(&|e| {
            matches!(e, Event::IntensityExceeded { supervisor, child, restarts: 2 }
                if supervisor == "root/sub" && child == "root/sub/x")
        })
        .is_some(),
        format!("the meltdown is the inner supervisor's, over x: {seen:?}"),
    )?;
    ensure(
        find(&|e| {
            matches!(e, Event::Exited { child, exit: ExitKind::Failed(_), .. } if child == "root/sub")
        })
        .is_some(),
        format!("the nested supervisor exited abnormally: {seen:?}"),
    )?;
    ensure(
        find(&|e| {
            matches!(e, Event::RestartScheduled { child, restarts_in_period: 1, .. }
                if child == "root/sub")
        })
        .is_some(),
        format!("the parent counted one restart: {seen:?}"),
    )?;
    let generations: Vec<(String, u64)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Started {
                child, generation, ..
            } => Some((child.clone(), *generation)),
            _ => None,
        })
        .collect();
    ensure(
        generations
            == [
                ("root/sub/x".to_owned(), 3),
                ("root/sub/y".to_owned(), 2),
                ("root/sub".to_owned(), 2),
                ("root/b".to_owned(), 2),
            ],
        format!("generations go on across the inner restart: {generations:?}"),
    )?;
    ensure(
        !is_running(x1) && !is_running(x2) && !is_running(b1),
        "the old incarnations are gone",
    )?;
    let kids = sup.which_children();
    ensure(
        kids.iter()
            .map(|k| (k.name.as_str(), k.generation, k.restarts))
            .collect::<Vec<_>>()
            == [("a", 1, 0), ("sub", 2, 1), ("b", 2, 1)]
            && kids[0].pid == Some(a1),
        format!("a untouched, sub and b restarted: {kids:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A root shutdown stops everything in reverse start order, inner children inside the tree.
async fn root_shutdown_stops_inner_children_in_reverse() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(target("a"))
        .child(ChildSpec::supervisor("sub", sub()))
        .child(target("b"))
        .build();
    let events = sup.events();
    sup.start().await?;
    sup.shutdown().await?;
    let seen = drain(sup, events).await?;
    let pids: Vec<u32> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Started { pid, .. } if *pid != std::process::id() => Some(*pid),
            _ => None,
        })
        .collect();
    let stop: Vec<_> = shape(&seen)
        .into_iter()
        .filter(|(what, _)| *what == "stopping" || *what == "exited")
        .collect();
    ensure(
        stop == [
            step("stopping", "root/b"),
            step("exited", "root/b"),
            step("stopping", "root/sub"),
            step("stopping", "root/sub/y"),
            step("exited", "root/sub/y"),
            step("stopping", "root/sub/x"),
            step("exited", "root/sub/x"),
            step("exited", "root/sub"),
            step("stopping", "root/a"),
            step("exited", "root/a"),
        ],
        format!("reverse order, inner children inside: {stop:?}"),
    )?;
    ensure(
        pids.len() == 4 && pids.iter().all(|&p| !is_running(p)),
        format!("every process is gone: {pids:?}"),
    )?;
    Ok(())
}

/// An inner start failure fails the root's start and stops what started, in reverse.
async fn an_inner_start_failure_fails_the_root_start() -> Result<(), Failed> {
    let inner = Supervisor::builder()
        .name("sub")
        .child(target("x"))
        .child(ChildSpec::command(
            "missing",
            Command::new("/nonexistent/no-such-program"),
        ));
    let sup = Supervisor::builder()
        .name("root")
        .child(target("a"))
        .child(ChildSpec::supervisor("sub", inner))
        .child(target("b"))
        .build();
    let events = sup.events();
    let result = sup.start().await;
    ensure(
        matches!(&result, Err(SupervisorError::StartFailed { child, exit: ExitKind::Failed(_) })
            if child == "root/sub"),
        format!("the root's start failed at sub: {result:?}"),
    )?;
    let seen = drain(sup, events).await?;
    ensure(
        shape(&seen)
            == [
                step("started", "root/a"),
                step("ready", "root/a"),
                step("started", "root/sub/x"),
                step("ready", "root/sub/x"),
                step("stopping", "root/sub/x"),
                step("exited", "root/sub/x"),
                step("stopping", "root/a"),
                step("exited", "root/a"),
            ],
        format!("inner x stopped, then a; b never started: {seen:?}"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "inner_events_reach_the_root_with_full_paths",
            Duration::from_secs(30),
            inner_events_reach_the_root_with_full_paths,
        ),
        case(
            "an_inner_meltdown_is_one_exit_in_the_parent",
            Duration::from_secs(30),
            an_inner_meltdown_is_one_exit_in_the_parent,
        ),
        case(
            "root_shutdown_stops_inner_children_in_reverse",
            Duration::from_secs(30),
            root_shutdown_stops_inner_children_in_reverse,
        ),
    ];
    cases.push(case(
        "an_inner_start_failure_fails_the_root_start",
        Duration::from_secs(30),
        an_inner_start_failure_fails_the_root_start,
    ));
    cases
}
