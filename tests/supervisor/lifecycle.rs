//! A supervisor's life: children start in order, each ready before the
//! next; a failed start stops the ones started, in reverse; shutdown goes
//! in reverse, each child reaped before the next is signalled, by its
//! `Shutdown` rule; dynamic children and their errors; `which_children`;
//! auto shutdown by significant children; `cancel_on`; the end of the
//! last handle, of the runtime and of `main`; a second start; a slow
//! event reader; a start outside a runtime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{
    AutoShutdown, ChildSpec, ChildStatus, Event, ExitKind, Restart, Shutdown, Supervisor,
    SupervisorError,
};
use tokio_multiprocessing as mp;
use tokio_util::sync::CancellationToken;

use crate::common::{Case, case, ensure, eventually};
use crate::common::{is_gone, is_running, kill_hard as kill};
use crate::os::{KILLED_BY_SUPERVISOR, STOPPED};
use crate::strategies::kit::{
    self, OnStop, READY, ask_to_stop, barrier, labels, pid_of, record, served, serving_then,
};

/// A directory of its own for a case's files, removed when it drops.
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str) -> Result<Scratch, Failed> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tmp-sup-lifecycle-{}-{case}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Appends `line` to the file at `path`.
fn append(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .expect("the log of stops");
    writeln!(f, "{line}").expect("the log of stops");
}

/// The lines of the file at `path` (none if it is not there).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A ready child that, asked to stop, writes `"NAME stop"` to the log at
/// `path`, takes `pause_ms` to clean up, writes `"NAME done"` and returns.
async fn log_stop((path, name, pause_ms): (PathBuf, String, u64)) {
    let mut stop = std::pin::pin!(mp::shutdown_requested());
    let _ = futures::poll!(stop.as_mut());
    mp::notify_ready();
    stop.await;
    append(&path, &format!("{name} stop"));
    tokio::time::sleep(Duration::from_millis(pause_ms)).await;
    append(&path, &format!("{name} done"));
}

/// Child `name`, a [`log_stop`] target writing to `log`.
fn logging(log: &Path, name: &str, pause_ms: u64) -> ChildSpec {
    ChildSpec::new(name, log_stop, (log.to_owned(), name.to_owned(), pause_ms)).ready_timeout(READY)
}

/// What `stop` and `done` lines children `names` write when they are
/// stopped one after another, in that order.
fn stops_in_order(names: &[&str]) -> Vec<String> {
    names
        .iter()
        .flat_map(|n| [format!("{n} stop"), format!("{n} done")])
        .collect()
}

/// What [`log_stop`] children `names` write to their log when they are
/// stopped one after another: [`stops_in_order`] on Unix; nothing on
/// Windows, where a stop ends a child's job before it can write.
fn stops_in_order_here(names: &[&str]) -> Vec<String> {
    if cfg!(windows) {
        Vec::new()
    } else {
        stops_in_order(names)
    }
}

/// A child that is ready and ignores `SIGTERM`: only `SIGKILL` ends it.
async fn ignore_term(_: ()) {
    // The first poll installs the handler, after which SIGTERM no longer
    // ends the process; the future is then never polled again.
    let stop = std::pin::pin!(mp::shutdown_requested());
    let _ = futures::poll!(stop);
    mp::notify_ready();
    std::future::pending::<()>().await;
}

/// A child that exits with `code` at once, before it is ready.
fn exit_now(code: i32) {
    std::process::exit(code);
}

/// A child that never says it is ready (and has no handler for its stop
/// signal).
fn never_ready(_: ()) {
    std::thread::sleep(Duration::from_secs(60));
}

/// A child that is ready once the file at `path` exists.
async fn ready_when(path: PathBuf) {
    let mut stop = std::pin::pin!(mp::shutdown_requested());
    let _ = futures::poll!(stop.as_mut());
    while !path.exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mp::notify_ready();
    stop.await;
}

const ORDER: &[&str] = &["started", "ready", "exited", "stopping", "killed"];

/// Each child starts only once the one before it said it is ready, and
/// `start()` returns once the last one is.
async fn children_start_in_order_each_ready_first() -> Result<(), Failed> {
    let ready = |name: &str| ChildSpec::new(name, kit::ready_after, 150u64).ready_timeout(READY);
    let sup = Supervisor::builder()
        .name("root")
        .child(ready("a"))
        .child(ready("b"))
        .child(ready("c"))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let states: Vec<_> = sup.which_children().iter().map(|c| c.state).collect();
    ensure(
        states == [ChildStatus::Running; 3],
        format!("states once start() returned: {states:?}"),
    )?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, ORDER)
            == [
                "started a#1",
                "ready a",
                "started b#1",
                "ready b",
                "started c#1",
                "ready c",
            ],
        format!("start-up events: {seen:#?}"),
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A child that is not ready in time fails the start: it is stopped
/// (`Exited` with `ReadyTimeout`), then the ones before it in reverse,
/// the ones after it never start, and no process is left.
async fn a_child_not_ready_in_time_fails_the_start() -> Result<(), Failed> {
    let limit = Duration::from_millis(300);
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .child(served("b"))
        .child(ChildSpec::new("late", never_ready, ()).ready_timeout(limit))
        .child(served("d"))
        .build();
    let mut events = sup.events();
    let t0 = Instant::now();
    let result = sup.start().await;
    let took = t0.elapsed();
    match result {
        Err(SupervisorError::StartFailed {
            child,
            exit: ExitKind::ReadyTimeout,
        }) if child == "root/late" => {}
        other => return Err(format!("start() gave {other:?}").into()),
    }
    ensure(
        took >= limit,
        format!("gave up after {took:?}, before {limit:?}"),
    )?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, ORDER)
            == [
                "started a#1",
                "ready a",
                "started b#1",
                "ready b",
                "started late#1",
                "stopping late",
                "exited late",
                "stopping b",
                "exited b",
                "stopping a",
                "exited a",
            ],
        format!("events: {seen:#?}"),
    )?;
    ensure(
        kit::exit_of(&seen, "late") == Some(ExitKind::ReadyTimeout),
        "late's exit is ReadyTimeout",
    )?;
    for pid in kit::started_pids(&seen) {
        ensure(
            !is_running(pid),
            format!("pid {pid} outlived the failed start"),
        )?;
    }
    ensure(
        matches!(sup.wait().await, Err(SupervisorError::StartFailed { .. })),
        "wait() reports the failed start",
    )?;
    ensure(sup.which_children().is_empty(), "no children")?;
    Ok(())
}

/// A child that dies before it is ready fails the start with its exit;
/// the ones before it are stopped in reverse.
async fn a_child_dying_before_ready_fails_the_start() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .child(ChildSpec::new("dies", exit_now, 7).ready_timeout(READY))
        .child(served("c"))
        .build();
    let mut events = sup.events();
    match sup.start().await {
        Err(SupervisorError::StartFailed {
            child,
            exit: ExitKind::Code(7),
        }) if child == "root/dies" => {}
        other => return Err(format!("start() gave {other:?}").into()),
    }
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, ORDER)
            == [
                "started a#1",
                "ready a",
                "started dies#1",
                "exited dies",
                "stopping a",
                "exited a",
            ],
        format!("events: {seen:#?}"),
    )?;
    for pid in kit::started_pids(&seen) {
        ensure(
            !is_running(pid),
            format!("pid {pid} outlived the failed start"),
        )?;
    }
    Ok(())
}

/// Shutdown stops the children in reverse start order, and signals each
/// only once the one after it has finished and been reaped.
async fn shutdown_goes_in_reverse_one_at_a_time() -> Result<(), Failed> {
    let scratch = Scratch::new("shutdown")?;
    let log = scratch.path("stops");
    let sup = Supervisor::builder()
        .name("root")
        .child(logging(&log, "a", 100))
        .child(logging(&log, "b", 100))
        .child(logging(&log, "c", 100))
        .build();
    sup.start().await?;
    let pids = [pid_of(&sup, "a")?, pid_of(&sup, "b")?, pid_of(&sup, "c")?];
    let mut events = sup.events();
    let stopper = tokio::spawn({
        let sup = sup.clone();
        async move { sup.shutdown().await }
    });
    // When b is signalled, c is reaped; when a is, b is.
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        if let Event::Stopping { child, .. } = &e {
            let after = match kit::name_of(child) {
                "b" => Some(pids[2]),
                "a" => Some(pids[1]),
                _ => None,
            };
            if let Some(pid) = after {
                ensure(
                    is_gone(pid),
                    format!("{child} was signalled while pid {pid} was not reaped"),
                )?;
            }
        }
        let last = kit::is_exited(&e, "a");
        seen.push(e);
        if last {
            break;
        }
    }
    stopper.await??;
    ensure(
        labels(&seen, ORDER)
            == [
                "stopping c",
                "exited c",
                "stopping b",
                "exited b",
                "stopping a",
                "exited a",
            ],
        format!("events: {seen:#?}"),
    )?;
    for name in ["a", "b", "c"] {
        ensure(
            kit::exit_of(&seen, name) == Some(STOPPED),
            format!("{name} returned normally: {seen:#?}"),
        )?;
    }
    ensure(
        lines(&log) == stops_in_order_here(&["c", "b", "a"]),
        format!("the children's log: {:?}", lines(&log)),
    )?;
    Ok(())
}

/// A child that ignores its stop signal is killed once its
/// `Shutdown::Timeout` runs out (`Killed`, then `Exited` by `SIGKILL`),
/// and only then is the next one signalled. On Windows there is no stop
/// signal to ignore: the stop ends the child's job at once, with no
/// `Killed` and no wait for the timeout.
async fn a_child_ignoring_sigterm_is_killed_after_its_timeout() -> Result<(), Failed> {
    let timeout = Duration::from_millis(300);
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .child(
            ChildSpec::new("stubborn", ignore_term, ())
                .ready_timeout(READY)
                .shutdown(Shutdown::Timeout(timeout)),
        )
        .build();
    sup.start().await?;
    let stubborn = pid_of(&sup, "stubborn")?;
    let mut events = sup.events();
    let t0 = Instant::now();
    sup.shutdown().await?;
    let took = t0.elapsed();
    let seen = kit::drain(&mut events);
    if cfg!(windows) {
        ensure(
            labels(&seen, ORDER)
                == [
                    "stopping stubborn",
                    "exited stubborn",
                    "stopping a",
                    "exited a",
                ],
            format!("events: {seen:#?}"),
        )?;
    } else {
        ensure(
            labels(&seen, ORDER)
                == [
                    "stopping stubborn",
                    "killed stubborn",
                    "exited stubborn",
                    "stopping a",
                    "exited a",
                ],
            format!("events: {seen:#?}"),
        )?;
        ensure(
            seen.contains(&Event::Killed {
                child: "root/stubborn".into(),
                pid: stubborn,
            }),
            "Killed names the child's pid",
        )?;
        ensure(
            took >= timeout,
            format!("killed after {took:?}, before {timeout:?}"),
        )?;
    }
    ensure(
        kit::exit_of(&seen, "stubborn") == Some(KILLED_BY_SUPERVISOR)
            && kit::exit_of(&seen, "a") == Some(STOPPED),
        format!("exits: {seen:#?}"),
    )?;
    ensure(!is_running(stubborn), "stubborn is gone")?;
    Ok(())
}

/// `Shutdown::BrutalKill` sends `SIGKILL` at once (no stop signal, no
/// `Killed`); a target that awaits `shutdown_requested()` and returns
/// ends `Normal`.
async fn brutal_kill_and_a_clean_return() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("clean"))
        .child(served("brutal").shutdown(Shutdown::BrutalKill))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    sup.shutdown().await?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, ORDER)
            == [
                "stopping brutal",
                "exited brutal",
                "stopping clean",
                "exited clean",
            ],
        format!("events: {seen:#?}"),
    )?;
    ensure(
        kit::exit_of(&seen, "brutal") == Some(KILLED_BY_SUPERVISOR),
        format!("brutal was killed: {seen:#?}"),
    )?;
    ensure(
        kit::exit_of(&seen, "clean") == Some(STOPPED),
        format!("clean returned: {seen:#?}"),
    )?;
    Ok(())
}

/// The names of the children, in start order.
fn names(sup: &Supervisor) -> Vec<String> {
    sup.which_children().into_iter().map(|c| c.name).collect()
}

/// Dynamic children: start_child adds at the end, terminate_child,
/// restart_child and delete_child do what they say, and each error comes
/// where it should: DuplicateChild, NoSuchChild, ChildRunning, a failed
/// start not kept, Stopped once the supervisor has stopped.
async fn dynamic_children_and_their_errors() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .build();
    sup.start().await?;
    sup.start_child(served("b")).await?;
    ensure(names(&sup) == ["a", "b"], "b added at the end")?;
    let b1 = pid_of(&sup, "b")?;
    ensure(
        sup.start_child(served("b")).await == Err(SupervisorError::DuplicateChild("b".into())),
        "a second b is a duplicate",
    )?;
    for result in [sup.restart_child("b").await, sup.delete_child("b").await] {
        ensure(
            result == Err(SupervisorError::ChildRunning("b".into())),
            format!("restart or delete of a running child: {result:?}"),
        )?;
    }

    sup.terminate_child("b").await?;
    let b = &sup.which_children()[1];
    ensure(
        b.state == ChildStatus::Stopped && b.pid.is_none() && !is_running(b1),
        format!("b after terminate_child: {b:?}"),
    )?;
    sup.restart_child("b").await?;
    let b2 = pid_of(&sup, "b")?;
    let b = &sup.which_children()[1];
    ensure(
        b2 != b1 && b.generation == 2 && b.state == ChildStatus::Running,
        format!("b after restart_child: {b:?}"),
    )?;
    sup.terminate_child("b").await?;
    sup.delete_child("b").await?;
    ensure(names(&sup) == ["a"], "b deleted")?;
    ensure(!is_running(b2), "b's process is gone")?;
    let missing = Err(SupervisorError::NoSuchChild("b".into()));
    ensure(sup.delete_child("b").await == missing, "delete of nothing")?;
    ensure(
        sup.terminate_child("b").await == missing,
        "terminate of nothing",
    )?;
    ensure(
        sup.restart_child("b").await == missing,
        "restart of nothing",
    )?;

    // A start that fails is not kept.
    let failed = sup
        .start_child(ChildSpec::new("dies", exit_now, 3).ready_timeout(READY))
        .await;
    ensure(
        failed
            == Err(SupervisorError::StartFailed {
                child: "root/dies".into(),
                exit: ExitKind::Code(3),
            }),
        format!("a dynamic child that dies: {failed:?}"),
    )?;
    ensure(names(&sup) == ["a"], "the failed child is not kept")?;

    // A terminated temporary child is gone.
    sup.start_child(served("t").restart(Restart::Temporary))
        .await?;
    sup.terminate_child("t").await?;
    ensure(names(&sup) == ["a"], "a terminated temporary child leaves")?;

    // Dynamic children stop first: they started last.
    sup.start_child(served("c")).await?;
    let mut events = sup.events();
    sup.shutdown().await?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, &["stopping"]) == ["stopping c", "stopping a"],
        format!("shutdown: {seen:#?}"),
    )?;

    let stopped = Err(SupervisorError::Stopped);
    ensure(sup.start_child(served("d")).await == stopped, "start_child")?;
    ensure(sup.terminate_child("a").await == stopped, "terminate_child")?;
    ensure(sup.restart_child("a").await == stopped, "restart_child")?;
    ensure(sup.delete_child("a").await == stopped, "delete_child")?;
    Ok(())
}

/// which_children says Starting (not ready yet), Running, Backoff and
/// Stopped, with pids only for running children, and counts restarts
/// and generations.
async fn which_children_reports_states_and_counts() -> Result<(), Failed> {
    let scratch = Scratch::new("states")?;
    let go = scratch.path("ready");
    let backoff = Duration::from_secs(30);
    let sup = Supervisor::builder()
        .name("root")
        .backoff(mp::supervisor::Backoff::exponential(backoff, backoff))
        .child(served("a"))
        .child(ChildSpec::new("s", ready_when, go.clone()).ready_timeout(READY))
        .build();
    let starting = tokio::spawn({
        let sup = sup.clone();
        async move { sup.start().await }
    });
    let state = |name: &str| {
        sup.which_children()
            .into_iter()
            .find(|c| c.name == name)
            .map(|c| (c.state, c.pid.is_some(), c.generation, c.restarts))
    };
    eventually("s is starting", || {
        state("s") == Some((ChildStatus::Starting, true, 1, 0))
    })
    .await?;
    ensure(
        state("a") == Some((ChildStatus::Running, true, 1, 0)),
        format!("a while s starts: {:?}", state("a")),
    )?;
    ensure(!starting.is_finished(), "start() waits for s")?;
    std::fs::write(&go, "")?;
    starting.await??;
    ensure(
        state("s") == Some((ChildStatus::Running, true, 1, 0)),
        format!("s once ready: {:?}", state("s")),
    )?;

    kill(pid_of(&sup, "a")?)?;
    eventually("a waits out its backoff", || {
        state("a") == Some((ChildStatus::Backoff, false, 1, 1))
    })
    .await?;
    sup.terminate_child("a").await?;
    ensure(
        state("a") == Some((ChildStatus::Stopped, false, 1, 1)),
        format!("a terminated: {:?}", state("a")),
    )?;
    sup.restart_child("a").await?;
    ensure(
        state("a") == Some((ChildStatus::Running, true, 2, 1)),
        format!("a restarted by hand: {:?}", state("a")),
    )?;
    sup.shutdown().await?;
    ensure(sup.which_children().is_empty(), "none once stopped")?;
    Ok(())
}

/// AnySignificant: a significant transient child that returns normally
/// ends the supervisor, which stops the others first.
async fn any_significant_child_ending_ends_it() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .auto_shutdown(AutoShutdown::AnySignificant)
        .child(served("a"))
        .child(
            serving_then("s", OnStop::Return)
                .restart(Restart::Transient)
                .significant(true),
        )
        .child(served("c"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    ask_to_stop(pid_of(&sup, "s")?)?;
    sup.wait().await?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, &["exited", "stopping", "started"])
            == [
                "exited s",
                "stopping c",
                "exited c",
                "stopping a",
                "exited a",
            ],
        format!("events: {seen:#?}"),
    )?;
    Ok(())
}

/// AllSignificant: the supervisor runs on while one significant child is
/// left, and ends when the last one returns.
async fn all_significant_children_ending_ends_it() -> Result<(), Failed> {
    let significant = |name: &str| {
        serving_then(name, OnStop::Return)
            .restart(Restart::Transient)
            .significant(true)
    };
    let sup = Supervisor::builder()
        .name("root")
        .auto_shutdown(AutoShutdown::AllSignificant)
        .child(served("a"))
        .child(significant("s1"))
        .child(significant("s2"))
        .build();
    sup.start().await?;
    let mut events = sup.events();
    ask_to_stop(pid_of(&sup, "s1")?)?;
    record(&mut events, |e| kit::is_exited(e, "s1")).await?;
    // Still running: a call is answered, and a is untouched.
    ensure(
        sup.restart_child("a").await == Err(SupervisorError::ChildRunning("a".into())),
        "the supervisor runs on after s1",
    )?;
    let s1 = &sup.which_children()[1];
    ensure(
        s1.state == ChildStatus::Stopped,
        format!("s1 is not restarted: {s1:?}"),
    )?;
    ask_to_stop(pid_of(&sup, "s2")?)?;
    sup.wait().await?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, &["exited", "stopping", "started"])
            == ["exited s2", "stopping a", "exited a"],
        format!("events: {seen:#?}"),
    )?;
    Ok(())
}

/// Cancelling the `cancel_on` token shuts the supervisor down in order,
/// and `wait()` ends cleanly.
async fn cancel_on_token_shuts_it_down() -> Result<(), Failed> {
    let token = CancellationToken::new();
    let sup = Supervisor::builder()
        .name("root")
        .cancel_on(token.clone())
        .child(served("a"))
        .child(served("b"))
        .build();
    sup.start().await?;
    let pids = [pid_of(&sup, "a")?, pid_of(&sup, "b")?];
    let mut events = sup.events();
    token.cancel();
    sup.wait().await?;
    let seen = kit::drain(&mut events);
    ensure(
        labels(&seen, ORDER) == ["stopping b", "exited b", "stopping a", "exited a"],
        format!("events: {seen:#?}"),
    )?;
    ensure(pids.iter().all(|p| !is_running(*p)), "children gone")?;
    Ok(())
}

/// Dropping the last handle (not just one of them) shuts the supervisor
/// down in the background: its children stop in reverse and its event
/// stream ends.
async fn dropping_the_last_handle_shuts_it_down() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .child(served("b"))
        .build();
    sup.start().await?;
    let pids = [pid_of(&sup, "a")?, pid_of(&sup, "b")?];
    let mut events = sup.events();
    let other = sup.clone();
    drop(sup);
    barrier(&other).await?;
    ensure(
        pids.iter().all(|p| is_running(*p)),
        "one handle left: the children run on",
    )?;
    drop(other);
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        seen.push(e);
    }
    ensure(
        labels(&seen, ORDER) == ["stopping b", "exited b", "stopping a", "exited a"],
        format!("events: {seen:#?}"),
    )?;
    ensure(pids.iter().all(|p| !is_running(*p)), "children gone")?;
    Ok(())
}

/// A supervisor that stopped can be started again, with new processes
/// whose generations go on from the last run (a path and a generation
/// name one incarnation for good); one that runs cannot be started twice.
async fn a_stopped_supervisor_starts_again() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .child(served("b"))
        .build();
    sup.start().await?;
    ensure(
        sup.start().await == Err(SupervisorError::AlreadyStarted),
        "a second start while it runs",
    )?;
    let first = [pid_of(&sup, "a")?, pid_of(&sup, "b")?];
    sup.shutdown().await?;
    sup.start().await?;
    let second = [pid_of(&sup, "a")?, pid_of(&sup, "b")?];
    ensure(
        first.iter().all(|p| !second.contains(p) && !is_running(*p)),
        format!("first {first:?}, second {second:?}"),
    )?;
    let gens: Vec<_> = sup.which_children().iter().map(|c| c.generation).collect();
    ensure(gens == [2, 2], format!("generations: {gens:?}"))?;
    sup.shutdown().await?;
    ensure(
        second.iter().all(|p| !is_running(*p)),
        "the second run's children are gone",
    )?;
    Ok(())
}

/// A reader that falls more than the buffer behind gets one
/// `Lagged(n)`, then the events that follow: none lost unsaid.
#[cfg(unix)]
async fn a_slow_reader_gets_lagged() -> Result<(), Failed> {
    const LINES: usize = 3000;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c").arg(format!("seq 1 {LINES}; exec sleep 1000"));
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::command("p", cmd).capture_output(true))
        .build();
    let mut slow = sup.events();
    let mut quick = sup.events();
    sup.start().await?;
    let last = LINES.to_string();
    record(
        &mut quick,
        |e| matches!(e, Event::Log { line, .. } if *line == last),
    )
    .await?;
    // Every event so far: the program's Started and its lines.
    let emitted = 1 + LINES;
    let missed = match slow.next().await {
        Some(Event::Lagged(n)) => usize::try_from(n)?,
        other => return Err(format!("the slow reader first got {other:?}").into()),
    };
    // Everything was sent: what is left is there to take at once.
    let after = kit::drain(&mut slow);
    ensure(
        missed > 0 && missed + after.len() == emitted,
        format!("missed {missed}, then {} events, of {emitted}", after.len()),
    )?;
    let numbers: Vec<usize> = after
        .iter()
        .filter_map(|e| match e {
            Event::Log { line, .. } => line.parse().ok(),
            _ => None,
        })
        .collect();
    ensure(
        numbers.windows(2).all(|w| w[1] == w[0] + 1) && numbers.last() == Some(&LINES),
        "the lines after the lag follow on, to the last",
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// `start()` polled with no Tokio runtime about (a plain executor on a
/// plain thread) fails with NoRuntime and starts nothing; the same
/// supervisor starts fine in a runtime after that.
async fn a_start_outside_a_runtime_is_refused() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(served("a"))
        .build();
    let outside = sup.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(futures::executor::block_on(outside.start()));
    });
    let result = rx.await?;
    ensure(
        result == Err(SupervisorError::NoRuntime),
        format!("start() outside a runtime: {result:?}"),
    )?;
    ensure(sup.which_children().is_empty(), "nothing started")?;
    sup.start().await?;
    ensure(pid_of(&sup, "a").is_ok(), "started in a runtime")?;
    sup.shutdown().await?;
    Ok(())
}

/// A supervisor whose runtime is dropped under it stops its children
/// from the dropping thread, in reverse order, before the drop returns.
async fn dropping_its_runtime_stops_the_children() -> Result<(), Failed> {
    let scratch = Scratch::new("runtime")?;
    let log = scratch.path("stops");
    let sup = Supervisor::builder()
        .name("root")
        .child(logging(&log, "a", 50))
        .child(logging(&log, "b", 50))
        .child(logging(&log, "c", 50))
        .build();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn({
        let sup = sup.clone();
        move || {
            let run = || -> Result<Vec<u32>, String> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                let pids = rt.block_on(async {
                    sup.start().await.map_err(|e| e.to_string())?;
                    ["a", "b", "c"]
                        .iter()
                        .map(|n| pid_of(&sup, n).map_err(|e| format!("{e:?}")))
                        .collect::<Result<Vec<_>, _>>()
                })?;
                drop(rt);
                Ok(pids)
            };
            let _ = tx.send(run());
        }
    });
    let pids = rx.await??;
    // The drop has returned: nothing is left to wait for.
    for pid in &pids {
        ensure(!is_running(*pid), format!("pid {pid} outlived the runtime"))?;
    }
    ensure(
        lines(&log) == stops_in_order_here(&["c", "b", "a"]),
        format!("the children's log: {:?}", lines(&log)),
    )?;
    ensure(
        sup.wait().await == Err(SupervisorError::Stopped),
        "the supervisor has stopped",
    )?;
    ensure(sup.which_children().is_empty(), "no children")?;
    Ok(())
}

// ------------------------------------------------------- the exit rule

/// The environment variable that makes a run of this binary the exit
/// rule's probe; its value is the probe's directory.
const EXIT_PROBE: &str = "TMP_SUP_EXIT_PROBE";

/// If this run is the exit rule's probe, runs it and exits: it starts
/// two supervisors on a runtime that stays up, drops the handle of one,
/// writes the children's pids, and leaves `main` with the other still
/// running. Returns when the environment does not ask for it.
pub(crate) fn exit_rule_probe_if_asked() {
    let Some(dir) = std::env::var_os(EXIT_PROBE) else {
        return;
    };
    // First thing: in a child of the probe, `init()` runs the child.
    let guard = mp::init();
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let held = rt.block_on(async {
        let held = Supervisor::builder()
            .name("held")
            .child(logging(&dir.join("held"), "a", 50))
            .child(logging(&dir.join("held"), "b", 50))
            .start()
            .await
            .expect("the held supervisor starts");
        let dropped = Supervisor::builder()
            .name("dropped")
            .child(logging(&dir.join("dropped"), "c", 50))
            .child(logging(&dir.join("dropped"), "d", 50))
            .start()
            .await
            .expect("the dropped supervisor starts");
        let pids: Vec<String> = [(&held, "a"), (&held, "b"), (&dropped, "c"), (&dropped, "d")]
            .iter()
            .map(|(sup, n)| pid_of(sup, n).expect("a pid").to_string())
            .collect();
        std::fs::write(dir.join("pids"), pids.join(" ")).expect("the pids");
        drop(dropped);
        held
    });
    // The end of `main`, with the runtime up and `held` running.
    drop(guard);
    drop(held);
    drop(rt);
    std::process::exit(0);
}

/// When `main` ends with a supervisor still running (and another one
/// stopping after its last handle went), the exit rule stops every
/// child, each supervisor's in reverse order, before the program exits.
async fn the_end_of_main_stops_the_children() -> Result<(), Failed> {
    let scratch = Scratch::new("exit")?;
    let limit = Duration::from_secs(40);
    let mut probe = Command::new(std::env::current_exe()?)
        .env(EXIT_PROBE, &scratch.0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(scratch.path("stderr"))?)
        .spawn()?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = probe.try_wait()? {
            break status;
        }
        if t0.elapsed() > limit {
            let _ = probe.kill();
            let _ = probe.wait();
            return Err(format!(
                "the probe did not exit within {limit:?}; stderr:\n{}",
                std::fs::read_to_string(scratch.path("stderr")).unwrap_or_default()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ensure(
        status.success(),
        format!(
            "the probe: {status}; stderr:\n{}",
            std::fs::read_to_string(scratch.path("stderr")).unwrap_or_default()
        ),
    )?;
    let pids: Vec<u32> = std::fs::read_to_string(scratch.path("pids"))?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure(pids.len() == 4, format!("pids: {pids:?}"))?;
    for pid in &pids {
        ensure(!is_running(*pid), format!("pid {pid} outlived the probe"))?;
    }
    ensure(
        lines(&scratch.path("held")) == stops_in_order_here(&["b", "a"]),
        format!("held: {:?}", lines(&scratch.path("held"))),
    )?;
    ensure(
        lines(&scratch.path("dropped")) == stops_in_order_here(&["d", "c"]),
        format!("dropped: {:?}", lines(&scratch.path("dropped"))),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    let limit = Duration::from_secs(30);
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "children_start_in_order_each_ready_first",
            limit,
            children_start_in_order_each_ready_first,
        ),
        case(
            "a_child_not_ready_in_time_fails_the_start",
            limit,
            a_child_not_ready_in_time_fails_the_start,
        ),
        case(
            "a_child_dying_before_ready_fails_the_start",
            limit,
            a_child_dying_before_ready_fails_the_start,
        ),
        case(
            "shutdown_goes_in_reverse_one_at_a_time",
            limit,
            shutdown_goes_in_reverse_one_at_a_time,
        ),
        case(
            "a_child_ignoring_sigterm_is_killed_after_its_timeout",
            limit,
            a_child_ignoring_sigterm_is_killed_after_its_timeout,
        ),
        case(
            "brutal_kill_and_a_clean_return",
            limit,
            brutal_kill_and_a_clean_return,
        ),
        case(
            "dynamic_children_and_their_errors",
            limit,
            dynamic_children_and_their_errors,
        ),
        case(
            "which_children_reports_states_and_counts",
            limit,
            which_children_reports_states_and_counts,
        ),
        case(
            "any_significant_child_ending_ends_it",
            limit,
            any_significant_child_ending_ends_it,
        ),
        case(
            "all_significant_children_ending_ends_it",
            limit,
            all_significant_children_ending_ends_it,
        ),
        case(
            "cancel_on_token_shuts_it_down",
            limit,
            cancel_on_token_shuts_it_down,
        ),
        case(
            "dropping_the_last_handle_shuts_it_down",
            limit,
            dropping_the_last_handle_shuts_it_down,
        ),
        case(
            "a_stopped_supervisor_starts_again",
            limit,
            a_stopped_supervisor_starts_again,
        ),
        case(
            "a_start_outside_a_runtime_is_refused",
            limit,
            a_start_outside_a_runtime_is_refused,
        ),
        case(
            "dropping_its_runtime_stops_the_children",
            limit,
            dropping_its_runtime_stops_the_children,
        ),
        case(
            "the_end_of_main_stops_the_children",
            Duration::from_secs(50),
            the_end_of_main_stops_the_children,
        ),
    ];
    // Unix only: the child is an `sh` program.
    #[cfg(unix)]
    cases.push(case(
        "a_slow_reader_gets_lagged",
        limit,
        a_slow_reader_gets_lagged,
    ));
    cases
}
