//! Pipes and connections between processes: message boundaries, closing,
//! ends sent to children and grandchildren, leaks, and messages still
//! queued when a program ends.
//!
//! Some runs of this binary are programs under test, not the test: `main`
//! picks them by their environment before it calls `init()` itself.

#[path = "../common/mod.rs"]
mod common;

mod children;
mod close;
mod exit;
mod handles_in_messages;
mod handles_nested;
mod listener;
mod messages;
// Unix only: it counts descriptors in /proc, which under Wine are Wine's own.
#[cfg(unix)]
mod soak;
// Unix only: it reads a thread's CPU time with clock_gettime.
#[cfg(unix)]
mod spin;
mod tls;

use tokio_multiprocessing as mp;

fn main() {
    if exit::probe_asked() {
        exit::probe_program();
        return;
    }
    let guard = mp::init();
    // Those that count descriptors first (see `common`).
    #[allow(unused_mut)]
    let mut modules = vec![
        #[cfg(unix)]
        common::module("soak", soak::cases()),
        common::module("messages", messages::cases()),
        common::module("close", close::cases()),
        common::module("children", children::cases()),
        common::module("handles_nested", handles_nested::cases()),
        common::module("handles_in_messages", handles_in_messages::cases()),
        common::module("exit", exit::cases()),
        common::module("listener", listener::cases()),
        common::module("tls", tls::cases()),
    ];
    #[cfg(unix)]
    modules.push(common::module("spin", spin::cases()));
    common::run(guard, modules)
}
