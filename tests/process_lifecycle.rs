//! `Process` started through the fork server (the default start method).

mod common;

#[path = "common/lifecycle_cases.rs"]
mod lifecycle_cases;

use std::time::Duration;

use common::{case, ensure};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

fn noop(_: ()) {}

fn exe_of(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The fork server is a long-lived child running this same program; a
/// child started through it is still our own child.
async fn children_come_from_the_fork_server() -> Result<(), Failed> {
    ensure(
        mp::get_start_method() == mp::StartMethod::ForkServer,
        "the default",
    )?;
    let p = mp::Process::new(noop, ());
    p.start().await?;
    let pid = p.pid().ok_or("pid")?;
    ensure(
        common::stat_of(pid).map(|(_, ppid)| ppid) == Some(std::process::id()),
        "the child is ours",
    )?;
    p.join().await?;
    let server = mp::__fork_server_pid().ok_or("a fork server runs")?;
    ensure(server != pid, "the child is not the server")?;
    ensure(
        common::stat_of(server).map(|(_, ppid)| ppid) == Some(std::process::id()),
        "the server is ours",
    )?;
    ensure(
        exe_of(server) == exe_of(std::process::id()),
        "the server runs this program",
    )?;
    ensure(common::is_running(server), "the server stays")?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    let mut tests = lifecycle_cases::all();
    tests.push(case(
        "children_come_from_the_fork_server",
        Duration::from_secs(30),
        children_come_from_the_fork_server,
    ));
    common::run(guard, tests)
}
