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
// Unix only: it runs as child subreaper and reads process groups in /proc.
#[cfg(unix)]
mod chaos;
mod containment;
mod intensity;
mod lifecycle;
mod nested;
mod os;
mod output;
mod pools;
// Unix only: its programs are `sh` scripts and `python3` speaking
// sd_notify over Unix datagrams (`systemd-notify`). A program's readiness,
// watchdog and output on Windows, through the named pipe its
// NOTIFY_SOCKET names there, are checked in `tests/portable`.
#[cfg(unix)]
mod programs;
// Unix only: the driver stops the service with SIGTERM and reads /proc
// (`tests/examples.rs` drives the example on Windows).
#[cfg(unix)]
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
    let mut modules = Vec::new();
    // Unix only: these run as child subreaper and read /proc.
    #[cfg(unix)]
    modules.extend([
        common::module("chaos", chaos::cases()),
        common::module("containment", containment::cases()),
    ]);
    // Unix only: `sh` and `python3` programs speaking sd_notify.
    #[cfg(unix)]
    modules.push(common::module("programs", programs::cases()));
    modules.extend([
        common::module("output", output::cases()),
        common::module("basics", basics::cases()),
        common::module("strategies", strategies::cases()),
        common::module("intensity", intensity::cases()),
        common::module("lifecycle", lifecycle::cases()),
        common::module("watchdog", watchdog::cases()),
        common::module("pools", pools::cases()),
        common::module("nested", nested::cases()),
    ]);
    // Unix only: the example's sidecar is an sd_notify program, and the
    // driver sends SIGTERM.
    #[cfg(unix)]
    modules.push(common::module("service_tree", service_tree::cases()));
    common::run(guard, modules)
}
