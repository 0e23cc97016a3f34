//! The child side of a pool worker, and the messages it exchanges with its
//! supervisor in the parent.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::connection::Connection;
use crate::target::{Resolved, resolve};
use crate::wire::message::{Outcome, TargetRef};

/// The messages between a worker and its slot in the parent, both ways
/// on one duplex pipe, so that a reply right after a request (and the
/// next request right after a reply) is written at once.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Msg {
    /// Parent to worker: run `target` on every argument of `args`, in
    /// order, and reply with one `Done`. A single task is a job of one.
    Job {
        id: u64,
        target: TargetRef,
        args: Batch,
    },
    /// Worker to parent: the initializer (if any) ran; jobs may come.
    Ready,
    /// Worker to parent: the initializer did not return; the worker exits.
    InitFailed(String),
    /// Worker to parent: job `id` ended, one outcome per argument.
    Done { id: u64, outcomes: Vec<Outcome> },
}

/// The encoded arguments of a job, back to back in one buffer: argument
/// `i` is `bytes[ends[i - 1]..ends[i]]`. One buffer rather than one per
/// argument, so a chunk of a `map` costs one allocation, and a job kept
/// for re-dispatch is shared, not copied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Batch {
    bytes: Bytes,
    ends: Vec<u64>,
}

impl Batch {
    /// How many arguments the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The encoded arguments, in order. A malformed batch (ends out of
    /// range or decreasing) yields empty slices, which fail to decode.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let end = usize::try_from(end).unwrap_or(usize::MAX);
            let arg = self.bytes.get(start..end).unwrap_or_default();
            start = end;
            arg
        })
    }
}

/// Builds a [`Batch`] by encoding arguments one after another.
#[derive(Debug, Default)]
pub(crate) struct BatchBuilder {
    buf: Vec<u8>,
    ends: Vec<u64>,
}

impl BatchBuilder {
    /// Appends one encoded argument.
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let before = self.buf.len();
        if let Err(e) = rmp_serde::encode::write(&mut self.buf, value) {
            self.buf.truncate(before);
            return Err(e.to_string());
        }
        self.ends.push(self.buf.len() as u64);
        Ok(())
    }

    /// How many arguments were pushed.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The finished batch; the builder starts over, empty.
    pub(crate) fn take(&mut self) -> Batch {
        Batch {
            bytes: Bytes::from(std::mem::take(&mut self.buf)),
            ends: std::mem::take(&mut self.ends),
        }
    }
}

/// What a worker is started with: its end of the pipe and the initializer.
pub(crate) type WorkerArgs = (Connection<Msg>, Option<(TargetRef, ByteBuf)>);

/// Runs one target on one argument.
async fn run(target: TargetRef, args: &[u8]) -> Outcome {
    // SAFETY: `serve` is crate-private, so it only runs as the target of a
    // pool worker, in a child this library started, whose handshake
    // checked that it runs the parent's executable image (the build
    // fingerprint); every `TargetRef` it receives was made by the parent's
    // `Target::__target_ref` (see `Pool::submit` and the builder).
    match unsafe { resolve(target) } {
        Resolved::Sync(entry) => entry(args),
        Resolved::Async(entry) => entry(args).await,
    }
}

/// Describes an outcome that is not a return value, for an initializer.
pub(crate) fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Returned(_) => "returned".to_owned(),
        Outcome::Panicked(info) => format!("panicked: {info}"),
        Outcome::DecodeArgs(e) => format!("its arguments did not decode: {e}"),
        Outcome::EncodeResult(e) => format!("its value did not encode: {e}"),
    }
}

/// The worker loop: runs jobs one at a time, in the order they come,
/// until the parent closes its end.
pub(crate) async fn serve((mut conn, init): WorkerArgs) {
    if let Some((target, args)) = init {
        let outcome = run(target, &args).await;
        if !matches!(outcome, Outcome::Returned(_)) {
            let _ = conn.send(&Msg::InitFailed(describe(&outcome))).await;
            let _ = conn.flush().await;
            return;
        }
    }
    if conn.send(&Msg::Ready).await.is_err() {
        return;
    }
    loop {
        // Replies are written before the next job runs: a synchronous
        // target blocks this thread, and a reply held back behind it
        // would be late, or lost if the target kills the process.
        if conn.flush().await.is_err() {
            return;
        }
        let job = match conn.try_recv() {
            Ok(Some(job)) => job,
            Ok(None) => match conn.recv().await {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let Msg::Job { id, target, args } = job else {
            continue;
        };
        let mut outcomes = Vec::with_capacity(args.len());
        for a in args.iter() {
            outcomes.push(run(target, a).await);
        }
        if conn.send(&Msg::Done { id, outcomes }).await.is_err() {
            return;
        }
    }
}
