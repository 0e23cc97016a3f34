//! Pipes for a child's standard output and error: made close-on-exec by
//! the parent, put in place of descriptors 1 and 2 by the child, read
//! asynchronously by the parent.

use std::io;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd, OwnedFd};

use nix::fcntl::OFlag;

/// The reading end of a pipe, for a Tokio runtime: a stream of bytes that
/// ends when every copy of the writing end is closed.
pub(crate) type PipeReader = tokio::net::unix::pipe::Receiver;

/// A captured child's output pipes come with its orders (a forked child
/// exists before its start), and the child puts them in place itself
/// ([`redirect_stdout_stderr`]).
pub(crate) const OUTPUT_AT_SPAWN: bool = false;

/// A pipe, `(read, write)`, both ends close-on-exec (so that no program
/// this process starts inherits them by accident).
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Makes the reading end `read` of a pipe a [`PipeReader`] registered with
/// the current Tokio runtime (it becomes nonblocking). Must be called
/// within a runtime.
pub(crate) fn pipe_reader(read: OwnedFd) -> io::Result<PipeReader> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(read)
}

/// Puts `out` in place of this process's standard output (descriptor 1)
/// and `err` in place of its standard error (2); the originals are closed
/// when they drop. The new 1 and 2 are inherited across `exec`, as
/// standard streams are.
pub(crate) fn redirect_stdout_stderr(out: OwnedFd, err: OwnedFd) -> io::Result<()> {
    use std::io::Write;
    // What the standard library holds for the old stdout goes there first.
    let _ = io::stdout().flush();
    // An end that is 1 or 2 already (this process was started with them
    // closed) would be overwritten or closed on the way: such ends move to
    // fresh numbers first, and their old numbers are left to the `dup2`s.
    let fresh = |fd: OwnedFd| -> io::Result<OwnedFd> {
        if fd.as_raw_fd() > libc::STDERR_FILENO {
            return Ok(fd);
        }
        let copy = fd.try_clone()?;
        if fd.as_raw_fd() == libc::STDIN_FILENO {
            drop(fd);
        } else {
            // The number is 1 or 2, which the `dup2`s below take over.
            let _ = fd.into_raw_fd();
        }
        Ok(copy)
    };
    let (out, err) = (fresh(out)?, fresh(err)?);
    retry(|| nix::unistd::dup2_stdout(out.as_fd()))?;
    retry(|| nix::unistd::dup2_stderr(err.as_fd()))?;
    Ok(())
}

/// Runs `call` until it fails with something other than `EINTR`.
fn retry(mut call: impl FnMut() -> nix::Result<()>) -> io::Result<()> {
    loop {
        match call() {
            Err(nix::errno::Errno::EINTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}
