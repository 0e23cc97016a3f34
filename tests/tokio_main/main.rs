//! A program that keeps `#[tokio::main]` and calls `init()` inside it: the
//! runtime's threads exist by then, so the fork server cannot serve it.
//! `get_start_method()` says `Spawn` from `init()` on, no fork server is
//! started, and children still run (re-executed). The body checks itself
//! and panics on a failure (no test harness: this is the program).

use std::time::Duration;

use tokio_multiprocessing as mp;

fn square(x: u64) -> u64 {
    x * x
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    let _guard = mp::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("watchdog: tokio_main did not finish within 60 s");
        std::process::exit(101);
    });
    assert_eq!(
        mp::get_start_method(),
        mp::StartMethod::Spawn,
        "init() inside #[tokio::main]: children are re-executed, and the start method says so"
    );
    let p = mp::Process::new(square, 9);
    p.start().await?;
    assert_eq!(p.join().await?, 81);
    assert!(
        mp::__fork_server_pid().is_none(),
        "no fork server was started"
    );
    println!("tokio_main: ok");
    Ok(())
}
