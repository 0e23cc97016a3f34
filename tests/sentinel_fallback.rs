//! `Sentinel` and `wait` on the fallback path (SIGCHLD and `waitid`),
//! forced with `TOKIO_MULTIPROCESSING_NO_PIDFD=1`.

mod common;

#[path = "common/sentinel_cases.rs"]
mod sentinel_cases;

use tokio_multiprocessing as mp;

fn main() {
    // SAFETY: nothing else runs yet: this is the first statement of main,
    // before any thread is started, so no other thread reads the environment.
    unsafe { std::env::set_var("TOKIO_MULTIPROCESSING_NO_PIDFD", "1") };
    let guard = mp::init();
    common::run(guard, sentinel_cases::all(false))
}
