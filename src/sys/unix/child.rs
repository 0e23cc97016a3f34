//! A started child process: spawn, wait for exit, reap, signal.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::{CHILD_FD, drain_nonblocking, exit_status, pidfd};

/// A child process we started and have not necessarily reaped.
///
/// Reaping is the caller's business: it must serialize calls to
/// [`try_reap`](Child::try_reap) and stop once one returned a status, so
/// that the pid, which stays reserved until it is reaped, is never
/// signalled after it could have been reused.
#[derive(Debug)]
pub(crate) struct Child {
    pid: Pid,
    pidfd: Option<OwnedFd>,
}

impl Child {
    /// Starts `/proc/self/exe` with our own `argv`, the environment `env`,
    /// and `control` installed as descriptor [`CHILD_FD`] (the only
    /// descriptor it inherits besides stdio), in the process group (or
    /// session) `group` says. `stdio`, if given, becomes its descriptors 1
    /// and 2 (its standard output and error). Our copies close once the
    /// child has its own.
    pub(crate) fn spawn(
        control: super::OwnedHandle,
        argv: &[CString],
        env: &[CString],
        group: super::Group,
        stdio: Option<(super::OwnedHandle, super::OwnedHandle)>,
    ) -> io::Result<Child> {
        let mut actions = PosixSpawnFileActions::init()?;
        // dup2 onto the same number would keep close-on-exec set, so a
        // descriptor that already has a target's number (0 to CHILD_FD),
        // which a dup2 might also overwrite before it is read, is copied
        // above them first.
        let mut moved: Vec<OwnedFd> = Vec::new();
        let mut place = |fd: &OwnedFd, target: RawFd| -> io::Result<()> {
            let source = if fd.as_raw_fd() <= CHILD_FD {
                let raw =
                    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(CHILD_FD + 1))?;
                // SAFETY: `fcntl` just made `raw`, a new descriptor that
                // nothing else owns.
                let copy = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                moved.push(copy);
                raw
            } else {
                fd.as_raw_fd()
            };
            actions.add_dup2(source, target)?;
            Ok(())
        };
        place(&control, CHILD_FD)?;
        if let Some((out, err)) = &stdio {
            place(out, libc::STDOUT_FILENO)?;
            place(err, libc::STDERR_FILENO)?;
        }

        let mut attr = PosixSpawnAttr::init()?;
        // Start with no blocked signals and SIGPIPE at its default, as the
        // standard library's Command does; the child's runtime sets its own.
        let mut flags =
            PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF;
        match group {
            super::Group::Inherit => {}
            super::Group::Own => flags |= PosixSpawnFlags::POSIX_SPAWN_SETPGROUP,
            super::Group::Session => {
                flags |=
                    PosixSpawnFlags::from_bits_retain(libc::c_int::from(libc::POSIX_SPAWN_SETSID));
            }
        }
        attr.set_flags(flags)?;
        // With POSIX_SPAWN_SETPGROUP, group 0: a new one, led by the child.
        attr.set_pgroup(nix::unistd::Pid::from_raw(0))?;
        attr.set_sigmask(&SigSet::empty())?;
        let mut default = SigSet::empty();
        default.add(Signal::SIGPIPE);
        attr.set_sigdefault(&default)?;

        let pid = posix_spawn(c"/proc/self/exe", &actions, &attr, argv, env)?;
        Ok(Child::adopt(pid.as_raw() as u32))
    }

    /// Takes charge of `pid`, a child of this process that nothing else
    /// waits for (one forked for us by the fork server).
    pub(crate) fn adopt(pid: u32) -> Child {
        let pid = Pid::from_raw(pid as i32);
        // The pid cannot be reused before we reap it, so the pidfd names
        // this very process even if it has already exited.
        let pidfd = if pidfd::enabled() {
            pidfd::open(pid.as_raw()).ok()
        } else {
            None
        };
        Child { pid, pidfd }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// `waitid` on this child with `flags`: through the pidfd where the
    /// kernel takes one (`P_PIDFD`, Linux 5.4), else by pid.
    ///
    /// The pidfd names this very process. A pid names whichever process
    /// holds it: ours until we reap it, unless someone else reaps it
    /// first (a stray `waitpid(-1)` in the program), after which a new
    /// child of ours may get the same pid, and waiting by pid would reap
    /// that one. Through the pidfd, such a wait reports `ECHILD` instead.
    fn wait_on(&self, flags: WaitPidFlag) -> nix::Result<WaitStatus> {
        static NO_P_PIDFD: AtomicBool = AtomicBool::new(false);
        if let Some(fd) = &self.pidfd {
            if !NO_P_PIDFD.load(Ordering::Relaxed) {
                match waitid(Id::PIDFd(fd.as_fd()), flags) {
                    // Linux 5.3 has pidfd_open but not P_PIDFD.
                    Err(Errno::EINVAL) => NO_P_PIDFD.store(true, Ordering::Relaxed),
                    other => return other,
                }
            }
        }
        waitid(Id::Pid(self.pid), flags)
    }

    /// Reaps the child if it has exited, without blocking.
    ///
    /// A child that someone else reaped behind our back (a stray
    /// `waitpid(-1)`) is reported as exit code 255.
    pub(crate) fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        loop {
            match self.wait_on(WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(status) => return Ok(exit_status(status)),
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => {
                    tracing::warn!(pid = self.pid.as_raw(), "child was reaped by someone else");
                    return Ok(Some(std::os::unix::process::ExitStatusExt::from_raw(
                        255 << 8,
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Whether the child has exited, without reaping it.
    fn has_exited(&self) -> io::Result<bool> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            match self.wait_on(flags) {
                Ok(WaitStatus::StillAlive) => return Ok(false),
                Ok(_) | Err(Errno::ECHILD) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Resolves once the child has exited (it is not reaped).
    ///
    /// With a pidfd this waits for the descriptor to become readable;
    /// otherwise it re-checks on every SIGCHLD.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(crate) async fn exited(&self) -> io::Result<()> {
        if let Some(fd) = &self.pidfd {
            // SAFETY: the pidfd is owned by `self`, which this future
            // borrows, so the descriptor stays open and names the same
            // process for the whole life of `watched`, which is dropped
            // before this function returns.
            let watched =
                unsafe { AsyncFd::register_with_interest(fd.as_fd(), Interest::READABLE) }
                    .map_err(io::Error::from)?;
            let _ready = watched.readable().await?;
            return Ok(());
        }
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        loop {
            if self.has_exited()? {
                return Ok(());
            }
            if sigchld.recv().await.is_none() {
                // The signal driver is gone (runtime shutting down): poll.
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }

    /// Blocks the calling thread until the child has exited (it is not
    /// reaped), reading and discarding whatever arrives on `drain` in the
    /// meantime, so that a child blocked writing to us can finish.
    pub(crate) fn wait_exited_blocking(&self, drain: Option<&super::OwnedHandle>) {
        self.wait_exited_until(drain.map(AsFd::as_fd), None);
    }

    /// Blocks the calling thread until the child has exited (it is not
    /// reaped) or `timeout` has passed; says whether it exited.
    pub(crate) fn wait_exited_timeout_blocking(&self, timeout: std::time::Duration) -> bool {
        self.wait_exited_until(None, std::time::Instant::now().checked_add(timeout))
    }

    fn wait_exited_until(
        &self,
        mut drain: Option<BorrowedFd<'_>>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        loop {
            if self.pidfd.is_none() && self.has_exited().unwrap_or(true) {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return self.has_exited().unwrap_or(true),
                },
            };
            let mut fds = Vec::with_capacity(2);
            if let Some(fd) = &self.pidfd {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            if let Some(d) = drain {
                fds.push(PollFd::new(d, PollFlags::POLLIN));
            }
            let most = if self.pidfd.is_some() {
                None
            } else {
                Some(10u16)
            };
            let ms = |d: std::time::Duration| u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
            let timeout = match (left.map(|d| ms(d).max(1)), most) {
                (None, None) => PollTimeout::NONE,
                (Some(a), Some(b)) => PollTimeout::from(a.min(b)),
                (Some(a), None) | (None, Some(a)) => PollTimeout::from(a),
            };
            match poll(&mut fds, timeout) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => {
                    // Cannot poll: fall back to sleeping between checks.
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            let mut pid_ready = false;
            let mut drain_ready = false;
            for (i, fd) in fds.iter().enumerate() {
                let ready = fd.revents().is_some_and(|r| !r.is_empty());
                if self.pidfd.is_some() && i == 0 {
                    pid_ready = ready;
                } else {
                    drain_ready = ready;
                }
            }
            if pid_ready {
                return true;
            }
            if drain_ready
                && let Some(d) = drain
                && !drain_nonblocking(d)
            {
                drain = None;
            }
        }
    }

    /// Sends `sig` to the child. The caller guarantees it has not been
    /// reaped (so the pid is still ours).
    pub(crate) fn signal(&self, sig: super::Signal) -> io::Result<()> {
        match kill(self.pid, sig.to_nix()) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::{Duration, Instant};

    use nix::sys::wait::waitpid;

    /// Starts `true` as a child of this process and waits until it has
    /// exited (a zombie): its pid.
    fn zombie() -> u32 {
        let child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Not waited for by `std`: dropping its `Child` reaps nothing.
        drop(child);
        let t0 = Instant::now();
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')))
        {
            assert!(t0.elapsed() < Duration::from_secs(10), "{pid} never exited");
            std::thread::sleep(Duration::from_millis(1));
        }
        pid
    }

    /// A child reaped behind our back whose pid a new child then got: the
    /// old `Child` reports the stray reaping and leaves the new child alone
    /// (waiting by pid would have reaped it). The pid is handed out again
    /// through `/proc/sys/kernel/ns_last_pid`, which needs root; without
    /// it the case says so and checks only the stray reaping.
    #[test]
    fn a_pid_reaped_behind_our_back_and_reused_is_not_reaped_again() {
        if !pidfd::enabled() || pidfd::open(std::process::id() as i32).is_err() {
            eprintln!("no pidfds here: nothing to check");
            return;
        }
        for _ in 0..20 {
            let old = Child::adopt(zombie());
            // Someone else reaps it.
            waitpid(old.pid, None).expect("the stray reaping");
            let reused =
                std::fs::write("/proc/sys/kernel/ns_last_pid", (old.pid() - 1).to_string()).is_ok();
            let new = zombie();
            if !reused {
                eprintln!("ns_last_pid is not writable here: only the stray reaping is checked");
            }
            let status = old.try_reap().expect("try_reap");
            assert_eq!(
                status.and_then(|s| s.code()),
                Some(255),
                "a child reaped by someone else"
            );
            // The new child is still there to reap, by its own owner.
            let its = waitpid(Pid::from_raw(new as i32), Some(WaitPidFlag::WNOHANG));
            assert!(
                matches!(its, Ok(WaitStatus::Exited(_, 0))),
                "the new child {new} was reaped by the old Child: {its:?}"
            );
            if !reused || new == old.pid() {
                return;
            }
            // Another process took the pid first: try again.
        }
        panic!("the pid was never handed out again");
    }
}
