//! Waiting for processes to end: [`Sentinel`] and [`wait`].
//!
//! A [`Sentinel`] is Python's `Process.sentinel` as a future: it resolves
//! to the child's [`ExitStatus`] once the child has ended, and it can sit in
//! `tokio::select!` next to anything else. [`wait`] is
//! `multiprocessing.connection.wait`: it waits for any of many objects at
//! once and tells which are ready.
//!
//! ```no_run
//! use std::time::Duration;
//! use tokio_multiprocessing as mp;
//!
//! fn nap(ms: u64) {
//!     std::thread::sleep(Duration::from_millis(ms));
//! }
//!
//! # async fn demo() -> mp::Result<()> {
//! let a = mp::Process::new(nap, 50);
//! let b = mp::Process::new(nap, 500);
//! a.start().await?;
//! b.start().await?;
//! let ready = mp::wait(&[a.sentinel(), b.sentinel()], Some(Duration::from_secs(5))).await;
//! assert_eq!(ready, vec![0]);
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! On Linux each started child has a pidfd, which becomes readable when the
//! child exits; a task on the runtime that started the child waits for it,
//! reaps the child and publishes the status to every sentinel. Without
//! pidfds (old kernels, or `TOKIO_MULTIPROCESSING_NO_PIDFD=1` in the
//! environment) the same task re-checks on every `SIGCHLD`.
//!
//! # Caveats
//!
//! The task that reaps a child lives on the runtime that started it. If that
//! runtime shuts down while the child runs, sentinels taken from it stay
//! pending until something reaps the child: a `join` (which starts a new
//! watcher on its own runtime), `is_alive`, `exitcode`, or the program's
//! [`InitGuard`](crate::InitGuard) at exit.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::process::ExitStatus;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::runtime::latch::Latch;

/// A future that resolves when a process has ended, to its exit status.
///
/// Taken from [`Process::sentinel`](crate::Process::sentinel). It is
/// `Clone` (each clone waits on its own), `Unpin`, and usable in
/// `tokio::select!`. Taken before the process starts, it stays pending until
/// the process has started and ended.
///
/// Like Tokio's own futures it takes part in the task's cooperative budget
/// ([`tokio::task::coop`]): a ready sentinel polled by a task that has
/// spent its budget returns `Pending` once and wakes at once, so that a
/// loop awaiting it again and again yields to the runtime.
///
/// # Cancel safety
///
/// Cancel safe: a sentinel only observes. Once ready it stays ready, so it
/// may be polled again, or cloned and awaited, after it has completed.
#[must_use = "futures do nothing unless polled"]
pub struct Sentinel {
    exit: Arc<Latch<ExitStatus>>,
    key: Option<u64>,
}

impl Sentinel {
    pub(crate) fn new(exit: Arc<Latch<ExitStatus>>) -> Self {
        Sentinel { exit, key: None }
    }

    /// Whether the process has ended, without waiting.
    pub fn is_ready(&self) -> bool {
        self.exit.get().is_some()
    }

    /// The exit status, if the process has ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.get().copied()
    }
}

impl Clone for Sentinel {
    fn clone(&self) -> Self {
        Sentinel::new(self.exit.clone())
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        self.exit.forget(&mut self.key);
    }
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("exit", &self.exit.get())
            .finish()
    }
}

impl Future for Sentinel {
    type Output = ExitStatus;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ExitStatus> {
        let this = self.get_mut();
        // A ready sentinel spends a unit of the task's budget, as Tokio's
        // own futures do, so that a loop over it yields to the runtime.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        let status = std::task::ready!(this.exit.poll_get(&mut this.key, cx));
        coop.made_progress();
        Poll::Ready(status)
    }
}

pub(crate) mod private {
    pub trait Sealed {}
}

/// Something [`wait`] can wait on: a [`Sentinel`], or a reference to a
/// waitable (so kinds can be mixed as `&dyn Waitable`).
///
/// Readiness follows Python's `multiprocessing.connection.wait`: a sentinel
/// is ready once its process has ended; once ready, an object stays ready.
pub trait Waitable: Send + Sync + private::Sealed {
    /// A future that completes when the object is ready.
    #[doc(hidden)]
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

impl private::Sealed for Sentinel {}
impl Waitable for Sentinel {
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            self.exit.wait().await;
        })
    }
}

impl<W: Waitable + ?Sized> private::Sealed for &W {}
impl<W: Waitable + ?Sized> Waitable for &W {
    fn ready(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        (**self).ready()
    }
}

/// Waits until at least one of `objects` is ready, or `timeout` passes.
///
/// Returns the indexes of every object that is ready, ascending: `[]` at
/// once for an empty slice, and `[]` after about `timeout` when none became
/// ready. `None` waits without limit.
///
/// ```no_run
/// # use tokio_multiprocessing as mp;
/// # async fn demo(procs: Vec<mp::Process<()>>) {
/// let sentinels: Vec<mp::Sentinel> = procs.iter().map(|p| p.sentinel()).collect();
/// let mut pending: Vec<usize> = (0..procs.len()).collect();
/// while !pending.is_empty() {
///     let objs: Vec<&mp::Sentinel> = pending.iter().map(|&i| &sentinels[i]).collect();
///     let ready = mp::wait(&objs, None).await;
///     for &j in ready.iter().rev() {
///         println!("{} finished", procs[pending[j]].name());
///         pending.remove(j);
///     }
/// }
/// # }
/// ```
///
/// To mix kinds: `let objs: [&dyn mp::Waitable; 2] = [&sentinel, &other];`.
///
/// Each call spends a unit of the task's Tokio budget (see
/// [`tokio::task::coop`]): a loop that calls `wait` again and again while
/// some object is ready yields to the runtime now and then, so the other
/// tasks run (among them those that see children exit).
///
/// # Cancel safety
///
/// Cancel safe: waiting consumes nothing.
pub async fn wait<W: Waitable>(objects: &[W], timeout: Option<Duration>) -> Vec<usize> {
    let ready = wait_uncooperative(objects, timeout).await;
    // The answer is final (a ready object stays ready): spend the budget
    // after it, so that a task out of budget yields here and still gets
    // it, rather than being told that nothing is ready.
    tokio::task::coop::consume_budget().await;
    ready
}

/// [`wait`], without spending the task's budget.
async fn wait_uncooperative<W: Waitable>(objects: &[W], timeout: Option<Duration>) -> Vec<usize> {
    if objects.is_empty() {
        return Vec::new();
    }
    let mut futures: Vec<_> = objects.iter().map(|o| Some(o.ready())).collect();
    let mut ready = vec![false; objects.len()];
    let all = poll_fn(|cx| {
        for (i, slot) in futures.iter_mut().enumerate() {
            if let Some(fut) = slot
                && fut.as_mut().poll(cx).is_ready()
            {
                ready[i] = true;
                *slot = None;
            }
        }
        if ready.iter().any(|r| *r) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    });
    match timeout {
        None => all.await,
        Some(t) => {
            let _ = tokio::time::timeout(t, all).await;
        }
    }
    ready
        .iter()
        .enumerate()
        .filter(|(_, r)| **r)
        .map(|(i, _)| i)
        .collect()
}
