//! `Supervisor`: restart strategies and types, intensity and backoff,
//! readiness and watchdogs, ordered shutdown, programs speaking
//! `sd_notify`, supervised pools, nested supervisors, dynamic children,
//! process-group containment, and a chaos run over a tree of them.
//!
//! Some runs of this binary are programs under test, not the test: `main`
//! picks them by their environment before it calls `init()` itself.

#[path = "../common/mod.rs"]
mod common;

mod basics;
mod chaos;
mod containment;
mod intensity;
mod lifecycle;
mod nested;
mod output;
mod pools;
mod programs;
mod service_tree;
mod strategies;
mod watchdog;

use tokio_multiprocessing as mp;

fn main() {
    // Programs under test (each returns when its environment does not
    // ask for it).
    lifecycle::exit_rule_probe_if_asked();

    let guard = mp::init();
    // Those that count children and descriptors first (see `common`).
    common::run(
        guard,
        [
            common::module("chaos", chaos::cases()),
            common::module("containment", containment::cases()),
            common::module("programs", programs::cases()),
            common::module("output", output::cases()),
            common::module("basics", basics::cases()),
            common::module("strategies", strategies::cases()),
            common::module("intensity", intensity::cases()),
            common::module("lifecycle", lifecycle::cases()),
            common::module("watchdog", watchdog::cases()),
            common::module("pools", pools::cases()),
            common::module("nested", nested::cases()),
            common::module("service_tree", service_tree::cases()),
        ],
    )
}
