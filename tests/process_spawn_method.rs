//! `Process` started by re-executing the program for every child
//! (`StartMethod::Spawn`), with the same cases as `process_lifecycle`.

mod common;

#[path = "common/lifecycle_cases.rs"]
mod lifecycle_cases;

use std::time::Duration;

use common::{case, ensure};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

fn noop(_: ()) {}

/// With `Spawn`, no fork server is started.
async fn no_fork_server_runs() -> Result<(), Failed> {
    let p = mp::Process::new(noop, ());
    p.start().await?;
    ensure(
        mp::__fork_server_pid().is_none(),
        "no fork server was started",
    )?;
    p.join().await?;
    ensure(
        mp::__fork_server_pid().is_none(),
        "no fork server was started",
    )?;
    Ok(())
}

fn main() {
    let guard = mp::init();
    mp::set_start_method(mp::StartMethod::Spawn);
    let mut tests = lifecycle_cases::all();
    tests.push(case(
        "no_fork_server_runs",
        Duration::from_secs(30),
        no_fork_server_runs,
    ));
    common::run(guard, tests)
}
