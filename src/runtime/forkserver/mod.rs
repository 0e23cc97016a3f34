//! The fork server: fast starts without fork-safety hazards.
//!
//! Re-executing the program for every child costs an `execve`, dynamic
//! linking and the runtime's start-up: about a millisecond. Forking the
//! program itself would be far cheaper but is unsafe, because it is
//! multi-threaded (Tokio) and a fork copies locks held by threads that do
//! not exist in the copy. The fork server gets the speed without the
//! hazard: it is one re-executed copy of the program, started on first use,
//! that never starts a thread and does nothing but fork on request. Each
//! fork uses `CLONE_PARENT`, so the new process is a child of the program
//! (not of the server) and is waited for, reaped and signalled exactly like
//! a child started by re-executing.
//!
//! The server is used only where it is sound: it refuses to serve if it
//! finds itself with more than one thread (when `init()` was called inside
//! a runtime, for instance) or on a C library that needs its own fork
//! handlers; the program then re-executes itself for every child instead.
//! Python calls the same idea `forkserver`.

use std::sync::{Mutex, PoisonError};

pub(crate) mod client;
pub(crate) mod server;

/// How a new process is started.
///
/// Set it for the whole program with [`set_start_method`] or for one
/// process with [`ProcessBuilder::start_method`](crate::ProcessBuilder::start_method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Fork the child from a fork server (the default on Unix). Falls back
    /// to [`Spawn`](StartMethod::Spawn) where the fork server cannot run.
    /// Windows has no fork: there, a start with this method fails with an
    /// error that says so.
    #[cfg_attr(unix, default)]
    ForkServer,
    /// Re-execute the program for every child (the default, and the only
    /// method, on Windows).
    #[cfg_attr(windows, default)]
    Spawn,
}

/// The method a program gets until it sets one.
#[cfg(unix)]
const PLATFORM_DEFAULT: StartMethod = StartMethod::ForkServer;
/// The method a program gets until it sets one.
#[cfg(windows)]
const PLATFORM_DEFAULT: StartMethod = StartMethod::Spawn;

static DEFAULT_METHOD: Mutex<StartMethod> = Mutex::new(PLATFORM_DEFAULT);

/// Sets how processes are started from now on (Python's
/// `multiprocessing.set_start_method`).
pub fn set_start_method(method: StartMethod) {
    *DEFAULT_METHOD
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = method;
}

/// The start method a process gets when its builder does not set one:
/// what [`set_start_method`] set (`ForkServer` by default on Unix, `Spawn`
/// on Windows), except that
/// once the fork server is known not to serve this program (it had
/// threads when [`init`](crate::init) ran, as under `#[tokio::main]`), it
/// says `Spawn`, which is what children then get.
pub fn get_start_method() -> StartMethod {
    let method = chosen_method();
    if method == StartMethod::ForkServer && unavailable().is_some() {
        // What children actually get.
        StartMethod::Spawn
    } else {
        method
    }
}

/// The method [`set_start_method`] set (or the default), whether or not the
/// fork server can serve.
pub(crate) fn chosen_method() -> StartMethod {
    *DEFAULT_METHOD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Why the fork server cannot serve this program, once that is known.
static UNAVAILABLE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Records that the fork server cannot serve this program, and why: from
/// then on children are re-executed and [`get_start_method`] says
/// `Spawn`.
pub(crate) fn mark_unavailable(reason: String) {
    let _ = UNAVAILABLE.set(reason);
}

/// Why the fork server cannot serve, if it cannot.
pub(crate) fn unavailable() -> Option<&'static str> {
    UNAVAILABLE.get().map(String::as_str)
}

/// The name (`/proc/PID/comm`, what `ps -o comm` and `top` show) of the
/// fork server and of the spares it forks while they wait for their
/// orders; a child takes back the program's name when its orders come.
pub(crate) const SERVER_NAME: &std::ffi::CStr = c"mp-forkserver";

/// The program's name, kept by the fork server before it takes
/// [`SERVER_NAME`], so that its children can take it: its parent's (the
/// server itself, re-executed through `/proc/self/exe`, is named `exe`).
static PROGRAM_NAME: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// Names the fork server, keeping the program's name for its children.
pub(crate) fn name_server() {
    let program = crate::sys::name_of(crate::sys::parent_pid()).or_else(crate::sys::process_name);
    if let Some(name) = program {
        let _ = PROGRAM_NAME.set(name);
    }
    crate::sys::set_process_name(SERVER_NAME);
}

/// In a child the fork server forked: takes back the program's name.
pub(crate) fn restore_program_name() {
    if let Some(name) = PROGRAM_NAME.get() {
        crate::sys::set_process_name(name);
    }
}

/// Test hook: the name of the fork server and of its spares.
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub const __FORK_SERVER_NAME: &str = "mp-forkserver";

/// Exit code of a fork server that refused to serve.
const REFUSED_EXIT: i32 = 2;

/// How a test's faults reach a fork server: in its environment only.
#[cfg(feature = "test-support")]
const FAULTS_ENV: &str = "TOKIO_MULTIPROCESSING_TEST_FAULTS";
