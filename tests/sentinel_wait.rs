//! `Sentinel` and `wait` on the pidfd path (Linux's default).

mod common;

#[path = "common/sentinel_cases.rs"]
mod sentinel_cases;

use tokio_multiprocessing as mp;

fn main() {
    let guard = mp::init();
    common::run(guard, sentinel_cases::all(true))
}
