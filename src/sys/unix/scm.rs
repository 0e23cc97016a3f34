//! Passing file descriptors over Unix stream sockets with `SCM_RIGHTS`.
//!
//! The kernel attaches the descriptors to the bytes of the same `sendmsg`
//! call and hands them out, as new descriptors in the receiving process,
//! with the first `recvmsg` that reads any of those bytes. At least one byte
//! must therefore travel with every batch of descriptors.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

/// The most descriptors one message may carry (Linux's `SCM_MAX_FD`).
pub(crate) const MAX_FDS_PER_MSG: usize = 253;

/// Bytes of control space for one `SCM_RIGHTS` message of
/// [`MAX_FDS_PER_MSG`] descriptors.
const CMSG_BUF_LEN: usize = {
    // 253 descriptors of 4 bytes: far below `c_uint::MAX`.
    #[allow(clippy::cast_possible_truncation)]
    let payload = (MAX_FDS_PER_MSG * size_of::<RawFd>()) as libc::c_uint;
    // SAFETY: `CMSG_SPACE` is pure arithmetic on its argument; it touches no
    // memory.
    unsafe { libc::CMSG_SPACE(payload) as usize }
};

/// Control space aligned for `cmsghdr`, as `recvmsg` requires.
#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_BUF_LEN]);

const _: () = assert!(std::mem::align_of::<libc::cmsghdr>() <= 8);

/// Flags for every `sendmsg`: no `SIGPIPE`.
pub(super) fn send_flags() -> MsgFlags {
    MsgFlags::MSG_NOSIGNAL
}

/// Flags for every `recvmsg`: received descriptors are close-on-exec.
fn recv_flags() -> MsgFlags {
    MsgFlags::MSG_CMSG_CLOEXEC
}

/// Sends the bytes of `bufs` on the stream socket `sock`, with `fds`
/// attached as one `SCM_RIGHTS` message when `fds` is non-empty.
///
/// Returns how many bytes were sent; when that is more than zero, every
/// descriptor in `fds` was sent with them (the receiver gets duplicates, so
/// ours may be closed afterwards). Uses `MSG_NOSIGNAL` where available, so a
/// closed peer gives `EPIPE` rather than a signal. Retries `EINTR`. On a
/// nonblocking socket a full buffer gives [`io::ErrorKind::WouldBlock`].
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if `fds` holds more than
/// [`MAX_FDS_PER_MSG`] descriptors, or if `fds` is non-empty while `bufs`
/// carries no bytes; otherwise whatever `sendmsg` reports.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    send_with_fds_wait(sock, bufs, fds, true)
}

/// [`send_with_fds`], which with `wait` false never blocks, whatever the
/// socket's mode (`MSG_DONTWAIT`): a full socket gives
/// [`io::ErrorKind::WouldBlock`] and sends nothing.
///
/// # Errors
///
/// As for [`send_with_fds`].
pub(crate) fn send_with_fds_wait(
    sock: BorrowedFd<'_>,
    bufs: &[IoSlice<'_>],
    fds: &[BorrowedFd<'_>],
    wait: bool,
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot send {} descriptors in one message (at most {MAX_FDS_PER_MSG})",
                fds.len()
            ),
        ));
    }
    if !fds.is_empty() && bufs.iter().all(|b| b.is_empty()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors must travel with at least one byte",
        ));
    }
    let mut raw: [RawFd; MAX_FDS_PER_MSG] = [-1; MAX_FDS_PER_MSG];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    let rights = [ControlMessage::ScmRights(&raw[..fds.len()])];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let mut flags = send_flags();
    if !wait {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), bufs, cmsgs, flags, None) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives bytes from the stream socket `sock` into `buf`, and any
/// descriptors that came with them into `fds`.
///
/// Returns how many bytes were read; zero means end of stream (when `buf`
/// is not empty). Received descriptors are close-on-exec. Retries `EINTR`.
/// On a nonblocking socket with nothing to read gives
/// [`io::ErrorKind::WouldBlock`].
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if the kernel had to discard control data
/// (`MSG_CTRUNC`): the descriptors that did arrive are closed, the bytes read
/// are lost and the stream should be considered broken. Otherwise whatever
/// `recvmsg` reports.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut space = CmsgBuf([0; CMSG_BUF_LEN]);
    loop {
        let mut iov = [IoSliceMut::new(&mut *buf)];
        let msg = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space.0), recv_flags())
        {
            Ok(msg) => msg,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let bytes = msg.bytes;
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
            close_received_fds(&space.0);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control data was truncated: file descriptors were lost",
            ));
        }
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                for raw in received {
                    // SAFETY: the kernel has just installed `raw` in our
                    // descriptor table for this message; nothing else knows
                    // it, so this is its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        return Ok(bytes);
    }
}

/// Receives at most `want` bytes from the stream socket `sock`, appending
/// them to `buf` (which grows as needed, without initialising the space
/// first), and any descriptors that came with them to `fds`. Returns how
/// many bytes arrived; zero means end of stream.
///
/// With `wait` false the call never blocks (`MSG_DONTWAIT`): nothing to
/// read gives [`io::ErrorKind::WouldBlock`]. Received descriptors are
/// close-on-exec. Retries `EINTR`. Costs the same system call as a plain
/// `recv` when no descriptor comes.
///
/// # Errors
///
/// [`io::ErrorKind::InvalidData`] if the kernel had to discard control data
/// (`MSG_CTRUNC`): the descriptors that did arrive are closed and the
/// stream should be considered broken. Otherwise whatever `recvmsg`
/// reports.
pub(crate) fn recv_into_with_fds(
    sock: &OwnedFd,
    buf: &mut bytes::BytesMut,
    want: usize,
    wait: bool,
    fds: &mut std::collections::VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if !wait {
        flags |= libc::MSG_DONTWAIT;
    }
    buf.reserve(want);
    let spare = buf.spare_capacity_mut();
    let len = want.min(spare.len());
    let mut space = std::mem::MaybeUninit::<CmsgBuf>::uninit();
    loop {
        let mut iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast::<libc::c_void>(),
            iov_len: len,
        };
        // SAFETY: `msghdr` is plain old data; all-zero is a valid value
        // (no name, no vectors, no control space) that is filled in below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast::<libc::c_void>();
        // CMSG_BUF_LEN is about a kilobyte: it fits every platform's type.
        #[allow(clippy::cast_possible_truncation)]
        {
            msg.msg_controllen = CMSG_BUF_LEN as _;
        }
        // SAFETY: `iov` points at `len` writable bytes of `buf`'s spare
        // capacity and `msg_control` at `CMSG_BUF_LEN` writable bytes of
        // `space`, both alive and not otherwise borrowed for the call; the
        // kernel writes at most that much into each and updates `msg`.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut msg, flags) };
        if n < 0 {
            let err = Errno::last();
            if err == Errno::EINTR {
                continue;
            }
            return Err(err.into());
        }
        let n = n.unsigned_abs();
        let before = fds.len();
        // SAFETY: the kernel wrote `msg_controllen` bytes of well-formed
        // control messages at the start of `space`, which the `CMSG_*`
        // macros walk within that length; each `SCM_RIGHTS` payload is an
        // array of descriptors the kernel has just installed for us, which
        // nothing else knows, so each gets exactly one owner here.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
            while !cmsg.is_null() {
                let header = std::ptr::read_unaligned(cmsg);
                if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(cmsg);
                    let payload = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..payload / size_of::<RawFd>() {
                        let raw: RawFd =
                            std::ptr::read_unaligned(data.add(i * size_of::<RawFd>()).cast());
                        fds.push_back(OwnedFd::from_raw_fd(raw));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            fds.truncate(before);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "control data was truncated: file descriptors were lost",
            ));
        }
        // SAFETY: `recvmsg` initialised the first `n <= len` bytes of the
        // spare capacity, which directly follow the buffer's contents.
        unsafe { buf.set_len(buf.len() + n) };
        return Ok(n);
    }
}

/// Closes every descriptor found in `SCM_RIGHTS` messages in `space`, the
/// zero-initialised control buffer of a `recvmsg` whose control data was
/// truncated (the kernel installs the descriptors that fit and drops the
/// rest). Walks the headers the kernel wrote; the zeroed tail ends the walk.
fn close_received_fds(space: &[u8]) {
    let header_len = size_of::<libc::cmsghdr>();
    // SAFETY: `CMSG_LEN` is pure arithmetic on its argument.
    let data_offset = unsafe { libc::CMSG_LEN(0) } as usize;
    let mut offset = 0;
    while offset + header_len <= space.len() {
        // SAFETY: `offset + header_len` is within `space`, and
        // `read_unaligned` has no alignment requirement; `cmsghdr` is plain
        // old data, valid for any bit pattern.
        let header: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(space.as_ptr().add(offset).cast()) };
        let len = header.cmsg_len as usize;
        if len < data_offset || len > space.len() - offset {
            break;
        }
        if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
            let data = &space[offset + data_offset..offset + len];
            for raw in data.chunks_exact(size_of::<RawFd>()) {
                let raw = RawFd::from_ne_bytes(raw.try_into().expect("chunk of fd size"));
                // SAFETY: the kernel installed `raw` for this message and
                // nothing has seen it yet; we own it and close it here.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        let payload = u32::try_from(len - data_offset).unwrap_or(u32::MAX);
        // SAFETY: `CMSG_SPACE` is pure arithmetic on its argument.
        offset += unsafe { libc::CMSG_SPACE(payload) } as usize;
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use nix::unistd::{pipe2, read, write};

    use super::*;

    fn pair(flags: SockFlag) -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            flags | SockFlag::SOCK_CLOEXEC,
        )
        .unwrap()
    }

    fn nonblocking_pipe() -> (OwnedFd, OwnedFd) {
        pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    fn is_cloexec(fd: &OwnedFd) -> bool {
        let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
        FdFlag::from_bits_truncate(flags).contains(FdFlag::FD_CLOEXEC)
    }

    #[test]
    fn sends_two_pipe_fds_with_bytes() {
        let (a, b) = pair(SockFlag::empty());
        let (r, w) = nonblocking_pipe();
        let sent = send_with_fds(
            a.as_fd(),
            &[IoSlice::new(b"he"), IoSlice::new(b"llo")],
            &[r.as_fd(), w.as_fd()],
        )
        .unwrap();
        assert_eq!(sent, 5);

        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        assert!(fds.iter().all(is_cloexec));
        assert_ne!(fds[0].as_raw_fd(), r.as_raw_fd());

        // Writes into the received write end come out of our read end.
        write(&fds[1], b"through the socket").unwrap();
        let mut out = [0u8; 32];
        let n = read(&r, &mut out).unwrap();
        assert_eq!(&out[..n], b"through the socket");

        // And the received read end sees what our write end writes.
        write(&w, b"back").unwrap();
        let n = read(&fds[0], &mut out).unwrap();
        assert_eq!(&out[..n], b"back");
    }

    #[test]
    fn zero_fds_is_a_plain_send() {
        let (a, b) = pair(SockFlag::empty());
        assert_eq!(
            send_with_fds(a.as_fd(), &[IoSlice::new(b"xyz")], &[]).unwrap(),
            3
        );
        assert_eq!(send_with_fds(a.as_fd(), &[], &[]).unwrap(), 0);
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"xyz");
        assert!(fds.is_empty());

        drop(a);
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 0);
    }

    #[test]
    fn too_many_fds_is_an_error() {
        let (a, _b) = pair(SockFlag::empty());
        let (r, _w) = nonblocking_pipe();
        let many = vec![r.as_fd(); MAX_FDS_PER_MSG + 1];
        let err = send_with_fds(a.as_fd(), &[IoSlice::new(b"x")], &many).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn fds_without_bytes_is_an_error() {
        let (a, _b) = pair(SockFlag::empty());
        let (r, _w) = nonblocking_pipe();
        let err = send_with_fds(a.as_fd(), &[IoSlice::new(b"")], &[r.as_fd()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = send_with_fds(a.as_fd(), &[], &[r.as_fd()]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn the_maximum_fits_in_one_message() {
        let (a, b) = pair(SockFlag::empty());
        let (r, w) = nonblocking_pipe();
        let many = vec![w.as_fd(); MAX_FDS_PER_MSG];
        send_with_fds(a.as_fd(), &[IoSlice::new(b"!")], &many).unwrap();
        let mut fds = Vec::new();
        let mut buf = [0u8; 1];
        assert_eq!(recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap(), 1);
        assert_eq!(fds.len(), MAX_FDS_PER_MSG);
        write(&fds[MAX_FDS_PER_MSG - 1], b"z").unwrap();
        let mut out = [0u8; 1];
        assert_eq!(read(&r, &mut out).unwrap(), 1);
    }

    #[test]
    fn nonblocking_empty_socket_would_block() {
        let (_a, b) = pair(SockFlag::SOCK_NONBLOCK);
        let mut buf = [0u8; 8];
        let mut fds = Vec::new();
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn sending_to_a_closed_peer_is_broken_pipe() {
        let (a, b) = pair(SockFlag::empty());
        drop(b);
        let err = send_with_fds(a.as_fd(), &[IoSlice::new(b"x")], &[]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    /// With `SO_PASSCRED` the kernel puts credentials in front of the
    /// descriptors, so a full batch no longer fits: the call must fail and
    /// close the descriptors that did arrive.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn truncated_control_data_is_an_error_and_closes_what_arrived() {
        use nix::sys::socket::{setsockopt, sockopt::PassCred};

        let (a, b) = pair(SockFlag::empty());
        setsockopt(&b, PassCred, &true).unwrap();
        let (r, w) = nonblocking_pipe();
        let many = vec![w.as_fd(); MAX_FDS_PER_MSG];
        send_with_fds(a.as_fd(), &[IoSlice::new(b"!")], &many).unwrap();
        drop(many);
        drop(w);

        let mut fds = Vec::new();
        let mut buf = [0u8; 1];
        let err = recv_with_fds(b.as_fd(), &mut buf, &mut fds).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(fds.is_empty());

        // Every copy of the write end is closed, so the read end sees EOF
        // (a leaked copy would make this read fail with EAGAIN instead).
        let mut out = [0u8; 1];
        assert_eq!(read(&r, &mut out).unwrap(), 0);
    }
}
