//! Child processes you can await: [`Process`] and its builder.
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn greet(name: String) -> String {
//!     format!("hello {name} from {}", std::process::id())
//! }
//!
//! #[tokio::main]
//! async fn main() -> mp::Result<()> {
//!     let _guard = mp::init(); // first thing: in a child this never returns
//!     let p = mp::Process::new(greet, "bob".to_owned());
//!     p.start().await?;
//!     println!("{}", p.join().await?);
//!     Ok(())
//! }
//! ```
//!
//! # Caveats
//!
//! Dropping a [`Process`] neither kills nor detaches the child: it runs on,
//! a task on the runtime that started it reaps it when it ends, and the
//! [`InitGuard`](crate::InitGuard) joins it (or terminates it, if it is
//! daemonic) when the program leaves `main`, as Python does at exit. No
//! zombie is left behind either way. A child whose parent dies, even by
//! `SIGKILL`, exits at once, unless it was started
//! [`detached`](ProcessBuilder::detached).

mod builder;
mod error;
mod info;
mod set;

pub(crate) use builder::Environment;
pub use builder::ProcessBuilder;
pub use error::ProcessError;
pub(crate) use error::signal_name;
pub use info::{ProcessInfo, active_children, cpu_count, current_process, parent_pid};
pub use set::ProcessSet;

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::runtime::capture::OutputHook;
use crate::runtime::forkserver::{StartMethod, get_start_method};
use crate::runtime::identity::{current, init_called};
use crate::runtime::logs;
use crate::runtime::registry::StartPermit;
use crate::runtime::spawn::{self, Started};
use crate::runtime::watch::{self, ChildState, Note, Report};
use crate::sentinel::Sentinel;
use crate::sys::{self, Signal};
use crate::target::{Target, decode_value, fingerprint};
use crate::wire::ChannelError;
use crate::wire::frame::encode_message;
use crate::wire::message::{
    Group, Hello, Identity, MAGIC, Outcome, PROTOCOL_VERSION, ParentMsg, TargetRef,
};

/// What a process will run, kept until `start` sends it.
pub(crate) struct Spec {
    pub(super) target: TargetRef,
    pub(super) args: std::result::Result<Vec<u8>, String>,
    /// Descriptors of the handles in the arguments, sent with the orders.
    pub(super) fds: Vec<sys::OwnedHandle>,
}

/// A child process running a target function, whose `join` returns the
/// target's value.
///
/// Python's `multiprocessing.Process`. The child is a re-executed copy of
/// this program (see [`init`](crate::init)) that receives the target and
/// its arguments over a private socket and sends back what the target
/// returned.
pub struct Process<R> {
    pub(super) state: Arc<ChildState>,
    pub(super) spec: Mutex<Option<Spec>>,
    pub(super) authkey: Vec<u8>,
    pub(super) identity: Identity,
    pub(super) max_frame: usize,
    pub(super) start_method: Option<StartMethod>,
    /// Whether the child forwards its `tracing` events here.
    pub(super) forward_tracing: bool,
    /// What the child's environment and directory differ by.
    pub(super) env: Environment,
    pub(super) _result: PhantomData<fn() -> R>,
}

impl Process<()> {
    /// A builder, to set the name, daemon and detached flags.
    pub fn builder() -> ProcessBuilder {
        ProcessBuilder::default()
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// A process that will run `target(args)`, not yet started.
    ///
    /// Its name is `Process-N`. The arguments are encoded now (MessagePack);
    /// if they fail to encode, [`start`](Self::start) reports it and
    /// spawns nothing, and if they encode to more than the frame limit
    /// (128 MiB, see [`ProcessBuilder::max_frame`]), `start` fails with
    /// [`ProcessError::Oversized`].
    ///
    /// Bytes: a `Vec<u8>` (or `&[u8]`) encodes as an array of integers,
    /// one or two bytes each (values from 128 take two), so its size
    /// depends on its contents and it encodes slowly. Wrap it in
    /// [`serde_bytes::ByteBuf`](https://docs.rs/serde_bytes) (or mark the
    /// field `#[serde(with = "serde_bytes")]`) to send it as one block of
    /// its own length, copied at memory speed.
    ///
    /// Large arguments: encoding takes time (100 MiB of integers, half a
    /// second in release). Past 256 KiB of encoded output, on a worker thread
    /// of a multi-thread Tokio runtime, the encoding moves out of the way
    /// of the runtime: the worker hands its other tasks to another thread
    /// (`tokio::task::block_in_place`) until it is done, and `start` copies
    /// them into the frame on the blocking pool. On a `current_thread`
    /// runtime nothing else runs meanwhile: build a process with large
    /// arguments in `spawn_blocking` there, or send the data through a
    /// [`Pipe`](crate::Pipe) or shared memory.
    pub fn new<A, M, F>(target: F, args: A) -> Process<R>
    where
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
    {
        ProcessBuilder::default().build(target, args)
    }

    /// Starts the child process.
    ///
    /// Returns once the child is running and its orders (the target and
    /// the arguments) are written to its socket.
    ///
    /// # Errors
    ///
    /// [`ProcessError::AlreadyStarted`] on a second call,
    /// [`ProcessError::EncodeArgs`] when the arguments failed to encode,
    /// [`ProcessError::Oversized`] when they exceed the frame limit,
    /// [`ProcessError::DaemonicParent`] in a daemonic process,
    /// [`ProcessError::InitNotCalled`] when [`init`](crate::init) was never
    /// called, [`ProcessError::NoRuntime`] outside a Tokio runtime,
    /// [`ProcessError::Exiting`] once the exit rule has begun, and
    /// [`ProcessError::Spawn`] when the OS refuses.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe. Dropped after the child was spawned but before its
    /// orders were written (large arguments fill the socket), the child
    /// finds its orders truncated and exits with code 2 without running
    /// anything; the process counts as started.
    pub async fn start(&self) -> std::result::Result<(), ProcessError> {
        let spec = self
            .spec
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(ProcessError::AlreadyStarted)?;
        if current().daemon {
            return Err(ProcessError::DaemonicParent);
        }
        if !init_called() {
            return Err(ProcessError::InitNotCalled);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ProcessError::NoRuntime);
        }
        // The exit rule joins every child that is not detached, so none may
        // start once it has begun (a pool replacing a worker at exit, say).
        let _permit = if self.identity.detached {
            None
        } else {
            Some(StartPermit::take().ok_or(ProcessError::Exiting)?)
        };
        let args = spec.args.map_err(ProcessError::EncodeArgs)?;
        // Checked before anything is copied or spawned; the frame around
        // them is checked below.
        if args.len() > self.max_frame {
            return Err(ProcessError::Oversized {
                len: args.len(),
                max: self.max_frame,
            });
        }
        let large = args.len() > builder::LARGE_ARGS;
        let (env, current_dir) = self.env.checked()?;
        let mut identity = self.identity.clone();
        // The child forwards what this process's subscribers want now.
        identity.log_level = if self.forward_tracing {
            logs::parent_level()
        } else {
            0
        };
        // A re-executed child starts with its environment changed already
        // (see `runtime::bootstrap`).
        let exec_env = env.clone();
        identity.env = env;
        identity.current_dir = current_dir;
        // A captured child's stdout and stderr are pipes whose writing ends
        // are the first two descriptors that come with its orders, or,
        // where every child is created for its start, its standard output
        // and error from its creation.
        let mut fds = spec.fds;
        let mut stdio = None;
        let output = if identity.capture_output {
            let (out_r, out_w) = sys::pipe().map_err(ProcessError::Spawn)?;
            let (err_r, err_w) = sys::pipe().map_err(ProcessError::Spawn)?;
            if sys::OUTPUT_AT_SPAWN {
                stdio = Some((out_w, err_w));
            } else {
                fds.splice(0..0, [out_w, err_w]);
            }
            Some((out_r, err_r))
        } else {
            None
        };
        let run = ParentMsg::Run {
            id: watch::RUN_ID,
            identity,
            target: spec.target,
            args: args.into(),
            fds: u32::try_from(fds.len()).map_err(|_| {
                ProcessError::EncodeArgs(
                    "the arguments carry more handles than a frame can count".into(),
                )
            })?,
        };
        // Encode the orders before spawning: a failure here spawns nothing.
        // Large arguments are copied into the frame on the blocking pool.
        // The `Hello` goes in front once the child is known (a spare
        // forked ahead has its own nonce): room is left for it.
        let max_frame = self.max_frame;
        let orders = move || {
            let mut first = BytesMut::new();
            first.resize(HELLO_ROOM, 0);
            encode_message(&run, &mut first, max_frame).map_err(orders_error)?;
            Ok::<_, ProcessError>(first)
        };
        let mut first = if large {
            tokio::task::spawn_blocking(orders)
                .await
                .map_err(|e| ProcessError::Spawn(std::io::Error::other(e)))??
        } else {
            orders()?
        };

        let method = self.start_method.unwrap_or_else(get_start_method);
        let Started {
            child,
            ours,
            nonce,
            forked,
        } = spawn::start(method, self.group(), &exec_env, stdio)
            .await
            .map_err(ProcessError::Spawn)?;
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            fingerprint: fingerprint(),
            nonce,
            max_frame: self.max_frame as u64,
        };
        let mut greeting = BytesMut::with_capacity(HELLO_ROOM);
        encode_message(&hello, &mut greeting, self.max_frame).map_err(orders_error)?;
        put_in_front(&mut first, &greeting);
        // Windows has no `SCM_RIGHTS`: the handles of the arguments go
        // into the child's own table now that it exists (so that they
        // close with it if it dies before it takes them), named by a frame
        // after the orders.
        #[cfg(windows)]
        let fds = {
            if !fds.is_empty() {
                let values: std::io::Result<Vec<u64>> =
                    fds.iter().map(|fd| child.give_handle(fd)).collect();
                let values = match values {
                    Ok(values) => values,
                    Err(e) => {
                        let _ = child.signal(sys::Signal::Kill);
                        return Err(ProcessError::Spawn(e));
                    }
                };
                encode_message(&ParentMsg::Handles { values }, &mut first, self.max_frame)
                    .map_err(orders_error)?;
            }
            Vec::new()
        };
        // `start_method` says what happened: a fork server that declined
        // leaves the child re-executed.
        tracing::debug!(
            process = %self.identity.name,
            pid = child.pid(),
            start_method = if forked { "forkserver" } else { "spawn" },
            "child started"
        );
        watch::start_watcher(
            self.state.clone(),
            child,
            ours,
            (first, fds),
            output,
            self.max_frame,
        )
        .await
        .map_err(ProcessError::Spawn)?;
        Ok(())
    }

    /// Waits for the process to end and returns its target's value.
    ///
    /// With [`capture_output`](ProcessBuilder::capture_output), it also
    /// waits until both captured streams have ended (at most 2 s after the
    /// child exited), so that every line has been emitted when it returns.
    ///
    /// # Errors
    ///
    /// [`ProcessError::Panicked`] with the panic message if the target
    /// panicked; [`ProcessError::Signaled`] or [`ProcessError::Exited`] if
    /// the child died before reporting; [`ProcessError::NotStarted`] before
    /// [`start`](Self::start); [`ProcessError::AlreadyJoined`] if an earlier
    /// `join` already took the value.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the value stays with the process until a `join`
    /// completes, so a `join` dropped in a `select!` loses nothing.
    pub async fn join(&self) -> std::result::Result<R, ProcessError> {
        if !self.state.started() {
            return Err(ProcessError::NotStarted);
        }
        self.state.wait_done().await;
        let status = self.state.try_reap();
        match self.state.take_report() {
            Report::Taken => Err(ProcessError::AlreadyJoined),
            Report::Outcome(Outcome::Returned(bytes)) => {
                decode_value(&bytes).map_err(ProcessError::DecodeResult)
            }
            Report::Outcome(Outcome::Panicked(info)) => Err(ProcessError::Panicked(info)),
            Report::Outcome(Outcome::DecodeArgs(e)) => Err(ProcessError::DecodeArgs(e)),
            Report::Outcome(Outcome::EncodeResult(e)) => Err(ProcessError::EncodeResult(e)),
            Report::Refused(reason) => Err(ProcessError::Handshake(reason)),
            // A child that died abnormally is reported by how it died, even
            // if it left a broken frame behind; a bad frame from a child
            // that exited cleanly is reported as such.
            Report::Broken(e) => match status.map(sys::python_exitcode) {
                Some(code) if code != 0 => Err(died(code)),
                _ => Err(ProcessError::Channel(e)),
            },
            Report::Pending => Err(died(status.map_or(-1, sys::python_exitcode))),
        }
    }

    /// Like [`join`](Self::join), but gives up after `timeout`: `None`
    /// means the process is still running (and is left running).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as `join`.
    pub async fn join_timeout(
        &self,
        timeout: Duration,
    ) -> Option<std::result::Result<R, ProcessError>> {
        tokio::time::timeout(timeout, self.join()).await.ok()
    }
}

/// The error for a child that ended, with Python exit code `code`, before
/// it reported.
fn died(code: i32) -> ProcessError {
    if code < 0 {
        ProcessError::Signaled { signal: -code }
    } else {
        ProcessError::Exited { code }
    }
}

/// The error for orders that could not be encoded into a frame.
fn orders_error(e: ChannelError) -> ProcessError {
    match e {
        ChannelError::Oversized { len, max } => ProcessError::Oversized { len, max },
        ChannelError::Encode(e) => ProcessError::EncodeArgs(e),
        other => ProcessError::Channel(other),
    }
}

impl<R> Process<R> {
    /// The process id, once started.
    pub fn pid(&self) -> Option<u32> {
        self.state.pid()
    }

    /// The process's name.
    pub fn name(&self) -> &str {
        &self.identity.name
    }

    /// Whether the process is daemonic.
    pub fn daemon(&self) -> bool {
        self.identity.daemon
    }

    /// Whether the process was started detached.
    pub fn detached(&self) -> bool {
        self.identity.detached
    }

    /// The authentication key the child inherits.
    pub fn authkey(&self) -> &[u8] {
        &self.authkey
    }

    /// Whether the process has started and not yet ended. Reaps the child
    /// if it has ended.
    pub fn is_alive(&self) -> bool {
        self.state.started() && self.state.try_reap().is_none()
    }

    /// The exit code once the process has ended: the code it exited with,
    /// or `-N` if signal N killed it (Python's convention). Reaps the child
    /// if it has ended.
    pub fn exitcode(&self) -> Option<i32> {
        self.state.try_reap().map(sys::python_exitcode)
    }

    /// The process group (or session) the child starts in.
    fn group(&self) -> Group {
        if self.identity.detached {
            Group::Session
        } else if self.identity.supervised {
            Group::Own
        } else {
            Group::Inherit
        }
    }

    /// What a supervised child notifies from now on (readiness,
    /// heartbeats).
    pub(crate) fn notes(&self) -> tokio::sync::mpsc::UnboundedReceiver<Note> {
        self.state.subscribe_notes()
    }

    /// What is done with the child's captured lines besides their
    /// `tracing` events (a supervisor's `Event::Log`s); set before
    /// [`start`](Process::start).
    pub(crate) fn on_output(&self, hook: OutputHook) {
        self.state.set_output_hook(hook);
    }

    /// A future that resolves when the process has ended.
    pub fn sentinel(&self) -> Sentinel {
        Sentinel::new(self.state.exit.clone())
    }

    /// Sends `SIGTERM`. A no-op once the process has ended.
    ///
    /// # Errors
    ///
    /// [`ProcessError::NotStarted`] before [`start`](Process::start).
    pub fn terminate(&self) -> std::result::Result<(), ProcessError> {
        self.send(Signal::Terminate)
    }

    /// Sends `SIGKILL`. A no-op once the process has ended.
    ///
    /// # Errors
    ///
    /// [`ProcessError::NotStarted`] before [`start`](Process::start).
    pub fn kill(&self) -> std::result::Result<(), ProcessError> {
        self.send(Signal::Kill)
    }

    /// Blocks the thread until the process has ended, for at most
    /// `timeout`; says whether it has (it is then reaped).
    pub(crate) fn wait_blocking(&self, timeout: Duration) -> bool {
        self.state.started() && self.state.wait_exited_blocking(timeout)
    }

    /// Builds a process from arguments encoded already (a supervised
    /// child, started again and again from one spec).
    pub(crate) fn from_encoded(
        builder: ProcessBuilder,
        target: TargetRef,
        args: std::result::Result<Vec<u8>, String>,
        fds: Vec<sys::OwnedHandle>,
    ) -> Process<R> {
        builder.build_encoded(target, args, fds)
    }

    /// Kills the process and reaps it, blocking the thread for at most
    /// `timeout` while it dies (the exit rule reaps it if it takes longer).
    pub(crate) fn kill_and_reap_blocking(&self, timeout: Duration) {
        if self.state.started() {
            self.state.kill_and_reap_blocking(timeout);
        }
    }

    fn send(&self, sig: Signal) -> std::result::Result<(), ProcessError> {
        if !self.state.started() {
            return Err(ProcessError::NotStarted);
        }
        self.state.signal(sig).map_err(ProcessError::Signal)
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.identity.name)
            .field("pid", &self.pid())
            .field("daemon", &self.identity.daemon)
            .field(
                "exitcode",
                &self.state.exit.get().map(|s| sys::python_exitcode(*s)),
            )
            .finish()
    }
}

/// Python's repr: `<Process(Process-1, started)>`, `<Process(Process-1,
/// stopped[SIGTERM])>`, `<Process(Process-1, stopped[exitcode=3])>`, with
/// ` daemon` after the status of a daemonic process.
impl<R> fmt::Display for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if !self.state.started() {
            "initial".to_owned()
        } else {
            match self.exitcode() {
                None => "started".to_owned(),
                Some(0) => "stopped".to_owned(),
                Some(code) if code < 0 => format!("stopped[{}]", signal_name(-code)),
                Some(code) => format!("stopped[exitcode={code}]"),
            }
        };
        let daemon = if self.identity.daemon { " daemon" } else { "" };
        write!(f, "<Process({}, {status}{daemon})>", self.identity.name)
    }
}

/// The room left in front of a child's orders for its `Hello` frame: at
/// most 4 bytes of length and 42 of body (an array of two `u32` and three
/// `u64`, each at its longest).
const HELLO_ROOM: usize = 64;

/// Puts `greeting` (the `Hello` frame) in the room left in front of the
/// orders in `first`, and drops the room it did not use.
fn put_in_front(first: &mut BytesMut, greeting: &[u8]) {
    match HELLO_ROOM.checked_sub(greeting.len()) {
        Some(at) => {
            first[at..HELLO_ROOM].copy_from_slice(greeting);
            bytes::Buf::advance(first, at);
        }
        // Cannot happen (see `HELLO_ROOM`); copied rather than lost.
        None => {
            let mut both = BytesMut::with_capacity(greeting.len() + first.len() - HELLO_ROOM);
            both.extend_from_slice(greeting);
            both.extend_from_slice(&first[HELLO_ROOM..]);
            *first = both;
        }
    }
}

#[cfg(test)]
mod hello_room_tests {
    use super::*;

    #[test]
    fn the_longest_hello_fits_its_room() {
        let hello = Hello {
            magic: u32::MAX,
            version: u32::MAX,
            fingerprint: u64::MAX,
            nonce: u64::MAX,
            max_frame: u64::MAX,
        };
        let mut greeting = BytesMut::new();
        encode_message(&hello, &mut greeting, usize::MAX).unwrap();
        assert!(greeting.len() <= HELLO_ROOM, "{}", greeting.len());
        let mut first = BytesMut::from(&[0u8; HELLO_ROOM][..]);
        first.extend_from_slice(b"orders");
        put_in_front(&mut first, &greeting);
        assert_eq!(&first[..greeting.len()], &greeting[..]);
        assert_eq!(&first[greeting.len()..], b"orders");
        // A room too small is not silently corrupted.
        let mut first = BytesMut::from(&[0u8; HELLO_ROOM][..]);
        first.extend_from_slice(b"x");
        put_in_front(&mut first, &[7u8; HELLO_ROOM + 3]);
        assert_eq!(first.len(), HELLO_ROOM + 4);
        assert_eq!(first[HELLO_ROOM + 3], b'x');
    }
}
