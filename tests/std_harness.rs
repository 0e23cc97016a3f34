//! Plain `#[test]` and `#[tokio::test]` functions, with the ordinary test
//! harness, start children: `mp::enable_test_support!()` recognises a
//! child (and the fork server) before the harness runs. Each test bounds
//! its own wait, so a hang fails instead of stalling the run.

use std::time::Duration;

use tokio_multiprocessing as mp;

mp::enable_test_support!();

const LIMIT: Duration = Duration::from_secs(60);

fn double(x: u32) -> u32 {
    x * 2
}

async fn triple(x: u32) -> u32 {
    x * 3
}

#[tokio::test]
async fn a_tokio_test_starts_a_child() {
    tokio::time::timeout(LIMIT, async {
        let p = mp::Process::new(double, 21);
        p.start().await.expect("starts");
        assert_eq!(p.join().await.expect("joins"), 42);
        let q = mp::Process::new(triple, 5);
        q.start().await.expect("starts");
        assert_eq!(q.join().await.expect("joins"), 15);
    })
    .await
    .expect("within the limit");
}

#[test]
fn a_plain_test_starts_a_pool() {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let pool = mp::Pool::new(2).await.expect("a pool");
            let out = pool.map(double, 0..10).await.expect("maps");
            assert_eq!(out, (0..10).map(|x| x * 2).collect::<Vec<_>>());
            pool.terminate().await;
        })
        .await
    })
    .expect("within the limit");
}

// Unix only: Windows has no fork server (every child is re-executed, as
// the other cases here show).
#[cfg(unix)]
#[test]
fn the_fork_server_serves_a_test_binary() {
    // `init()` ran before `main`, when the binary had one thread: children
    // of tests, which run on the harness's threads, are forked.
    assert_eq!(mp::get_start_method(), mp::StartMethod::ForkServer);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        tokio::time::timeout(LIMIT, async {
            let p = mp::Process::new(double, 1);
            p.start().await.expect("starts");
            assert_eq!(p.join().await.expect("joins"), 2);
            assert!(
                mp::__fork_server_pid().is_some(),
                "forked by the fork server"
            );
        })
        .await
    })
    .expect("within the limit");
}
