//! The service manager's end of the `sd_notify` protocol: a datagram
//! socket at a path (given to a program as `NOTIFY_SOCKET`) that receives
//! `READY=1`, `WATCHDOG=1` and the like, each with the sender's pid.
//!
//! A message may carry descriptors: `systemd-notify` sends `BARRIER=1`
//! with the write end of a pipe and waits until the manager closes it,
//! which here happens as soon as the message is read.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// The largest message read; longer ones are cut (systemd allows 4 KiB
/// plus descriptors).
const MAX_MESSAGE: usize = 4096;

/// One notification: its text and who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    /// The message, `KEY=value` lines.
    pub(crate) text: String,
    /// The sender's pid, from the kernel (not from the message).
    pub(crate) pid: Option<u32>,
}

/// A bound `sd_notify` socket; the path is removed when it is dropped.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a datagram socket at `path` (which must not exist), with the
    /// senders' credentials attached to what it receives. Must be called
    /// within a Tokio runtime.
    pub(crate) fn bind(path: &Path) -> io::Result<NotifySocket> {
        let socket = UnixDatagram::bind(path)?;
        // Before the program starts, so that every message has a sender.
        socket::setsockopt(&socket, sockopt::PassCred, &true)?;
        Ok(NotifySocket {
            socket,
            path: path.to_owned(),
        })
    }

    /// The path the socket is bound at.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The next notification.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only in the poll that returns it.
    pub(crate) async fn recv(&self) -> io::Result<Notification> {
        self.socket
            .async_io(Interest::READABLE, || receive(self.socket.as_fd()))
            .await
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one datagram without blocking: its text, its sender, and closes
/// any descriptor it carried.
fn receive(fd: BorrowedFd<'_>) -> io::Result<Notification> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!(libc::ucred, [std::os::fd::RawFd; 16]);
    let (len, pid, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match socket::recvmsg::<()>(
                fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        let mut pid = None;
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            match c {
                ControlMessageOwned::ScmCredentials(cred) => {
                    pid = u32::try_from(cred.pid()).ok();
                }
                ControlMessageOwned::ScmRights(raw) => fds.extend(raw),
                _ => {}
            }
        }
        (msg.bytes, pid, fds)
    };
    for raw in fds {
        // SAFETY: the kernel just installed these descriptors in this
        // process for this message; nothing else knows their numbers, so
        // owning (and so closing) them here is sound.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) });
    }
    buf.truncate(len);
    Ok(Notification {
        text: String::from_utf8_lossy(&buf).into_owned(),
        pid,
    })
}

/// The process group of `pid`, if it still exists.
pub(crate) fn process_group_of(pid: u32) -> Option<u32> {
    let pid = i32::try_from(pid).ok()?;
    let pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok()?;
    u32::try_from(pgid.as_raw()).ok()
}
