//! Smoke cases: one of each kind of child, started, restarted, stopped.

use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, Event, EventStream, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

fn sigkill(pid: u32) -> Result<(), Failed> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
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
    sigkill(first)?;
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
    sigkill(first)?;
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
    let e = until(
        &mut events,
        |e| matches!(e, Event::Started { child, .. } if child.ends_with("/x")),
    )
    .await;
    eprintln!("{e:?} {:?}", sup.which_children());
    sup.shutdown().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "restarts_a_killed_target",
            Duration::from_secs(30),
            restarts_a_killed_target,
        ),
        case(
            "restarts_a_killed_program",
            Duration::from_secs(30),
            restarts_a_killed_program,
        ),
        case(
            "runs_a_pool_and_a_nested_supervisor",
            Duration::from_secs(30),
            runs_a_pool_and_a_nested_supervisor,
        ),
    ]
}
