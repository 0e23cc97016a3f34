//! A child whose parent dies, even by SIGKILL, exits within a second,
//! unless it was started detached.
//!
//! The test process is a child subreaper while these cases run (each
//! alone), so the grandchildren that a killed middle process leaves behind
//! become its own children: it can then watch them, and reap them,
//! precisely.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_as_subreaper, ensure};

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The middle process: starts a grandchild that sleeps for a minute,
/// records its pid in `path`, then sleeps itself. Its fork server has
/// forked the spare for its next start by then (an attached start asks for
/// one), so that its machinery is all there to be seen.
async fn middle((path, detached): (PathBuf, bool)) {
    let g = mp::Process::builder()
        .detached(detached)
        .build(sleep_ms, 60_000);
    g.start().await.expect("grandchild starts");
    let gpid = g.pid().expect("pid");
    if !detached {
        let me = std::process::id();
        for _ in 0..1_000 {
            let spare = common::children_of(me)
                .into_iter()
                .any(|p| p != gpid && common::is_fork_server_or_spare(p));
            if spare {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, gpid.to_string()).expect("write pid");
    std::fs::rename(&tmp, &path).expect("publish pid");
    tokio::time::sleep(Duration::from_secs(60)).await;
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tmp-parent-death-{}-{name}", std::process::id()))
}

async fn grandchild_pid(path: &PathBuf) -> Result<u32, Failed> {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            let _ = std::fs::remove_file(path);
            return Ok(s.trim().parse()?);
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err("the middle process never reported its child".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The children of the middle process `mpid` other than its grandchild
/// `gpid`: its fork server and spare, which its death leaves to this
/// process, the subreaper.
fn machinery_of(mpid: u32, gpid: u32) -> Vec<u32> {
    common::children_of(mpid)
        .into_iter()
        .filter(|p| *p != gpid)
        .collect()
}

/// Waits until each of `pids`, the machinery of a middle process that was
/// killed, has ended (the kernel's parent-death signal ends it), and reaps
/// it: adopted by this process, a zombie left behind would stay for the
/// rest of the run and fail the next case that counts zombies.
async fn reap_machinery(pids: &[u32]) -> Result<(), Failed> {
    for &pid in pids {
        common::eventually("the killed middle process's machinery is gone", || {
            !matches!(common::reap_if_ended(pid), common::Reap::NotYet)
        })
        .await?;
    }
    Ok(())
}

/// Reaps `pid` (our child now, as subreaper) if it has exited.
fn reaped(pid: u32) -> bool {
    !matches!(
        waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)),
        Ok(WaitStatus::StillAlive)
    )
}

async fn killed_parent_takes_its_children_along() -> Result<(), Failed> {
    let path = scratch("attached");
    let m = mp::Process::new(middle, (path.clone(), false));
    m.start().await?;
    let gpid = grandchild_pid(&path).await?;
    ensure(common::is_running(gpid), "the grandchild runs")?;
    let machinery = machinery_of(m.pid().ok_or("no pid")?, gpid);
    m.kill()?;
    let killed_at = Instant::now();
    m.sentinel().await;
    while !reaped(gpid) {
        ensure(
            killed_at.elapsed() < Duration::from_secs(1),
            format!("grandchild {gpid} still alive 1 s after its parent was killed"),
        )?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "grandchild gone {:?} after its parent's SIGKILL",
        killed_at.elapsed()
    );
    reap_machinery(&machinery).await
}

async fn detached_children_outlive_their_parent() -> Result<(), Failed> {
    let path = scratch("detached");
    let m = mp::Process::new(middle, (path.clone(), true));
    m.start().await?;
    let gpid = grandchild_pid(&path).await?;
    let machinery = machinery_of(m.pid().ok_or("no pid")?, gpid);
    m.kill()?;
    m.sentinel().await;
    reap_machinery(&machinery).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alive = common::is_running(gpid);
    let _ = nix::sys::signal::kill(
        Pid::from_raw(gpid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let t0 = Instant::now();
    while !reaped(gpid) && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ensure(alive, "a detached grandchild survives its parent's death")?;
    Ok(())
}

fn echo(x: u32) -> u32 {
    x
}

/// Exit code of a process that `init()` let through as a parent although
/// it was started as a child (see [`refuse_to_run_as_a_parent`]).
const RAN_AS_A_PARENT: i32 = 99;

/// The file whose presence makes a child of process `parent` wait before
/// it reaches `init()` (see [`wait_if_the_parent_asks`]).
fn slow_start_flag(parent: u32) -> PathBuf {
    std::env::temp_dir().join(format!("tmp-parent-death-slow-start-{parent}"))
}

/// A grandchild's target: leaves `path` behind.
fn touch(path: PathBuf) {
    std::fs::write(path, b"ran").expect("write");
}

/// The middle process of the `..._parent_died_before_it_started_...`
/// cases: raises the flag that delays its children, re-executes a
/// grandchild that would create `path`, and kills itself, long before the
/// grandchild reaches `init()`.
async fn start_and_die((path, detached): (PathBuf, bool)) {
    let flag = slow_start_flag(std::process::id());
    std::fs::write(&flag, b"").expect("raise the flag");
    let g = mp::Process::builder()
        .start_method(mp::StartMethod::Spawn)
        .detached(detached)
        .build(touch, path);
    g.start().await.expect("grandchild starts");
    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
}

/// A re-executed child whose parent is gone by the time it reaches
/// `init()` must not take its marker for a stale one and run the program
/// as a parent. An ordinary one refuses, with 2, without running its
/// target; a detached one runs its target, as it would have had its
/// parent lived on. The grandchild is found as the one new child of this
/// process, the subreaper, once the middle one is dead: the case runs
/// alone.
async fn orphaned_before_init(detached: bool) -> Result<(), Failed> {
    for round in 0..3 {
        let ran = scratch(&format!("orphan-{detached}-{round}"));
        let _ = std::fs::remove_file(&ran);
        let before = common::children();
        let m = mp::Process::new(start_and_die, (ran.clone(), detached));
        m.start().await?;
        let mpid = m.pid().ok_or("no pid")?;
        m.sentinel().await;
        let _ = std::fs::remove_file(slow_start_flag(mpid));
        let new: Vec<u32> = common::children()
            .into_iter()
            .filter(|p| *p != mpid && !before.contains(p))
            .filter(|p| !common::is_fork_server_or_spare(*p))
            .collect();
        let [gpid] = new[..] else {
            return Err(format!("round {round}: new children {new:?}, expected one").into());
        };
        let t0 = Instant::now();
        let code = loop {
            match common::reap_if_ended(gpid) {
                common::Reap::Reaped(code) => break code,
                common::Reap::Vanished => return Err("reaped by another process".into()),
                common::Reap::NotYet => {}
            }
            if t0.elapsed() > Duration::from_secs(5) {
                let _ = nix::sys::signal::kill(
                    Pid::from_raw(gpid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(format!(
                    "round {round}: the orphaned grandchild still ran 5 s after its parent died"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let target_ran = ran.exists();
        let _ = std::fs::remove_file(&ran);
        ensure(
            code != RAN_AS_A_PARENT,
            format!("round {round}: the orphaned grandchild ran the program as a parent"),
        )?;
        let want = if detached { 0 } else { 2 };
        ensure(
            code == want && target_ran == detached,
            format!(
                "round {round}: the orphaned grandchild exited with {code} (expected {want}); \
                 its target ran: {target_ran}"
            ),
        )?;
    }
    Ok(())
}

/// A fork server that dies is replaced by re-executing: starts go on.
async fn a_dead_fork_server_is_replaced() -> Result<(), Failed> {
    let p = mp::Process::new(echo, 1);
    p.start().await?;
    ensure(p.join().await? == 1, "value through the fork server")?;
    let server = mp::__fork_server_pid().ok_or("a fork server runs")?;
    nix::sys::signal::kill(
        Pid::from_raw(server as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    for i in 0..5 {
        let p = mp::Process::new(echo, i);
        p.start().await?;
        ensure(p.join().await? == i, "value after the fork server died")?;
    }
    let replacement = mp::__fork_server_pid().ok_or("a new fork server runs")?;
    ensure(replacement != server, "the dead server is gone")?;
    ensure(!common::zombie_children().contains(&server), "and reaped")?;
    Ok(())
}

/// Runs in every process of the test binary, re-executed children too,
/// first thing in `main`, before `init()`: a child of a process that raised
/// the flag waits, so that its parent is surely dead when it gets to
/// `init()`.
pub(crate) fn wait_if_the_parent_asks() {
    if slow_start_flag(nix::unistd::getppid().as_raw() as u32).exists() {
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Runs in `main` right after `init()`: if `init()` returned in a process
/// this library started as a child, it would run the whole test binary
/// again. Say so and stop.
pub(crate) fn refuse_to_run_as_a_parent() {
    if std::env::var_os("TOKIO_MULTIPROCESSING_CHILD").is_some() {
        std::process::exit(RAN_AS_A_PARENT);
    }
}

pub(crate) fn cases() -> Vec<Case> {
    let t = Duration::from_secs(30);
    vec![
        case_as_subreaper(
            "killed_parent_takes_its_children_along",
            t,
            killed_parent_takes_its_children_along,
        ),
        case_as_subreaper(
            "detached_children_outlive_their_parent",
            t,
            detached_children_outlive_their_parent,
        ),
        case_as_subreaper(
            "a_child_whose_parent_died_before_it_started_exits",
            t,
            || orphaned_before_init(false),
        ),
        case_as_subreaper(
            "a_detached_child_whose_parent_died_before_it_started_runs",
            t,
            || orphaned_before_init(true),
        ),
        case_as_subreaper(
            "a_dead_fork_server_is_replaced",
            t,
            a_dead_fork_server_is_replaced,
        ),
    ]
}
