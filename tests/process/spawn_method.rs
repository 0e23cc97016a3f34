//! `Process` started by re-executing the program for every child
//! (`StartMethod::Spawn`), with the same cases as `lifecycle`.
//!
//! The start method is the whole program's: each case runs in a run of
//! the test binary of its own, with [`ENV`] in its environment, where
//! `main` sets it right after `init()` (see `common::module_in_reruns`).
//! On Windows `Spawn` is the default and only method: the cases run in the
//! test process itself.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};
use crate::lifecycle_cases;

/// In the environment of the runs whose start method is `Spawn` (on
/// Unix; Windows sets nothing).
pub(crate) const ENV: (&str, &str) = ("TMP_START_METHOD", "spawn");

/// Whether this is such a run.
pub(crate) fn asked() -> bool {
    std::env::var_os(ENV.0).is_some_and(|v| v == ENV.1)
}

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
    ensure(
        mp::get_start_method() == mp::StartMethod::Spawn,
        format!("the start method: {:?}", mp::get_start_method()),
    )?;
    // Nor a spare forked ahead of the next start (Unix: Windows has no
    // fork server, nor /proc to look in).
    #[cfg(unix)]
    let named: Vec<u32> = crate::common::children()
        .into_iter()
        .filter(|c| crate::common::is_fork_server_or_spare(*c))
        .collect();
    #[cfg(unix)]
    ensure(
        named.is_empty(),
        format!("fork server processes: {named:?}"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    let mut cases = lifecycle_cases::all();
    cases.push(case(
        "no_fork_server_runs",
        Duration::from_secs(30),
        no_fork_server_runs,
    ));
    cases
}
