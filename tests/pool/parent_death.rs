//! A process killed with SIGKILL while it runs a busy `Pool` and a dozen
//! children blocked on shared objects takes all sixteen along within a
//! second.
//!
//! On Windows (`TerminateProcess` for the kill) there is no subreaper and
//! no `/proc`: the test sees the sixteen in the process list and checks
//! that they leave it (their Job Object ends them), without their exit
//! codes, and allows more time, as Wine ends processes through its server.
//!
//! A middle process starts a pool of four workers, busy in a `map` of
//! minute-long tasks, and twelve plain children: three wait in
//! `Queue::get`, three in `Lock::lock` (two on a lock the middle process
//! holds, one on a lock another child holds), three in `Event::wait`, and
//! three sleep (one of them holding that lock). Synchronous and async
//! waits are mixed. The test process is a child subreaper while these
//! cases run (each alone), so when it kills the middle process the sixteen
//! become its own children: it watches them and reaps each the moment it
//! ends.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

use crate::common::{self, Case, ensure};
#[cfg(unix)]
use crate::common::{Reap, case_as_subreaper};

const WORKERS: usize = 4;
/// How long the middle process, its tasks and its children would run if
/// nothing killed them.
const LONG: Duration = Duration::from_secs(120);
/// Within how long after the middle process's SIGKILL every child must be gone.
#[cfg(unix)]
const GONE_WITHIN: Duration = Duration::from_secs(1);

/// What a plain child of the middle process does until it is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Wait {
    /// `get` on an empty queue.
    Queue,
    /// Locks the lock the middle process holds.
    ParentsLock,
    /// Locks the lock the `HoldLock` child holds.
    ChildsLock,
    /// Waits for an event nobody sets.
    Event,
    /// Takes the second lock and sleeps holding it.
    HoldLock,
    /// Sleeps.
    Sleep,
}

/// The twelve plain children, in start order: what each waits on, and
/// whether it is an async target (else a synchronous one). The lock
/// holder comes first, so its lock is taken before anyone waits for it.
const CHILDREN: [(Wait, bool); 12] = [
    (Wait::HoldLock, false),
    (Wait::Queue, true),
    (Wait::Queue, true),
    (Wait::Queue, false),
    (Wait::ParentsLock, true),
    (Wait::ParentsLock, false),
    (Wait::ChildsLock, true),
    (Wait::Event, true),
    (Wait::Event, true),
    (Wait::Event, false),
    (Wait::Sleep, false),
    (Wait::Sleep, true),
];

/// The shared objects the children block on.
#[derive(Clone, Serialize, Deserialize)]
struct Objects {
    queue: mp::Queue<u32>,
    parents_lock: mp::Lock,
    childs_lock: mp::Lock,
    event: mp::Event,
}

type ChildArgs = (usize, Wait, PathBuf, Objects);

/// Creates `dir/name` (empty): the signals between the processes.
fn mark(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").expect("write a marker");
}

/// A pool task: records which worker runs it, then outlasts the test.
fn slow_task((dir, _item): (PathBuf, u32)) {
    mark(&dir, &format!("task-{}", std::process::id()));
    std::thread::sleep(LONG);
}

/// A plain child with a synchronous target. It marks itself ready just
/// before it blocks (the lock holder, once it holds the lock); a wait
/// that returns leaves a `returned-` marker and ends the process, which
/// the test notices.
fn blocked_sync((i, wait, dir, objs): ChildArgs) {
    let ready = format!("ready-{i}");
    match wait {
        Wait::Queue => {
            mark(&dir, &ready);
            let _ = objs.queue.blocking_get();
        }
        Wait::ParentsLock => {
            mark(&dir, &ready);
            let _guard = objs.parents_lock.blocking_lock();
        }
        Wait::ChildsLock => {
            mark(&dir, &ready);
            let _guard = objs.childs_lock.blocking_lock();
        }
        Wait::Event => {
            mark(&dir, &ready);
            objs.event.blocking_wait();
        }
        Wait::HoldLock => {
            let _guard = objs.childs_lock.blocking_lock();
            mark(&dir, &ready);
            std::thread::sleep(LONG);
        }
        Wait::Sleep => {
            mark(&dir, &ready);
            std::thread::sleep(LONG);
        }
    }
    mark(&dir, &format!("returned-{i}"));
}

/// [`blocked_sync`] as an async target.
async fn blocked_async((i, wait, dir, objs): ChildArgs) {
    let ready = format!("ready-{i}");
    match wait {
        Wait::Queue => {
            mark(&dir, &ready);
            let _ = objs.queue.get().await;
        }
        Wait::ParentsLock => {
            mark(&dir, &ready);
            let _guard = objs.parents_lock.lock().await;
        }
        Wait::ChildsLock => {
            mark(&dir, &ready);
            let _guard = objs.childs_lock.lock().await;
        }
        Wait::Event => {
            mark(&dir, &ready);
            objs.event.wait().await;
        }
        Wait::HoldLock => {
            let _guard = objs.childs_lock.lock().await;
            mark(&dir, &ready);
            tokio::time::sleep(LONG).await;
        }
        Wait::Sleep => {
            mark(&dir, &ready);
            tokio::time::sleep(LONG).await;
        }
    }
    mark(&dir, &format!("returned-{i}"));
}

/// Waits up to ten seconds for `cond`.
async fn until(mut cond: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !cond() {
        if t0.elapsed() > Duration::from_secs(10) {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// The middle process. Starts the pool and its `map`, takes the first
/// lock, starts the twelve children, and once every worker has a job
/// writes `report`: its fork server's pid (0 if none) on the first line,
/// the twelve children's pids on the second. Then it waits to be killed.
async fn middle((dir, re_execute): (PathBuf, bool)) {
    if re_execute {
        mp::set_start_method(mp::StartMethod::Spawn);
    }
    let pool = mp::Pool::new(WORKERS).await.expect("the pool starts");
    let items: Vec<(PathBuf, u32)> = (0..4 * u32::try_from(WORKERS).expect("a few"))
        .map(|i| (dir.clone(), i))
        .collect();
    let mapping = pool.clone();
    let _map = tokio::spawn(async move { mapping.map(slow_task, items).await });

    let objs = Objects {
        queue: mp::Queue::new().expect("queue"),
        parents_lock: mp::Lock::new().expect("lock"),
        childs_lock: mp::Lock::new().expect("lock"),
        event: mp::Event::new().expect("event"),
    };
    let _held = objs.parents_lock.lock().await.expect("a new lock");
    let mut children = Vec::new();
    for (i, (wait, is_async)) in CHILDREN.into_iter().enumerate() {
        let args = (i, wait, dir.clone(), objs.clone());
        let p = if is_async {
            mp::Process::new(blocked_async, args)
        } else {
            mp::Process::new(blocked_sync, args)
        };
        p.start().await.expect("a child starts");
        if wait == Wait::HoldLock {
            assert!(
                until(|| objs.childs_lock.is_locked()).await,
                "the holder takes its lock"
            );
        }
        children.push(p);
    }
    assert!(
        until(|| pool.stats().busy == WORKERS).await,
        "every worker gets a job: {:?}",
        pool.stats()
    );
    let pids: Vec<String> = children
        .iter()
        .map(|p| p.pid().expect("started").to_string())
        .collect();
    let server = mp::__fork_server_pid().unwrap_or(0);
    let tmp = dir.join("report.tmp");
    std::fs::write(&tmp, format!("{server}\n{}\n", pids.join(" "))).expect("write the report");
    std::fs::rename(&tmp, dir.join("report")).expect("publish the report");
    tokio::time::sleep(LONG).await;
}

/// The names in `dir` that start with `prefix`, without it.
fn marked(dir: &Path, prefix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix(prefix))
                .map(str::to_owned)
        })
        .collect()
}

/// The fork server's pid (if any) and the twelve plain children's pids,
/// from the middle process's report.
async fn read_report(dir: &Path) -> Result<(Option<u32>, Vec<u32>), Failed> {
    let path = dir.join("report");
    ensure(
        until(|| path.exists()).await,
        "the middle process never reported",
    )?;
    let report = std::fs::read_to_string(&path)?;
    let mut lines = report.lines();
    let server: u32 = lines.next().ok_or("no server line")?.parse()?;
    let pids = lines
        .next()
        .ok_or("no children line")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<Vec<u32>, _>>()?;
    ensure(pids.len() == CHILDREN.len(), format!("report: {report:?}"))?;
    Ok(((server != 0).then_some(server), pids))
}

/// A middle process's family, built and in place: its scratch directory,
/// the middle process, its fork server (if any), its twelve children (in
/// `CHILDREN`'s order) and the sixteen pids of those and its four pool
/// workers.
struct Family {
    dir: std::path::PathBuf,
    middle: mp::Process<()>,
    server: Option<u32>,
    // Read by the Unix round only, which names each child's exit.
    #[cfg_attr(windows, allow(dead_code))]
    plain: Vec<u32>,
    sixteen: BTreeSet<u32>,
}

/// Starts the middle process (its children re-executed if `spawn`), with
/// a scratch directory named by `tag`, and waits until the twelve are in
/// their waits and the four workers in their tasks, none returned.
async fn family(tag: &str, spawn: bool) -> Result<Family, Failed> {
    let dir = std::env::temp_dir().join(format!(
        "tmp-pool-parent-death-{}-{tag}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let m = mp::Process::new(middle, (dir.clone(), spawn));
    m.start().await?;
    let (server, plain) = read_report(&dir).await?;

    // The twelve are in their waits, and four workers in their tasks.
    let ready = until(|| {
        marked(&dir, "ready-").len() == CHILDREN.len() && marked(&dir, "task-").len() == WORKERS
    })
    .await;
    ensure(
        ready,
        format!(
            "ready: {:?}, tasks running in: {:?}",
            marked(&dir, "ready-"),
            marked(&dir, "task-")
        ),
    )?;
    let workers = marked(&dir, "task-")
        .iter()
        .map(|p| p.parse::<u32>())
        .collect::<Result<Vec<_>, _>>()?;
    // Time to go from the marker to the wait itself.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let returned = marked(&dir, "returned-");
    ensure(
        returned.is_empty(),
        format!("children whose wait returned: {returned:?}"),
    )?;

    let sixteen: BTreeSet<u32> = plain.iter().chain(&workers).copied().collect();
    ensure(
        sixteen.len() == CHILDREN.len() + WORKERS,
        "sixteen distinct pids",
    )?;
    Ok(Family {
        dir,
        middle: m,
        server,
        plain,
        sixteen,
    })
}

/// One round: builds the middle process's family, checks through `/proc`
/// that all sixteen run, kills the middle process and returns how long
/// the last of the sixteen took to be gone.
#[cfg(unix)]
async fn round(method: mp::StartMethod, n: usize) -> Result<Duration, Failed> {
    let Family {
        dir,
        middle: m,
        server,
        plain,
        sixteen,
    } = family(&format!("{method:?}-{n}"), method == mp::StartMethod::Spawn).await?;
    let mpid = m.pid().ok_or("no pid")?;
    let mut expected = sixteen.clone();
    expected.extend(server);
    // Its fork server's spare comes and goes, and dies with it too.
    let (spares, found): (BTreeSet<u32>, BTreeSet<u32>) = common::children_of(mpid)
        .into_iter()
        .partition(|p| common::is_spare_of(*p, server));
    ensure(
        found == expected,
        format!("children of the middle process: {found:?}, expected {expected:?}"),
    )?;
    let stopped: Vec<u32> = expected
        .iter()
        .copied()
        .filter(|&p| !common::is_running(p))
        .collect();
    ensure(
        stopped.is_empty(),
        format!("not running before the kill: {stopped:?}"),
    )?;

    // Taken before the signal, so a preemption between the two cannot
    // hide any of the time.
    let killed_at = Instant::now();
    m.kill()?;
    // Once the middle process is reaped, its orphans are ours.
    m.sentinel().await;
    // Its spare (forked ahead of a next start) ends with it too.
    let mut pending = expected.clone();
    pending.extend(&spares);
    let mut ended = Vec::new();
    while !pending.is_empty() {
        let now = killed_at.elapsed();
        for pid in pending.clone() {
            match common::reap_if_ended(pid) {
                Reap::NotYet => {}
                Reap::Reaped(code) => {
                    pending.remove(&pid);
                    ended.push((pid, code, now));
                }
                Reap::Vanished => {
                    return Err(format!("{pid} was reaped by another process").into());
                }
            }
        }
        if now > GONE_WITHIN {
            let states: Vec<_> = pending.iter().map(|&p| (p, common::stat_of(p))).collect();
            for &p in &pending {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            return Err(format!(
                "{method:?} round {n}: still there {now:?} after the middle process's \
                 SIGKILL (pid, (state, parent)): {states:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every child ended with its parent: forked by the fork server, by
    // the kernel's parent-death signal (SIGKILL, -9); re-executed, through
    // its parent watch (`_exit(1)`). The fork server ended when its
    // channel closed (0). A lock's waiter may get in first: within its
    // 50 ms check it finds the holder dead (the middle process, or the
    // holder child killed with it), takes the lock poisoned, and its
    // target returns (0, with a `returned-` marker). No other wait ends.
    let died = if server.is_some() { -9 } else { 1 };
    let returned = marked(&dir, "returned-");
    let _ = std::fs::remove_dir_all(&dir);
    for &(pid, code, _) in &ended {
        let plain = plain.iter().position(|&p| p == pid);
        let what = match plain {
            Some(i) => format!("child {i} {:?}", CHILDREN[i]),
            None if Some(pid) == server => "the fork server".to_owned(),
            None if spares.contains(&pid) => "the spare".to_owned(),
            None => "a pool worker".to_owned(),
        };
        let ok = match plain {
            None if Some(pid) == server => code == 0,
            // By the parent-death signal or by leaving when its channel
            // closed (2), whichever came first.
            None if spares.contains(&pid) => code == died || code == 2,
            None => code == died,
            Some(i) => {
                let took_a_dead_holders_lock =
                    matches!(CHILDREN[i].0, Wait::ParentsLock | Wait::ChildsLock)
                        && returned.contains(&i.to_string());
                code == died || (code == 0 && took_a_dead_holders_lock)
            }
        };
        ensure(
            ok,
            format!("{what} ({pid}) ended with {code}; children whose wait returned: {returned:?}"),
        )?;
        if code == 0 && plain.is_some() {
            println!("{what} took the lock of its dead holder before it ended with its parent");
        }
    }
    let last = ended
        .iter()
        .filter(|(pid, _, _)| sixteen.contains(pid))
        .map(|&(_, _, t)| t)
        .max()
        .unwrap_or_default();
    println!(
        "{method:?} round {n}: the 16 children were gone {last:?} after the SIGKILL{}",
        match server {
            Some(s) => format!(
                ", the fork server {:?}",
                ended
                    .iter()
                    .find(|e| e.0 == s)
                    .map(|e| e.2)
                    .unwrap_or_default()
            ),
            None => String::new(),
        }
    );
    Ok(last)
}

#[cfg(unix)]
async fn rounds(method: mp::StartMethod, count: usize) -> Result<(), Failed> {
    let mut worst = Duration::ZERO;
    for n in 0..count {
        worst = worst.max(round(method, n).await?);
    }
    println!("{method:?}: longest time to gone over {count} rounds: {worst:?}");
    ensure(
        common::zombie_children().is_empty(),
        format!("zombies left: {:?}", common::zombie_children()),
    )
}

/// Within how long after the middle process's kill every child must have
/// ended on Windows: under Wine, a process ends through Wine's server.
#[cfg(windows)]
const GONE_WITHIN_ON_WINDOWS: Duration = Duration::from_secs(10);

/// Those of `pids` that are running.
#[cfg(windows)]
fn running_of(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|&p| common::is_running(p))
        .collect()
}

/// The round on Windows: the same family (the children re-executed, as
/// every child is there), all sixteen in the process list before the
/// kill, none of them in it soon after.
#[cfg(windows)]
async fn round_on_windows(n: usize) -> Result<Duration, Failed> {
    let Family {
        dir,
        middle: m,
        server,
        sixteen,
        ..
    } = family(&format!("windows-{n}"), true).await?;
    ensure(server.is_none(), "no fork server on Windows")?;
    let all: Vec<u32> = sixteen.iter().copied().collect();
    let running = running_of(&all);
    let stopped: Vec<u32> = all
        .iter()
        .copied()
        .filter(|p| !running.contains(p))
        .collect();
    ensure(
        stopped.is_empty(),
        format!("not running before the kill: {stopped:?}"),
    )?;

    let killed_at = Instant::now();
    m.kill()?;
    m.sentinel().await;
    let mut left = all;
    while !left.is_empty() {
        left = running_of(&left);
        let now = killed_at.elapsed();
        if left.is_empty() {
            break;
        }
        if now > GONE_WITHIN_ON_WINDOWS {
            for &p in &left {
                let _ = common::kill_hard(p);
            }
            return Err(
                format!("round {n}: still running {now:?} after the kill: {left:?}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = killed_at.elapsed();
    // A lock's waiter may take its dead holder's lock (poisoned) and
    // return before it ends; no other wait ends.
    let returned = marked(&dir, "returned-");
    let _ = std::fs::remove_dir_all(&dir);
    for i in &returned {
        let i: usize = i.parse()?;
        ensure(
            matches!(CHILDREN[i].0, Wait::ParentsLock | Wait::ChildsLock),
            format!("child {i} {:?} returned from its wait", CHILDREN[i]),
        )?;
    }
    println!("Windows round {n}: the 16 children were gone {took:?} after the kill");
    Ok(took)
}

/// On Windows, every child is re-executed: the second case only.
#[cfg(windows)]
pub(crate) fn cases() -> Vec<Case> {
    vec![crate::common::case(
        "the_same_with_children_re_executed",
        Duration::from_secs(120),
        || async {
            for n in 0..3 {
                round_on_windows(n).await?;
            }
            Ok(())
        },
    )]
}

#[cfg(unix)]
pub(crate) fn cases() -> Vec<Case> {
    let t = Duration::from_secs(120);
    vec![
        case_as_subreaper(
            "a_killed_parent_takes_its_pool_and_blocked_children_along",
            t,
            || rounds(mp::StartMethod::ForkServer, 5),
        ),
        case_as_subreaper("the_same_with_children_re_executed", t, || {
            rounds(mp::StartMethod::Spawn, 3)
        }),
    ]
}
