//! A child's `tracing` events reach the parent's subscriber: labelled with
//! the child, with their level, target, fields and spans, in order, up to
//! the parent's level; never blocking the child; off when asked.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, Event, Restart, Supervisor};
use tokio_multiprocessing as mp;

use crate::common::{Case, case};
use crate::record::{Seen, from_child};

fn ensure(ok: bool, what: impl Into<String>) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(what.into().into()) }
}

/// Logs `n` numbered events inside a span of its own, and a debug event
/// the parent's level does not want.
fn numbered(n: u64) {
    let span = tracing::info_span!(target: "app::work", "work", job = 7_u64);
    let _in = span.enter();
    for i in 0..n {
        tracing::info!(target: "app::work", i, kind = "numbered", "event {i}");
        if i == 0 {
            tracing::debug!(target: "app::work", "not wanted");
            tracing::warn!(target: "app::other", flag = true, ratio = 0.5, "a warning");
        }
    }
}

async fn events_reach_the_parent_labelled_and_in_order() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .name("numbered")
        .spawn(numbered, 1000_u64)
        .await?;
    let pid = p.pid().ok_or("a pid")?;
    p.join().await?;
    // Everything the child logged arrived before its join returned.
    let got = from_child(pid);
    let numbered: Vec<&Seen> = got
        .iter()
        .filter(|s| s.field("kind") == Some("numbered"))
        .collect();
    ensure(
        numbered.len() == 1000,
        format!("1000 numbered events, got {}", numbered.len()),
    )?;
    for (want, s) in numbered.iter().enumerate() {
        ensure(
            s.field("i") == Some(want.to_string().as_str()),
            format!("event {want} in order: {s:?}"),
        )?;
        ensure(
            s.field("message") == Some(format!("event {want}").as_str()),
            format!("its message: {s:?}"),
        )?;
    }
    let first = numbered[0];
    ensure(
        first.level == tracing::Level::INFO && first.target == "app::work",
        format!("level and target kept: {first:?}"),
    )?;
    ensure(
        first.child_process() == Some("numbered"),
        format!("labelled with the child's name: {first:?}"),
    )?;
    let names: Vec<&str> = first.spans.iter().map(|(n, _)| n.as_str()).collect();
    ensure(
        names == ["child", "work"],
        format!("inside the label, then the child's own span: {names:?}"),
    )?;
    ensure(
        first.spans[1].1.get("job").map(String::as_str) == Some("7"),
        format!("the child's span keeps its fields: {first:?}"),
    )?;
    let warning: Vec<&Seen> = got.iter().filter(|s| s.target == "app::other").collect();
    ensure(
        warning.len() == 1
            && warning[0].level == tracing::Level::WARN
            && warning[0].field("flag") == Some("true")
            && warning[0].field("ratio") == Some("0.5"),
        format!("a warning with typed fields: {warning:?}"),
    )?;
    ensure(
        got.iter().all(|s| s.field("message") != Some("not wanted")),
        "a debug event the parent does not want is not forwarded",
    )?;
    Ok(())
}

async fn forward_tracing_false_sends_nothing() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .forward_tracing(false)
        .spawn(numbered, 50_u64)
        .await?;
    let pid = p.pid().ok_or("a pid")?;
    p.join().await?;
    let got = from_child(pid);
    ensure(got.is_empty(), format!("nothing forwarded: {got:?}"))?;
    Ok(())
}

fn log_in_a_task(i: u64) -> u64 {
    tracing::info!(target: "app::task", i, "task {i}");
    std::process::id().into()
}

async fn pool_workers_forward_their_events() -> Result<(), Failed> {
    let pool = mp::Pool::builder().processes(2).build().await?;
    let pids = pool.map(log_in_a_task, 0..20_u64).await?;
    pool.close();
    pool.join().await?;
    for (i, pid) in pids.iter().enumerate() {
        let pid = u32::try_from(*pid)?;
        let got: Vec<Seen> = from_child(pid)
            .into_iter()
            .filter(|s| s.target == "app::task" && s.field("i") == Some(i.to_string().as_str()))
            .collect();
        ensure(
            got.len() == 1,
            format!("task {i}'s event from worker {pid}: {got:?}"),
        )?;
    }
    ensure(
        a_quiet_pool_sends_nothing().await?,
        "a pool with forwarding off sends nothing",
    )?;
    Ok(())
}

/// A pool with `forward_tracing(false)`: its workers' events go nowhere.
async fn a_quiet_pool_sends_nothing() -> Result<bool, Failed> {
    let pool = mp::Pool::builder()
        .processes(1)
        .forward_tracing(false)
        .build()
        .await?;
    let pids = pool.map(log_in_a_task, 100..110_u64).await?;
    pool.close();
    pool.join().await?;
    let pid = u32::try_from(pids[0])?;
    Ok(from_child(pid).is_empty())
}

async fn sup_child(_: ()) {
    tracing::info!(target: "app::supervised", "hello from a supervised child");
    mp::notify_ready();
}

async fn supervised_children_forward_their_events() -> Result<(), Failed> {
    let sup = Supervisor::builder()
        .name("logs")
        .child(ChildSpec::new("talker", sup_child, ()).restart(Restart::Temporary))
        .child(
            ChildSpec::new("quiet", sup_child, ())
                .restart(Restart::Temporary)
                .forward_tracing(false),
        )
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let (mut talker, mut quiet) = (None, None);
    while talker.is_none() || quiet.is_none() {
        match events.next().await.ok_or("the event stream ended")? {
            Event::Exited { child, pid, .. } if child == "logs/talker" => talker = Some(pid),
            Event::Exited { child, pid, .. } if child == "logs/quiet" => quiet = Some(pid),
            Event::Lagged(n) => return Err(format!("lagged by {n}").into()),
            _ => {}
        }
    }
    sup.shutdown().await?;
    let (talker, quiet) = (talker.ok_or("talker")?, quiet.ok_or("quiet")?);
    let got: Vec<Seen> = from_child(talker)
        .into_iter()
        .filter(|s| s.target == "app::supervised")
        .collect();
    ensure(
        got.len() == 1 && got[0].child_process() == Some("logs/talker"),
        format!("one event, labelled with the child's path: {got:?}"),
    )?;
    let got = from_child(quiet);
    ensure(
        got.is_empty(),
        format!("nothing from a child with forward_tracing(false): {got:?}"),
    )?;
    Ok(())
}

/// Logs `n` events to a subscriber that takes 1 ms each, and says how
/// long that took here.
fn flood(n: u64) -> Duration {
    let t0 = Instant::now();
    for i in 0..n {
        tracing::info!(target: "slow", i, "flood");
    }
    t0.elapsed()
}

async fn a_slow_subscriber_never_slows_the_child() -> Result<(), Failed> {
    const N: u64 = 200_000;
    let p = mp::Process::builder().spawn(flood, N).await?;
    let pid = p.pid().ok_or("a pid")?;
    let took = p.join().await?;
    // 200,000 events at 1 ms each would take 200 s if the child waited.
    ensure(
        took < Duration::from_secs(10),
        format!("the child logged {N} events in {took:?}"),
    )?;
    let got = from_child(pid);
    let delivered = got.iter().filter(|s| s.target == "slow").count() as u64;
    let dropped: u64 = got
        .iter()
        .filter_map(|s| s.field("dropped"))
        .map(|d| d.parse::<u64>().unwrap_or(0))
        .sum();
    println!(
        "slow subscriber: {N} events in {took:?} in the child, {delivered} delivered, {dropped} reported dropped"
    );
    ensure(dropped > 0, "the drops were reported")?;
    ensure(
        got.iter()
            .filter(|s| s.field("dropped").is_some())
            .all(|s| s.level == tracing::Level::WARN),
        "as warnings",
    )?;
    ensure(
        delivered + dropped <= N && delivered > 0,
        format!("{delivered} delivered and {dropped} dropped of {N}"),
    )?;
    // What was delivered came in order.
    let order: Vec<u64> = got
        .iter()
        .filter(|s| s.target == "slow")
        .filter_map(|s| s.field("i")?.parse().ok())
        .collect();
    ensure(
        order.windows(2).all(|w| w[0] < w[1]),
        "in the order it was logged",
    )?;
    Ok(())
}

/// Logs from the child's main thread, from a task of its runtime and from
/// a blocking thread of that runtime.
async fn from_every_thread(_: ()) {
    tracing::info!(target: "app::threads", place = "main", "here");
    tokio::spawn(async {
        tracing::info!(target: "app::threads", place = "task", "here");
    })
    .await
    .expect("the task");
    tokio::task::spawn_blocking(|| {
        tracing::info!(target: "app::threads", place = "blocking", "here");
    })
    .await
    .expect("the blocking task");
}

async fn every_thread_of_the_child_forwards() -> Result<(), Failed> {
    let p = mp::Process::builder().spawn(from_every_thread, ()).await?;
    let pid = p.pid().ok_or("a pid")?;
    p.join().await?;
    let mut places: Vec<String> = from_child(pid)
        .into_iter()
        .filter(|s| s.target == "app::threads")
        .filter_map(|s| s.field("place").map(str::to_owned))
        .collect();
    places.sort();
    ensure(
        places == ["blocking", "main", "task"],
        format!("from each thread: {places:?}"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    let limit = Duration::from_secs(60);
    vec![
        case(
            "events_reach_the_parent_labelled_and_in_order",
            limit,
            events_reach_the_parent_labelled_and_in_order,
        ),
        case(
            "forward_tracing_false_sends_nothing",
            limit,
            forward_tracing_false_sends_nothing,
        ),
        case(
            "pool_workers_forward_their_events",
            limit,
            pool_workers_forward_their_events,
        ),
        case(
            "supervised_children_forward_their_events",
            limit,
            supervised_children_forward_their_events,
        ),
        case(
            "a_slow_subscriber_never_slows_the_child",
            Duration::from_secs(120),
            a_slow_subscriber_never_slows_the_child,
        ),
        case(
            "every_thread_of_the_child_forwards",
            limit,
            every_thread_of_the_child_forwards,
        ),
    ]
}

/// The same cases that depend on how the child's forwarder was installed,
/// for a run whose subscriber was set before `init()`.
pub(crate) fn before_init_cases() -> Vec<Case> {
    let limit = Duration::from_secs(60);
    vec![
        case(
            "events_reach_the_parent_labelled_and_in_order",
            limit,
            events_reach_the_parent_labelled_and_in_order,
        ),
        case(
            "every_thread_of_the_child_forwards",
            limit,
            every_thread_of_the_child_forwards,
        ),
    ]
}
