//! A process that carries the child marker in its environment but was not
//! started by this library is never taken over by `init()`: it runs as a
//! parent, or refuses with a clear message. It never runs a target.
//!
//! The test binary re-runs itself as the probe, with a forged marker. A
//! marker names a descriptor on Unix, and a handle in the parent process
//! on Windows (`handle PID VALUE`): each system has its own forgeries.

#[cfg(unix)]
use std::io::Write;
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::process::Command;
#[cfg(unix)]
use std::process::Stdio;
use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, run, test};

const PROBE_ENV: &str = "TMP_HIJACK_PROBE";
const MARKER: &str = "TOKIO_MULTIPROCESSING_CHILD";

fn probe(marker: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.env(PROBE_ENV, "1").env(MARKER, marker);
    cmd
}

fn returns_as_parent(marker: &str) -> Result<(), Failed> {
    let out = run::run_with_watchdog(probe(marker), Duration::from_secs(30))?;
    if out.status.success() && out.stdout.contains("init returned as a parent") {
        Ok(())
    } else {
        Err(format!(
            "marker {marker:?}: {:?}\nstdout: {}\nstderr: {}",
            out.status, out.stdout, out.stderr
        )
        .into())
    }
}

/// Whether this run of the test binary is the probe: `main` runs
/// [`probe_program`] first thing, instead of its own `init()` (and before
/// the check that stops a child that `init()` let through as a parent).
pub(crate) fn probe_asked() -> bool {
    std::env::var_os(PROBE_ENV).is_some()
}

/// The probe: `init()` must return, as in a parent.
pub(crate) fn probe_program() {
    let _guard = mp::init();
    println!("init returned as a parent");
}

/// The probe's marker for handle `value` in this process, the probe's
/// parent.
#[cfg(windows)]
fn handle_marker(value: usize) -> String {
    format!("handle {} {value}:00000000000000ff", std::process::id())
}

#[cfg(windows)]
pub(crate) fn cases() -> Vec<Case> {
    vec![
        test("malformed_marker", || returns_as_parent("not-a-marker")),
        test("malformed_handle_marker", || {
            returns_as_parent("handle x y:00000000000000ff")
        }),
        // A handle value far above any this process has open.
        test("missing_handle", || {
            returns_as_parent(&handle_marker(0x3ff_fffc))
        }),
        // A parent pid that names no process.
        test("missing_parent", || {
            returns_as_parent("handle 4294967292 4:00000000000000ff")
        }),
        // Not here: a marker naming a pipe of this process that carries
        // garbage instead of a handshake (the Unix case
        // `socket_without_a_handshake_refuses`). Under Wine the probe, given
        // the reading end of a `std::io::pipe()`, neither refused nor
        // returned within 60 s, though its handshake times out after 30 s.
    ]
}

#[cfg(unix)]
pub(crate) fn cases() -> Vec<Case> {
    vec![
        test("malformed_marker", || returns_as_parent("not-a-marker")),
        // fd 3 is not open in the probe.
        test("missing_descriptor", || {
            returns_as_parent("3:00000000000000ff")
        }),
        // fd 0 is /dev/null, not a socket.
        test("descriptor_is_not_a_socket", || {
            returns_as_parent("0:00000000000000ff")
        }),
        test("socket_without_a_handshake_refuses", || {
            // A socket whose peer is the probe's parent (us), but which
            // carries garbage instead of a handshake.
            let (mut ours, theirs) = UnixStream::pair()?;
            let mut cmd = probe("0:00000000000000ff");
            cmd.stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)));
            ours.write_all(&[0, 0, 0, 4, 0xde, 0xad, 0xbe, 0xef])?;
            let child = std::thread::spawn(move || {
                let out = run::run_with_watchdog(cmd, Duration::from_secs(30));
                drop(ours);
                out
            });
            let out = child.join().map_err(|_| "probe thread panicked")??;
            if out.status.code() == Some(2)
                && !out.stdout.contains("init returned")
                && out.stderr.contains("tokio-multiprocessing")
            {
                Ok(())
            } else {
                Err(format!(
                    "{:?}\nstdout: {}\nstderr: {}",
                    out.status, out.stdout, out.stderr
                )
                .into())
            }
        }),
    ]
}
