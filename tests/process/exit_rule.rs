//! Python's exit rule, applied when the `InitGuard` drops at the end of
//! `main`: daemonic children are terminated, the others are joined, and
//! detached ones are left alone.
//!
//! The test binary re-runs itself as a probe program that starts children
//! and returns from `main` at once; the test then looks at what is left.
//! On Windows, with `Spawn` only (no fork server), the probe's output goes
//! to files: its children inherit every inheritable handle it has, pipe
//! ends to the test too, and the detached one keeps them open.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, run, test};

const PROBE_ENV: &str = "TMP_EXIT_RULE_PROBE";

fn write_after((path, ms): (PathBuf, u64)) {
    std::thread::sleep(Duration::from_millis(ms));
    std::fs::write(path, "done").expect("write");
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// Sleeps with its standard streams on /dev/null, so that the pipes the
/// test reads the probe through close when the probe exits. (On Windows
/// the probe writes to files, which need no such care.)
fn quiet_sleep_ms(ms: u64) {
    #[cfg(unix)]
    quiet();
    sleep_ms(ms);
}

#[cfg(unix)]
fn quiet() {
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

/// Runs the probe `cmd`: under the watchdog, through pipes, on Unix.
#[cfg(unix)]
fn run_probe(cmd: Command, _dir: &Path) -> Result<run::Output, Failed> {
    Ok(run::run_with_watchdog(cmd, Duration::from_secs(30))?)
}

/// Runs the probe `cmd` with its output in files in `dir`, ending it if it
/// takes longer than 30 s: the detached child inherits whatever the probe
/// has, and keeps a pipe open after the probe exits; a file needs no end.
#[cfg(windows)]
fn run_probe(mut cmd: Command, dir: &Path) -> Result<run::Output, Failed> {
    let (out, err) = (dir.join("probe.out"), dir.join("probe.err"));
    cmd.stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?);
    let mut child = cmd.spawn()?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return Err("watchdog: the probe did not finish within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(run::Output {
        status,
        stdout: std::fs::read_to_string(out)?,
        stderr: std::fs::read_to_string(err)?,
    })
}

/// Runs the probe with start method `tag` (`forkserver` or `spawn`).
fn exit_rule(tag: &str) -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tmp-exit-rule-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(PROBE_ENV, &dir).env("TMP_EXIT_RULE_METHOD", tag);
    let t0 = Instant::now();
    let out = run_probe(cmd, &dir)?;
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
    let daemon_gone = !common::is_running(daemon);
    let ordinary_gone = !common::is_running(ordinary);
    let detached_alive = common::is_running(detached);
    let _ = common::kill_hard(detached);
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
        // Unix only: Windows has no fork server.
        #[cfg(unix)]
        test("exit_rule_with_the_fork_server", || exit_rule("forkserver")),
        test("exit_rule_with_spawn", || exit_rule("spawn")),
    ]
}
