//! Restart strategies and restart types: which children a OneForOne,
//! OneForAll or RestForOne restart replaces and which it leaves alone,
//! that the others are stopped in reverse start order and started again
//! in order (read from the order of `Stopping`, `Exited` and `Started`),
//! and when Permanent, Transient and Temporary children start again.
//!
//! The [`kit`] at the end holds the targets and helpers that the
//! intensity, lifecycle and watchdog modules share with this one.

use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::{ChildStatus, ExitKind, Restart, Strategy, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::common::{is_running, kill_hard as kill};
use crate::os::killed;
use kit::{OnStop, ask_to_stop, barrier, labels, pid_of, record, served, serving_then};

/// Children `names`, each a [`kit::served`] child, under `strategy`.
fn serving(strategy: Strategy, names: &[&str]) -> Supervisor {
    let mut b = Supervisor::builder()
        .name("root")
        .strategy(strategy)
        .intensity(10, Duration::from_secs(60));
    for name in names {
        b = b.child(served(name));
    }
    b.build()
}

/// The pids of children `names`, in that order.
fn pids(sup: &Supervisor, names: &[&str]) -> Result<Vec<u32>, Failed> {
    names.iter().map(|n| pid_of(sup, n)).collect()
}

/// The (generation, restarts) of every child, in start order.
fn counts(sup: &Supervisor) -> Vec<(u64, u32)> {
    sup.which_children()
        .iter()
        .map(|c| (c.generation, c.restarts))
        .collect()
}

/// OneForOne: only the child that died is replaced; its siblings keep
/// their pids and are neither stopped nor counted.
async fn one_for_one_replaces_only_the_one() -> Result<(), Failed> {
    let names = ["a", "b", "c"];
    let sup = serving(Strategy::OneForOne, &names);
    sup.start().await?;
    let mut events = sup.events();
    let before = pids(&sup, &names)?;
    kill(before[1])?;
    let seen = record(&mut events, |e| kit::is_started(e, "b", 2)).await?;
    barrier(&sup).await?;
    ensure(
        labels(&seen, kit::ORDER) == ["exited b", "scheduled b", "started b#2"],
        format!("events after b died: {seen:#?}"),
    )?;
    let after = pids(&sup, &names)?;
    ensure(
        after[0] == before[0] && after[2] == before[2] && after[1] != before[1],
        format!("pids before {before:?}, after {after:?}"),
    )?;
    ensure(
        is_running(after[0]) && is_running(after[2]) && !is_running(before[1]),
        "a and c run on, the old b is gone",
    )?;
    ensure(
        counts(&sup) == [(1, 0), (2, 1), (1, 0)],
        format!("generations and restarts: {:?}", counts(&sup)),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// OneForAll: the others are stopped in reverse start order, then all
/// start again in start order, every one a new process.
async fn one_for_all_restarts_every_child_in_order() -> Result<(), Failed> {
    let names = ["a", "b", "c"];
    let sup = serving(Strategy::OneForAll, &names);
    sup.start().await?;
    let mut events = sup.events();
    let before = pids(&sup, &names)?;
    kill(before[1])?;
    let seen = record(&mut events, |e| kit::is_started(e, "c", 2)).await?;
    barrier(&sup).await?;
    ensure(
        labels(&seen, kit::ORDER)
            == [
                "exited b",
                "stopping c",
                "exited c",
                "stopping a",
                "exited a",
                "scheduled a",
                "scheduled b",
                "scheduled c",
                "started a#2",
                "started b#2",
                "started c#2",
            ],
        format!("events after b died: {seen:#?}"),
    )?;
    let after = pids(&sup, &names)?;
    for (old, new) in before.iter().zip(&after) {
        ensure(
            old != new && !is_running(*old) && is_running(*new),
            format!("pids before {before:?}, after {after:?}"),
        )?;
    }
    ensure(
        counts(&sup) == [(2, 1), (2, 1), (2, 1)],
        format!("generations and restarts: {:?}", counts(&sup)),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// RestForOne: the children started after the one that died are stopped
/// in reverse and start again with it, in order; the ones before it stay.
async fn rest_for_one_restarts_the_later_children() -> Result<(), Failed> {
    let names = ["a", "b", "c", "d"];
    let sup = serving(Strategy::RestForOne, &names);
    sup.start().await?;
    let mut events = sup.events();
    let before = pids(&sup, &names)?;
    kill(before[1])?;
    let seen = record(&mut events, |e| kit::is_started(e, "d", 2)).await?;
    barrier(&sup).await?;
    ensure(
        labels(&seen, kit::ORDER)
            == [
                "exited b",
                "stopping d",
                "exited d",
                "stopping c",
                "exited c",
                "scheduled b",
                "scheduled c",
                "scheduled d",
                "started b#2",
                "started c#2",
                "started d#2",
            ],
        format!("events after b died: {seen:#?}"),
    )?;
    let after = pids(&sup, &names)?;
    ensure(
        after[0] == before[0] && is_running(after[0]),
        "a keeps its process",
    )?;
    for i in 1..4 {
        ensure(
            after[i] != before[i] && !is_running(before[i]),
            format!("pids before {before:?}, after {after:?}"),
        )?;
    }
    ensure(
        counts(&sup) == [(1, 0), (2, 1), (2, 1), (2, 1)],
        format!("generations and restarts: {:?}", counts(&sup)),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// RestForOne on the last child is a OneForOne: nothing before it stops.
async fn rest_for_one_on_the_last_child_restarts_it_alone() -> Result<(), Failed> {
    let names = ["a", "b", "c"];
    let sup = serving(Strategy::RestForOne, &names);
    sup.start().await?;
    let mut events = sup.events();
    let before = pids(&sup, &names)?;
    kill(before[2])?;
    let seen = record(&mut events, |e| kit::is_started(e, "c", 2)).await?;
    barrier(&sup).await?;
    ensure(
        labels(&seen, kit::ORDER) == ["exited c", "scheduled c", "started c#2"],
        format!("events after c died: {seen:#?}"),
    )?;
    let after = pids(&sup, &names)?;
    ensure(
        after[..2] == before[..2],
        format!("pids before {before:?}, after {after:?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A permanent child is started again even after it returned normally.
async fn permanent_restarts_after_a_normal_return() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(serving_then("p", OnStop::Return).restart(Restart::Permanent))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let first = pid_of(&sup, "p")?;
    ask_to_stop(first)?;
    let seen = record(&mut events, |e| kit::is_started(e, "p", 2)).await?;
    barrier(&sup).await?;
    ensure(
        kit::exit_of(&seen, "p") == Some(ExitKind::Normal),
        format!("p returned normally: {seen:#?}"),
    )?;
    ensure(pid_of(&sup, "p")? != first, "a new process")?;
    sup.shutdown().await?;
    Ok(())
}

/// A transient child is started again after a crash (a signal, an exit
/// code, a panic), and not after it returned or exited with code 0.
async fn transient_restarts_only_after_a_crash() -> Result<(), Failed> {
    let transient =
        |name: &str, on_stop: OnStop| serving_then(name, on_stop).restart(Restart::Transient);
    let sup = Supervisor::builder()
        .name("root")
        .intensity(10, Duration::from_secs(60))
        .child(transient("ret", OnStop::Return))
        .child(transient("zero", OnStop::Exit(0)))
        .child(transient("code", OnStop::Exit(3)))
        .child(transient("panic", OnStop::Panic))
        .build();
    sup.start().await?;
    let mut events = sup.events();

    // A crash by a kill from outside: restarted.
    let first = pid_of(&sup, "ret")?;
    kill(first)?;
    let seen = record(&mut events, |e| kit::is_started(e, "ret", 2)).await?;
    barrier(&sup).await?;
    ensure(
        kit::exit_of(&seen, "ret") == Some(killed()),
        format!("ret was killed: {seen:#?}"),
    )?;

    // An exit code and a panic: restarted, with the exit said.
    ask_to_stop(pid_of(&sup, "code")?)?;
    let seen = record(&mut events, |e| kit::is_started(e, "code", 2)).await?;
    barrier(&sup).await?;
    ensure(
        kit::exit_of(&seen, "code") == Some(ExitKind::Code(3)),
        format!("code exited with 3: {seen:#?}"),
    )?;
    ask_to_stop(pid_of(&sup, "panic")?)?;
    let seen = record(&mut events, |e| kit::is_started(e, "panic", 2)).await?;
    barrier(&sup).await?;
    ensure(
        matches!(kit::exit_of(&seen, "panic"), Some(ExitKind::Panicked(m)) if m.contains("asked to panic")),
        format!("panic panicked: {seen:#?}"),
    )?;

    // A normal return and an exit with code 0: not restarted.
    for name in ["ret", "zero"] {
        ask_to_stop(pid_of(&sup, name)?)?;
        let seen = record(&mut events, |e| kit::is_exited(e, name)).await?;
        ensure(
            kit::exit_of(&seen, name) == Some(ExitKind::Normal),
            format!("{name} ended normally: {seen:#?}"),
        )?;
    }
    barrier(&sup).await?;
    let children = sup.which_children();
    let states: Vec<_> = children
        .iter()
        .map(|c| (c.name.as_str(), c.state, c.pid.is_some(), c.generation))
        .collect();
    ensure(
        states
            == [
                ("ret", ChildStatus::Stopped, false, 2),
                ("zero", ChildStatus::Stopped, false, 1),
                ("code", ChildStatus::Running, true, 2),
                ("panic", ChildStatus::Running, true, 2),
            ],
        format!("children: {children:#?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A temporary child is never started again; once it ended it is gone
/// from `which_children`.
async fn temporary_is_never_restarted() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("t").restart(Restart::Temporary))
        .child(served("p"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let t = pid_of(&sup, "t")?;
    let p = pid_of(&sup, "p")?;
    kill(t)?;
    record(&mut events, |e| kit::is_exited(e, "t")).await?;
    barrier(&sup).await?;
    let names: Vec<_> = sup.which_children().into_iter().map(|c| c.name).collect();
    ensure(names == ["p"], format!("children: {names:?}"))?;
    ensure(pid_of(&sup, "p")? == p, "p untouched")?;
    // Nothing about t came after its exit.
    sup.shutdown().await?;
    let rest = kit::drain(&mut events);
    ensure(
        labels(&rest, kit::ORDER) == ["stopping p", "exited p"],
        format!("events after t ended: {rest:#?}"),
    )?;
    Ok(())
}

/// A sibling's OneForAll restart stops a temporary child (in its place in
/// the reverse order) and does not start it again.
async fn temporary_is_not_restarted_by_a_sibling() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .strategy(Strategy::OneForAll)
        .child(served("a"))
        .child(served("t").restart(Restart::Temporary))
        .child(served("c"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    let t = pid_of(&sup, "t")?;
    kill(pid_of(&sup, "a")?)?;
    let seen = record(&mut events, |e| kit::is_started(e, "c", 2)).await?;
    barrier(&sup).await?;
    ensure(
        labels(&seen, kit::ORDER)
            == [
                "exited a",
                "stopping c",
                "exited c",
                "stopping t",
                "exited t",
                "scheduled a",
                "scheduled c",
                "started a#2",
                "started c#2",
            ],
        format!("events after a died: {seen:#?}"),
    )?;
    ensure(!is_running(t), "t is gone")?;
    let names: Vec<_> = sup.which_children().into_iter().map(|c| c.name).collect();
    ensure(names == ["a", "c"], format!("children: {names:?}"))?;
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    let limit = Duration::from_secs(30);
    vec![
        case(
            "one_for_one_replaces_only_the_one",
            limit,
            one_for_one_replaces_only_the_one,
        ),
        case(
            "one_for_all_restarts_every_child_in_order",
            limit,
            one_for_all_restarts_every_child_in_order,
        ),
        case(
            "rest_for_one_restarts_the_later_children",
            limit,
            rest_for_one_restarts_the_later_children,
        ),
        case(
            "rest_for_one_on_the_last_child_restarts_it_alone",
            limit,
            rest_for_one_on_the_last_child_restarts_it_alone,
        ),
        case(
            "permanent_restarts_after_a_normal_return",
            limit,
            permanent_restarts_after_a_normal_return,
        ),
        case(
            "transient_restarts_only_after_a_crash",
            limit,
            transient_restarts_only_after_a_crash,
        ),
        case(
            "temporary_is_never_restarted",
            limit,
            temporary_is_never_restarted,
        ),
        case(
            "temporary_is_not_restarted_by_a_sibling",
            limit,
            temporary_is_not_restarted_by_a_sibling,
        ),
    ]
}

/// Targets and helpers shared by the supervisor's policy modules
/// (strategies, intensity, lifecycle, watchdog).
pub(crate) mod kit {
    use std::time::Duration;

    use futures::{FutureExt, StreamExt};
    use libtest_mimic::Failed;
    use mp::supervisor::{ChildSpec, Event, EventStream, ExitKind, Supervisor, SupervisorError};
    use serde::{Deserialize, Serialize};
    use tokio_multiprocessing as mp;

    /// A child that says it is ready and runs until it is asked to stop,
    /// then returns.
    pub(crate) async fn serve(_: ()) {
        serve_then(OnStop::Return).await;
    }

    /// How long any child of these cases may take to be ready.
    pub(crate) const READY: Duration = Duration::from_secs(10);

    /// Child `name`, a [`serve`] target that must be ready before the
    /// next child starts (and before a start or restart is over).
    pub(crate) fn served(name: &str) -> ChildSpec {
        ChildSpec::new(name, serve, ()).ready_timeout(READY)
    }

    /// Child `name`, a [`serve_then`] target, ready as [`served`].
    pub(crate) fn serving_then(name: &str, on_stop: OnStop) -> ChildSpec {
        ChildSpec::new(name, serve_then, on_stop).ready_timeout(READY)
    }

    /// What [`serve_then`] does once asked to stop.
    #[derive(Debug, Clone, Copy, Serialize, Deserialize)]
    pub(crate) enum OnStop {
        /// Returns from the target.
        Return,
        /// `std::process::exit` with this code.
        Exit(i32),
        /// Panics.
        Panic,
    }

    /// As [`serve`], but ends as `on_stop` says when asked to stop (by
    /// the supervisor, or by the test's [`ask_to_stop`]).
    pub(crate) async fn serve_then(on_stop: OnStop) {
        // The handler is in place before the child says it is ready: a
        // SIGTERM after that asks it to stop instead of killing it.
        let mut stop = std::pin::pin!(mp::shutdown_requested());
        let _ = futures::poll!(stop.as_mut());
        #[cfg(windows)]
        let asked = {
            // A request left by an earlier process of the same pid is not
            // for this one.
            let file = stop_file(mp::parent_pid().unwrap_or(0), std::process::id());
            let _ = std::fs::remove_file(&file);
            async move {
                while !file.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let _ = std::fs::remove_file(&file);
            }
        };
        #[cfg(unix)]
        let asked = std::future::pending::<()>();
        mp::notify_ready();
        tokio::select! {
            () = stop => {}
            () = asked => {}
        }
        match on_stop {
            OnStop::Return => {}
            OnStop::Exit(code) => std::process::exit(code),
            OnStop::Panic => panic!("asked to panic"),
        }
    }

    /// A child that says it is ready after `ms` milliseconds, then runs
    /// until it is asked to stop.
    pub(crate) async fn ready_after(ms: u64) {
        let mut stop = std::pin::pin!(mp::shutdown_requested());
        let _ = futures::poll!(stop.as_mut());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        mp::notify_ready();
        stop.await;
    }

    /// Asks process `pid` (not its group) to stop, from outside: on Unix
    /// by `SIGTERM`, which a child's `shutdown_requested()` hears. Windows
    /// has no such signal (only the console's close event, which a test
    /// cannot send to one child), so there the request is a file that
    /// [`serve_then`] also watches: [`stop_file`] of the child's pid.
    pub(crate) fn ask_to_stop(pid: u32) -> Result<(), Failed> {
        #[cfg(unix)]
        {
            use nix::sys::signal::{Signal, kill};
            kill(
                nix::unistd::Pid::from_raw(i32::try_from(pid)?),
                Signal::SIGTERM,
            )?;
        }
        #[cfg(windows)]
        std::fs::write(stop_file(std::process::id(), pid), "")?;
        Ok(())
    }

    /// The file whose appearance asks child `pid` of process `parent` to
    /// stop on Windows (see [`ask_to_stop`]).
    #[cfg(windows)]
    pub(crate) fn stop_file(parent: u32, pid: u32) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("tmp-sup-stop-{parent}-{pid}"))
    }

    /// The processes of process group `pgid`, zombies included.
    #[cfg(unix)]
    pub(crate) fn group_members(pgid: u32) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // After the command name: state, ppid, pgrp.
                let pgrp = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().nth(2))
                    .and_then(|g| g.parse::<u32>().ok());
                pgrp == Some(pgid)
            })
            .collect()
    }

    /// The pid of the running child `name`.
    pub(crate) fn pid_of(sup: &Supervisor, name: &str) -> Result<u32, Failed> {
        sup.which_children()
            .into_iter()
            .find(|c| c.name == name)
            .and_then(|c| c.pid)
            .ok_or_else(|| format!("child {name} has no pid: {:?}", sup.which_children()).into())
    }

    /// The events up to and including the first that passes `last`.
    pub(crate) async fn record(
        events: &mut EventStream,
        mut last: impl FnMut(&Event) -> bool,
    ) -> Result<Vec<Event>, Failed> {
        let mut seen = Vec::new();
        loop {
            let e = events.next().await.ok_or("the event stream ended")?;
            let done = last(&e);
            seen.push(e);
            if done {
                return Ok(seen);
            }
        }
    }

    /// The events already there, without waiting for more (and without
    /// the task budget, which would cut a long run short).
    pub(crate) fn drain(events: &mut EventStream) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Some(Some(e)) = tokio::task::unconstrained(events.next()).now_or_never() {
            seen.push(e);
        }
        seen
    }

    /// Every pid a `Started` in `events` names.
    pub(crate) fn started_pids(events: &[Event]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Started { pid, .. } => Some(*pid),
                _ => None,
            })
            .collect()
    }

    /// The last part of a child's path: its name.
    pub(crate) fn name_of(path: &str) -> &str {
        path.rsplit('/').next().unwrap_or(path)
    }

    /// Whether `e` is the `Started` of generation `generation` of `name`.
    pub(crate) fn is_started(e: &Event, name: &str, generation: u64) -> bool {
        matches!(e, Event::Started { child, generation: g, .. } if name_of(child) == name && *g == generation)
    }

    /// Whether `e` is an `Exited` of `name`.
    pub(crate) fn is_exited(e: &Event, name: &str) -> bool {
        matches!(e, Event::Exited { child, .. } if name_of(child) == name)
    }

    /// How the last incarnation of `name` in `events` ended.
    pub(crate) fn exit_of(events: &[Event], name: &str) -> Option<ExitKind> {
        events.iter().rev().find_map(|e| match e {
            Event::Exited { child, exit, .. } if name_of(child) == name => Some(exit.clone()),
            _ => None,
        })
    }

    /// The kinds of event whose order the strategy and shutdown cases
    /// compare.
    pub(crate) const ORDER: &[&str] = &["started", "exited", "stopping", "scheduled"];

    /// `e` as `"kind name"` (`"started name#generation"`).
    pub(crate) fn label(e: &Event) -> String {
        match e {
            Event::Started {
                child, generation, ..
            } => format!("started {}#{generation}", name_of(child)),
            Event::Ready { child, .. } => format!("ready {}", name_of(child)),
            Event::Exited { child, .. } => format!("exited {}", name_of(child)),
            Event::RestartScheduled { child, .. } => format!("scheduled {}", name_of(child)),
            Event::Stopping { child, .. } => format!("stopping {}", name_of(child)),
            Event::Killed { child, .. } => format!("killed {}", name_of(child)),
            Event::WatchdogTimeout { child, .. } => format!("watchdog {}", name_of(child)),
            Event::IntensityExceeded { child, .. } => format!("intensity {}", name_of(child)),
            Event::Log { child, .. } => format!("log {}", name_of(child)),
            Event::Lagged(n) => format!("lagged {n}"),
            other => format!("{other:?}"),
        }
    }

    /// The labels of the events of the kinds in `kinds`, in order.
    pub(crate) fn labels(events: &[Event], kinds: &[&str]) -> Vec<String> {
        events
            .iter()
            .map(label)
            .filter(|l| kinds.iter().any(|k| l.split(' ').next() == Some(k)))
            .collect()
    }

    /// A call that the supervisor answers only after it has handled what
    /// it was handling (a call waits its turn in the engine's loop).
    pub(crate) async fn barrier(sup: &Supervisor) -> Result<(), Failed> {
        match sup.terminate_child("no such child").await {
            Err(SupervisorError::NoSuchChild(_)) => Ok(()),
            other => Err(format!("the barrier call: {other:?}").into()),
        }
    }
}
