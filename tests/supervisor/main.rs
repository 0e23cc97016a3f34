//! `Supervisor`: restart strategies and types, intensity and backoff,
//! readiness and watchdogs, ordered shutdown, programs speaking
//! `sd_notify`, supervised pools, nested supervisors, dynamic children,
//! process-group containment, and a chaos run over a tree of them.

#[path = "../common/mod.rs"]
mod common;

mod basics;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    common::run(guard, [common::module("basics", basics::cases())])
}
