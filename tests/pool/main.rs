//! `Pool`: maps, `apply_async` and `imap`, its features, workers that die
//! or are killed at random, a million tasks, a parent's death, Ctrl-C,
//! idle workers that rest, and the `server` example built on it.
//!
//! Some runs of this binary are programs under test, not the test: `main`
//! picks them by their environment before it calls `init()` itself.

#[path = "../common/mod.rs"]
mod common;

mod basics;
// Unix only: it SIGKILLs workers through pidfds, and counts zombies,
// children and descriptors in /proc.
#[cfg(unix)]
mod chaos;
// Unix only: SIGINT to a program and its process group, and the orphans
// it leaves adopted by the test process as a child subreaper.
#[cfg(unix)]
mod ctrl_c;
mod deaths;
mod features;
mod handles;
mod imap;
mod parent_death;
mod remote;
// Linux only: it reads workers' resident sizes in /proc (and only Linux
// workers give their code's pages back).
#[cfg(unix)]
mod rest;
// Unix only: it stops the `server` example with SIGTERM and SIGINT, to its
// process group too.
#[cfg(unix)]
mod server;
mod soak;
// Unix only: it reads CPU times with getrusage and from /proc.
#[cfg(unix)]
mod spin;

use tokio_multiprocessing as mp;

fn main() {
    // A remote worker of a pool under test.
    if let Some(address) = remote::worker_asked() {
        std::process::exit(remote::worker_program(address));
    }
    // The program that calls `init()` itself.
    #[cfg(unix)]
    if let Some(mode) = ctrl_c::program_asked() {
        std::process::exit(ctrl_c::program(mode));
    }
    // Before `init()`, so that it holds in the workers too.
    #[cfg(unix)]
    chaos::quiet_planned_panics();
    let guard = mp::init();
    // Those that count children and descriptors first (see `common`), then
    // the longest, so that the others fill the other thread.
    common::run(
        guard,
        vec![
            #[cfg(unix)]
            common::module("chaos", chaos::cases()),
            common::module("handles", handles::cases()),
            common::module("soak", soak::cases()),
            common::module("parent_death", parent_death::cases()),
            #[cfg(unix)]
            common::module("ctrl_c", ctrl_c::cases()),
            common::module("features", features::cases()),
            common::module("basics", basics::cases()),
            common::module("deaths", deaths::cases()),
            common::module("imap", imap::cases()),
            #[cfg(unix)]
            common::module("spin", spin::cases()),
            #[cfg(unix)]
            common::module("rest", rest::cases()),
            #[cfg(unix)]
            common::module("server", server::cases()),
            common::module("remote", remote::cases()),
        ],
    )
}
