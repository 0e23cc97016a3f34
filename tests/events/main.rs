//! The crate's own `tracing` events, as a subscriber in the parent records
//! them: their levels, targets and fields (`process`, `pid`, `exitcode`,
//! ...), for a child's start and exit, a pool whose worker dies mid-task,
//! and a supervisor's restart and meltdown.
//!
//! `main` calls `init()` first and installs the recording subscriber after
//! it, the order the docs teach: the children never reach it. The
//! warnings `init()` and the fork server give are read from programs of
//! their own (this binary, run again in a mode: see `programs`).

#[path = "../common/mod.rs"]
mod common;

mod crate_events;
mod programs;
mod recorder;

use tokio_multiprocessing as mp;

fn main() {
    // Some runs of this binary are programs under test, which call
    // `init()` themselves.
    if let Some(mode) = programs::program_asked() {
        std::process::exit(programs::program(&mode));
    }
    let guard = mp::init();
    recorder::install();
    common::run(
        guard,
        [
            common::module("crate_events", crate_events::cases()),
            common::module("programs", programs::cases()),
        ],
    )
}
