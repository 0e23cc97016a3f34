//! Messages still queued on a dropped pipe end reach a child that the exit
//! rule joins, even on a current-thread runtime whose only thread blocks in
//! that join (so no flush task can run).
//!
//! The test binary re-runs itself as a probe program that starts a reader
//! child, sends it more than a socket holds, and leaves `main` without
//! joining; the reader writes down how many numbers it got.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, run, test};

const PROBE_ENV: &str = "TMP_PIPE_EXIT_PROBE";
const N: u64 = 200_000;

/// Counts numbers until `None` or the end of the stream, then writes the
/// count to `path`.
fn count_into((mut rx, path): (mp::Receiver<Option<u64>>, PathBuf)) {
    let mut count = 0u64;
    while let Ok(Some(_)) = rx.blocking_recv() {
        count += 1;
    }
    std::fs::write(path, count.to_string()).expect("write the count");
}

async fn send_and_leave(path: PathBuf) {
    let (rx, tx) = mp::Pipe::oneway::<Option<u64>>().expect("pipe");
    let reader = mp::Process::new(count_into, (rx, path));
    reader.start().await.expect("start");
    for i in 0..N {
        tx.send(&Some(i)).await.expect("send");
    }
    tx.send(&None).await.expect("send");
    // `tx` and `reader` drop here with messages still queued.
}

/// The probe. `inside`: the `InitGuard` drops inside the runtime's
/// `block_on`, as with `let _guard = mp::init();` in the body of
/// `#[tokio::main(flavor = "current_thread")]`.
fn probe(path: PathBuf, inside: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if inside {
        rt.block_on(async {
            let _guard = mp::init();
            send_and_leave(path).await;
        });
    } else {
        let guard = mp::init();
        rt.block_on(send_and_leave(path));
        drop(rt);
        drop(guard);
    }
}

fn queued_messages_reach_a_child_joined_at_exit(inside: bool) -> Result<(), Failed> {
    let path = std::env::temp_dir().join(format!("tmp-pipe-exit-{}-{inside}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(PROBE_ENV, &path)
        .env("TMP_PIPE_EXIT_INSIDE", if inside { "1" } else { "0" });
    let out = run::run_with_watchdog(cmd, Duration::from_secs(30))?;
    let count = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    if !out.status.success() {
        return Err(format!("probe failed: {:?}\n{}", out.status, out.stderr).into());
    }
    if count != N.to_string() {
        return Err(format!("the reader counted {count:?} of {N}").into());
    }
    Ok(())
}

/// Whether this run of the test binary is the probe: `main` runs
/// [`probe_program`] first thing, instead of its own `init()`.
pub(crate) fn probe_asked() -> bool {
    std::env::var_os(PROBE_ENV).is_some()
}

/// The probe, with the path and the placement of the guard its
/// environment names.
pub(crate) fn probe_program() {
    let path = std::env::var_os(PROBE_ENV).expect("the probe's path");
    let inside = std::env::var("TMP_PIPE_EXIT_INSIDE").as_deref() == Ok("1");
    probe(Path::new(&path).to_owned(), inside);
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        test("queued_messages_reach_a_child_joined_at_exit", || {
            queued_messages_reach_a_child_joined_at_exit(false)
        }),
        test(
            "queued_messages_reach_a_child_joined_at_exit_inside_block_on",
            || queued_messages_reach_a_child_joined_at_exit(true),
        ),
    ]
}
