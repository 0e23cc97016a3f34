//! What the cases do to processes from outside, and what they expect of
//! them, on each platform: a kill from outside, whether a process runs,
//! and how the supervisor reports a child it stopped.
//!
//! On Windows (see docs/windows.md) a supervised child's group is a Job
//! Object, and a stop ends the job: there is no graceful stop signal, so
//! a child never runs its stop handler, and one stopped by its supervisor
//! is reported as terminated (`-15`, as Python reports `terminate()`),
//! whatever its `Shutdown` rule.

use libtest_mimic::Failed;
use mp::supervisor::ExitKind;
use tokio_multiprocessing as mp;

/// How a child that returns once asked to stop is reported when its
/// supervisor stops it: `Normal` on Unix; on Windows the stop ends it.
pub(crate) const STOPPED: ExitKind = if cfg!(windows) {
    ExitKind::Signal(15)
} else {
    ExitKind::Normal
};

/// How a child its supervisor kills (`BrutalKill`, or a stop timeout that
/// ran out) is reported: `SIGKILL` on Unix; on Windows, terminated.
pub(crate) const KILLED_BY_SUPERVISOR: ExitKind = if cfg!(windows) {
    ExitKind::Signal(15)
} else {
    ExitKind::Signal(9)
};

/// How a child killed from outside by [`kill`] is reported: `SIGKILL` on
/// Unix. On Windows a kill is `TerminateProcess` with the killer's exit
/// code: `taskkill /F` gives 1 on Windows, and 0 under Wine 8 (whose
/// `taskkill` ends a process with code 0), which a supervisor cannot tell
/// from a normal exit.
pub(crate) fn killed() -> ExitKind {
    if cfg!(unix) {
        ExitKind::Signal(9)
    } else if under_wine() {
        ExitKind::Normal
    } else {
        ExitKind::Code(1)
    }
}

/// Whether this is Wine (which puts `WINELOADER` in the environment of
/// the programs it runs).
pub(crate) fn under_wine() -> bool {
    cfg!(windows) && std::env::var_os("WINELOADER").is_some()
}

/// Kills process `pid` (not its group) from outside, as a crash would:
/// `SIGKILL` on Unix, `taskkill /F` on Windows.
#[cfg(unix)]
pub(crate) fn kill(pid: u32) -> Result<(), Failed> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
}

/// Kills process `pid` (not its group) from outside, as a crash would:
/// `SIGKILL` on Unix, `taskkill /F` on Windows.
#[cfg(windows)]
pub(crate) fn kill(pid: u32) -> Result<(), Failed> {
    let out = std::process::Command::new("taskkill")
        .args(["/F", "/PID", &pid.to_string()])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "taskkill /F /PID {pid}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into())
    }
}

/// Whether process `pid` runs (not gone, not a zombie).
#[cfg(unix)]
pub(crate) fn is_running(pid: u32) -> bool {
    crate::common::is_running(pid)
}

/// Whether process `pid` runs: whether the system's list of processes
/// has it.
#[cfg(windows)]
pub(crate) fn is_running(pid: u32) -> bool {
    running_pids().contains(&pid)
}

/// Whether process `pid` is gone for good: on Unix reaped too (no zombie
/// left); on Windows, where nothing is left to reap, no longer running.
pub(crate) fn is_gone(pid: u32) -> bool {
    if cfg!(windows) {
        !is_running(pid)
    } else {
        crate::common::stat_of(pid).is_none()
    }
}

/// The pids of the processes that run, from `tasklist` (CSV, the pid the
/// second field) or, where that lists nothing (Wine 8's `tasklist` is a
/// stub), from `wmic` (UTF-16, a pid a line). Panics if neither gives a
/// list: a case cannot tell a process is gone without one.
#[cfg(windows)]
fn running_pids() -> Vec<u32> {
    use std::process::Command;
    let tasklist = Command::new("tasklist")
        .args(["/NH", "/FO", "CSV"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pids: Vec<u32> = tasklist
        .lines()
        .filter_map(|l| l.split("\",\"").nth(1)?.parse().ok())
        .collect();
    if !pids.is_empty() {
        return pids;
    }
    let wmic = Command::new("wmic")
        .args(["process", "get", "processid"])
        .output()
        .expect("wmic lists the processes");
    let units: Vec<u16> = wmic
        .stdout
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let text = String::from_utf16_lossy(&units);
    let pids: Vec<u32> = text
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('\u{feff}').parse().ok())
        .collect();
    assert!(
        !pids.is_empty(),
        "neither tasklist nor wmic listed a process: {text:?}"
    );
    pids
}
