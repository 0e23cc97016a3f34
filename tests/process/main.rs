//! `Process`: starting, joining and ending children, under both start
//! methods, with `Sentinel`, `wait` and `ProcessSet`, `active_children`,
//! the exit rule, a parent's death, faults of the fork server and hostile
//! children.
//!
//! Some runs of this binary are programs under test, not the test: `main`
//! picks them by their environment before it calls `init()` itself.
//!
//! On Windows, where `StartMethod::Spawn` is the only start method, the
//! same binary runs every case that does not need the fork server, `/proc`
//! or signals; each module left out says why where it is declared.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/lifecycle_cases.rs"]
mod lifecycle_cases;
#[path = "../common/sentinel_cases.rs"]
mod sentinel_cases;

mod exit_rule;
// Unix only: faults of the fork server, SIGINT and SIGKILL sent to it.
#[cfg(unix)]
mod faults;
mod hijack;
mod info;
mod large_args;
// Unix only: the fork server's cases (its Spawn twin is `spawn_method`).
#[cfg(unix)]
mod lifecycle;
mod output;
// Unix only: PR_SET_PDEATHSIG, a subreaper, and SIGKILL of the parent.
#[cfg(unix)]
mod parent_death;
// Unix only: raw frames written to the child's control descriptor, and
// descriptors counted in /proc.
#[cfg(unix)]
mod rogue_child;
mod sentinel;
mod set;
mod setting;
// Unix only: zombies, descriptors and resident memory counted in /proc.
#[cfg(unix)]
mod soak;
mod spawn_method;
// Unix only: the fork server's spares and warm starts.
#[cfg(unix)]
mod warm;

use std::time::Duration;

use tokio_multiprocessing as mp;

fn main() {
    // The runs of `output`: a subscriber and backtraces, before anything.
    if output::asked() {
        output::prepare();
    }
    // In every process, re-executed children too.
    #[cfg(unix)]
    parent_death::wait_if_the_parent_asks();
    // Programs that call `init()` themselves.
    #[cfg(unix)]
    if faults::sigint_program_asked() {
        std::process::exit(faults::sigint_program());
    }
    #[cfg(unix)]
    if faults::no_init_program_asked() {
        std::process::exit(faults::no_init_program());
    }
    if hijack::probe_asked() {
        hijack::probe_program();
        return;
    }
    if exit_rule::probe_asked() {
        exit_rule::probe_program();
        return;
    }
    let guard = mp::init();
    #[cfg(unix)]
    parent_death::refuse_to_run_as_a_parent();
    if spawn_method::asked() {
        mp::set_start_method(mp::StartMethod::Spawn);
    }
    common::run(guard, modules())
}

/// The modules, in the order they run: those that count children and
/// descriptors first (see `common`), then those of every platform.
fn modules() -> Vec<Vec<libtest_mimic::Trial>> {
    let mut modules = platform_modules();
    modules.extend([
        common::module("exit_rule", exit_rule::cases()),
        common::module("hijack", hijack::cases()),
        common::module("set", set::cases()),
        common::module("info", info::cases()),
        common::module("setting", setting::cases()),
        common::module("large_args", large_args::cases()),
    ]);
    modules
}

/// The modules of Unix: the fork server's, its faults and the parent's
/// death among them.
#[cfg(unix)]
fn platform_modules() -> Vec<Vec<libtest_mimic::Trial>> {
    vec![
        common::module("soak", soak::cases()),
        common::module("rogue_child", rogue_child::cases()),
        common::module("parent_death", parent_death::cases()),
        common::module("faults", faults::cases()),
        common::module("lifecycle", lifecycle::cases()),
        common::module("warm", warm::cases()),
        common::module_in_reruns(
            "spawn_method",
            spawn_method::ENV,
            Duration::from_secs(120),
            spawn_method::cases(),
        ),
        common::module_in_reruns(
            "output",
            output::ENV,
            Duration::from_secs(180),
            output::cases(),
        ),
        common::module("sentinel::pidfd", sentinel::pidfd_cases()),
        common::module_in_reruns(
            "sentinel::fallback",
            sentinel::NO_PIDFD,
            Duration::from_secs(120),
            sentinel::fallback_cases(),
        ),
    ]
}

/// The modules of Windows: `Spawn` is the default start method there, so
/// the `spawn_method` cases run in this process, and a sentinel has one
/// path only (the process handle).
#[cfg(windows)]
fn platform_modules() -> Vec<Vec<libtest_mimic::Trial>> {
    vec![
        common::module("spawn_method", spawn_method::cases()),
        common::module_in_reruns(
            "output",
            output::ENV,
            Duration::from_secs(180),
            output::cases(),
        ),
        common::module("sentinel", sentinel::cases()),
    ]
}
