//! Python's exit rule, applied when the `InitGuard` drops at the end of
//! `main`: daemonic children are terminated, the others are joined, and
//! detached ones are left alone.
//!
//! The test binary re-runs itself as a probe program that starts children
//! and returns from `main` at once; the test then looks at what is left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, run, test};

const PROBE_ENV: &str = "TMP_EXIT_RULE_PROBE";

fn write_after((path, ms): (PathBuf, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").expect("write");
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Sleeps with its standard streams on /dev/null, so that the pipes the
/// test reads the probe through close when the probe exits.
fn quiet_sleep_ms(ms: u64) {
    use std::os::fd::AsRawFd;
    let null = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    for fd in 0..3 {
        // SAFETY: dup2 onto the standard descriptors of this child, which
        // nothing else in it is using.
        unsafe { libc::dup2(null.as_raw_fd(), fd) };
    }
    sleep_ms(ms);
}

/// The probe: starts a slow ordinary child, a daemonic and a detached one,
/// prints their pids, and leaves `main` without joining anything.
fn probe(dir: &Path, method: mp::StartMethod) {
    let guard = mp::init();
    mp::set_start_method(method);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ordinary = mp::Process::new(write_after, (dir.join("ordinary"), 300));
        ordinary.start().await.expect("start");
        let daemon = mp::Process::builder()
            .daemon(true)
            .build(quiet_sleep_ms, 60_000);
        daemon.start().await.expect("start");
        let detached = mp::Process::builder()
            .detached(true)
            .build(quiet_sleep_ms, 60_000);
        detached.start().await.expect("start");
        println!(
            "{} {} {}",
            ordinary.pid().unwrap(),
            daemon.pid().unwrap(),
            detached.pid().unwrap()
        );
    });
    drop(rt);
    drop(guard);
}

fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Runs the probe with start method `tag` (`forkserver` or `spawn`).
fn exit_rule(tag: &str) -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tmp-exit-rule-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(PROBE_ENV, &dir).env("TMP_EXIT_RULE_METHOD", tag);
    let t0 = Instant::now();
    let out = run::run_with_watchdog(cmd, Duration::from_secs(30))?;
    let took = t0.elapsed();
    if !out.status.success() {
        return Err(format!(
            "probe failed: {:?}\n{}\n{}",
            out.status, out.stdout, out.stderr
        )
        .into());
    }
    let pids: Vec<u32> = out
        .stdout
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    let [ordinary, daemon, detached] = pids[..] else {
        return Err(format!("probe printed {:?}", out.stdout).into());
    };
    let joined = dir.join("ordinary").exists();
    let daemon_gone = !is_running(daemon);
    let ordinary_gone = !is_running(ordinary);
    let detached_alive = is_running(detached);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(detached as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = std::fs::remove_dir_all(&dir);
    if !joined || took < Duration::from_millis(250) {
        return Err(format!(
            "the ordinary child was not joined (file: {joined}, exit after {took:?})"
        )
        .into());
    }
    if !ordinary_gone || !daemon_gone {
        return Err(format!(
            "children outlived the program: ordinary {ordinary_gone}, daemon {daemon_gone}"
        )
        .into());
    }
    if took > Duration::from_secs(20) {
        return Err(
            format!("the daemonic child was waited for ({took:?}) instead of terminated").into(),
        );
    }
    if !detached_alive {
        return Err("the detached child did not outlive the program".into());
    }
    Ok(())
}

/// Whether this run of the test binary is the probe: `main` runs
/// [`probe_program`] first thing, instead of its own `init()`.
pub(crate) fn probe_asked() -> bool {
    std::env::var_os(PROBE_ENV).is_some()
}

/// The probe, with the directory and the start method its environment
/// names.
pub(crate) fn probe_program() {
    let dir = std::env::var_os(PROBE_ENV).expect("the probe's directory");
    let method = match std::env::var("TMP_EXIT_RULE_METHOD").as_deref() {
        Ok("spawn") => mp::StartMethod::Spawn,
        _ => mp::StartMethod::ForkServer,
    };
    probe(Path::new(&dir), method);
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        test("exit_rule_with_the_fork_server", || exit_rule("forkserver")),
        test("exit_rule_with_spawn", || exit_rule("spawn")),
    ]
}
