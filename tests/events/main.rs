//! The crate's own `tracing` events, as a subscriber in the parent records
//! them: their levels, targets and fields (`process`, `pid`, `exitcode`,
//! ...), for a child's start and exit, a pool whose worker dies mid-task,
//! and a supervisor's restart and meltdown.
//!
//! `main` calls `init()` first and installs the recording subscriber after
//! it, the order the docs teach: the children never reach it.

#[path = "../common/mod.rs"]
mod common;

mod crate_events;
mod recorder;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    recorder::install();
    common::run(
        guard,
        [common::module("crate_events", crate_events::cases())],
    )
}
