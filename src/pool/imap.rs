//! Lazy maps over a pool: [`Imap`] (input order) and [`ImapUnordered`]
//! (completion order).
//!
//! Both pull items from their input only while fewer than a fixed number
//! of jobs are in flight, so an endless input costs a bounded amount of
//! memory: the window is twice the jobs the workers can hold at once.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use super::Pool;
use super::TaskError;
use super::job::{JobResult, JobRx};
use super::result::decode_item;
use super::worker::{Batch, BatchBuilder};
use crate::transport::handle::FdList;
use crate::wire::message::TargetRef;

/// Encoded arguments, one per input item (or why one failed to encode).
/// The handles in an item travel as descriptors beside its bytes.
pub(super) type Source = Pin<Box<dyn Stream<Item = Result<(Vec<u8>, FdList), String>> + Send>>;

/// What the feeder produced for a run of input items, in input order.
enum Entry {
    /// A job of `len` items, submitted.
    Job { rx: JobRx, len: usize },
    /// `len` items that fail with this error without running.
    Failed { error: TaskError, len: usize },
}

/// Pulls items from the input, groups them into jobs and submits them.
struct Feeder {
    pool: Pool,
    target: TargetRef,
    source: Option<Source>,
    chunksize: usize,
    /// Most jobs (or failed runs) that may be unconsumed at once.
    window: usize,
    chunk: BatchBuilder,
}

impl Feeder {
    fn new(pool: &Pool, target: TargetRef, source: Source) -> Feeder {
        let window = 2 * pool.handle.processes * pool.shared().config.window;
        Feeder {
            pool: pool.clone(),
            target,
            source: Some(source),
            chunksize: 1,
            window,
            chunk: BatchBuilder::default(),
        }
    }

    /// Whether the input is used up and every item submitted.
    fn exhausted(&self) -> bool {
        self.source.is_none()
    }

    /// Submits the items gathered so far as one job.
    fn submit_chunk(&mut self, out: &mut impl FnMut(Entry)) {
        if self.chunk.is_empty() {
            return;
        }
        let batch: Batch = self.chunk.take();
        let len = batch.len();
        let (job, rx) = self.pool.job(self.target, batch);
        match self.pool.shared().submit(vec![job]) {
            Ok(()) => out(Entry::Job { rx, len }),
            Err(error) => {
                // The pool takes no more work: this run fails, and the
                // input is not read further.
                out(Entry::Failed { error, len });
                self.source = None;
            }
        }
    }

    /// Pulls what the input has ready, while fewer than the window's
    /// entries (`held`) are unconsumed.
    fn fill(&mut self, cx: &mut Context<'_>, mut held: usize, mut out: impl FnMut(Entry)) {
        let chunksize = self.pool.effective_chunksize(self.chunksize);
        while held < self.window {
            let Some(source) = self.source.as_mut() else {
                return;
            };
            match source.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok((bytes, fds)))) => {
                    self.chunk.push_encoded(&bytes, fds);
                    if self.chunk.len() >= chunksize {
                        self.submit_chunk(&mut out);
                        held += 1;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    if !self.chunk.is_empty() {
                        self.submit_chunk(&mut out);
                        held += 1;
                    }
                    out(Entry::Failed {
                        error: TaskError::Encode(e),
                        len: 1,
                    });
                    held += 1;
                }
                Poll::Ready(None) => {
                    self.submit_chunk(&mut out);
                    self.source = None;
                    return;
                }
                Poll::Pending => {
                    // Items that came are not held back waiting for a
                    // chunk to fill.
                    self.submit_chunk(&mut out);
                    return;
                }
            }
        }
    }
}

/// `len` copies of one failure.
fn failures<R>(error: TaskError, len: usize) -> impl Iterator<Item = Result<R, TaskError>> {
    std::iter::repeat_n(error, len).map(Err)
}

/// Appends the outcomes of a job of `len` items.
fn expand<R: DeserializeOwned>(
    result: JobResult,
    len: usize,
    out: &mut VecDeque<Result<R, TaskError>>,
) {
    match result {
        Ok(results) => out.extend(results.map_items(decode_item::<R>)),
        Err(e) => out.extend(failures(e, len)),
    }
}

/// The results of [`Pool::imap`] or [`Pool::imap_stream`], in input order,
/// as a [`Stream`].
///
/// One item per input item, in input order: a failed task yields its
/// [`TaskError`] and the stream goes on. It reads its input lazily,
/// keeping a bounded window of jobs in flight, so an endless input is
/// fine; nothing runs until the stream is polled. If the pool is closed or
/// terminated, the items not yet submitted yield one
/// [`TaskError::Closed`] and the stream ends.
///
/// Dropping the stream cancels the jobs that have not started.
///
/// # Cancel safety
///
/// `next()` is cancel safe: results that arrived stay in the stream.
#[must_use = "streams do nothing unless polled"]
pub struct Imap<R> {
    feeder: Feeder,
    entries: VecDeque<Entry>,
    ready: VecDeque<Result<R, TaskError>>,
}

impl<R> std::fmt::Debug for Imap<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.entries.len())
            .field("exhausted", &self.feeder.exhausted())
            .finish()
    }
}

// Nothing in the stream is pinned in place: results are moved out.
impl<R> Unpin for Imap<R> {}

impl<R> Imap<R> {
    pub(super) fn new(pool: &Pool, target: TargetRef, source: Source) -> Imap<R> {
        Imap {
            feeder: Feeder::new(pool, target, source),
            entries: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    /// Sends the input to the workers `n` items at a time (0 counts as 1),
    /// Python's `chunksize`: fewer, larger messages, the results still one
    /// per item and in order. Call it before the first poll. With a task
    /// timeout, the chunk size stays 1.
    pub fn chunksize(mut self, n: usize) -> Self {
        self.feeder.chunksize = n.max(1);
        self
    }
}

impl<R: DeserializeOwned> Stream for Imap<R> {
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            let entries = &mut this.entries;
            this.feeder
                .fill(cx, entries.len(), |e| entries.push_back(e));
            match this.entries.front_mut() {
                None if this.feeder.exhausted() => return Poll::Ready(None),
                None => return Poll::Pending,
                Some(Entry::Failed { error, len }) => {
                    let (error, len) = (error.clone(), *len);
                    this.entries.pop_front();
                    this.ready.extend(failures(error, len));
                }
                Some(Entry::Job { rx, len }) => match rx.poll(cx) {
                    Poll::Ready(result) => {
                        let len = *len;
                        this.entries.pop_front();
                        expand(result, len, &mut this.ready);
                    }
                    Poll::Pending => return Poll::Pending,
                },
            }
        }
    }
}

/// A submitted job and how many items it holds, as a future.
struct Running {
    rx: JobRx,
    len: usize,
}

impl std::future::Future for Running {
    type Output = (JobResult, usize);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.rx.poll(cx).map(|r| (r, this.len))
    }
}

/// The results of [`Pool::imap_unordered`] or
/// [`Pool::imap_unordered_stream`], in the order they complete, as a
/// [`Stream`].
///
/// As [`Imap`], except for the order: a result is yielded as soon as its
/// job ends, so a slow task does not hold back the ones behind it. The
/// results of one chunk come together, in their input order.
///
/// # Cancel safety
///
/// `next()` is cancel safe: results that arrived stay in the stream.
#[must_use = "streams do nothing unless polled"]
pub struct ImapUnordered<R> {
    feeder: Feeder,
    running: FuturesUnordered<Running>,
    ready: VecDeque<Result<R, TaskError>>,
}

impl<R> std::fmt::Debug for ImapUnordered<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("in_flight", &self.running.len())
            .field("exhausted", &self.feeder.exhausted())
            .finish()
    }
}

impl<R> Unpin for ImapUnordered<R> {}

impl<R> ImapUnordered<R> {
    pub(super) fn new(pool: &Pool, target: TargetRef, source: Source) -> ImapUnordered<R> {
        ImapUnordered {
            feeder: Feeder::new(pool, target, source),
            running: FuturesUnordered::new(),
            ready: VecDeque::new(),
        }
    }

    /// As [`Imap::chunksize`].
    pub fn chunksize(mut self, n: usize) -> Self {
        self.feeder.chunksize = n.max(1);
        self
    }
}

impl<R: DeserializeOwned> Stream for ImapUnordered<R> {
    type Item = Result<R, TaskError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.ready.pop_front() {
                return Poll::Ready(Some(item));
            }
            let (running, ready) = (&mut this.running, &mut this.ready);
            this.feeder.fill(cx, running.len(), |e| match e {
                Entry::Job { rx, len } => running.push(Running { rx, len }),
                Entry::Failed { error, len } => ready.extend(failures(error, len)),
            });
            if !this.ready.is_empty() {
                continue;
            }
            match this.running.poll_next_unpin(cx) {
                Poll::Ready(Some((result, len))) => expand(result, len, &mut this.ready),
                Poll::Ready(None) if this.feeder.exhausted() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}
