//! The warnings `init()` and the first start give, seen from a program of
//! their own (this test binary, run again in a mode): the fork server
//! declining to serve a program that had threads before `init()`, and a
//! stale child environment noticed before the subscriber was installed.

use std::process::Command;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, ensure, test};

/// The variable that makes this binary a program under test, and its
/// modes.
const MODE_ENV: &str = "MP_EVENTS_PROGRAM";
const DECLINE: &str = "decline";
const STALE: &str = "stale";

const LIMIT: Duration = Duration::from_secs(60);

fn double(x: u32) -> u32 {
    x * 2
}

/// Starts and joins two children.
async fn two_children() {
    for x in 0..2 {
        let p = mp::Process::new(double, x);
        p.start().await.expect("start");
        assert_eq!(p.join().await.expect("join"), x * 2);
    }
}

/// Installs a `fmt` subscriber on stdout, without colours.
fn subscriber() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
}

/// The mode this run is a program in, if it is one.
pub(crate) fn program_asked() -> Option<String> {
    std::env::var(MODE_ENV).ok()
}

/// Runs the program of `mode`; returns its exit code.
pub(crate) fn program(mode: &str) -> i32 {
    match mode {
        DECLINE => {
            // A runtime (and its threads) before `init()`: the fork
            // server, a copy of this program, has threads too.
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            let guard = mp::init();
            subscriber();
            rt.block_on(two_children());
            drop(rt);
            drop(guard);
            0
        }
        STALE => {
            let guard = mp::init();
            subscriber();
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(two_children());
            drop(rt);
            drop(guard);
            0
        }
        _ => 2,
    }
}

/// Runs this binary as program `mode`; returns its stdout.
fn run_program(mode: &str, stale: bool) -> Result<String, Failed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(MODE_ENV, mode).env_remove("RUST_LOG");
    if stale {
        // Descriptor 0 is no control socket from a parent.
        cmd.env("TOKIO_MULTIPROCESSING_CHILD", "0:00000000000000ff");
    } else {
        cmd.env_remove("TOKIO_MULTIPROCESSING_CHILD");
    }
    let out = crate::common::run::run_with_watchdog(cmd, LIMIT)?;
    ensure(
        out.status.success(),
        format!(
            "the program failed: {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status, out.stdout, out.stderr
        ),
    )?;
    Ok(out.stdout)
}

/// The fork server declining is one WARN line that says how to fix it.
#[cfg(unix)]
fn the_fork_server_declining_is_one_warning() -> Result<(), Failed> {
    let stdout = run_program(DECLINE, false)?;
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("the fork server declined to serve"))
        .collect();
    ensure(lines.len() == 1, format!("one warning, once:\n{stdout}"))?;
    ensure(
        lines[0].contains(" WARN ") && lines[0].contains("call init() first thing in main"),
        format!("a WARN that says how to fix it: {:?}", lines[0]),
    )
}

/// A stale child environment, noticed by `init()` before the subscriber
/// was installed, is a WARN line all the same.
fn a_stale_child_environment_is_a_warning_heard_later() -> Result<(), Failed> {
    let stdout = run_program(STALE, true)?;
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("is not a control socket"))
        .collect();
    ensure(lines.len() == 1, format!("one warning:\n{stdout}"))?;
    ensure(
        lines[0].contains(" WARN ") && lines[0].contains("TOKIO_MULTIPROCESSING_CHILD"),
        format!("a WARN naming the variable: {:?}", lines[0]),
    )
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        // Unix only: Windows has no fork server to decline.
        #[cfg(unix)]
        test(
            "the_fork_server_declining_is_one_warning",
            the_fork_server_declining_is_one_warning,
        ),
        test(
            "a_stale_child_environment_is_a_warning_heard_later",
            a_stale_child_environment_is_a_warning_heard_later,
        ),
    ]
}
