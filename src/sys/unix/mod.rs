//! Unix implementation: spawning, reaping, signals and the inherited control socket.
//!
//! Everything here is a thin, checked wrapper over a system call (through
//! `nix` where it has one). The rest of the crate never calls the OS
//! directly.

mod child;
mod code_pages;
mod fork;
pub(crate) mod futex;
pub(crate) mod notify;
mod pidfd;
mod pipe;
pub(crate) mod proc;
pub(crate) mod scm;
pub(crate) mod shm;
pub(crate) mod stream;

pub(crate) use code_pages::release_code_pages;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, sockopt};
use nix::sys::wait::WaitStatus;

pub(crate) use child::Child;
pub(crate) use fork::{
    die_with_parent, fork_sibling, libc_allows_raw_fork, name_of, parent_pid, process_name,
    set_process_name, thread_count,
};
pub(crate) use pipe::{OUTPUT_AT_SPAWN, pipe, pipe_reader, redirect_stdout_stderr};

/// An open descriptor this process owns: a socket, a shared-memory file.
pub(crate) type OwnedHandle = OwnedFd;

/// The signals the crate sends to its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Ask the process to end (`SIGTERM`).
    Terminate,
    /// End it now (`SIGKILL`).
    Kill,
}

impl Signal {
    fn to_nix(self) -> nix::sys::signal::Signal {
        match self {
            Signal::Terminate => nix::sys::signal::Signal::SIGTERM,
            Signal::Kill => nix::sys::signal::Signal::SIGKILL,
        }
    }
}

/// Sends `sig` to process `pid`; a process that is gone already is fine.
/// Only for a pid that cannot have been reused: an unreaped child of ours.
pub(crate) fn signal_pid(pid: u32, sig: Signal) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(io::Error::other)?;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig.to_nix()) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The name of signal number `signal` (`SIGTERM`), or the number as text.
pub(crate) fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => s.as_str().to_owned(),
        Err(_) => format!("signal {signal}"),
    }
}

/// Creates directory `dir` (and its parents), readable by this user only.
pub(crate) fn create_private_dir(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
}

/// `SIGTERM`, listened for: once listening, the signal no longer ends the
/// process by itself.
#[derive(Debug)]
pub(crate) struct TerminateSignal(tokio::signal::unix::Signal);

impl TerminateSignal {
    /// Starts listening. Must be called within a Tokio runtime.
    pub(crate) fn listen() -> io::Result<TerminateSignal> {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map(TerminateSignal)
    }

    /// Resolves at the next `SIGTERM`.
    pub(crate) async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// Which process group (and session) a child starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// Its parent's.
    Inherit,
    /// A new group, led by the child: signals to the group reach every
    /// process the child starts (unless one leaves it).
    Own,
    /// A new session, and so a new group, without a controlling terminal:
    /// a terminal's Ctrl-C does not reach it.
    Session,
}

/// Puts this process, just forked, in the group (or session) `group` says.
pub(crate) fn enter_group(group: Group) {
    match group {
        Group::Inherit => {}
        Group::Own => {
            let _ =
                nix::unistd::setpgid(nix::unistd::Pid::from_raw(0), nix::unistd::Pid::from_raw(0));
        }
        Group::Session => {
            let _ = nix::unistd::setsid();
        }
    }
}

/// Makes child `pid` the leader of a group of its own, from the parent's
/// side: called by the parent too, so that the group exists before the
/// parent signals it, whichever of the two runs first. An error (the child
/// did it already and then ran `exec`) is fine.
pub(crate) fn lead_own_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::unistd::setpgid(pid, pid);
    }
}

/// Makes `command` start its program as the leader of a process group of
/// its own and, on Linux, tied to this process: the kernel sends it
/// `SIGKILL` when this process dies, even by `SIGKILL` (the parent-death
/// signal). The signal follows the thread that starts the program, so
/// start it from a thread that lives as long as the program should (a
/// runtime's worker, not a blocking-pool thread).
pub(crate) fn own_group_tied_to_us(command: &mut tokio::process::Command) {
    command.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let parent = nix::unistd::getpid();
        // SAFETY: the closure runs in the child between fork and exec. It
        // makes two system calls, both async-signal-safe, allocates
        // nothing, and touches no lock or state of the parent's.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
                // The parent died before the signal was asked for.
                if nix::unistd::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

/// Places program `pid`, started with [`own_group_tied_to_us`]: nothing
/// left to do on Unix, where its group and its tie were set before it ran.
pub(crate) fn place_program(_pid: u32) -> std::io::Result<()> {
    Ok(())
}

/// Sends signal number `signo` to every process of group `pgid`; a group
/// that is gone already is fine.
pub(crate) fn signal_group(pgid: u32, signo: i32) -> io::Result<()> {
    let pgid = i32::try_from(pgid).map_err(io::Error::other)?;
    let sig = nix::sys::signal::Signal::try_from(signo)?;
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether any process of group `pgid` has not exited yet. A zombie
/// waiting for its reaper (init, for an orphan, which may take its time)
/// does not count: it holds nothing but its pid.
pub(crate) fn group_exists(pgid: u32) -> bool {
    let Ok(raw) = i32::try_from(pgid) else {
        return false;
    };
    if nix::sys::signal::killpg(nix::unistd::Pid::from_raw(raw), None) == Err(Errno::ESRCH) {
        return false;
    }
    proc::group_has_live_member(pgid)
}

/// Reaps, without waiting, the processes of group `pgid` that are this
/// process's children and have ended: the orphans of a supervised child's
/// group, adopted when this process is a child subreaper (or init). Call
/// it only once the group's leader is reaped, so as not to take its status
/// from its own watcher.
pub(crate) fn reap_group(pgid: u32) {
    let Ok(pgid) = i32::try_from(pgid) else {
        return;
    };
    let group = nix::unistd::Pid::from_raw(-pgid);
    // Each call reaps one; none left (or none of ours) ends the loop.
    while let Ok(status) =
        nix::sys::wait::waitpid(group, Some(nix::sys::wait::WaitPidFlag::WNOHANG))
    {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}

impl Signal {
    /// The signal's number.
    pub(crate) fn number(self) -> i32 {
        self.to_nix() as i32
    }
}

/// The descriptor number the control socket has in a freshly started child.
pub(crate) const CHILD_FD: RawFd = 3;

/// Where a re-executed child finds `theirs`, its end of the control
/// socket: descriptor [`CHILD_FD`], where [`Child::spawn`] puts it, as
/// text for the child's environment (its number; see [`claim_control`]).
pub(crate) fn control_locator(_theirs: &OwnedHandle) -> String {
    CHILD_FD.to_string()
}

/// Takes the control socket a [`control_locator`] names.
pub(crate) fn claim_control(at: &str) -> Result<ControlSocket, NotOurs> {
    let fd = at.parse::<RawFd>().map_err(|_| NotOurs::NotASocket)?;
    claim_control_socket(fd)
}

/// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let (a, b) = socket::socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((a, b))
}

/// Converts a wait status into the standard library's `ExitStatus`.
fn exit_status(status: WaitStatus) -> Option<ExitStatus> {
    match status {
        WaitStatus::Exited(_, code) => Some(ExitStatus::from_raw((code & 0xff) << 8)),
        WaitStatus::Signaled(_, sig, core) => Some(ExitStatus::from_raw(
            sig as i32 | if core { 0x80 } else { 0 },
        )),
        _ => None,
    }
}

/// Python's exit code for a status: the code, or `-N` for signal N.
pub(crate) fn python_exitcode(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => -sig,
        (None, None) => -1,
    }
}

/// The environment for a child: ours, without `skip`, changed by
/// `changes` (a value, or `None` to remove; a change of `skip` is
/// ignored), plus `extra`.
pub(crate) fn child_env(
    skip: &str,
    changes: &[(OsString, Option<OsString>)],
    extra: (&str, &str),
) -> Vec<CString> {
    let entry = |k: &OsStr, v: &OsStr| {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        CString::new(kv).ok()
    };
    let changed = |k: &OsStr| changes.iter().any(|(c, _)| c == k);
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k.as_bytes() != skip.as_bytes() && !changed(k))
        .filter_map(|(k, v)| entry(&k, &v))
        .collect();
    env.extend(changes.iter().filter_map(|(k, v)| {
        let v = v.as_ref()?;
        (k.as_bytes() != skip.as_bytes()).then(|| entry(k, v))?
    }));
    env.push(CString::new(format!("{}={}", extra.0, extra.1)).expect("no NUL in env entry"));
    env
}

/// Applies `changes` to this process's environment (a value, or `None` to
/// remove), those it does not hold already. A re-executed child holds
/// them from its start (see [`child_env`]), so it changes nothing here; a
/// child of the fork server changes them while it is single-threaded.
///
/// # Errors
///
/// When a change is needed while this process has other threads, which
/// might read the environment meanwhile: nothing is changed then.
pub(crate) fn apply_env(changes: &[(OsString, Option<OsString>)]) -> io::Result<()> {
    let needed: Vec<_> = changes
        .iter()
        .filter(|(k, v)| std::env::var_os(k) != *v)
        .collect();
    if needed.is_empty() {
        return Ok(());
    }
    let threads = fork::thread_count();
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the environment cannot be changed safely: this process has {threads} threads"
        )));
    }
    for (k, v) in needed {
        match v {
            // SAFETY: this process has one thread, the caller's (counted
            // just above; nothing here starts another), so no other
            // thread reads or writes the environment while it changes.
            // The names and values were checked by the parent (not empty,
            // no '=' in a name, no NUL byte), so these calls do not panic.
            Some(v) => unsafe { std::env::set_var(k, v) },
            // SAFETY: as above.
            None => unsafe { std::env::remove_var(k) },
        }
    }
    Ok(())
}

/// Our own command line, to give the child the same `argv` (so `ps` shows
/// which program a child belongs to).
pub(crate) fn own_argv() -> Vec<CString> {
    let argv: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    if argv.is_empty() {
        vec![CString::new("tokio-multiprocessing-child").expect("no NUL")]
    } else {
        argv
    }
}

/// A fingerprint of the running executable: device, inode, size and mtime of
/// `/proc/self/exe`. A re-executed child sees the same file (the link names
/// the inode, even if the path was replaced on disk), so parent and child
/// agree exactly when they run the same image.
pub(crate) fn exe_identity() -> io::Result<[u64; 5]> {
    let st = nix::sys::stat::stat("/proc/self/exe")?;
    Ok([
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        st.st_mtime as u64,
        st.st_mtime_nsec as u64,
    ])
}

/// Why an inherited descriptor is not a control socket from our parent.
#[derive(Debug)]
pub(crate) enum NotOurs {
    /// The descriptor is not open.
    Closed,
    /// It is open but is not a connected `AF_UNIX` stream socket.
    NotASocket,
    /// The socket's peer is not our parent process.
    ForeignPeer { peer: i32, parent: i32 },
}

/// A control socket taken by [`claim_control_socket`].
#[derive(Debug)]
pub(crate) struct ControlSocket {
    pub(crate) fd: OwnedFd,
    /// The pid of the parent that made the socket, if it has exited since
    /// (before this child got to look).
    pub(crate) parent_gone: Option<i32>,
}

/// Takes ownership of `fd` if, and only if, it is an `AF_UNIX` stream socket
/// whose peer is our parent process, or was: a peer that is not our
/// parent but has closed its end is taken for a parent that exited before
/// we got here (we were handed to a reaper, hence the other parent). On
/// success the descriptor is made close-on-exec, so that nothing we start
/// later inherits it.
pub(crate) fn claim_control_socket(fd: RawFd) -> Result<ControlSocket, NotOurs> {
    // fcntl(F_GETFD) tells whether the number is open without touching it.
    // SAFETY: `fd` is only borrowed for this call and, if the call fails,
    // never used again; F_GETFD on a closed number returns EBADF.
    let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
    if !open || fd < 0 {
        return Err(NotOurs::Closed);
    }
    // SAFETY: the number is open (checked above) and stays open for the
    // borrow: nothing else in this process closes it during start-up.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let is_stream = socket::getsockopt(&borrowed, sockopt::SockType)
        .map(|t| t == SockType::Stream)
        .unwrap_or(false);
    let is_unix = socket::getsockname::<socket::UnixAddr>(fd).is_ok();
    if !is_stream || !is_unix {
        return Err(NotOurs::NotASocket);
    }
    let parent = nix::unistd::getppid().as_raw();
    let peer = match socket::getsockopt(&borrowed, sockopt::PeerCredentials) {
        Ok(cred) => cred.pid(),
        Err(_) => return Err(NotOurs::NotASocket),
    };
    let parent_gone = if peer == parent {
        None
    } else if hung_up(borrowed) {
        // What the parent wrote before it died (the handshake, the
        // orders) is still there to read; the handshake decides the rest.
        Some(peer)
    } else {
        return Err(NotOurs::ForeignPeer { peer, parent });
    };
    // SAFETY: the descriptor is open, refers to the socket our parent
    // (alive, or exited since) gave us, and no other owner exists in this process: the bootstrap calls
    // this at most once, before anything else looks at the number.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(owned.as_fd())?;
    Ok(ControlSocket {
        fd: owned,
        parent_gone,
    })
}

impl std::fmt::Display for NotOurs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotOurs::Closed => f.write_str("the descriptor is not open"),
            NotOurs::NotASocket => f.write_str("the descriptor is not a Unix stream socket"),
            NotOurs::ForeignPeer { peer, parent } => {
                write!(
                    f,
                    "the socket's peer is pid {peer}, not our parent {parent}"
                )
            }
        }
    }
}

impl From<Errno> for NotOurs {
    fn from(_: Errno) -> Self {
        NotOurs::NotASocket
    }
}

/// Marks a descriptor close-on-exec.
fn set_cloexec(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

/// Blocks the calling thread until the peer of `sock` closes its end
/// (every copy of it), then returns. Used by children to notice that their
/// parent has died.
pub(crate) fn wait_peer_closed(sock: &OwnedHandle) {
    // nix's PollFlags does not know POLLRDHUP (its `revents()` would drop
    // the whole set), so this one poll goes to libc directly.
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    loop {
        // SAFETY: `pfd` is a valid, initialised pollfd that outlives the
        // call, and the count passed is 1, its exact length; `sock` keeps
        // the descriptor open for the duration.
        let n = unsafe { libc::poll(&mut pfd, 1, -1) };
        if n < 0 {
            if Errno::last() == Errno::EINTR {
                continue;
            }
            return;
        }
        if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
    }
}

/// Sets what `SIGINT` (Ctrl-C) does to this process: nothing (`ignore`)
/// or the default, which ends it. Returns whether it was ignored before.
pub(crate) fn set_interrupt_ignored(ignore: bool) -> bool {
    use nix::sys::signal::{SigHandler, Signal, signal};
    let handler = if ignore {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: `SIG_IGN` and `SIG_DFL` run no code of ours in a signal
    // handler, so no async-signal-safety rule can be broken; replacing a
    // handler that tokio installed only stops its notifications (callers
    // do this before any runtime of theirs listens for SIGINT).
    let before = unsafe { signal(Signal::SIGINT, handler) };
    matches!(before, Ok(SigHandler::SigIgn))
}

/// Whether the peer of `sock` has closed its end (every copy of it) by
/// now. Does not wait.
#[cfg(test)]
pub(crate) fn peer_closed(sock: &OwnedHandle) -> bool {
    hung_up(sock.as_fd())
}

/// [`peer_closed`] on a borrowed descriptor.
fn hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: as in `wait_peer_closed`: a valid, initialised pollfd, a
    // count of 1, and `sock` open for the duration. A zero timeout makes
    // the call return at once.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// Ends the process at once with `code`: no destructors, no exit handlers,
/// no flushing. For a child whose parent is gone.
pub(crate) fn exit_immediately(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and may be called from any thread
    // at any time; it does not return.
    unsafe { libc::_exit(code) }
}

/// Ends a forked child with `code` as Python's forked children end
/// (`os._exit` after flushing the standard streams): the streams are
/// flushed, Rust's and the C library's, and the program's exit handlers,
/// which belong to the program that registered them and not to a copy of
/// it, are not run. A start's exit skips their work and the pages it
/// would touch (the loader's and the shared libraries' destructors).
pub(crate) fn exit_forked(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `fflush(NULL)` flushes every open C stream; it takes no
    // pointer of ours.
    unsafe { libc::fflush(std::ptr::null_mut()) };
    exit_immediately(code)
}

/// Reads and discards whatever is buffered on `fd` without blocking.
/// Returns `false` once the peer has closed.
fn drain_nonblocking(fd: BorrowedFd<'_>) -> bool {
    let mut scratch = [0u8; 16 * 1024];
    loop {
        match socket::recv(fd.as_raw_fd(), &mut scratch, socket::MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// This machine's name, for telling remote pool workers apart in logs.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_closed_sees_the_other_end_go() {
        let (a, b) = socketpair().expect("socketpair");
        assert!(!peer_closed(&a));
        // Unread data does not hide the hang-up.
        socket::send(b.as_raw_fd(), b"x", socket::MsgFlags::empty()).expect("send");
        assert!(!peer_closed(&a));
        drop(b);
        assert!(peer_closed(&a));
    }
}
