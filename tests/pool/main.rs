//! `Pool`: maps, `apply_async` and `imap`, its features, workers that die
//! or are killed at random, a million tasks, a parent's death, Ctrl-C,
//! and the `server` example built on it.
//!
//! Some runs of this binary are programs under test, not the test: `main`
//! picks them by their environment before it calls `init()` itself.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod chaos;
mod ctrl_c;
mod deaths;
mod features;
mod handles;
mod imap;
mod parent_death;
mod remote;
mod server;
mod soak;
mod spin;

use tokio_multiprocessing as mp;

fn main() {
    // A remote worker of a pool under test.
    if let Some(address) = remote::worker_asked() {
        std::process::exit(remote::worker_program(address));
    }
    // The program that calls `init()` itself.
    if let Some(mode) = ctrl_c::program_asked() {
        std::process::exit(ctrl_c::program(mode));
    }
    // Before `init()`, so that it holds in the workers too.
    chaos::quiet_planned_panics();
    let guard = mp::init();
    // Those that count children and descriptors first (see `common`), then
    // the longest, so that the others fill the other thread.
    common::run(
        guard,
        [
            common::module("chaos", chaos::cases()),
            common::module("handles", handles::cases()),
            common::module("soak", soak::cases()),
            common::module("parent_death", parent_death::cases()),
            common::module("ctrl_c", ctrl_c::cases()),
            common::module("features", features::cases()),
            common::module("basics", basics::cases()),
            common::module("deaths", deaths::cases()),
            common::module("imap", imap::cases()),
            common::module("spin", spin::cases()),
            common::module("server", server::cases()),
            common::module("remote", remote::cases()),
        ],
    )
}
