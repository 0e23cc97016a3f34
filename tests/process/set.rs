//! `ProcessSet`: processes joined in the order they end, names and errors,
//! cancel safety, `terminate_all`, `kill_all`, `shutdown`, and the kill
//! when the set drops. On Windows `terminate_all` and `kill_all` both end
//! the processes with `TerminateProcess`, reported as SIGTERM (as Python
//! does there), and a process killed from outside exits with the code
//! `common::kill_hard` gives it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const T: Duration = Duration::from_secs(30);

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn boom(message: String) -> u64 {
    panic!("{message}");
}

/// Returns `ms` once `go` is set (or after 30 s, which fails the case).
fn nap_when_told((go, ms): (mp::Event, u64)) -> u64 {
    go.blocking_wait_timeout(T);
    ms
}

/// Started as 300, 100 and 200, and let go in the order 100, 200, 300,
/// each once the one before has come back: they come back in that order,
/// with their names and values, then `None`. (Told by events, not by
/// sleeps: under Wine a start can take longer than the sleeps differ.)
async fn joins_in_the_order_they_end() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    ensure(set.is_empty(), "a new set is empty")?;
    let mut goes = HashMap::new();
    for ms in [300u64, 100, 200] {
        let go = mp::Event::new()?;
        let named = mp::Process::builder().name(format!("nap-{ms}"));
        set.spawn_with(named, nap_when_told, (go.clone(), ms))
            .await?;
        goes.insert(ms, go);
    }
    ensure(set.len() == 3, format!("len {}", set.len()))?;
    ensure(set.pids().len() == 3, "three pids")?;
    let mut order = Vec::new();
    for ms in [100u64, 200, 300] {
        goes[&ms].set();
        // Any other process is still held, so a set that joined in any
        // order but that of ending would wait here.
        let next = tokio::time::timeout(T, set.join_next()).await;
        let (name, result) = next
            .map_err(|_| format!("nap-{ms} was let go, and nothing came back"))?
            .ok_or("the set ran dry")?;
        let back = result?;
        ensure(
            name == format!("nap-{back}"),
            format!("{name} returned {back}"),
        )?;
        order.push(back);
        ensure(set.len() == 3 - order.len(), "the process left the set")?;
    }
    ensure(order == [100, 200, 300], format!("order {order:?}"))?;
    ensure(set.is_empty(), "empty at the end")?;
    ensure(set.join_next().await.is_none(), "None again")?;
    Ok(())
}

/// A process passed to `spawn` keeps its name, default or given; one that
/// was started already is added as it is.
async fn keeps_names_and_takes_started_processes() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    let default = mp::Process::new(nap, 10);
    let default_name = default.name().to_owned();
    ensure(default_name.starts_with("Process-"), default_name.clone())?;
    let pid = set.spawn(default).await?;
    // Windows has no /proc: the pid is the set's, and names a process
    // that can be opened until the set is done with it.
    #[cfg(unix)]
    ensure(common::stat_of(pid).is_some(), "the pid names a process")?;
    #[cfg(windows)]
    ensure(set.pids().contains(&pid), "the pid is the set's")?;
    let named = mp::Process::builder().name("given").build(nap, 20);
    named.start().await?;
    let started_pid = named.pid();
    ensure(
        set.spawn(named).await.ok() == started_pid,
        "a started process keeps its pid",
    )?;
    let mut seen = HashMap::new();
    while let Some((name, result)) = set.join_next().await {
        seen.insert(name, result?);
    }
    ensure(
        seen == HashMap::from([(default_name, 10), ("given".to_owned(), 20)]),
        format!("{seen:?}"),
    )?;
    Ok(())
}

/// A panicking child and a killed child come back as such, beside one
/// that returns.
async fn reports_a_panic_and_a_kill() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    set.spawn_with(
        mp::Process::builder().name("panics"),
        boom,
        "no luck".to_owned(),
    )
    .await?;
    let victim = set
        .spawn_with(mp::Process::builder().name("killed"), nap, 30_000)
        .await?;
    set.spawn_with(mp::Process::builder().name("fine"), nap, 50)
        .await?;
    let mut results = HashMap::new();
    // The panic and the good one end first; then the victim is killed.
    for _ in 0..2 {
        let (name, result) = set.join_next().await.ok_or("two come back")?;
        results.insert(name, result);
    }
    common::kill_hard(victim)?;
    let (name, result) = set.join_next().await.ok_or("the victim comes back")?;
    results.insert(name, result);
    ensure(set.join_next().await.is_none(), "three in all")?;

    let panicked = results.remove("panics").ok_or("panics")?;
    ensure(
        panicked
            .as_ref()
            .is_err_and(|e| e.is_panic() && e.panic_message() == Some("no luck")),
        format!("{panicked:?}"),
    )?;
    let killed = results.remove("killed").ok_or("killed")?;
    #[cfg(unix)]
    ensure(
        killed.as_ref().is_err_and(|e| e.signal() == Some(9)),
        format!("{killed:?}"),
    )?;
    // Windows: killed from outside with `common::KILLED_CODE`.
    #[cfg(windows)]
    ensure(
        killed
            .as_ref()
            .is_err_and(|e| e.exit_code() == i32::try_from(common::KILLED_CODE).ok()),
        format!("{killed:?}"),
    )?;
    let fine = results.remove("fine").ok_or("fine")?;
    ensure(matches!(fine, Ok(50)), format!("{fine:?}"))?;
    Ok(())
}

/// A process whose start fails is not added, and the error comes back.
async fn a_failed_start_adds_nothing() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    let big = mp::Process::builder()
        .max_frame(1024)
        .build(|v: Vec<u8>| v.len(), vec![7u8; 4096]);
    let err = set.spawn(big).await.err().ok_or("the start fails")?;
    ensure(
        matches!(err, mp::ProcessError::Oversized { .. }),
        format!("{err:?}"),
    )?;
    ensure(set.is_empty(), "nothing added")?;
    Ok(())
}

/// An empty set answers `None` at once.
async fn an_empty_set_returns_none_at_once() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::<u64>::new();
    let started = Instant::now();
    let next = tokio::time::timeout(Duration::from_millis(500), set.join_next()).await?;
    ensure(next.is_none(), "None")?;
    ensure(
        started.elapsed() < Duration::from_millis(100),
        format!("took {:?}", started.elapsed()),
    )?;
    Ok(())
}

/// `join_next` dropped again and again by a `select!` with a short timer:
/// every process still comes back, exactly once.
async fn join_next_is_cancel_safe() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    let sleeps = [250u64, 50, 150, 100, 200, 0];
    for (i, ms) in sleeps.iter().enumerate() {
        set.spawn_with(mp::Process::builder().name(format!("p{i}")), nap, *ms)
            .await?;
    }
    let mut back: HashMap<String, u64> = HashMap::new();
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            next = set.join_next() => match next {
                Some((name, result)) => {
                    let ms = result?;
                    ensure(back.insert(name.clone(), ms).is_none(), format!("{name} came back twice"))?;
                }
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(3)) => ticks += 1,
        }
    }
    ensure(ticks > 10, format!("the timer won {ticks} times"))?;
    let want: HashMap<String, u64> = sleeps
        .iter()
        .enumerate()
        .map(|(i, ms)| (format!("p{i}"), *ms))
        .collect();
    ensure(back == want, format!("{back:?}"))?;
    Ok(())
}

/// Spawns `n` processes that would sleep 30 s.
async fn sleepers(n: usize) -> Result<(mp::ProcessSet<u64>, Vec<u32>), Failed> {
    let mut set = mp::ProcessSet::new();
    let mut pids = Vec::new();
    for _ in 0..n {
        pids.push(set.spawn(mp::Process::new(nap, 30_000)).await?);
    }
    Ok((set, pids))
}

/// Every process comes back, soon, killed by `signal`.
async fn all_come_back_signaled(
    set: &mut mp::ProcessSet<u64>,
    n: usize,
    signal: i32,
) -> Result<(), Failed> {
    let started = Instant::now();
    for _ in 0..n {
        let (name, result) = set.join_next().await.ok_or("one per process")?;
        ensure(
            result.as_ref().is_err_and(|e| e.signal() == Some(signal)),
            format!("{name}: {result:?}"),
        )?;
    }
    ensure(set.join_next().await.is_none(), "no more")?;
    ensure(
        started.elapsed() < Duration::from_secs(10),
        format!("took {:?}", started.elapsed()),
    )?;
    Ok(())
}

async fn terminate_all_sends_sigterm() -> Result<(), Failed> {
    let (mut set, _) = sleepers(3).await?;
    set.terminate_all();
    ensure(set.len() == 3, "they stay in the set until joined")?;
    all_come_back_signaled(&mut set, 3, 15).await
}

async fn kill_all_sends_sigkill() -> Result<(), Failed> {
    let (mut set, _) = sleepers(3).await?;
    set.kill_all();
    // Windows: `kill_all` is `terminate_all`, reported as SIGTERM.
    let signal = if cfg!(windows) { 15 } else { 9 };
    all_come_back_signaled(&mut set, 3, signal).await
}

async fn shutdown_kills_and_empties() -> Result<(), Failed> {
    let (mut set, pids) = sleepers(3).await?;
    set.shutdown().await;
    ensure(set.is_empty(), "empty")?;
    for pid in pids {
        common::eventually("reaped", || gone(pid)).await?;
    }
    Ok(())
}

/// Whether process `pid` is gone: on Unix no process at all, not even a
/// zombie; on Windows, which has no zombies, no process that still runs.
fn gone(pid: u32) -> bool {
    #[cfg(unix)]
    return common::stat_of(pid).is_none();
    #[cfg(windows)]
    return !common::is_running(pid);
}

/// Dropping the set kills what is left, and the crate reaps it: the pids
/// soon name no process at all, not even a zombie.
async fn dropping_kills_and_reaps() -> Result<(), Failed> {
    let (set, pids) = sleepers(3).await?;
    for &pid in &pids {
        ensure(common::is_running(pid), format!("{pid} runs"))?;
    }
    drop(set);
    for pid in pids {
        common::eventually(&format!("{pid} killed and reaped"), || gone(pid)).await?;
    }
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "joins_in_the_order_they_end",
            T,
            joins_in_the_order_they_end,
        ),
        case(
            "keeps_names_and_takes_started_processes",
            T,
            keeps_names_and_takes_started_processes,
        ),
        case("reports_a_panic_and_a_kill", T, reports_a_panic_and_a_kill),
        case(
            "a_failed_start_adds_nothing",
            T,
            a_failed_start_adds_nothing,
        ),
        case(
            "an_empty_set_returns_none_at_once",
            T,
            an_empty_set_returns_none_at_once,
        ),
        case("join_next_is_cancel_safe", T, join_next_is_cancel_safe),
        case(
            "terminate_all_sends_sigterm",
            T,
            terminate_all_sends_sigterm,
        ),
        case("kill_all_sends_sigkill", T, kill_all_sends_sigkill),
        case("shutdown_kills_and_empties", T, shutdown_kills_and_empties),
        case("dropping_kills_and_reaps", T, dropping_kills_and_reaps),
    ]
}
