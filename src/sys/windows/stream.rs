//! Byte streams on named pipes, for the ends of a pipe and the control
//! channel: the pair, and the calls `sys::stream` names.
//!
//! A pair is one pipe instance: the server end made with a random name, a
//! security descriptor that lets only the current user in, and room for
//! one client, which is the other end, opened at once. Nobody else can
//! open the name after that (one instance, and it is connected), and no
//! other user could before. Both ends do overlapped I/O through their
//! [`PipeIo`](super::PipeIo).

use std::collections::VecDeque;
use std::io;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{FromRawHandle, OwnedHandle as StdHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use windows_sys::Win32::Foundation::{
    ERROR_PIPE_CONNECTED, GENERIC_READ, GENERIC_WRITE, HLOCAL, INVALID_HANDLE_VALUE, LocalFree,
};
use windows_sys::Win32::Security::Authorization::{
    ConvertSidToStringSidW, ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
};
use windows_sys::Win32::Security::{
    GetTokenInformation, PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES, TOKEN_QUERY, TOKEN_USER,
    TokenUser,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX,
};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_WAIT, PeekNamedPipe,
};
use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

pub(crate) use super::pipe_io::Wait;
use super::{OwnedHandle, unsupported};

/// Each direction's buffer in the kernel.
const PIPE_BUFFER: u32 = 64 * 1024;

/// The current user's SID as text (`S-1-5-21-...`), read once.
fn user_sid() -> io::Result<&'static str> {
    static SID: OnceLock<Result<String, (io::ErrorKind, String)>> = OnceLock::new();
    SID.get_or_init(|| read_user_sid().map_err(|e| (e.kind(), e.to_string())))
        .as_deref()
        .map_err(|(kind, msg)| io::Error::new(*kind, msg.clone()))
}

fn read_user_sid() -> io::Result<String> {
    let mut token = std::ptr::null_mut();
    // SAFETY: the pseudo-handle of our own process needs no closing;
    // `token` is a valid place for the new handle.
    if unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just opened and own alone.
    let token = unsafe { StdHandle::from_raw_handle(token) };
    // TOKEN_USER and the SID it points into, which follows it.
    let mut buf = vec![0u64; 128];
    let mut len = 0u32;
    let size = u32::try_from(buf.len() * 8).expect("a small buffer");
    // SAFETY: `buf` is writable for `size` bytes and 8-aligned (enough for
    // TOKEN_USER); `len` is a valid place for the length.
    let ok = unsafe {
        GetTokenInformation(
            std::os::windows::io::AsRawHandle::as_raw_handle(&token),
            TokenUser,
            buf.as_mut_ptr().cast(),
            size,
            &mut len,
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call filled `buf` with a TOKEN_USER at its start.
    let user = unsafe { &*buf.as_ptr().cast::<TOKEN_USER>() };
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: the SID pointer points into `buf`, alive for the call;
    // `text` receives a string the system allocates.
    if unsafe { ConvertSidToStringSidW(user.User.Sid, &mut text) } == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `text` is a NUL-terminated UTF-16 string from the system.
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` units are initialised, as just counted.
    let sid = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: the system allocated `text` with LocalAlloc; freed once.
    unsafe { LocalFree(text as HLOCAL) };
    Ok(sid)
}

/// A security descriptor that grants everything to the current user and
/// nothing to anyone else, freed when dropped.
struct UserOnly(PSECURITY_DESCRIPTOR);

impl UserOnly {
    fn new() -> io::Result<UserOnly> {
        // Protected DACL, one entry: generic all for the user.
        let sddl = format!("D:P(A;;GA;;;{})", user_sid()?);
        let wide: Vec<u16> = sddl.encode_utf16().chain(Some(0)).collect();
        let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
        // SAFETY: `wide` is NUL-terminated and alive for the call; `sd`
        // receives a descriptor the system allocates.
        let ok = unsafe {
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                wide.as_ptr(),
                SDDL_REVISION_1,
                &mut sd,
                std::ptr::null_mut(),
            )
        };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(UserOnly(sd))
    }

    fn attributes(&self) -> SECURITY_ATTRIBUTES {
        SECURITY_ATTRIBUTES {
            nLength: u32::try_from(std::mem::size_of::<SECURITY_ATTRIBUTES>())
                .expect("a small structure"),
            lpSecurityDescriptor: self.0,
            bInheritHandle: 0,
        }
    }
}

impl Drop for UserOnly {
    fn drop(&mut self) {
        // SAFETY: the system allocated the descriptor with LocalAlloc;
        // freed once, here.
        unsafe { LocalFree(self.0 as HLOCAL) };
    }
}

/// A connected pair of pipe ends (see the module docs).
pub(crate) fn pipe_pair() -> io::Result<(OwnedHandle, OwnedHandle)> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!(
        r"\\.\pipe\tokio-multiprocessing-{}-{hex}",
        std::process::id()
    );
    let wide: Vec<u16> = std::ffi::OsStr::new(&name)
        .encode_wide()
        .chain(Some(0))
        .collect();
    let security = UserOnly::new()?;
    let attributes = security.attributes();
    // SAFETY: `wide` is NUL-terminated and `attributes` (with the
    // descriptor it points to) alive for the call.
    let server = unsafe {
        CreateNamedPipeW(
            wide.as_ptr(),
            PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
            PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
            1,
            PIPE_BUFFER,
            PIPE_BUFFER,
            0,
            &attributes,
        )
    };
    if server == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just made and own alone.
    let server = unsafe { StdHandle::from_raw_handle(server) };
    // SAFETY: as above; the name is ours, and the pipe admits one client.
    let client = unsafe {
        CreateFileW(
            wide.as_ptr(),
            GENERIC_READ | GENERIC_WRITE,
            0,
            &attributes,
            OPEN_EXISTING,
            FILE_FLAG_OVERLAPPED,
            std::ptr::null_mut(),
        )
    };
    if client == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a handle we just opened and own alone.
    let client = unsafe { StdHandle::from_raw_handle(client) };
    // The client is in: connecting says so at once (a null OVERLAPPED is
    // fine for a pipe opened overlapped only when the call cannot pend,
    // and it cannot with the client already there).
    let mut overlapped = unsafe_zeroed_overlapped();
    // SAFETY: the handle is open; `overlapped` outlives the call, which
    // completes at once (the client is connected already).
    let ok = unsafe {
        ConnectNamedPipe(
            std::os::windows::io::AsRawHandle::as_raw_handle(&server),
            &mut overlapped,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(ERROR_PIPE_CONNECTED as i32) {
            return Err(e);
        }
    }
    Ok((OwnedHandle::from_std(server), OwnedHandle::from_std(client)))
}

fn unsafe_zeroed_overlapped() -> windows_sys::Win32::System::IO::OVERLAPPED {
    // SAFETY: OVERLAPPED is plain data, valid when zeroed.
    unsafe { std::mem::zeroed() }
}

/// Sends some of `buf` on `sock`; returns how many bytes went out.
pub(crate) fn send(sock: &OwnedHandle, buf: &[u8], wait: bool) -> io::Result<usize> {
    sock.io()?.send(buf, wait)
}

/// [`send`]; handles in messages are not ported to Windows yet.
pub(crate) fn send_with_fds(
    sock: &OwnedHandle,
    buf: &[u8],
    fds: &mut VecDeque<OwnedHandle>,
    wait: bool,
) -> io::Result<usize> {
    if !fds.is_empty() {
        return Err(unsupported("sending handles in a message"));
    }
    send(sock, buf, wait)
}

/// Receives at most `want` bytes from `sock` into `buf`; 0 at the end.
pub(crate) fn recv_into(
    sock: &OwnedHandle,
    buf: &mut BytesMut,
    want: usize,
    wait: bool,
) -> io::Result<usize> {
    sock.io()?.recv_into(buf, want, wait)
}

/// [`recv_into`]: no handle ever arrives with the bytes on Windows.
pub(crate) fn recv_into_with_fds(
    sock: &OwnedHandle,
    buf: &mut BytesMut,
    want: usize,
    wait: bool,
    _fds: &mut VecDeque<OwnedHandle>,
) -> io::Result<usize> {
    recv_into(sock, buf, want, wait)
}

/// Blocks until `sock` is ready as asked, or `timeout` passes.
pub(crate) fn wait(sock: &OwnedHandle, what: Wait, timeout: Option<Duration>) -> io::Result<bool> {
    sock.io()?.wait(what, timeout)
}

/// Whether the peer of `sock` has closed its end. Does not wait or read.
pub(crate) fn peer_closed(sock: &OwnedHandle) -> bool {
    let mut avail = 0u32;
    // SAFETY: the handle is open while `sock` lives; only the count of
    // available bytes is asked for, into `avail`.
    let ok = unsafe {
        PeekNamedPipe(
            sock.as_raw(),
            std::ptr::null_mut(),
            0,
            std::ptr::null_mut(),
            &mut avail,
            std::ptr::null_mut(),
        )
    };
    ok == 0 && avail == 0
}

/// A pipe end, as the async code waits on it.
#[derive(Debug)]
pub(crate) struct Registration {
    handle: Arc<OwnedHandle>,
}

/// Readiness seen by [`Registration`]: Windows keeps none to clear, each
/// wait looks at the pipe end afresh.
#[derive(Debug)]
pub(crate) struct Ready(());

impl Ready {
    /// Nothing to clear (see [`Ready`]).
    pub(crate) fn clear_ready(&mut self) {}
}

impl Registration {
    /// Resolves when a read would not wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(crate) async fn readable(&self) -> io::Result<Ready> {
        self.handle
            .io()?
            .ready(Wait::Readable)
            .await
            .map(|()| Ready(()))
    }

    /// Resolves when a write would not wait.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub(crate) async fn writable(&self) -> io::Result<Ready> {
        self.handle
            .io()?
            .ready(Wait::Writable)
            .await
            .map(|()| Ready(()))
    }
}

/// The async side of `fd`.
pub(crate) fn register(fd: Arc<OwnedHandle>) -> io::Result<Registration> {
    fd.io()?;
    Ok(Registration { handle: fd })
}
