//! The messages on a child's control channel.
//!
//! The parent speaks first: a [`Hello`] frame, then a [`ParentMsg::Run`]
//! frame, written together. The child answers with one [`ChildMsg`]
//! carrying the request id of the `Run` it answers. See `docs/protocol.md`.

use std::ffi::OsString;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Bumped whenever a message's layout changes.
pub(crate) const PROTOCOL_VERSION: u32 = 5;

/// The `magic` field of every `Hello`: a child that reads anything else
/// was not started by this library.
pub(crate) const MAGIC: u32 = 0x746d_7031; // "tmp1"

/// The first frame on a control channel, parent to child.
///
/// It is a fixed, tiny layout that every protocol version must keep, so a
/// child can always read it and refuse cleanly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) magic: u32,
    pub(crate) version: u32,
    /// The build fingerprint of the parent's executable.
    pub(crate) fingerprint: u64,
    /// The nonce the parent also put in the child's environment (or sent
    /// to the fork server that forked the child).
    pub(crate) nonce: u64,
    /// The largest frame either side accepts on this channel.
    pub(crate) max_frame: u64,
}

/// Which kind of trampoline a [`TargetRef`] points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum TargetKind {
    /// `fn(&[u8]) -> Outcome`
    Sync,
    /// `fn(&[u8]) -> BoxFuture<'static, Outcome>`
    Async,
}

/// A target named by the distance of its trampoline from the crate's anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TargetRef {
    pub(crate) kind: TargetKind,
    pub(crate) offset: i64,
}

/// Which process group (and session) a new child starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Group {
    /// Its parent's.
    Inherit,
    /// A group of its own, led by itself (a supervised child: its whole
    /// group is signalled together).
    Own,
    /// A session of its own, and so a group (a detached child).
    Session,
}

/// Who the child is, as the parent decided at `Process::new`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) name: String,
    /// Python's `_identity`: the parent's, plus this child's counter.
    pub(crate) path: Vec<u32>,
    pub(crate) authkey: ByteBuf,
    pub(crate) daemon: bool,
    pub(crate) detached: bool,
    pub(crate) parent_pid: u32,
    /// Started by a `Supervisor`: readiness and heartbeats go to it.
    pub(crate) supervised: bool,
    /// The most verbose level the child forwards its `tracing` events at:
    /// 0 forwards nothing, 1 (ERROR) to 5 (TRACE).
    pub(crate) log_level: u8,
    /// The child's stdout and stderr go to pipes the parent reads: their
    /// write ends are the first two descriptors that come with the `Run`.
    pub(crate) capture_output: bool,
    /// Changes to the child's environment, one per variable: set to the
    /// value, or removed (`None`). Applied before the target runs.
    pub(crate) env: EnvChanges,
    /// The directory the child runs in (absolute), when not its parent's.
    pub(crate) current_dir: Option<OsString>,
}

/// Changes to a child's environment, one per variable: set to the value,
/// or removed (`None`).
pub(crate) type EnvChanges = Vec<(OsString, Option<OsString>)>;

/// Parent-to-child messages after the `Hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ParentMsg {
    /// Run `target` on `args` (encoded by the target's trampoline), then report.
    Run {
        id: u64,
        identity: Identity,
        target: TargetRef,
        args: ByteBuf,
        /// How many descriptors the arguments carry (they travel by
        /// `SCM_RIGHTS` with or before this frame's first byte).
        fds: u32,
    },
    /// Become a fork server: fork a new child for every `Fork` request.
    Serve,
    /// Fork a child that will read its orders from the control socket
    /// that travels with this frame (one descriptor, by `SCM_RIGHTS`).
    Fork { id: u64, nonce: u64, group: Group },
    /// Windows, right after a `Run` whose arguments carry handles: the
    /// values of those handles in the child's own table, where the parent
    /// put them once the child existed (Windows has no `SCM_RIGHTS`).
    Handles { values: Vec<u64> },
}

/// How a target ended in the child.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded return value.
    Returned(ByteBuf),
    /// The target panicked.
    Panicked(PanicInfo),
    /// The arguments did not decode.
    DecodeArgs(String),
    /// The return value did not encode.
    EncodeResult(String),
}

/// Child-to-parent messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum ChildMsg {
    /// The target of request `id` ended.
    Outcome { id: u64, outcome: Outcome },
    /// The child will not run anything: a protocol or build mismatch.
    Refused { reason: String },
    /// The fork server is ready.
    Serving,
    /// The fork server forked request `id` as process `pid`.
    Forked { id: u64, pid: u32 },
    /// The fork server could not fork request `id`.
    ForkFailed { id: u64, error: String },
    /// A supervised child is ready (`notify_ready`).
    Ready,
    /// A supervised child is alive (`heartbeat`).
    Heartbeat,
    /// `tracing` events of the child, in the order they happened: an
    /// encoded [`LogBatch`](super::log::LogBatch), decoded apart so that
    /// its strings can borrow from it.
    Log(ByteBuf),
}

/// Where a panic happened, as reported by the child that panicked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PanicInfo {
    /// The panic message (the payload, when it was a string).
    pub message: String,
    /// `file:line:column` of the panic, when the child could record it.
    pub location: Option<String>,
    /// The panicking thread's backtrace, when the child captured one
    /// (`RUST_BACKTRACE=1`, as `std` decides).
    #[serde(default)]
    pub backtrace: Option<String>,
}

impl fmt::Display for PanicInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(loc) => write!(f, "'{}' at {}", self.message, loc),
            None => write!(f, "'{}'", self.message),
        }
    }
}
