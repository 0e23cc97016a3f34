//! [`ProcessSet`]: many processes, joined in the order they finish.
//!
//! ```no_run
//! use std::time::Duration;
//! use tokio_multiprocessing as mp;
//!
//! fn nap(ms: u64) -> u64 {
//!     std::thread::sleep(Duration::from_millis(ms));
//!     ms
//! }
//!
//! # async fn demo() -> mp::Result<()> {
//! let mut set = mp::ProcessSet::new();
//! for ms in [300, 100, 200] {
//!     set.spawn(mp::Process::new(nap, ms)).await?;
//! }
//! while let Some((name, result)) = set.join_next().await {
//!     println!("{name} slept {} ms", result?); // 100, then 200, then 300
//! }
//! # Ok(()) }
//! ```
//!
//! # Caveats
//!
//! Dropping the set kills (`SIGKILL`) every process still in it. The task
//! that watches each child, on the runtime that started it, reaps it, so no
//! zombie is left; if that runtime is gone, the
//! [`InitGuard`](crate::InitGuard) reaps it when the program leaves `main`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Process, ProcessBuilder, ProcessError};
use crate::target::Target;

/// What one process of the set comes back as: its key in the set, its
/// name and its outcome.
type Joined<R> = (u64, String, Result<R, ProcessError>);

/// The join of one process of the set.
type Joining<R> = Pin<Box<dyn Future<Output = Joined<R>> + Send + Sync>>;

/// A set of processes, joined in the order they finish: tokio's
/// [`JoinSet`](tokio::task::JoinSet), for processes.
///
/// [`spawn`](Self::spawn) starts a [`Process`] (if it has not started yet)
/// and adds it; [`join_next`](Self::join_next) waits for whichever ends
/// first and returns its name and what [`Process::join`] returns. No
/// polling: the set waits on every child's end at once, as the
/// [`Sentinel`](crate::Sentinel)s do.
///
/// Dropping the set kills (`SIGKILL`) the processes still in it. The task
/// that watches each child, on the runtime that started it, reaps it, so
/// no zombie is left; if that runtime is gone, the
/// [`InitGuard`](crate::InitGuard) reaps it when the program leaves `main`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use tokio_multiprocessing as mp;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// # async fn demo() -> mp::Result<()> {
/// let mut set = mp::ProcessSet::new();
/// for ms in [300, 100, 200] {
///     set.spawn(mp::Process::new(nap, ms)).await?;
/// }
/// while let Some((name, result)) = set.join_next().await {
///     println!("{name} slept {} ms", result?); // 100, then 200, then 300
/// }
/// # Ok(()) }
/// ```
#[doc(alias = "JoinSet")]
#[must_use = "dropping the set kills its processes"]
pub struct ProcessSet<R> {
    /// The processes not yet returned by `join_next`, by key.
    procs: HashMap<u64, Arc<Process<R>>>,
    /// Their joins, which complete in the order the processes end.
    joining: FuturesUnordered<Joining<R>>,
}

impl<R> ProcessSet<R> {
    /// An empty set.
    pub fn new() -> Self {
        ProcessSet {
            procs: HashMap::new(),
            joining: FuturesUnordered::new(),
        }
    }

    /// How many processes are in the set: spawned and not yet returned by
    /// [`join_next`](Self::join_next), whether they still run or not.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether the set holds no process.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Sends `SIGTERM` to every process in the set that still runs.
    ///
    /// They stay in the set: [`join_next`](Self::join_next) returns each
    /// once it has ended ([`ProcessError::Signaled`] unless it handled the
    /// signal).
    pub fn terminate_all(&self) {
        for p in self.procs.values() {
            // Only a process not started can fail, and the set holds none.
            let _ = p.terminate();
        }
    }

    /// Sends `SIGKILL` to every process in the set that still runs.
    ///
    /// They stay in the set: [`join_next`](Self::join_next) returns each
    /// once it has ended, as [`ProcessError::Signaled`] with signal 9
    /// unless it had ended already. [`shutdown`](Self::shutdown) kills and
    /// waits.
    pub fn kill_all(&self) {
        for p in self.procs.values() {
            let _ = p.kill();
        }
    }

    /// The pids of the processes in the set, in no order.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.values().filter_map(|p| p.pid()).collect()
    }
}

impl<R: DeserializeOwned + Send + 'static> ProcessSet<R> {
    /// Adds `process` to the set, starting it first unless it has started
    /// already; returns its pid.
    ///
    /// A process joined elsewhere already comes back from
    /// [`join_next`](Self::join_next) as [`ProcessError::AlreadyJoined`].
    ///
    /// # Errors
    ///
    /// As [`Process::start`], for a process this call starts; the process
    /// is then not added (and dropped).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe as far as the set goes: dropped before it returns, it
    /// adds nothing, and a child it had spawned already is killed (and
    /// reaped, as when the set drops). A started process is added at once.
    pub async fn spawn(&mut self, process: Process<R>) -> Result<u32, ProcessError> {
        if !process.state.started() {
            let mut guard = KillUnlessAdded(Some(&process));
            process.start().await?;
            guard.0 = None;
        }
        // A started process has a pid; `NotStarted` covers a race with a
        // start elsewhere that failed.
        let pid = process.pid().ok_or(ProcessError::NotStarted)?;
        self.insert(process);
        Ok(pid)
    }

    /// Builds a process from `builder`, `target` and `args`, starts it and
    /// adds it to the set; returns its pid. Short for
    /// [`spawn`](Self::spawn)`(builder.build(target, args))`.
    ///
    /// # Errors
    ///
    /// As [`Process::start`].
    ///
    /// # Cancel safety
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_with<A, M, F>(
        &mut self,
        builder: ProcessBuilder,
        target: F,
        args: A,
    ) -> Result<u32, ProcessError>
    where
        F: Target<A, R, M> + crate::CapturesNothing,
        A: Serialize,
    {
        self.spawn(builder.build(target, args)).await
    }

    fn insert(&mut self, process: Process<R>) {
        let key = process.state.key;
        let process = Arc::new(process);
        self.procs.insert(key, process.clone());
        self.joining.push(Box::pin(async move {
            let result = process.join().await;
            (key, process.name().to_owned(), result)
        }));
    }

    /// Waits for the next process of the set to end and returns its name
    /// and outcome (what [`Process::join`] returns), in the order the
    /// processes end; `None` at once when the set is empty.
    ///
    /// The process leaves the set.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a `join_next` dropped before it returns (in a
    /// `select!` that took another branch) takes nothing out of the set; a
    /// process that ended meanwhile comes back from the next call.
    pub async fn join_next(&mut self) -> Option<(String, Result<R, ProcessError>)> {
        let (key, name, result) = self.joining.next().await?;
        self.procs.remove(&key);
        Some((name, result))
    }

    /// Kills every process in the set and waits until all have ended;
    /// their outcomes are dropped. The set is empty afterwards.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the processes are killed at the first poll; those not
    /// yet returned stay in the set.
    pub async fn shutdown(&mut self) {
        self.kill_all();
        while self.join_next().await.is_some() {}
    }
}

/// Kills the child of a process whose start was dropped half way, unless
/// the process got into the set.
struct KillUnlessAdded<'a, R>(Option<&'a Process<R>>);

impl<R> Drop for KillUnlessAdded<'_, R> {
    fn drop(&mut self) {
        if let Some(p) = self.0
            && p.state.started()
        {
            let _ = p.kill();
        }
    }
}

impl<R> Default for ProcessSet<R> {
    fn default() -> Self {
        ProcessSet::new()
    }
}

impl<R> Drop for ProcessSet<R> {
    /// Kills every process still in the set; the crate reaps them.
    fn drop(&mut self) {
        for p in self.procs.values() {
            let _ = p.kill();
        }
    }
}

impl<R> fmt::Debug for ProcessSet<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&str> = self.procs.values().map(|p| p.name()).collect();
        names.sort_unstable();
        f.debug_struct("ProcessSet")
            .field("len", &self.procs.len())
            .field("processes", &names)
            .finish()
    }
}
