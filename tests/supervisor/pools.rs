//! Supervised pools (`ChildSpec::pool`): the pool runs as a task of the
//! program and is reached with `sup.pool(name)`; its workers' deaths are
//! its own business, but a pool that cannot keep its workers exits
//! abnormally and the supervisor's strategy applies to it.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use libtest_mimic::Failed;
use mp::supervisor::{Backoff, ChildSpec, Event, ExitKind, Strategy, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure, eventually};
use crate::common::{is_running, kill_hard as kill};
use crate::containment::{Scratch, collect_until, drain, exited, publish, started};

fn double(x: u32) -> u32 {
    x * 2
}

fn worker_pid(_: ()) -> u32 {
    std::process::id()
}

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// A pool initializer that, while `dir/armed` exists, adds a byte to
/// `dir/refused` and exits before its worker is ready.
fn refuse_while_armed(dir: PathBuf) {
    if dir.join("armed").exists() {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("refused"))
            .expect("open the log");
        log.write_all(b"x").expect("log the refusal");
        std::process::exit(7);
    }
}

/// Whether the pool `pool` works: a `map` gives its values.
async fn works(pool: &mp::Pool) -> Result<(), Failed> {
    let out = pool.map(double, 0..20u32).await?;
    ensure(
        out == (0..20u32).map(double).collect::<Vec<_>>(),
        "the pool maps",
    )
}

/// A pool child runs in the program (its pid on `Started`) and `sup.pool(name)` gives it.
async fn a_pool_child_runs_in_the_program() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::pool("jobs", mp::Pool::builder().processes(2)))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let pid = started(&mut events, "root/jobs", 1).await?;
    ensure(
        pid == std::process::id(),
        format!("the pool's pid is the program's: {pid}"),
    )?;
    let kids = sup.which_children();
    ensure(
        kids.len() == 1 && kids[0].pid == Some(std::process::id()),
        format!("which_children: {kids:?}"),
    )?;
    works(&sup.pool("jobs").ok_or("the pool")?).await?;
    ensure(sup.pool("other").is_none(), "no pool by another name")?;
    sup.shutdown().await?;
    Ok(())
}

/// Pool workers killed with SIGKILL are replaced by the pool; the supervisor sees no exit.
async fn killed_workers_are_the_pools_business() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::pool("jobs", mp::Pool::builder().processes(2)))
        .build();
    let events = sup.events();
    sup.start().await?;
    let pool = sup.pool("jobs").ok_or("the pool")?;
    for _ in 0..3 {
        let victim = pool.apply(worker_pid, ()).await?;
        ensure(victim != std::process::id(), "a worker process")?;
        let restarted = pool.stats().restarted;
        kill(victim)?;
        eventually("the pool replaced its worker", || {
            pool.stats().restarted > restarted
        })
        .await?;
        eventually("the killed worker is reaped", || !is_running(victim)).await?;
        works(&pool).await?;
    }
    let kids = sup.which_children();
    ensure(
        kids[0].generation == 1 && kids[0].restarts == 0,
        format!("the supervisor restarted nothing: {kids:?}"),
    )?;
    sup.shutdown().await?;
    let seen: Vec<Event> = drain(sup, events)
        .await?
        .into_iter()
        .filter(|e| !matches!(e, Event::Stopping { .. } | Event::Log { .. }))
        .collect();
    let me = std::process::id();
    ensure(
        matches!(
            seen.as_slice(),
            [
                Event::Started { child: a, pid: p, generation: 1 },
                Event::Exited { child: b, pid: q, exit: ExitKind::Normal, .. },
            ] if a == "root/jobs" && b == "root/jobs" && *p == me && *q == me
        ),
        format!("one start, one exit at shutdown: {seen:?}"),
    )?;
    Ok(())
}

/// A pool one of whose workers cannot be replaced exits `Failed`, though
/// its other worker runs on; its supervisor's strategy applies.
async fn a_pool_that_cannot_keep_its_workers_is_restarted() -> Result<(), Failed> {
    let dir = Scratch::new("pool-refuses")?;
    let builder = mp::Pool::builder()
        .processes(2)
        .initializer(refuse_while_armed, dir.path().to_owned());
    let sup = Supervisor::builder()
        .name("root")
        .strategy(Strategy::OneForAll)
        .intensity(20, Duration::from_secs(60))
        // Time to disarm before the restart (a restart that comes first
        // fails and is tried again).
        .backoff(Backoff::exponential(
            Duration::from_millis(300),
            Duration::from_secs(2),
        ))
        .child(ChildSpec::new("t", serve, ()).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::pool("jobs", builder))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let t1 = started(&mut events, "root/t", 1).await?;
    let old = sup.pool("jobs").ok_or("the pool")?;
    let victim = old.apply(worker_pid, ()).await?;
    publish(&dir.join("armed"), "");
    kill(victim)?;
    let (pid, exit) = exited(&mut events, "root/jobs").await?;
    std::fs::remove_file(dir.join("armed"))?;
    ensure(
        pid == std::process::id() && matches!(exit, ExitKind::Failed(_)),
        format!("the pool exited abnormally: {pid} {exit:?}"),
    )?;
    let refused = std::fs::read(dir.join("refused"))?.len();
    ensure(
        refused >= 2,
        format!("the pool retried before it gave up: {refused} tries"),
    )?;
    let seen = collect_until(
        &mut events,
        |e| matches!(e, Event::Started { child, .. } if child == "root/jobs"),
    )
    .await?;
    let t_exit = seen.iter().position(
        |e| matches!(e, Event::Exited { child, pid, .. } if child == "root/t" && *pid == t1),
    );
    let t_start = seen
        .iter()
        .position(|e| matches!(e, Event::Started { child, .. } if child == "root/t"));
    ensure(
        matches!((t_exit, t_start), (Some(x), Some(s)) if x < s),
        format!("OneForAll: the sibling was stopped and started again: {seen:?}"),
    )?;
    ensure(!is_running(t1), "the old sibling is gone")?;
    // The pool is published just after its `Started` is sent.
    let mut new = None;
    eventually("the new pool is reachable", || {
        new = sup.pool("jobs");
        new.is_some()
    })
    .await?;
    works(&new.ok_or("the new pool")?).await?;
    ensure(
        old.apply(double, 1).await.is_err(),
        "the old pool's handle fails",
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// `sup.pool(name)` follows the child: none once terminated or shut down, new on restart.
async fn the_pool_handle_goes_with_the_child() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::pool("jobs", mp::Pool::builder().processes(1)))
        .start()
        .await?;
    let first = sup.pool("jobs").ok_or("the pool")?;
    works(&first).await?;
    sup.terminate_child("jobs").await?;
    ensure(sup.pool("jobs").is_none(), "no pool once terminated")?;
    ensure(
        first.apply(double, 1).await.is_err(),
        "a terminated pool takes no work",
    )?;
    sup.restart_child("jobs").await?;
    let second = sup.pool("jobs").ok_or("the pool, restarted")?;
    works(&second).await?;
    sup.shutdown().await?;
    ensure(sup.pool("jobs").is_none(), "no pool after shutdown")?;
    ensure(
        second.apply(double, 1).await.is_err(),
        "a pool shut down takes no work",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_pool_child_runs_in_the_program",
            Duration::from_secs(30),
            a_pool_child_runs_in_the_program,
        ),
        case(
            "killed_workers_are_the_pools_business",
            Duration::from_secs(30),
            killed_workers_are_the_pools_business,
        ),
        case(
            "a_pool_that_cannot_keep_its_workers_is_restarted",
            Duration::from_secs(30),
            a_pool_that_cannot_keep_its_workers_is_restarted,
        ),
        case(
            "the_pool_handle_goes_with_the_child",
            Duration::from_secs(30),
            the_pool_handle_goes_with_the_child,
        ),
    ]
}
