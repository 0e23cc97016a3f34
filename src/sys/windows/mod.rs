//! Windows implementation: processes started by `CreateProcess`, their
//! control channel as a named pipe, a Job Object that ends them with this
//! process, sections for shared memory, named semaphores where Linux has a
//! futex, and handles that travel inside messages.
//!
//! The contract is the one `sys/mod.rs` names; what Windows has no
//! counterpart for (a fork, process groups and their signals, `sd_notify`)
//! or what is not ported yet (a child's captured output) answers with an
//! [`io::ErrorKind::Unsupported`] error that says so, from the first call
//! that would need it. `docs/windows.md` lists them.

mod child;
pub(crate) mod futex;
mod job;
mod pipe_io;
pub(crate) mod shm;
pub(crate) mod stream;

use std::ffi::{CString, OsString};
use std::fmt;
use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle, RawHandle};
use std::process::ExitStatus;
use std::sync::OnceLock;
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS, DuplicateHandle, HANDLE,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, OpenProcess, PROCESS_DUP_HANDLE, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_SET_QUOTA, PROCESS_SYNCHRONIZE, PROCESS_TERMINATE, TerminateProcess,
    WaitForSingleObject,
};

pub(crate) use child::Child;
pub(crate) use pipe_io::PipeIo;

/// An open handle this process owns: a pipe end, a process.
///
/// A pipe end does its reads and writes through one [`PipeIo`], made at
/// its first use and kept with the handle, so that every user of the
/// handle shares the one read in flight.
pub(crate) struct OwnedHandle {
    /// Dropped before `raw`: it cancels what it has in flight on the
    /// handle before the handle closes.
    io: OnceLock<Box<PipeIo>>,
    raw: StdHandle,
}

impl OwnedHandle {
    /// Takes ownership of `raw`.
    pub(crate) fn from_std(raw: StdHandle) -> OwnedHandle {
        OwnedHandle {
            io: OnceLock::new(),
            raw,
        }
    }

    /// The raw handle, for system calls.
    pub(crate) fn as_raw(&self) -> RawHandle {
        self.raw.as_raw_handle()
    }

    /// The byte stream on this handle (a pipe end).
    pub(crate) fn io(&self) -> io::Result<&PipeIo> {
        if let Some(io) = self.io.get() {
            return Ok(io);
        }
        let made = Box::new(PipeIo::new(self.as_raw())?);
        // Another thread may have made one meanwhile: keep the first.
        Ok(self.io.get_or_init(|| made))
    }

    /// The standard library's handle, for a caller that takes it over
    /// (the byte stream, if one was made, is dropped first).
    pub(crate) fn into_std(self) -> StdHandle {
        drop(self.io);
        self.raw
    }

    /// A second handle on the same object. A pipe end's copy gets a byte
    /// stream of its own: only one of the two may read.
    pub(crate) fn try_clone(&self) -> io::Result<OwnedHandle> {
        Ok(OwnedHandle::from_std(self.raw.try_clone()?))
    }
}

impl fmt::Debug for OwnedHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedHandle").field(&self.as_raw()).finish()
    }
}

/// The error for what this backend does not do.
pub(crate) fn unsupported(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{what} is not supported on Windows (see docs/windows.md)"),
    )
}

/// The exit code `TerminateProcess` gives a child that was terminated,
/// as Python's multiprocessing uses it: reported as `-SIGTERM`.
pub(crate) const TERMINATE_CODE: u32 = 0x10000;

/// The requests the crate makes of a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Ask it to end: on Windows, as in Python, `TerminateProcess`.
    Terminate,
    /// End it now: `TerminateProcess` too.
    Kill,
}

impl Signal {
    /// The Unix number of the signal this stands for, as Python reports it.
    pub(crate) fn number(self) -> i32 {
        match self {
            Signal::Terminate => 15,
            Signal::Kill => 9,
        }
    }
}

/// Ends process `pid` (both requests end it: Windows has no signals); a
/// process that is gone already is fine.
pub(crate) fn signal_pid(pid: u32, _sig: Signal) -> io::Result<()> {
    // SAFETY: OpenProcess takes no pointers; a failure returns null.
    let process = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
    if process.is_null() {
        // Gone already (or never ours to end).
        return Ok(());
    }
    // SAFETY: `process` is a handle we just opened and own alone.
    let process = unsafe { StdHandle::from_raw_handle(process) };
    // SAFETY: the handle is open for the call.
    if unsafe { TerminateProcess(process.as_raw_handle(), TERMINATE_CODE) } == 0 {
        let e = io::Error::last_os_error();
        // Access denied is what an exited process answers.
        if e.kind() != io::ErrorKind::PermissionDenied {
            return Err(e);
        }
    }
    Ok(())
}

/// The name of Unix signal number `signal`, for messages.
pub(crate) fn signal_name(signal: i32) -> String {
    match signal {
        2 => "SIGINT".to_owned(),
        9 => "SIGKILL".to_owned(),
        15 => "SIGTERM".to_owned(),
        n => format!("signal {n}"),
    }
}

/// Creates directory `dir` and its parents (Windows gives a new directory
/// the access of its parent; a user's profile is the user's).
pub(crate) fn create_private_dir(dir: &std::path::Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A request to end this process from outside: the console's close event.
#[derive(Debug)]
pub(crate) struct TerminateSignal(tokio::signal::windows::CtrlClose);

impl TerminateSignal {
    /// Starts listening. Must be called within a Tokio runtime.
    pub(crate) fn listen() -> io::Result<TerminateSignal> {
        tokio::signal::windows::ctrl_close().map(TerminateSignal)
    }

    /// Resolves at the next close event.
    pub(crate) async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Which process group a child starts in. Windows has process groups
/// only for console events; a child in a group of its own is started with
/// `CREATE_NEW_PROCESS_GROUP` and in a Job Object of its own, which stands
/// for the group (see `job.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Its parent's.
    Inherit,
    /// A console group of its own.
    Own,
    /// A console group of its own (Windows has no sessions).
    Session,
}

/// Nothing to do: a child is placed by its creation flags.
pub(crate) fn enter_group(_group: Group) {}

/// Nothing to do: see [`enter_group`].
pub(crate) fn lead_own_group(_pid: u32) {}

/// Starts `command`'s program in a console group of its own. It is tied to
/// this process by the Job Object every child of ours is put in.
pub(crate) fn own_group_tied_to_us(command: &mut tokio::process::Command) {
    command.creation_flags(windows_sys::Win32::System::Threading::CREATE_NEW_PROCESS_GROUP);
}

/// Opens child `pid` with what a `Child` does with it: waiting, ending,
/// reading its exit code, putting it in a Job Object (which takes
/// `PROCESS_SET_QUOTA` with `PROCESS_TERMINATE`) and giving it handles.
/// Null on failure.
pub(super) fn open_child(pid: u32) -> RawHandle {
    // SAFETY: OpenProcess takes no pointers; a failure returns null.
    unsafe {
        OpenProcess(
            PROCESS_SYNCHRONIZE
                | PROCESS_TERMINATE
                | PROCESS_SET_QUOTA
                | PROCESS_QUERY_LIMITED_INFORMATION
                | PROCESS_DUP_HANDLE,
            0,
            pid,
        )
    }
}

/// Puts program `pid`, just started with [`own_group_tied_to_us`], in a
/// Job Object of its own, which stands for its group and ends with this
/// process. (What it starts before it joins stays outside: the program is
/// not created suspended.)
pub(crate) fn place_program(pid: u32) -> io::Result<()> {
    let raw = open_child(pid);
    if raw.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just opened (checked non-null) and own alone.
    let process = unsafe { StdHandle::from_raw_handle(raw) };
    job::place(&process, pid, Group::Own);
    Ok(())
}

/// Ends every process of the group child `pgid` leads (its Job Object):
/// Windows has no signal to ask them to stop first, so every signal ends
/// them, as `TerminateProcess` ends one process.
pub(crate) fn signal_group(pgid: u32, _signo: i32) -> io::Result<()> {
    job::end_group(pgid)
}

/// Whether a process of the group child `pgid` leads (its Job Object) is
/// alive; for a child in no group of its own, whether it is.
pub(crate) fn group_exists(pgid: u32) -> bool {
    match job::group_size(pgid) {
        Some(n) => n > 0,
        None => {
            let leader = proc::ProcId {
                pid: pgid,
                start: 0,
            };
            proc::liveness(leader, false) == proc::Liveness::Alive
        }
    }
}

/// Nothing to reap on Windows; the job of an empty group is let go.
pub(crate) fn reap_group(pgid: u32) {
    job::forget_empty_group(pgid);
}

/// A connected pair of named-pipe ends (see [`stream::pipe_pair`]).
pub(crate) fn socketpair() -> io::Result<(OwnedHandle, OwnedHandle)> {
    stream::pipe_pair()
}

/// Python's exit code for a status: the code, or `-SIGTERM` for a child
/// ended by `terminate()`, as Python reports it on Windows.
///
/// A process ended by an exception the system raised exits with that
/// exception's status (`0xC...`), which does not fit a positive `i32`,
/// where a negative code means a signal. The ones with a Unix
/// counterpart are reported as that signal: a fast fail (how Rust's
/// `abort` ends a process) as `SIGABRT`, an access violation or a stack
/// overflow as `SIGSEGV`, an illegal instruction as `SIGILL`, an integer
/// or float fault as `SIGFPE`. Any other such status is reported as the
/// code `i32::MAX`.
pub(crate) fn python_exitcode(status: ExitStatus) -> i32 {
    const ACCESS_VIOLATION: u32 = 0xC000_0005;
    const ILLEGAL_INSTRUCTION: u32 = 0xC000_001D;
    const INTEGER_DIVIDE_BY_ZERO: u32 = 0xC000_0094;
    const FLOAT_DIVIDE_BY_ZERO: u32 = 0xC000_008E;
    const STACK_OVERFLOW: u32 = 0xC000_00FD;
    const FAST_FAIL: u32 = 0xC000_0409;
    let Some(code) = status.code() else {
        return -1;
    };
    match code as u32 {
        TERMINATE_CODE => -15,
        FAST_FAIL => -6,
        ACCESS_VIOLATION | STACK_OVERFLOW => -11,
        ILLEGAL_INSTRUCTION => -4,
        INTEGER_DIVIDE_BY_ZERO | FLOAT_DIVIDE_BY_ZERO => -8,
        _ if code < 0 => i32::MAX,
        _ => code,
    }
}

/// The environment for a child: ours, without `skip`, changed by
/// `changes` (a value, or `None` to remove; a change of `skip` is
/// ignored), plus `extra`. Entries that are not Unicode are left out.
pub(crate) fn child_env(
    skip: &str,
    changes: &[(OsString, Option<OsString>)],
    extra: (&str, &str),
) -> Vec<CString> {
    let entry = |k: &std::ffi::OsStr, v: &std::ffi::OsStr| {
        CString::new(format!("{}={}", k.to_str()?, v.to_str()?)).ok()
    };
    let same = |a: &std::ffi::OsStr, b: &str| a.to_str().is_some_and(|a| a.eq_ignore_ascii_case(b));
    let changed = |k: &std::ffi::OsStr| {
        changes.iter().any(|(c, _)| {
            c.to_str()
                .zip(k.to_str())
                .is_some_and(|(c, k)| c.eq_ignore_ascii_case(k))
        })
    };
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !same(k, skip) && !changed(k))
        .filter_map(|(k, v)| entry(&k, &v))
        .collect();
    env.extend(changes.iter().filter_map(|(k, v)| {
        let v = v.as_ref()?;
        (!same(k, skip)).then(|| entry(k, v))?
    }));
    env.push(CString::new(format!("{}={}", extra.0, extra.1)).expect("no NUL in env entry"));
    env
}

/// A re-executed child holds its environment from its start; Windows has
/// no fork, so there is never anything to change here.
pub(crate) fn apply_env(changes: &[(OsString, Option<OsString>)]) -> io::Result<()> {
    if changes.iter().all(|(k, v)| std::env::var_os(k) == *v) {
        Ok(())
    } else {
        Err(unsupported("changing a started child's environment"))
    }
}

/// Our own command line, for the child's.
pub(crate) fn own_argv() -> Vec<CString> {
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.to_string_lossy().into_owned()).ok())
        .collect();
    if argv.is_empty() {
        vec![CString::new("tokio-multiprocessing-child").expect("no NUL")]
    } else {
        argv
    }
}

/// A fingerprint of the running executable: its size and modification
/// time, and a hash of its path.
pub(crate) fn exe_identity() -> io::Result<[u64; 5]> {
    let exe = std::env::current_exe()?;
    let meta = std::fs::metadata(&exe)?;
    let modified = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut path_hash = 0xcbf2_9ce4_8422_2325_u64;
    for b in exe.to_string_lossy().to_lowercase().bytes() {
        path_hash = (path_hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    Ok([
        path_hash,
        0,
        meta.len(),
        modified.as_secs(),
        u64::from(modified.subsec_nanos()),
    ])
}

/// Why a marker's handle is not a control channel from our parent.
#[derive(Debug)]
pub(crate) enum NotOurs {
    /// The parent process named by the marker cannot be opened.
    NoParent(io::Error),
    /// The handle could not be duplicated from the parent.
    NotAHandle(io::Error),
}

impl fmt::Display for NotOurs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotOurs::NoParent(e) => write!(f, "the parent process cannot be opened: {e}"),
            NotOurs::NotAHandle(e) => write!(f, "the handle cannot be taken from the parent: {e}"),
        }
    }
}

/// A control channel taken by [`claim_control_socket`].
#[derive(Debug)]
pub(crate) struct ControlSocket {
    pub(crate) fd: OwnedHandle,
    /// The parent's pid if it has exited since (never known on Windows
    /// before the handshake: the handle could not have been taken).
    pub(crate) parent_gone: Option<i32>,
}

/// The parent process, opened by [`claim_control_socket`], which a child
/// watches to die with it.
static PARENT: OnceLock<StdHandle> = OnceLock::new();

/// Where a re-executed child finds `theirs`, its end of the control
/// channel: this process's pid and the handle's value here, which the
/// child duplicates into itself (see [`claim_control_socket`]). `theirs`
/// must stay open until the child has taken it: [`Child::spawn`] keeps it.
pub(crate) fn control_locator(theirs: &OwnedHandle) -> String {
    format!("handle {} {}", std::process::id(), theirs.as_raw() as usize)
}

/// Takes the control channel a [`control_locator`] names.
pub(crate) fn claim_control(at: &str) -> Result<ControlSocket, NotOurs> {
    let bad = || NotOurs::NotAHandle(io::Error::from(io::ErrorKind::InvalidInput));
    let mut words = at.strip_prefix("handle ").ok_or_else(bad)?.split(' ');
    let pid = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    let handle = words.next().and_then(|w| w.parse().ok()).ok_or_else(bad)?;
    claim_control_socket(pid, handle)
}

/// Takes this child's end of its control channel: the handle `handle`
/// in process `parent`, duplicated into this process (the parent closes
/// its copy once this process has exited).
pub(crate) fn claim_control_socket(parent: u32, handle: u64) -> Result<ControlSocket, NotOurs> {
    // SAFETY: OpenProcess takes no pointers; a failure returns null.
    let process = unsafe {
        OpenProcess(
            PROCESS_DUP_HANDLE | PROCESS_SYNCHRONIZE | PROCESS_QUERY_LIMITED_INFORMATION,
            0,
            parent,
        )
    };
    if process.is_null() {
        return Err(NotOurs::NoParent(io::Error::last_os_error()));
    }
    // SAFETY: a handle we just opened and own alone.
    let process = unsafe { StdHandle::from_raw_handle(process) };
    let mut ours: HANDLE = std::ptr::null_mut();
    // The value names a handle in the parent, not here: it only travels
    // as a number.
    let theirs =
        usize::try_from(handle).map_err(|e| NotOurs::NotAHandle(io::Error::other(e)))? as HANDLE;
    // SAFETY: `process` is open with PROCESS_DUP_HANDLE; `theirs` is only
    // interpreted in the parent's handle table; `ours` is a valid place
    // for the new handle. The parent's copy stays the parent's: it closes
    // it when it sees this process exit (see `Child`).
    let ok = unsafe {
        DuplicateHandle(
            process.as_raw_handle(),
            theirs,
            GetCurrentProcess(),
            &mut ours,
            0,
            0,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if ok == 0 {
        return Err(NotOurs::NotAHandle(io::Error::last_os_error()));
    }
    let _ = PARENT.set(process);
    // SAFETY: DuplicateHandle made `ours`, a handle this process owns alone.
    let fd = OwnedHandle::from_std(unsafe { StdHandle::from_raw_handle(ours) });
    Ok(ControlSocket {
        fd,
        parent_gone: None,
    })
}

/// Blocks the calling thread until the parent (the process at the other
/// end of `sock`) is gone. Waits on the parent's process, opened when the
/// channel was claimed; without it, looks at the pipe ten times a second.
pub(crate) fn wait_peer_closed(sock: &OwnedHandle) {
    if let Some(parent) = PARENT.get() {
        // SAFETY: the handle stays open in the static for the whole wait.
        unsafe { WaitForSingleObject(parent.as_raw_handle(), u32::MAX) };
        return;
    }
    while !stream::peer_closed(sock) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the peer of `sock` has closed its end by now. Does not wait.
#[cfg(test)]
pub(crate) fn peer_closed(sock: &OwnedHandle) -> bool {
    stream::peer_closed(sock)
}

/// Windows delivers Ctrl-C to a console group; the crate does not change
/// how this process takes it. Returns false.
pub(crate) fn set_interrupt_ignored(_ignore: bool) -> bool {
    false
}

/// Ends the process at once with `code`: no destructors, no exit handlers.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: ending our own process; the call does not return.
    unsafe { TerminateProcess(GetCurrentProcess(), code as u32) };
    std::process::abort()
}

/// This machine's name.
pub(crate) fn host_name() -> String {
    std::env::var("COMPUTERNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

// ---- What Windows has no counterpart for: a fork, and process names. ----

/// The number of threads in this process, from a snapshot of the
/// system's threads (0 if the snapshot fails).
pub(crate) fn thread_count() -> usize {
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
    };
    // SAFETY: no pointers; a failure returns INVALID_HANDLE_VALUE.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snap == windows_sys::Win32::Foundation::INVALID_HANDLE_VALUE {
        return 0;
    }
    // SAFETY: a handle we just made and own alone.
    let snap = unsafe { StdHandle::from_raw_handle(snap) };
    // SAFETY: plain data, valid when zeroed; its size field is set below.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = u32::try_from(std::mem::size_of::<THREADENTRY32>()).expect("a small structure");
    let me = std::process::id();
    let mut count = 0;
    // SAFETY: the snapshot is open and `entry` is a valid THREADENTRY32
    // with its size set, for each call.
    let mut more = unsafe { Thread32First(snap.as_raw_handle(), &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == me {
            count += 1;
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(snap.as_raw_handle(), &mut entry) } != 0;
    }
    count
}

/// Windows cannot fork.
pub(crate) fn libc_allows_raw_fork() -> bool {
    false
}

/// Windows cannot fork.
///
/// # Safety
///
/// None needed: always an error.
pub(crate) unsafe fn fork_sibling() -> io::Result<Option<u32>> {
    Err(unsupported("fork"))
}

/// Drops the page-table entries of this process's unmodified read-only
/// file mappings on Linux, then waits on the socket if given one; on
/// Windows it does nothing (a working set is trimmed by the system under
/// pressure), reports nothing released and returns at once.
pub(crate) fn release_code_pages(_then_wait_on: Option<&OwnedHandle>) -> io::Result<u64> {
    Ok(0)
}

/// Ends a forked child; there are none on Windows (no fork), so it ends
/// the process as `std::process::exit` does.
pub(crate) fn exit_forked(code: i32) -> ! {
    std::process::exit(code)
}

/// Process names are not kept on Windows.
pub(crate) fn process_name() -> Option<CString> {
    None
}

/// Process names are not kept on Windows.
pub(crate) fn name_of(_pid: u32) -> Option<CString> {
    None
}

/// Process names are not kept on Windows.
pub(crate) fn set_process_name(_name: &std::ffi::CStr) {}

/// The Job Object ties children to us; nothing to ask here.
pub(crate) fn die_with_parent(_parent: u32) -> bool {
    true
}

/// The pid of the parent that started this child (0 if unknown).
pub(crate) fn parent_pid() -> u32 {
    PARENT
        .get()
        // SAFETY: the handle stays open in the static.
        .map(|p| unsafe { windows_sys::Win32::System::Threading::GetProcessId(p.as_raw_handle()) })
        .unwrap_or(0)
}

/// Processes by id, for the holders of shared locks: a process is named
/// by its pid and, against the reuse of pids, by the low 32 bits of its
/// creation time (in 100 ns units since 1601).
pub(crate) mod proc {
    use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle};
    use std::sync::atomic::{AtomicU64, Ordering};

    use windows_sys::Win32::Foundation::{FILETIME, WAIT_OBJECT_0};
    use windows_sys::Win32::System::Threading::{
        GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_SYNCHRONIZE,
        WaitForSingleObject,
    };

    pub(crate) use super::super::proc_id::{Liveness, ProcId};

    /// The low 32 bits of `process`'s creation time, if it can be read.
    fn start_tag(process: &StdHandle) -> Option<u32> {
        let zero = FILETIME {
            dwLowDateTime: 0,
            dwHighDateTime: 0,
        };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: the handle is open with PROCESS_QUERY_LIMITED_INFORMATION
        // (or is our own); the four places are valid FILETIMEs.
        let ok = unsafe {
            GetProcessTimes(
                process.as_raw_handle(),
                &mut created,
                &mut exited,
                &mut kernel,
                &mut user,
            )
        };
        (ok != 0).then_some(created.dwLowDateTime)
    }

    /// Opens process `pid` to look at it; `Err(true)` if it may not be
    /// looked at, `Err(false)` if it does not exist.
    fn open(pid: u32) -> Result<StdHandle, bool> {
        // SAFETY: OpenProcess takes no pointers; a failure returns null.
        let raw = unsafe {
            OpenProcess(
                PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_SYNCHRONIZE,
                0,
                pid,
            )
        };
        if raw.is_null() {
            let denied =
                std::io::Error::last_os_error().kind() == std::io::ErrorKind::PermissionDenied;
            return Err(denied);
        }
        // SAFETY: a handle we just opened and own alone.
        Ok(unsafe { StdHandle::from_raw_handle(raw) })
    }

    /// `pid << 32 | start_tag` of this process, or 0 before the first use.
    static IDENTITY: AtomicU64 = AtomicU64::new(0);

    /// This process: its pid and start tag.
    pub(crate) fn me() -> ProcId {
        let bits = IDENTITY.load(Ordering::Relaxed);
        if bits != 0 {
            return ProcId::from_bits(bits);
        }
        let pid = std::process::id();
        let start = open(pid).ok().and_then(|p| start_tag(&p)).unwrap_or(0);
        let me = ProcId { pid, start };
        IDENTITY.store(me.to_bits(), Ordering::Relaxed);
        me
    }

    /// Whether the process recorded as `who` still lives. `check_start`
    /// says whether `who.start` was recorded by that very process.
    pub(crate) fn liveness(who: ProcId, check_start: bool) -> Liveness {
        if who.pid == 0 {
            return Liveness::Alive;
        }
        let process = match open(who.pid) {
            Ok(p) => p,
            Err(true) => return Liveness::Unknown,
            Err(false) => return Liveness::Dead,
        };
        // SAFETY: the handle is open for the call; a zero timeout only looks.
        if unsafe { WaitForSingleObject(process.as_raw_handle(), 0) } == WAIT_OBJECT_0 {
            return Liveness::Dead;
        }
        match start_tag(&process) {
            Some(tag) if check_start && who.start != 0 && tag != who.start => Liveness::Dead,
            _ => Liveness::Alive,
        }
    }
}

pub(crate) mod notify;

/// The reading end of a pipe of captured output, read through the
/// runtime's completion port.
pub(crate) type PipeReader = tokio::net::windows::named_pipe::NamedPipeServer;

/// A captured child's output pipes are its standard output and error from
/// its creation (handed to `CreateProcess`), not handles that come with
/// its orders: every child is created for its start on Windows.
pub(crate) const OUTPUT_AT_SPAWN: bool = true;

/// A pipe for a child's captured output, `(read, write)`: the writing end
/// becomes the child's standard output or error when it is created (see
/// [`Child::spawn`]).
pub(crate) fn pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    stream::output_pipe()
}

/// Makes the reading end `read` of a [`pipe`] a [`PipeReader`] registered
/// with the current Tokio runtime. Must be called within a runtime.
pub(crate) fn pipe_reader(read: OwnedHandle) -> io::Result<PipeReader> {
    use std::os::windows::io::IntoRawHandle;
    let raw = read.into_std().into_raw_handle();
    // SAFETY: `raw` is the server end of a pipe made overlapped by
    // `output_pipe`, owned by us alone (taken out of `read`), with no
    // `PipeIo` and no completion port yet: the reader takes it over.
    unsafe { PipeReader::from_raw_handle(raw) }
}

/// Never called on Windows ([`OUTPUT_AT_SPAWN`]): the child's output is in
/// place from its creation.
pub(crate) fn redirect_stdout_stderr(_out: OwnedHandle, _err: OwnedHandle) -> io::Result<()> {
    Err(io::Error::other(
        "on Windows a child's output pipes are given when it is created",
    ))
}

/// Descriptors beside the bytes of a message: none on Windows, where a
/// handle travels inside the bytes (see [`handle_token`]).
pub(crate) mod scm {
    /// How many handles may travel beside one message's bytes: none.
    pub(crate) const MAX_FDS_PER_MSG: usize = 0;
}

/// Takes the handle `value` that the parent put in this process's table
/// for its orders (see `Child::give_handle`).
///
/// # Safety
///
/// `value` must be a handle of this process's own that nothing else owns:
/// one the parent gave it, named in its orders, taken once.
pub(crate) unsafe fn take_given_handle(value: u64) -> io::Result<OwnedHandle> {
    let raw = usize::try_from(value).map_err(io::Error::other)? as HANDLE;
    // SAFETY: the caller vouches that `raw` is ours alone.
    Ok(OwnedHandle::from_std(unsafe {
        StdHandle::from_raw_handle(raw)
    }))
}

/// The handle values this process made for receivers and has not seen
/// taken back by one of its own: a receiver in this process takes only
/// what is listed here.
static TOKENS: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// A handle made to travel inside a message: a copy of `handle` made for
/// the receiver, named by this process's pid and the copy's value. The
/// receiver takes it out of this process ([`claim_handle_token`]), which
/// closes it here; a copy never taken stays open here until this process
/// ends. So a receiver must decode the message while the sender lives, as
/// with Python's multiprocessing on Windows.
pub(crate) fn handle_token(handle: &OwnedHandle) -> io::Result<(u32, u64)> {
    let mut copy: HANDLE = std::ptr::null_mut();
    // SAFETY: both process handles are our own pseudo-handle; `handle` is
    // open for the call; `copy` is a valid place for the new handle.
    let ok = unsafe {
        DuplicateHandle(
            GetCurrentProcess(),
            handle.as_raw(),
            GetCurrentProcess(),
            &mut copy,
            0,
            0,
            DUPLICATE_SAME_ACCESS,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    let value = copy as usize as u64;
    TOKENS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(value);
    Ok((std::process::id(), value))
}

/// Takes the handle a [`handle_token`] names: out of process `pid`, or,
/// when that is this process, out of the tokens it made (a value it did
/// not make is refused, never taken over).
pub(crate) fn claim_handle_token(pid: u32, value: u64) -> io::Result<OwnedHandle> {
    let raw = usize::try_from(value).map_err(io::Error::other)? as HANDLE;
    if pid == std::process::id() {
        let mut tokens = TOKENS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(at) = tokens.iter().position(|&t| t == value) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("handle {value} is not one this process sent, or was taken already"),
            ));
        };
        tokens.swap_remove(at);
        // SAFETY: `handle_token` made this handle for a receiver and
        // listed it; it was just unlisted, so this is its one owner.
        return Ok(OwnedHandle::from_std(unsafe {
            StdHandle::from_raw_handle(raw)
        }));
    }
    // SAFETY: OpenProcess takes no pointers; a failure returns null.
    let sender = unsafe { OpenProcess(PROCESS_DUP_HANDLE, 0, pid) };
    if sender.is_null() {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "the process that sent a handle ({pid}) cannot be opened (has it exited?): {e}"
            ),
        ));
    }
    // SAFETY: a handle we just opened and own alone.
    let sender = unsafe { StdHandle::from_raw_handle(sender) };
    let mut ours: HANDLE = std::ptr::null_mut();
    // SAFETY: `sender` is open with PROCESS_DUP_HANDLE; `raw` is only
    // interpreted in the sender's table, where it names the copy made for
    // us, which DUPLICATE_CLOSE_SOURCE closes there; `ours` is a valid
    // place for the new handle.
    let ok = unsafe {
        DuplicateHandle(
            sender.as_raw_handle(),
            raw,
            GetCurrentProcess(),
            &mut ours,
            0,
            0,
            DUPLICATE_SAME_ACCESS | DUPLICATE_CLOSE_SOURCE,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: DuplicateHandle made `ours`, owned by us alone.
    Ok(OwnedHandle::from_std(unsafe {
        StdHandle::from_raw_handle(ours)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_token_is_taken_once_and_only_if_it_was_made() {
        let (a, b) = socketpair().expect("a pipe pair");
        let (pid, value) = handle_token(&b).expect("a token");
        assert_eq!(pid, std::process::id());
        drop(b);
        let taken = claim_handle_token(pid, value).expect("taken back");
        let err = claim_handle_token(pid, value).expect_err("taken twice");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        // The copy is the same pipe end: it reaches `a`.
        stream::send(&taken, b"via", true).expect("send");
        let mut buf = bytes::BytesMut::new();
        assert_eq!(stream::recv_into(&a, &mut buf, 8, true).expect("recv"), 3);
        // A value this process never made is refused, not taken over.
        let theirs = a.as_raw() as usize as u64;
        let err = claim_handle_token(pid, theirs).expect_err("not a token");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[test]
    fn a_pipe_pair_lets_in_this_user_alone() {
        let sid = stream::tests_user_sid().expect("the user's SID");
        assert!(sid.starts_with("S-1-"), "{sid}");
        let (a, b) = socketpair().expect("a pipe pair");
        let dacl = stream::tests_dacl_of(&a).expect("the pipe's access list");
        // One entry, allowing the user (generic all, or what it maps to).
        assert_eq!(dacl.matches("(A;").count(), 1, "{dacl}");
        assert!(dacl.contains(&format!(";;;{sid})")), "{dacl} names {sid}");
        assert!(
            !dacl.contains(";;;WD)") && !dacl.contains(";;;AU)"),
            "{dacl}"
        );
        stream::send(&a, b"x", true).expect("send");
        let mut buf = bytes::BytesMut::new();
        assert_eq!(stream::recv_into(&b, &mut buf, 8, true).expect("recv"), 1);
    }
}
