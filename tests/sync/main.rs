//! Locks, re-entrant locks, semaphores, events, conditions, barriers,
//! values and arrays behind a lock, and raw shared-memory blocks, shared
//! between processes.

#[path = "../common/mod.rs"]
mod common;

mod barrier;
mod condition;
mod event;
mod lock;
mod rlock;
mod semaphore;
mod shared_memory;
mod value;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    common::run(
        guard,
        [
            common::module("lock", lock::cases()),
            common::module("rlock", rlock::cases()),
            common::module("semaphore", semaphore::cases()),
            common::module("event", event::cases()),
            common::module("condition", condition::cases()),
            common::module("barrier", barrier::cases()),
            common::module("value", value::cases()),
            common::module("shared_memory", shared_memory::cases()),
        ],
    )
}
