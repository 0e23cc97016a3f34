//! A program whose `main` is `#[mp::main]`: `init()` runs before any
//! thread, so the fork server serves it, `get_start_method()` says so, and
//! the body's `?` and return value pass through. The body checks itself
//! and panics on a failure (no test harness: this is the program).

use std::time::Duration;

use tokio_multiprocessing as mp;

fn square(x: u64) -> u64 {
    x * x
}

fn fail(code: i32) -> ! {
    std::process::exit(code)
}

#[mp::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> mp::Result<()> {
    // A hang fails quickly instead of stalling the run.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("watchdog: main_attr did not finish within 60 s");
        fail(101);
    });
    // Windows has no fork: every child is re-executed there.
    let method = if cfg!(windows) {
        mp::StartMethod::Spawn
    } else {
        mp::StartMethod::ForkServer
    };
    assert_eq!(
        mp::get_start_method(),
        method,
        "init() ran before any thread: the fork server serves this program"
    );
    let p = mp::Process::new(square, 12);
    p.start().await?;
    assert_eq!(p.join().await?, 144);
    assert_eq!(
        mp::__fork_server_pid().is_some(),
        cfg!(unix),
        "the child was forked by the fork server (on Unix)"
    );
    assert_eq!(mp::get_start_method(), method);
    // The runtime is the one asked for.
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_workers(), 2, "worker_threads = 2");
    println!("main_attr: ok");
    Ok(())
}
