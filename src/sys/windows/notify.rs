//! A supervised program's readiness channel on Windows, where `sd_notify`
//! (a Unix datagram socket) has no counterpart: a message-mode named pipe,
//! `\\.\pipe\tokio-multiprocessing-notify-PID-RANDOM`, which
//! `NOTIFY_SOCKET` names. A program opens it as a file and writes each
//! notification (sd_notify's `KEY=value` lines, `READY=1`, `WATCHDOG=1`)
//! as one write, which the pipe keeps as one message.
//!
//! Every instance carries the user-only security descriptor of the other
//! pipes and refuses remote clients; the next instance is made as each
//! client connects. The sender's pid comes from the system
//! (`GetNamedPipeClientProcessId`), never from the message, so the
//! supervisor checks who speaks as it does on Unix.

use std::io;
use std::os::windows::io::AsRawHandle;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::net::windows::named_pipe::{NamedPipeServer, PipeMode, ServerOptions};
use tokio::sync::{Mutex, mpsc};
use windows_sys::Win32::System::Pipes::GetNamedPipeClientProcessId;

use super::stream::UserOnly;

/// A message from a supervised program.
#[derive(Debug)]
pub(crate) struct Notification {
    /// The message, `KEY=value` lines.
    pub(crate) text: String,
    /// The sender's pid, from the system (not from the message).
    pub(crate) pid: Option<u32>,
}

/// The largest message kept whole; a longer one comes in pieces.
const MESSAGE_MAX: u32 = 4096;

/// How many messages may wait to be read before senders wait.
const BACKLOG: usize = 64;

/// A readiness pipe being served; the serving tasks end when it drops.
#[derive(Debug)]
pub(crate) struct NotifySocket {
    name: PathBuf,
    messages: Mutex<mpsc::Receiver<io::Result<Notification>>>,
    server: tokio::task::AbortHandle,
}

impl NotifySocket {
    /// Makes the pipe and serves it on the current runtime. `_path`, the
    /// socket path a Unix supervisor would bind, is not used: the pipe's
    /// name is random (see [`path`](Self::path)).
    pub(crate) fn bind(_path: &Path) -> io::Result<NotifySocket> {
        let name = super::stream::random_pipe_name("notify")?;
        let first = instance(&name, true)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let server = tokio::spawn(serve(name.clone(), first, tx)).abort_handle();
        Ok(NotifySocket {
            name: PathBuf::from(name),
            messages: Mutex::new(rx),
            server,
        })
    }

    /// The pipe's name, for `NOTIFY_SOCKET`.
    pub(crate) fn path(&self) -> &Path {
        &self.name
    }

    /// The next message from any client.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only when this returns it.
    pub(crate) async fn recv(&self) -> io::Result<Notification> {
        self.messages
            .lock()
            .await
            .recv()
            .await
            .unwrap_or_else(|| Err(io::Error::other("the readiness pipe is no longer served")))
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An instance of the pipe `name`, inbound, in message mode, user-only,
/// refusing remote clients; `first` for the one that creates the name.
fn instance(name: &str, first: bool) -> io::Result<NamedPipeServer> {
    let security = UserOnly::new()?;
    let mut attributes = security.attributes();
    let mut options = ServerOptions::new();
    options
        .pipe_mode(PipeMode::Message)
        .access_outbound(false)
        .reject_remote_clients(true)
        .first_pipe_instance(first)
        .in_buffer_size(MESSAGE_MAX);
    // SAFETY: `attributes` is a valid SECURITY_ATTRIBUTES whose descriptor
    // (owned by `security`) outlives the call.
    unsafe { options.create_with_security_attributes_raw(name, (&raw mut attributes).cast()) }
}

/// Accepts clients one after another, each read by a task of its own;
/// ends when the socket is dropped (aborted) or an instance cannot be made.
async fn serve(name: String, first: NamedPipeServer, tx: mpsc::Sender<io::Result<Notification>>) {
    let mut waiting = first;
    loop {
        if let Err(e) = waiting.connect().await {
            let _ = tx.send(Err(e)).await;
            return;
        }
        let next = match instance(&name, false) {
            Ok(next) => next,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let client = std::mem::replace(&mut waiting, next);
        tokio::spawn(read_messages(client, tx.clone()));
    }
}

/// Forwards each message a client writes, with its pid, until it closes
/// its end or nobody reads any more.
async fn read_messages(mut client: NamedPipeServer, tx: mpsc::Sender<io::Result<Notification>>) {
    let pid = client_pid(&client);
    let mut buf = vec![0u8; MESSAGE_MAX as usize];
    loop {
        let n = match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if tx.send(Ok(Notification { text, pid })).await.is_err() {
            return;
        }
    }
}

/// The pid of the process at the other end of `client`, from the system.
fn client_pid(client: &NamedPipeServer) -> Option<u32> {
    let mut pid = 0u32;
    // SAFETY: the handle is open while `client` lives; `pid` is a valid
    // place for the answer.
    let ok = unsafe { GetNamedPipeClientProcessId(client.as_raw_handle(), &mut pid) };
    (ok != 0).then_some(pid)
}

/// The leader of the group (the Job Object of a child in a group of its
/// own) that process `pid` belongs to, if any.
pub(crate) fn process_group_of(pid: u32) -> Option<u32> {
    super::job::leader_of(pid)
}
