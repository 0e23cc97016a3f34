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
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle as StdHandle, RawHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::BytesMut;
use windows_sys::Win32::Foundation::{
    ERROR_IO_INCOMPLETE, ERROR_IO_PENDING, ERROR_PIPE_BUSY, ERROR_PIPE_CONNECTED, GENERIC_READ,
    GENERIC_WRITE, HLOCAL, INVALID_HANDLE_VALUE, LocalFree,
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
    PIPE_ACCESS_DUPLEX, PIPE_ACCESS_INBOUND,
};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Pipes::{
    ConnectNamedPipe, CreateNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_UNLIMITED_INSTANCES, PIPE_WAIT, PeekNamedPipe,
};
use windows_sys::Win32::System::Threading::{CreateEventW, GetCurrentProcess, OpenProcessToken};

use super::pipe_io::EventSignal;
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
    // SAFETY: the call made `text`, a string the system allocated.
    Ok(unsafe { take_system_string(text) })
}

/// The text of `text`, a NUL-terminated UTF-16 string the system
/// allocated with `LocalAlloc`, which is freed here.
///
/// # Safety
///
/// `text` is such a string, and nothing uses it afterwards.
unsafe fn take_system_string(text: *mut u16) -> String {
    // SAFETY: the string is NUL-terminated (the caller's promise).
    let len = (0..).take_while(|&i| unsafe { *text.add(i) } != 0).count();
    // SAFETY: `len` units are initialised, as just counted.
    let out = String::from_utf16_lossy(unsafe { std::slice::from_raw_parts(text, len) });
    // SAFETY: allocated by the system with LocalAlloc; freed once, here.
    unsafe { LocalFree(text as HLOCAL) };
    out
}

/// The current user's SID, for the tests.
#[cfg(test)]
pub(crate) fn tests_user_sid() -> io::Result<&'static str> {
    user_sid()
}

/// The access list of `handle`'s object, in SDDL, for the tests.
#[cfg(test)]
pub(crate) fn tests_dacl_of(handle: &OwnedHandle) -> io::Result<String> {
    use windows_sys::Win32::Security::Authorization::{
        ConvertSecurityDescriptorToStringSecurityDescriptorW, GetSecurityInfo, SE_KERNEL_OBJECT,
    };
    use windows_sys::Win32::Security::DACL_SECURITY_INFORMATION;
    let mut sd: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the handle is open; only the descriptor is asked for, which
    // the system allocates into `sd`.
    let rc = unsafe {
        GetSecurityInfo(
            handle.as_raw(),
            SE_KERNEL_OBJECT,
            DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut sd,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc as i32));
    }
    let sd = UserOnly(sd);
    let mut text: *mut u16 = std::ptr::null_mut();
    // SAFETY: `sd` is a valid descriptor; `text` receives a string the
    // system allocates.
    let ok = unsafe {
        ConvertSecurityDescriptorToStringSecurityDescriptorW(
            sd.0,
            SDDL_REVISION_1,
            DACL_SECURITY_INFORMATION,
            &mut text,
            std::ptr::null_mut(),
        )
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call made `text`, a string the system allocated.
    Ok(unsafe { take_system_string(text) })
}

/// A security descriptor that grants everything to the current user and
/// nothing to anyone else, freed when dropped.
pub(super) struct UserOnly(PSECURITY_DESCRIPTOR);

impl UserOnly {
    pub(super) fn new() -> io::Result<UserOnly> {
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

    pub(super) fn attributes(&self) -> SECURITY_ATTRIBUTES {
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
    connected_instance(
        PIPE_ACCESS_DUPLEX,
        GENERIC_READ | GENERIC_WRITE,
        FILE_FLAG_OVERLAPPED,
    )
}

/// A pipe for a child's captured output, `(read, write)`: one instance,
/// as [`pipe_pair`], whose server end only reads (overlapped, for the
/// runtime) and whose client end only writes, opened for plain
/// synchronous writes, since it becomes a child's standard output or
/// error, which programs write without an `OVERLAPPED`.
pub(crate) fn output_pipe() -> io::Result<(OwnedHandle, OwnedHandle)> {
    connected_instance(PIPE_ACCESS_INBOUND, GENERIC_WRITE, 0)
}

/// A pipe name nobody can guess: `\\.\pipe\tokio-multiprocessing-KIND-PID-`
/// and 128 random bits (without `KIND-` when `kind` is empty).
pub(super) fn random_pipe_name(kind: &str) -> io::Result<String> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| io::Error::other(e.to_string()))?;
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let kind = if kind.is_empty() {
        String::new()
    } else {
        format!("{kind}-")
    };
    Ok(format!(
        r"\\.\pipe\tokio-multiprocessing-{kind}{}-{hex}",
        std::process::id()
    ))
}

/// One instance of a pipe with a random name and the user-only
/// descriptor, its server end made with `server_access` (and overlapped),
/// its one client opened at once with `client_access` and `client_flags`:
/// `(server, client)`, connected.
fn connected_instance(
    server_access: u32,
    client_access: u32,
    client_flags: u32,
) -> io::Result<(OwnedHandle, OwnedHandle)> {
    let name = random_pipe_name("")?;
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
            server_access | FILE_FLAG_OVERLAPPED | FILE_FLAG_FIRST_PIPE_INSTANCE,
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
            client_access,
            0,
            &attributes,
            OPEN_EXISTING,
            client_flags,
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

/// Whether `path` names a named pipe (`\\.\pipe\NAME`), as Python's
/// `multiprocessing.connection` tells an `AF_PIPE` address.
pub(crate) fn is_pipe_name(path: &std::path::Path) -> bool {
    path.to_str()
        .is_some_and(|p| p.len() > r"\\.\pipe\".len() && p[..9].eq_ignore_ascii_case(r"\\.\pipe\"))
}

/// A connect in flight on a listener's instance: its OVERLAPPED (never
/// moved while the kernel owns it) and its event. Dropped, it cancels the
/// connect and waits for its end before the OVERLAPPED is freed.
struct Connect {
    overlapped: Box<OVERLAPPED>,
    event: StdHandle,
    /// The instance's handle, which outlives this value (see `Instance`).
    pipe: RawHandle,
    /// The connect has ended: nothing to cancel.
    done: bool,
}

// SAFETY: the raw pointers (the pipe handle, the OVERLAPPED's event) name
// kernel objects, usable from any thread; the OVERLAPPED is only touched
// by whoever holds the listener's lock.
unsafe impl Send for Connect {}

impl Drop for Connect {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut n = 0u32;
        // SAFETY: the pipe handle is open (the instance drops this value
        // before its handle); cancelling our own connect, then waiting
        // (TRUE) for its end, means the kernel is done with the OVERLAPPED
        // before it is freed.
        unsafe {
            CancelIoEx(self.pipe, &*self.overlapped);
            GetOverlappedResult(self.pipe, &*self.overlapped, &mut n, 1);
        }
    }
}

/// One instance of a listener's pipe, waiting for its client.
struct Instance {
    /// Declared first, so dropped before the handle it waits on.
    connect: Option<Connect>,
    /// The server end.
    handle: OwnedHandle,
}

impl Instance {
    /// A new instance of pipe `name` (NUL-terminated UTF-16), the first one
    /// when `first` (which fails if the name is taken).
    fn new(name: &[u16], first: bool) -> io::Result<Instance> {
        let security = UserOnly::new()?;
        let attributes = security.attributes();
        let mut mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
        if first {
            mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
        }
        // SAFETY: `name` is NUL-terminated and `attributes` (with its
        // descriptor) alive for the call; a failure is INVALID_HANDLE_VALUE.
        let raw = unsafe {
            CreateNamedPipeW(
                name.as_ptr(),
                mode,
                PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS,
                PIPE_UNLIMITED_INSTANCES,
                PIPE_BUFFER,
                PIPE_BUFFER,
                0,
                &attributes,
            )
        };
        if raw == INVALID_HANDLE_VALUE {
            return Err(io::Error::last_os_error());
        }
        Ok(Instance {
            connect: None,
            // SAFETY: a handle we just made and own alone.
            handle: OwnedHandle::from_std(unsafe { StdHandle::from_raw_handle(raw) }),
        })
    }

    /// Starts waiting for a client, or finds it connected; true once it is.
    fn begin(&mut self) -> io::Result<bool> {
        if self.connect.is_some() {
            return Ok(false);
        }
        // SAFETY: null attributes and name: an unnamed manual-reset event.
        let event = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a handle we just made and own alone.
        let event = unsafe { StdHandle::from_raw_handle(event) };
        let mut overlapped = Box::new(unsafe_zeroed_overlapped());
        overlapped.hEvent = event.as_raw_handle();
        // SAFETY: the instance is open; the OVERLAPPED is boxed, so it stays
        // where it is until the connect ends (`Connect`'s drop waits).
        let ok = unsafe { ConnectNamedPipe(self.handle.as_raw(), &mut *overlapped) };
        if ok != 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error().and_then(|c| u32::try_from(c).ok()) {
            Some(ERROR_PIPE_CONNECTED) => Ok(true),
            Some(ERROR_IO_PENDING) => {
                self.connect = Some(Connect {
                    overlapped,
                    event,
                    pipe: self.handle.as_raw(),
                    done: false,
                });
                Ok(false)
            }
            _ => Err(e),
        }
    }

    /// Whether the connect in flight has ended with a client.
    fn finished(&mut self) -> io::Result<bool> {
        let Some(connect) = &mut self.connect else {
            return Ok(true);
        };
        let mut n = 0u32;
        // SAFETY: the OVERLAPPED is the one the connect was given, alive;
        // FALSE asks without waiting.
        let ok = unsafe { GetOverlappedResult(connect.pipe, &*connect.overlapped, &mut n, 0) };
        if ok == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error().and_then(|c| u32::try_from(c).ok()) == Some(ERROR_IO_INCOMPLETE) {
                return Ok(false);
            }
            connect.done = true;
            self.connect = None;
            return Err(e);
        }
        // Ended: nothing left to cancel.
        connect.done = true;
        self.connect = None;
        Ok(true)
    }
}

/// A named pipe that accepts clients, as `Listener` does for a TCP port:
/// every instance has the user-only descriptor and refuses remote clients.
pub(crate) struct PipeListener {
    name: Vec<u16>,
    /// The instance the next client connects to.
    next: std::sync::Mutex<Option<Instance>>,
}

impl std::fmt::Debug for PipeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeListener")
            .field("name", &String::from_utf16_lossy(&self.name))
            .finish_non_exhaustive()
    }
}

impl PipeListener {
    /// Listens on the named pipe `path` (`\\.\pipe\NAME`); fails if
    /// another listener has the name.
    pub(crate) fn bind(path: &std::path::Path) -> io::Result<PipeListener> {
        let name: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
        let first = Instance::new(&name, true)?;
        Ok(PipeListener {
            name,
            next: std::sync::Mutex::new(Some(first)),
        })
    }

    /// Waits for the next client; its end of the pipe.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the instance waiting for a client stays with the
    /// listener, and a client that connects meanwhile is the next one
    /// accepted.
    pub(crate) async fn accept(&self) -> io::Result<OwnedHandle> {
        let lock = || {
            self.next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        loop {
            let event = {
                let mut next = lock();
                let instance = match &mut *next {
                    Some(i) => i,
                    slot => slot.insert(Instance::new(&self.name, false)?),
                };
                let connected = instance.begin()? || instance.finished()?;
                if connected {
                    let taken = next.take().expect("an instance");
                    // The next client has an instance to connect to.
                    *next = Instance::new(&self.name, false).ok();
                    return Ok(taken.handle);
                }
                let connect = instance.connect.as_ref().expect("a connect in flight");
                connect.event.try_clone()?
            };
            // SAFETY: `event` is our own copy of the connect's event,
            // open while the wait lives (both are dropped here).
            unsafe { EventSignal::for_handle(event.as_raw_handle()) }?.await;
        }
    }
}

/// Connects to the named pipe `path`, waiting (up to `timeout`) while
/// every instance is busy.
pub(crate) async fn pipe_connect(
    path: &std::path::Path,
    timeout: Duration,
) -> io::Result<OwnedHandle> {
    let name: Vec<u16> = path.as_os_str().encode_wide().chain(Some(0)).collect();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: the name is NUL-terminated and alive for the call; no
        // attributes (not inheritable); a failure is INVALID_HANDLE_VALUE.
        let raw = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                std::ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                std::ptr::null_mut(),
            )
        };
        if raw != INVALID_HANDLE_VALUE {
            // SAFETY: a handle we just opened and own alone.
            return Ok(OwnedHandle::from_std(unsafe {
                StdHandle::from_raw_handle(raw)
            }));
        }
        let e = io::Error::last_os_error();
        let busy = e.raw_os_error().and_then(|c| u32::try_from(c).ok()) == Some(ERROR_PIPE_BUSY);
        if !busy || std::time::Instant::now() >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
