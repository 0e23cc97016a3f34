//! A program that keeps `#[tokio::main]`, with `mp::init_before_main!()`:
//! `init()` ran before `main` (and before the runtime), so the fork server
//! serves it although `main` calls `init()` again inside the runtime. The
//! body checks itself (no test harness: this is the program).

use std::time::Duration;

use tokio_multiprocessing as mp;

mp::init_before_main!();

fn square(x: u64) -> u64 {
    x * x
}

#[tokio::main]
async fn main() -> mp::Result<()> {
    let _guard = mp::init();
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(60));
        eprintln!("watchdog: tokio_main_early did not finish within 60 s");
        std::process::exit(101);
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
        "init() ran before main: the fork server serves this program"
    );
    let p = mp::Process::new(square, 8);
    p.start().await?;
    assert_eq!(p.join().await?, 64);
    assert_eq!(
        mp::__fork_server_pid().is_some(),
        cfg!(unix),
        "the child was forked by the fork server (on Unix)"
    );
    println!("tokio_main_early: ok");
    Ok(())
}
