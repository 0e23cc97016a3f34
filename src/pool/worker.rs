//! The child side of a pool worker, and the messages it exchanges with its
//! supervisor in the parent.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::connection::{Receiver, Sender};
use crate::target::{Resolved, resolve};
use crate::wire::message::{Outcome, TargetRef};

/// Parent to worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Run `target` on every argument of `args`, in order, and reply
    /// with one [`FromWorker::Done`]. A single task is a job of one.
    Job {
        id: u64,
        target: TargetRef,
        args: Vec<ByteBuf>,
    },
}

/// Worker to parent.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The initializer (if any) ran; jobs may come.
    Ready,
    /// The initializer did not return; the worker exits.
    InitFailed(String),
    /// Job `id` ended: one outcome per argument.
    Done { id: u64, outcomes: Vec<Outcome> },
}

/// What a worker is started with: its two pipe ends and the initializer.
pub(crate) type WorkerArgs = (
    Receiver<ToWorker>,
    Sender<FromWorker>,
    Option<(TargetRef, ByteBuf)>,
);

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
pub(crate) async fn serve((mut jobs, replies, init): WorkerArgs) {
    if let Some((target, args)) = init {
        let outcome = run(target, &args).await;
        if !matches!(outcome, Outcome::Returned(_)) {
            let _ = replies
                .send(&FromWorker::InitFailed(describe(&outcome)))
                .await;
            let _ = replies.flush().await;
            return;
        }
    }
    if replies.send(&FromWorker::Ready).await.is_err() {
        return;
    }
    loop {
        // Replies are written before the next job runs: a synchronous
        // target blocks this thread, and a reply held back behind it
        // would be late, or lost if the target kills the process.
        if replies.flush().await.is_err() {
            return;
        }
        let job = match jobs.try_recv() {
            Ok(Some(job)) => job,
            Ok(None) => match jobs.recv().await {
                Ok(job) => job,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let ToWorker::Job { id, target, args } = job;
        let mut outcomes = Vec::with_capacity(args.len());
        for a in &args {
            outcomes.push(run(target, a).await);
        }
        if replies
            .send(&FromWorker::Done { id, outcomes })
            .await
            .is_err()
        {
            return;
        }
    }
}
