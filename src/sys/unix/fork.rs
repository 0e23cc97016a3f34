//! Forking a sibling: the fork server's one system call.
//!
//! The fork server is a re-executed copy of the program that does nothing
//! but fork. It forks with `CLONE_PARENT`, so each new process is a child of
//! the fork server's parent, the program itself, which can then wait for it,
//! reap it and signal it like any child it started by re-executing itself.

use std::io;

/// `struct clone_args` from `<linux/sched.h>`, version 0 (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// The number of threads in this process.
pub(crate) fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

/// Whether forking without the C library's help is safe with the C library
/// this program runs on. glibc 2.34 and later take the calling thread's id
/// from the kernel where it matters after a raw fork (`raise`, `abort`), and
/// since 2.25 never cache the process id.
pub(crate) fn libc_allows_raw_fork() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: gnu_get_libc_version returns a pointer to a static,
        // NUL-terminated string that lives as long as the process.
        let version = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        let mut parts = version.to_str().unwrap_or("0.0").split('.');
        let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (major, minor) >= (2, 34)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Forks this process; the new process becomes a child of our parent.
///
/// Returns `Ok(Some(pid))` in the caller and `Ok(None)` in the new
/// process, which continues from here with a copy of the caller's memory.
///
/// # Safety
///
/// The calling process must have exactly one thread (checked with
/// [`thread_count`] by the caller, which must not start any thread
/// meanwhile), so that no lock can be held by a thread that does not exist
/// in the copy; and [`libc_allows_raw_fork`] must be true, since the C
/// library's own fork handlers do not run.
pub(crate) unsafe fn fork_sibling() -> io::Result<Option<u32>> {
    // With CLONE_PARENT the kernel refuses an explicit exit signal and
    // gives the new process ours instead: SIGCHLD, as we were started by
    // posix_spawn. So our parent gets SIGCHLD when it exits.
    let mut args = CloneArgs {
        flags: libc::CLONE_PARENT as u64,
        ..CloneArgs::default()
    };
    // SAFETY: `args` is a valid, initialised clone_args of the size passed,
    // living across the call. With no stack given, the new process runs on
    // a copy of this stack, as after fork(2); the caller guarantees the
    // process is single-threaded, so the copy holds no lock that some other
    // thread would have released.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            // The C library's fork handlers did not run: clear what they would.
            super::proc::forget_identity();
            Ok(None)
        }
        pid => u32::try_from(pid)
            .map(Some)
            .map_err(|_| io::Error::other(format!("clone3 returned {pid}"))),
    }
}

/// This process's name as `ps` and `/proc/PID/comm` show it (the calling
/// thread's: the fork server has only one), at most 15 bytes.
pub(crate) fn process_name() -> Option<std::ffi::CString> {
    nix::sys::prctl::get_name().ok()
}

/// The name of process `pid` as `/proc/PID/comm` shows it.
pub(crate) fn name_of(pid: u32) -> Option<std::ffi::CString> {
    let name = std::fs::read(format!("/proc/{pid}/comm")).ok()?;
    let name = name.strip_suffix(b"\n").unwrap_or(&name);
    std::ffi::CString::new(name).ok()
}

/// Names this process (the calling thread) `name`, cut to 15 bytes. A
/// process forked afterwards starts with this name.
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// Has the kernel kill this process (`SIGKILL`) when its parent thread
/// exits; returns false if the parent, `parent`, is gone already (this
/// process was reparented before the request took effect). The parent
/// *thread* matters: the caller must know that its parent thread lives as
/// long as the parent process (see the fork server's keeper thread).
pub(crate) fn die_with_parent(parent: u32) -> bool {
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err() {
        return false;
    }
    u32::try_from(nix::unistd::getppid().as_raw()) == Ok(parent)
}

/// The pid of this process's parent.
pub(crate) fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}
