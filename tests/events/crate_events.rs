//! The levels and fields of the crate's own events: a child's start and
//! exit, a pool's failed task and replaced worker, a supervisor's restart
//! and its meltdown.

use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, Supervisor, SupervisorError};
use tokio_multiprocessing as mp;
use tracing::Level;

use crate::common::KILLED_EXITCODE as KILLED;
use crate::common::{Case, case, ensure};
use crate::recorder::{self, Record};

const T: Duration = Duration::from_secs(60);

/// How long an event may take to show up after what causes it.
const SOON: Duration = Duration::from_secs(10);

fn exit3(_: ()) {
    std::process::exit(3)
}

fn own_pid(_: ()) -> u32 {
    std::process::id()
}

fn sigkill_self(_: ()) -> u32 {
    std::thread::sleep(Duration::from_millis(20));
    let _ = crate::common::kill_hard(std::process::id());
    unreachable!("killed")
}

/// What the crate's events say of such a death: `SIGKILL` on Unix, the
/// exit code on Windows.
fn says_killed(text: &str) -> bool {
    if cfg!(windows) {
        text.contains(&KILLED.to_string())
    } else {
        text.contains("SIGKILL")
    }
}

/// A supervised child that runs until it is asked to stop.
async fn serve(_: ()) {
    mp::shutdown_requested().await;
}

/// A supervised child that fails at once.
fn fail(_: ()) {
    std::process::exit(1)
}

fn is(r: &Record, message: &str) -> bool {
    r.message == message
}

fn pid_is(r: &Record, pid: u32) -> bool {
    r.field("pid") == Some(pid.to_string().as_str())
}

fn fail_with(r: &Record, what: &str) -> String {
    format!("{what}: {r:#?}")
}

/// A child's start is a DEBUG event with its name, pid and start method;
/// its exit with code 3 a DEBUG event with `exitcode` 3.
async fn a_child_start_and_exit_are_debug_with_its_fields() -> Result<(), Failed> {
    let p = mp::Process::new(exit3, ());
    p.start().await?;
    let pid = p.pid().ok_or("no pid")?;
    let joined = p.join().await;
    ensure(
        matches!(joined, Err(mp::ProcessError::Exited { code: 3 })),
        format!("join: {joined:?}"),
    )?;
    let started = recorder::wait_for(SOON, "child started", |r| {
        is(r, "child started") && pid_is(r, pid)
    })
    .await?;
    ensure(started.level == Level::DEBUG, fail_with(&started, "level"))?;
    ensure(
        started.target.starts_with("tokio_multiprocessing"),
        fail_with(&started, "target"),
    )?;
    ensure(
        started.field("process") == Some(p.name()),
        fail_with(&started, "process"),
    )?;
    ensure(
        matches!(started.field("start_method"), Some("forkserver" | "spawn")),
        fail_with(&started, "start_method"),
    )?;
    ensure(
        started.field("name").is_none(),
        fail_with(&started, "no field `name`"),
    )?;
    let exited = recorder::wait_for(SOON, "child exited", |r| {
        is(r, "child exited") && pid_is(r, pid)
    })
    .await?;
    ensure(exited.level == Level::DEBUG, fail_with(&exited, "level"))?;
    ensure(
        exited.field("exitcode") == Some("3"),
        fail_with(&exited, "exitcode"),
    )?;
    ensure(
        exited.field("process") == Some(p.name()),
        fail_with(&exited, "process"),
    )?;
    Ok(())
}

/// A worker killed by `SIGKILL` mid-task: the task's failure is a WARN
/// event naming the task and the error, the worker's replacement an INFO
/// event with the old and new pids and why.
async fn a_worker_killed_mid_task_warns_and_is_replaced_at_info() -> Result<(), Failed> {
    let pool = mp::Pool::new(1).await?;
    let victim = pool.apply(own_pid, ()).await?;
    match pool.apply(sigkill_self, ()).await {
        Err(mp::TaskError::WorkerDied { exitcode }) if exitcode == KILLED => {}
        other => return Err(format!("the task: {other:?}").into()),
    }
    let failed = recorder::wait_for(SOON, "pool task failed (SIGKILL)", |r| {
        is(r, "pool task failed") && r.field("error").is_some_and(says_killed)
    })
    .await?;
    ensure(failed.level == Level::WARN, fail_with(&failed, "level"))?;
    ensure(
        failed
            .field("task")
            .is_some_and(|t| t.parse::<u64>().is_ok()),
        fail_with(&failed, "task id"),
    )?;
    let replaced = recorder::wait_for(SOON, "pool worker replaced", |r| {
        is(r, "pool worker replaced") && pid_is(r, victim)
    })
    .await?;
    ensure(replaced.level == Level::INFO, fail_with(&replaced, "level"))?;
    ensure(
        replaced.field("exitcode") == Some(KILLED.to_string().as_str()),
        fail_with(&replaced, "exitcode"),
    )?;
    ensure(
        replaced.field("reason").is_some_and(says_killed),
        fail_with(&replaced, "reason"),
    )?;
    ensure(
        replaced.field("process").is_some(),
        fail_with(&replaced, "process"),
    )?;
    let new_pid = pool.apply(own_pid, ()).await?;
    ensure(
        replaced.field("new_pid") == Some(new_pid.to_string().as_str()),
        fail_with(&replaced, &format!("new_pid (the new worker is {new_pid})")),
    )?;
    pool.close();
    pool.join().await?;
    Ok(())
}

/// A supervised child killed by `SIGKILL`: its exit is a WARN event, its
/// restart an INFO event with the supervisor, the child's path, the new
/// generation and why, and its new start an INFO event.
async fn a_supervisor_restart_is_info() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("ev-restart")
        .intensity(10, Duration::from_secs(60))
        .child(ChildSpec::new("a", serve, ()))
        .build();
    sup.start().await?;
    let pid = sup
        .which_children()
        .into_iter()
        .find_map(|c| c.pid)
        .ok_or("no pid")?;
    crate::common::kill_hard(pid)?;
    let exited = recorder::wait_for(SOON, "supervised child exited", |r| {
        is(r, "supervised child exited") && pid_is(r, pid)
    })
    .await?;
    ensure(exited.level == Level::WARN, fail_with(&exited, "level"))?;
    let restart = recorder::wait_for(SOON, "restarting a supervised child", |r| {
        is(r, "restarting a supervised child") && r.field("supervisor") == Some("ev-restart")
    })
    .await?;
    ensure(restart.level == Level::INFO, fail_with(&restart, "level"))?;
    ensure(
        restart.field("child") == Some("ev-restart/a"),
        fail_with(&restart, "child"),
    )?;
    ensure(
        restart.field("generation") == Some("2"),
        fail_with(&restart, "generation"),
    )?;
    ensure(
        restart.field("reason").is_some_and(says_killed),
        fail_with(&restart, "reason"),
    )?;
    let started = recorder::wait_for(SOON, "supervised child started, generation 2", |r| {
        is(r, "supervised child started")
            && r.field("child") == Some("ev-restart/a")
            && r.field("generation") == Some("2")
    })
    .await?;
    ensure(started.level == Level::INFO, fail_with(&started, "level"))?;
    sup.shutdown().await?;
    Ok(())
}

/// More restarts than the intensity allows: one ERROR event.
async fn intensity_exceeded_is_an_error() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("ev-meltdown")
        .intensity(0, Duration::from_secs(60))
        .child(ChildSpec::new("b", fail, ()))
        .build();
    sup.start().await?;
    let ended = sup.wait().await;
    ensure(
        matches!(ended, Err(SupervisorError::IntensityExceeded { .. })),
        format!("the supervisor ended with {ended:?}"),
    )?;
    let meltdown = recorder::wait_for(SOON, "supervisor intensity exceeded", |r| {
        r.message.starts_with("supervisor intensity exceeded")
            && r.field("supervisor") == Some("ev-meltdown")
    })
    .await?;
    ensure(
        meltdown.level == Level::ERROR,
        fail_with(&meltdown, "level"),
    )?;
    ensure(
        meltdown.field("child") == Some("ev-meltdown/b"),
        fail_with(&meltdown, "child"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_child_start_and_exit_are_debug_with_its_fields",
            T,
            a_child_start_and_exit_are_debug_with_its_fields,
        ),
        case(
            "a_worker_killed_mid_task_warns_and_is_replaced_at_info",
            T,
            a_worker_killed_mid_task_warns_and_is_replaced_at_info,
        ),
        case(
            "a_supervisor_restart_is_info",
            T,
            a_supervisor_restart_is_info,
        ),
        case(
            "intensity_exceeded_is_an_error",
            T,
            intensity_exceeded_is_an_error,
        ),
    ]
}
