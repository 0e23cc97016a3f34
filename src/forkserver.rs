//! The fork server: fast starts without fork-safety hazards.
//!
//! Re-executing the program for every child costs an `execve`, dynamic
//! linking and the runtime's start-up: about a millisecond. Forking the
//! program itself would be far cheaper but is unsafe, because it is
//! multi-threaded (Tokio) and a fork copies locks held by threads that do
//! not exist in the copy. The fork server gets the speed without the
//! hazard: it is one re-executed copy of the program, started on first use,
//! that never starts a thread and does nothing but fork on request. Each
//! fork uses `CLONE_PARENT`, so the new process is a child of the program
//! (not of the server) and is waited for, reaped and signalled exactly like
//! a child started by re-executing.
//!
//! The server is used only where it is sound: it refuses to serve if it
//! finds itself with more than one thread (when `init()` was called inside
//! a runtime, for instance) or on a C library that needs its own fork
//! handlers; the program then re-executes itself for every child instead.
//! Python calls the same idea `forkserver`.

use std::io::{IoSlice, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::OnceCell;

use crate::error::ChannelError;
use crate::sys;
use crate::wire::blocking::FdFrames;
use crate::wire::frame::{BlockingFramed, DEFAULT_MAX_FRAME, decode_message, encode_message};
use crate::wire::message::{ChildMsg, Hello, MAGIC, PROTOCOL_VERSION, ParentMsg};

/// How a new process is started.
///
/// Set it for the whole program with [`set_start_method`] or for one
/// process with [`ProcessBuilder::start_method`](crate::ProcessBuilder::start_method).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Fork the child from a fork server (the default). Falls back to
    /// [`Spawn`](StartMethod::Spawn) where the fork server cannot run.
    #[default]
    ForkServer,
    /// Re-execute the program for every child.
    Spawn,
}

static DEFAULT_METHOD: Mutex<StartMethod> = Mutex::new(StartMethod::ForkServer);

/// Sets how processes are started from now on (Python's
/// `multiprocessing.set_start_method`).
pub fn set_start_method(method: StartMethod) {
    *DEFAULT_METHOD
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = method;
}

/// The start method used when a builder does not set one.
pub fn get_start_method() -> StartMethod {
    *DEFAULT_METHOD
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// How long the parent waits for the server to answer one request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code of a fork server that refused to serve.
const REFUSED_EXIT: i32 = 2;

// ----------------------------------------------------------------- parent

enum State {
    Running(Server),
    Unavailable,
}

struct Server {
    child: sys::Child,
    ch: BlockingFramed<UnixStream>,
    next_id: u64,
}

static SERVER: OnceCell<Mutex<State>> = OnceCell::const_new();

/// Forks a child whose control socket is `control` through the fork server,
/// starting the server on first use. `Ok(None)` means the fork server is
/// not available here and the caller should re-execute instead.
///
/// The request is one short blocking round trip on the calling thread
/// (the fork itself, tens of microseconds), like the `posix_spawn` it
/// replaces.
pub(crate) async fn fork(control: &OwnedFd, nonce: u64, detached: bool) -> Option<u32> {
    let state = SERVER
        .get_or_init(|| async {
            let started = tokio::task::spawn_blocking(start_server).await;
            Mutex::new(started.unwrap_or(State::Unavailable))
        })
        .await;
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let State::Running(server) = &mut *state else {
        return None;
    };
    match server.fork(control, nonce, detached) {
        Ok(pid) => Some(pid),
        Err(e) => {
            tracing::warn!(error = %e, "the fork server failed; re-executing from now on");
            if let State::Running(server) = std::mem::replace(&mut *state, State::Unavailable) {
                server.stop();
            }
            None
        }
    }
}

fn start_server() -> State {
    match try_start_server() {
        Ok(state) => state,
        Err(e) => {
            tracing::debug!(error = %e, "no fork server; children are re-executed");
            State::Unavailable
        }
    }
}

fn try_start_server() -> std::io::Result<State> {
    if !sys::libc_allows_raw_fork() {
        return Ok(State::Unavailable);
    }
    let (ours, theirs) = sys::socketpair()?;
    let nonce = crate::process::nonce()?;
    let env = sys::child_env(
        crate::bootstrap::CHILD_ENV,
        (
            crate::bootstrap::CHILD_ENV,
            &format!("{}:{nonce:016x}", sys::CHILD_FD),
        ),
    );
    let child = sys::Child::spawn(theirs.as_fd(), &sys::own_argv(), &env, false)?;
    drop(theirs);
    let stream = UnixStream::from(ours);
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    let mut ch = BlockingFramed::new(stream, DEFAULT_MAX_FRAME);
    let hello = Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        fingerprint: crate::target::fingerprint(),
        nonce,
        max_frame: DEFAULT_MAX_FRAME as u64,
    };
    let answer = ch
        .send(&hello)
        .and_then(|()| ch.send(&ParentMsg::Serve))
        .and_then(|()| ch.recv::<ChildMsg>());
    let server = Server {
        child,
        ch,
        next_id: 1,
    };
    match answer {
        Ok(ChildMsg::Serving) => {
            tracing::debug!(pid = server.child.pid(), "fork server started");
            Ok(State::Running(server))
        }
        other => {
            tracing::debug!(answer = ?other, "the fork server declined");
            server.stop();
            Ok(State::Unavailable)
        }
    }
}

impl Server {
    fn fork(&mut self, control: &OwnedFd, nonce: u64, detached: bool) -> Result<u32, ChannelError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = BytesMut::new();
        encode_message(
            &ParentMsg::Fork {
                id,
                nonce,
                detached,
            },
            &mut frame,
            DEFAULT_MAX_FRAME,
        )?;
        let sock = self.ch.get_ref();
        let sent =
            sys::scm::send_with_fds(sock.as_fd(), &[IoSlice::new(&frame)], &[control.as_fd()])?;
        (&*sock).write_all(&frame[sent..])?;
        match self.ch.recv::<ChildMsg>()? {
            ChildMsg::Forked { id: got, pid } if got == id => Ok(pid),
            ChildMsg::ForkFailed { error, .. } => {
                Err(ChannelError::Io(std::io::Error::other(error)))
            }
            other => Err(ChannelError::Malformed(format!(
                "unexpected answer from the fork server: {other:?}"
            ))),
        }
    }

    /// Closes the channel (the server exits when it sees that) and reaps it.
    fn stop(self) {
        let Server { child, ch, .. } = self;
        drop(ch);
        child.wait_exited_blocking(None);
        let _ = child.try_reap();
    }
}

/// The pid of the running fork server, if there is one (for tests).
#[doc(hidden)]
pub fn __fork_server_pid() -> Option<u32> {
    let state = SERVER.get()?.lock().unwrap_or_else(PoisonError::into_inner);
    match &*state {
        State::Running(server) => Some(server.child.pid()),
        State::Unavailable => None,
    }
}

/// Stops the fork server, if one runs; part of the exit rule.
pub(crate) fn shutdown() {
    if let Some(state) = SERVER.get() {
        let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Running(server) = std::mem::replace(&mut *state, State::Unavailable) {
            server.stop();
        }
    }
}

// ----------------------------------------------------------------- server

/// Serves fork requests until the parent closes the channel. Runs in the
/// re-executed server process; returns its exit code.
pub(crate) fn serve(mut ch: BlockingFramed<UnixStream>, max_frame: usize) -> i32 {
    let threads = sys::thread_count();
    if threads != 1 || !sys::libc_allows_raw_fork() {
        let reason = format!(
            "cannot serve forks: {threads} threads (init() must run before any thread starts)"
        );
        let _ = ch.send(&ChildMsg::Refused { reason });
        return REFUSED_EXIT;
    }
    if ch.send(&ChildMsg::Serving).is_err() {
        return 1;
    }
    // Ctrl-C reaches the whole process group; the server is the parent's
    // machinery, stopped by the parent (or its death), not by the key.
    sys::set_interrupt_ignored(true);
    let sock = ch.into_inner();
    if sock.set_read_timeout(None).is_err() {
        return 1;
    }
    let mut reader = FdFrames::new(max_frame);
    loop {
        let body = match reader.next(&sock) {
            Ok(body) => body,
            Err(ChannelError::Closed) => return 0,
            Err(e) => {
                eprintln!("tokio-multiprocessing: fork server: {e}");
                return 1;
            }
        };
        let (id, nonce, detached) = match decode_message::<ParentMsg>(&body) {
            Ok(ParentMsg::Fork {
                id,
                nonce,
                detached,
            }) => (id, nonce, detached),
            Ok(_) | Err(_) => {
                eprintln!("tokio-multiprocessing: fork server: unexpected message");
                return 1;
            }
        };
        let Some(control) = reader.take_fd() else {
            let error = "the request carried no control socket".to_owned();
            if reply(&sock, &ChildMsg::ForkFailed { id, error }).is_err() {
                return 1;
            }
            continue;
        };
        // SAFETY: this process has one thread (checked above; this loop
        // starts none) and its C library does not need its fork handlers
        // (`libc_allows_raw_fork`, checked above).
        match unsafe { sys::fork_sibling() } {
            Ok(None) => {
                // The new process: leave the server's channel, become the child.
                drop(reader);
                drop(sock);
                sys::set_interrupt_ignored(false);
                if detached {
                    let _ = nix::unistd::setsid();
                }
                std::process::exit(crate::bootstrap::child_main(control, nonce, None));
            }
            Ok(Some(pid)) => {
                drop(control);
                if reply(&sock, &ChildMsg::Forked { id, pid }).is_err() {
                    return 1;
                }
            }
            Err(e) => {
                if reply(
                    &sock,
                    &ChildMsg::ForkFailed {
                        id,
                        error: e.to_string(),
                    },
                )
                .is_err()
                {
                    return 1;
                }
            }
        }
    }
}

fn reply(mut sock: &UnixStream, msg: &ChildMsg) -> Result<(), ChannelError> {
    let mut frame = BytesMut::new();
    encode_message(msg, &mut frame, DEFAULT_MAX_FRAME)?;
    sock.write_all(&frame)?;
    Ok(())
}
