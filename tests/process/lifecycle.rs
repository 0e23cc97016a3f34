//! `Process` started through the fork server (the default start method).

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};
use crate::lifecycle_cases;

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

pub(crate) fn cases() -> Vec<Case> {
    let mut cases = lifecycle_cases::all();
    cases.push(case(
        "children_come_from_the_fork_server",
        Duration::from_secs(30),
        children_come_from_the_fork_server,
    ));
    cases
}
