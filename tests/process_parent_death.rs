//! A child whose parent dies, even by SIGKILL, exits within a second,
//! unless it was started detached.
//!
//! The test process makes itself a child subreaper, so the grandchildren
//! that a killed middle process leaves behind become its own children: it
//! can then watch them, and reap them, precisely.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{case, ensure};
use libtest_mimic::Failed;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio_multiprocessing as mp;

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// The middle process: starts a grandchild that sleeps for a minute,
/// records its pid in `path`, then sleeps itself.
async fn middle((path, detached): (PathBuf, bool)) {
    let g = mp::Process::builder()
        .detached(detached)
        .build(sleep_ms, 60_000);
    g.start().await.expect("grandchild starts");
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, g.pid().expect("pid").to_string()).expect("write pid");
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
    Ok(())
}

async fn detached_children_outlive_their_parent() -> Result<(), Failed> {
    let path = scratch("detached");
    let m = mp::Process::new(middle, (path.clone(), true));
    m.start().await?;
    let gpid = grandchild_pid(&path).await?;
    m.kill()?;
    m.sentinel().await;
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

/// A fork server that dies is replaced by re-executing: starts go on.
async fn fork_server_death_falls_back_to_spawn() -> Result<(), Failed> {
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
    ensure(mp::__fork_server_pid().is_none(), "the dead server is gone")?;
    ensure(!common::zombie_children().contains(&server), "and reaped")?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
    let t = Duration::from_secs(30);
    common::run(
        guard,
        vec![
            case(
                "killed_parent_takes_its_children_along",
                t,
                killed_parent_takes_its_children_along,
            ),
            case(
                "detached_children_outlive_their_parent",
                t,
                detached_children_outlive_their_parent,
            ),
            case(
                "fork_server_death_falls_back_to_spawn",
                t,
                fork_server_death_falls_back_to_spawn,
            ),
        ],
    )
}
