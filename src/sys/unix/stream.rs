//! Plain byte I/O on a connected stream socket, for the ends of a pipe.
//!
//! A pipe's socket stays in blocking mode, so the blocking forms of its
//! methods (used by synchronous code in a child) cost one system call per
//! read or write. The asynchronous forms pass `MSG_DONTWAIT` on every call
//! instead, which makes that one call nonblocking whatever the socket's mode.
//! Every send also passes `MSG_NOSIGNAL` where the platform has it, so a
//! closed peer gives `EPIPE`, never `SIGPIPE`.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{self, MsgFlags};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

pub(crate) use super::scm::recv_into_with_fds;
use super::scm::{MAX_FDS_PER_MSG, send_flags, send_with_fds_wait};

/// Sends some of `buf` on `sock`; returns how many bytes went out.
///
/// With `wait` false the call never blocks: a full socket gives
/// [`io::ErrorKind::WouldBlock`]. Retries `EINTR`.
pub(crate) fn send(sock: &OwnedFd, buf: &[u8], wait: bool) -> io::Result<usize> {
    let mut flags = send_flags();
    if !wait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match socket::send(sock.as_raw_fd(), buf, flags) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// [`send`] with descriptors: the oldest of `fds` (at most
/// [`MAX_FDS_PER_MSG`] of them) travel with these bytes by `SCM_RIGHTS`,
/// and those sent are removed from `fds`. When more wait than one message
/// carries, only one byte goes, so that the rest of `buf` can carry the
/// others. Without descriptors this is [`send`].
///
/// # Errors
///
/// As for [`send`]; [`io::ErrorKind::InvalidInput`] if descriptors wait
/// and `buf` is empty. On an error no descriptor was sent.
pub(crate) fn send_with_fds(
    sock: &OwnedFd,
    buf: &[u8],
    fds: &mut VecDeque<OwnedFd>,
    wait: bool,
) -> io::Result<usize> {
    if fds.is_empty() {
        return send(sock, buf, wait);
    }
    let batch = fds.len().min(MAX_FDS_PER_MSG);
    let bytes = if fds.len() > MAX_FDS_PER_MSG {
        &buf[..buf.len().min(1)]
    } else {
        buf
    };
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().take(batch).map(AsFd::as_fd).collect();
    let sent = send_with_fds_wait(sock.as_fd(), &[IoSlice::new(bytes)], &borrowed, wait)?;
    drop(borrowed);
    // The kernel holds its own references now; close ours.
    fds.drain(..batch);
    Ok(sent)
}

/// Receives at most `want` bytes from `sock`, appending them to `buf`
/// (which grows as needed, without initialising the space first). Returns
/// how many bytes arrived; zero means end of stream.
///
/// With `wait` false the call never blocks: nothing to read gives
/// [`io::ErrorKind::WouldBlock`]. Retries `EINTR`.
pub(crate) fn recv_into(
    sock: &OwnedFd,
    buf: &mut BytesMut,
    want: usize,
    wait: bool,
) -> io::Result<usize> {
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let len = want.min(spare.len());
    loop {
        // SAFETY: `spare` is writable memory owned by `buf`, at least `len`
        // bytes long, and stays borrowed for the whole call; `recv` writes
        // at most `len` bytes into it and touches nothing else. The socket
        // is kept open by the `BorrowedFd`.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                len,
                flags,
            )
        };
        if n >= 0 {
            let n = n.unsigned_abs();
            // SAFETY: `recv` initialised the first `n <= len` bytes of the
            // spare capacity, which directly follow the buffer's contents.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let err = Errno::last();
        if err != Errno::EINTR {
            return Err(err.into());
        }
    }
}

/// Registers `fd` with the current runtime's reactor, for readiness
/// events of both kinds. The registration holds a reference to the
/// descriptor, which therefore stays open as long as it does.
///
/// # Errors
///
/// If the reactor refuses. Must be called within a Tokio runtime with
/// I/O enabled.
pub(crate) fn register(fd: Arc<OwnedFd>) -> io::Result<Registration> {
    // SAFETY: the `AsyncFd` owns a strong reference to the `OwnedFd`,
    // which closes its descriptor only when the last reference goes; so
    // the descriptor stays open, naming the same open file description,
    // for the `AsyncFd`'s whole life, and `Arc<OwnedFd>::as_raw_fd`
    // returns the same number every time.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)
}

/// A socket registered with one runtime's reactor.
pub(crate) type Registration = AsyncFd<Arc<OwnedFd>>;

/// What to wait for on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Bytes to read, or the end of the stream, or an error.
    Readable,
    /// Room to write, or an error (a closed peer counts).
    Writable,
}

/// Blocks until `sock` is ready as asked, or `timeout` passes (`None`:
/// no limit). Returns whether it became ready. Retries `EINTR` with the
/// time that is left.
pub(crate) fn wait(sock: &OwnedFd, what: Wait, timeout: Option<Duration>) -> io::Result<bool> {
    let events = match what {
        Wait::Readable => PollFlags::POLLIN,
        Wait::Writable => PollFlags::POLLOUT,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let left = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up, so a short wait does not become a busy loop.
                let ms = left.as_nanos().div_ceil(1_000_000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let mut fds = [PollFd::new(sock.as_fd(), events)];
        match poll(&mut fds, left) {
            Ok(0) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonblocking_calls_never_block_on_a_blocking_socket() {
        let (a, b) = super::super::socketpair().unwrap();
        let mut buf = BytesMut::new();
        let err = recv_into(&a, &mut buf, 16, false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!wait(&a, Wait::Readable, Some(Duration::from_millis(20))).unwrap());

        assert_eq!(send(&b, b"hello", false).unwrap(), 5);
        assert!(wait(&a, Wait::Readable, Some(Duration::ZERO)).unwrap());
        assert_eq!(recv_into(&a, &mut buf, 3, true).unwrap(), 3);
        assert_eq!(recv_into(&a, &mut buf, 64, false).unwrap(), 2);
        assert_eq!(&buf[..], b"hello");

        // Fill the socket: a nonblocking send then reports WouldBlock.
        let chunk = vec![0u8; 64 * 1024];
        let err = loop {
            if let Err(e) = send(&b, &chunk, false) {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(!wait(&b, Wait::Writable, Some(Duration::from_millis(10))).unwrap());

        // `a` closes with bytes unread: its peer hears of a reset once,
        // then sees the end of the stream.
        drop(a);
        let err = send(&b, b"x", true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        match recv_into(&b, &mut buf, 8, true) {
            Ok(0) => {}
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            Ok(n) => panic!("{n} bytes from a closed peer"),
        }
        assert_eq!(recv_into(&b, &mut buf, 8, true).unwrap(), 0);
    }
}
