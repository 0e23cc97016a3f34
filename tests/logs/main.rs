//! Logs from children: a child's `tracing` events forwarded to the parent's
//! subscriber, labelled, in order, up to its level; with the subscriber set
//! after `init()` (the order the docs teach) and, in a run of its own,
//! before it.

#[path = "../common/mod.rs"]
mod common;

mod forward;
// Unix only: it writes raw frames to the control socket's descriptor.
#[cfg(unix)]
mod hostile;
mod record;

use std::time::Duration;

use tokio_multiprocessing as mp;

/// Set in the run whose subscriber is installed before `init()`.
const BEFORE_INIT: (&str, &str) = ("TOKIO_MP_TEST_LOGS_BEFORE_INIT", "1");

fn main() {
    let before = std::env::var_os(BEFORE_INIT.0).is_some_and(|v| v == BEFORE_INIT.1);
    if before {
        // Runs in every child too, before `init()` takes it over.
        record::install();
    }
    let guard = mp::init();
    if !before {
        record::install();
    }
    common::run(
        guard,
        [
            common::module("forward", forward::cases()),
            #[cfg(unix)]
            common::module("hostile", hostile::cases()),
            common::module_in_reruns(
                "before_init",
                BEFORE_INIT,
                Duration::from_secs(120),
                forward::before_init_cases(),
            ),
        ],
    )
}
