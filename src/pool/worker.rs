//! The child side of a pool worker, and the messages it exchanges with its
//! slot in the parent.

use std::collections::VecDeque;
use std::future::poll_fn;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::page::{MAX_REPLY, Page};
use super::record::{self, Ends};
use crate::connection::Connection;
use crate::target::{Resolved, call_sync, resolve};
use crate::transport::handle::{self, FdList, accept_value_handles, provide_handles_from};
use crate::wire::message::{Outcome, TargetRef};
use std::time::Duration;

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
    /// Worker to parent: job `id` ended.
    Done { id: u64, results: Results },
    /// Either way, a doorbell: messages wait in the shared page's ring
    /// (replies for the parent, jobs for the worker).
    Ring,
}

/// Encodes job `msg` (a [`Msg::Job`]) into `buf` as a record of the job
/// ring (see [`super::record`]).
pub(crate) fn encode_job_record(buf: &mut Vec<u8>, msg: &Msg) -> Result<(), String> {
    let Msg::Job { id, target, args } = msg else {
        return Err(format!("{msg:?} is not a job"));
    };
    record::put_job(buf, *id, *target, args.items())
}

/// Decodes a record of the job ring: a job, or `None` for a marker (an
/// empty record: the job comes over the socket).
fn decode_job_record(bytes: &[u8]) -> Result<Option<Msg>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let (id, target, ends, bytes) = record::read_job(bytes)?;
    let args = Batch::from_parts(bytes, ends);
    Ok(Some(Msg::Job { id, target, args }))
}

/// Decodes a record of the reply ring: a [`Msg::Done`].
pub(crate) fn decode_reply_record(bytes: &[u8]) -> Result<Msg, String> {
    let (id, ends, bytes, failures) = record::read_reply(bytes)?;
    let results = Results::from_parts(Batch::from_parts(bytes, ends), failures)?;
    Ok(Msg::Done { id, results })
}

/// The outcomes of a job, one per argument: the encoded values back to
/// back in one buffer (an empty slot for an argument that failed), and the
/// failures beside them with their indexes, in order.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Results {
    values: Batch,
    failures: Vec<(u64, Outcome)>,
}

impl Results {
    /// Values and failures read from a ring record: `Err` unless each
    /// failure names an outcome among the values, in increasing order.
    pub(crate) fn from_parts(
        values: Batch,
        failures: Vec<(u64, Outcome)>,
    ) -> Result<Results, String> {
        let mut next = 0u64;
        for (at, _) in &failures {
            if *at < next || *at >= values.len() as u64 {
                return Err(format!(
                    "a failure of outcome {at} among {} outcomes, out of order or range",
                    values.len()
                ));
            }
            next = at + 1;
        }
        Ok(Results { values, failures })
    }

    /// How many outcomes there are.
    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// How many of them are failures.
    pub(crate) fn failed(&self) -> usize {
        self.failures.len()
    }

    /// The failures, each with its index among the outcomes.
    pub(crate) fn failures(&self) -> impl Iterator<Item = (u64, &Outcome)> {
        self.failures.iter().map(|(i, o)| (*i, o))
    }

    /// The outcomes in order, each an encoded value (borrowed from the
    /// buffer, no copy) or how the task failed, passed through `f`. The
    /// handles in a value take their descriptors as `f` decodes it; those
    /// no handle took are closed.
    pub(crate) fn map_items<T>(
        self,
        mut f: impl FnMut(Result<&[u8], Outcome>) -> T,
    ) -> impl Iterator<Item = T> {
        let mut failures = self.failures.into_iter().peekable();
        let Batch {
            bytes,
            ends,
            handles,
        } = self.values;
        let mut handles = handles.into_iter().peekable();
        let mut start = 0usize;
        (0..ends.len()).map(move |i| {
            let (from, to, next) = range(&bytes, &ends, start, i);
            start = next;
            match failures.next_if(|(at, _)| *at == i as u64) {
                Some((_, outcome)) => f(Err(outcome)),
                None => match handles.next_if(|(at, _)| *at == i as u64) {
                    Some((_, fds)) => {
                        provide_handles_from(&mut fds.into_slots(), || f(Ok(&bytes[from..to])))
                    }
                    None => f(Ok(&bytes[from..to])),
                },
            }
        })
    }
}

/// The encoded arguments of a job, back to back in one buffer: argument
/// `i` is `bytes[ends[i - 1]..ends[i]]`. One buffer rather than one per
/// argument, so a chunk of a `map` costs one allocation, and a job kept
/// for re-dispatch is shared, not copied.
///
/// The handles in an argument travel as descriptors beside the bytes:
/// `handles` lists, for each argument that has any, its index and its
/// descriptors (the argument's bytes name them by their place in that
/// list). The worker's socket carries them, so a reply whose values hold
/// handles goes over it rather than through the ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Batch {
    bytes: Bytes,
    ends: Ends,
    handles: Vec<(u64, FdList)>,
}

impl Batch {
    /// How many arguments the batch holds.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether any argument holds handles, whose descriptors only the
    /// socket carries.
    pub(crate) fn has_handles(&self) -> bool {
        !self.handles.is_empty()
    }

    /// The bytes of the encoded arguments, all together.
    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Arguments (or values) read from a ring record, which holds no
    /// handles; `ends` as in the struct's description.
    pub(crate) fn from_parts(bytes: Bytes, ends: Ends) -> Batch {
        Batch {
            bytes,
            ends,
            handles: Vec::new(),
        }
    }

    /// The items as a ring record holds them (their handles aside).
    fn items(&self) -> record::Items<'_> {
        record::Items {
            ends: &self.ends,
            bytes: &self.bytes,
        }
    }

    /// The encoded arguments, in order.
    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ranges().map(|(start, end)| &self.bytes[start..end])
    }

    /// Where each argument lies in the buffer. A malformed batch (ends
    /// out of range or decreasing) yields empty ranges, which fail to
    /// decode.
    fn ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let mut start = 0usize;
        (0..self.ends.len()).map(move |i| {
            let (from, to, next) = self.range(start, i);
            start = next;
            (from, to)
        })
    }

    /// Argument `i`, which starts where the one before it ended
    /// (`start`): its range, and where the next one starts.
    fn range(&self, start: usize, i: usize) -> (usize, usize, usize) {
        range(&self.bytes, &self.ends, start, i)
    }
}

/// Item `i` of a batch's `bytes` cut at `ends`, which starts where the one
/// before it ended (`start`): its range, and where the next one starts.
fn range(bytes: &[u8], ends: &[u64], start: usize, i: usize) -> (usize, usize, usize) {
    let end = usize::try_from(ends[i]).unwrap_or(usize::MAX);
    if start <= end && end <= bytes.len() {
        (start, end, end)
    } else {
        (0, 0, end)
    }
}

/// Builds a [`Batch`] by encoding arguments one after another.
#[derive(Debug, Default)]
pub(crate) struct BatchBuilder {
    buf: Vec<u8>,
    ends: Ends,
    handles: Vec<(u64, FdList)>,
}

impl BatchBuilder {
    /// Appends one encoded argument.
    /// The handles in it travel as descriptors beside the bytes.
    pub(crate) fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        let before = self.buf.len();
        let buf = &mut self.buf;
        let (written, fds, carried) = handle::encode_noting(|| {
            rmp_serde::encode::write(buf, value).inspect_err(|_| buf.truncate(before))
        });
        if let Err(e) = written {
            return Err(e.to_string());
        }
        self.add_handles(FdList::noting(fds, carried));
        self.ends.push(self.buf.len() as u64);
        Ok(())
    }

    /// Appends one argument already encoded, with the descriptors of the
    /// handles in it.
    pub(crate) fn push_encoded(&mut self, bytes: &[u8], fds: FdList) {
        self.add_handles(fds);
        self.push_raw(bytes);
    }

    /// Notes the descriptors of the argument about to be pushed.
    fn add_handles(&mut self, fds: FdList) {
        if !fds.is_empty() {
            self.handles.push((self.ends.len() as u64, fds));
        }
    }

    /// Notes the descriptors of the value just pushed.
    fn add_value_handles(&mut self, fds: FdList) {
        if !fds.is_empty() {
            self.handles.push((self.ends.len() as u64 - 1, fds));
        }
    }

    /// Appends one argument (or value) that `write` encodes at the end of
    /// the buffer; if it fails, the buffer is left as it was.
    fn push_with<E>(&mut self, write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>) -> Result<(), E> {
        let before = self.buf.len();
        match write(&mut self.buf) {
            Ok(()) => {
                self.ends.push(self.buf.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(before);
                Err(e)
            }
        }
    }

    /// Appends bytes that are already encoded.
    pub(crate) fn push_raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.ends.push(self.buf.len() as u64);
    }

    /// How many arguments were pushed.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether nothing was pushed.
    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The batches of a `map`: the arguments pushed so far, cut into
    /// batches of `chunk` (the last may hold fewer), which share this
    /// builder's one buffer rather than each having its own. The builder
    /// is left empty.
    pub(crate) fn take_chunks(&mut self, chunk: usize) -> Vec<Batch> {
        let chunk = chunk.max(1);
        let bytes = Bytes::from(std::mem::take(&mut self.buf));
        let ends = std::mem::take(&mut self.ends);
        let mut handles = std::mem::take(&mut self.handles).into_iter().peekable();
        let mut batches = Vec::with_capacity(ends.len().div_ceil(chunk));
        let mut start = 0u64;
        for (k, cut) in ends.chunks(chunk).enumerate() {
            let first = (k * chunk) as u64;
            let end = cut.last().copied().unwrap_or(start);
            let mut mine = Vec::new();
            while let Some((at, fds)) = handles.next_if(|(at, _)| *at < first + cut.len() as u64) {
                mine.push((at - first, fds));
            }
            // The ends were pushed in order, each a length of the buffer.
            let at = |pos: u64| usize::try_from(pos).map_or(bytes.len(), |p| p.min(bytes.len()));
            let (from, to) = (at(start), at(end));
            batches.push(Batch {
                bytes: bytes.slice(from..to),
                ends: cut.iter().map(|e| e - start).collect(),
                handles: mine,
            });
            start = end;
        }
        batches
    }

    /// The finished batch; the builder starts over, empty.
    pub(crate) fn take(&mut self) -> Batch {
        Batch {
            bytes: Bytes::from(std::mem::take(&mut self.buf)),
            ends: std::mem::take(&mut self.ends),
            handles: std::mem::take(&mut self.handles),
        }
    }
}

/// What a worker is started with: its end of the pipe, the initializer,
/// how many jobs it may run at once (async targets interleave; a
/// synchronous one holds the worker's thread while it runs), the page
/// it shares with its slot in the parent, and how it waits for jobs.
pub(crate) type WorkerArgs = (
    Connection<Msg>,
    Option<(TargetRef, ByteBuf)>,
    usize,
    Page,
    Waiting,
);

/// How a worker waits for jobs: how long it watches its job ring before
/// it sleeps (`PoolBuilder::spin`), and after how long asleep it rests
/// (`PoolBuilder::rest_after`; see [`rest`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Waiting {
    pub(crate) spin: Duration,
    pub(crate) rest_after: Option<Duration>,
}

/// A job the worker has received and not started.
struct Pending {
    id: u64,
    /// Its place among the jobs received, from 0.
    seq: u64,
    target: TargetRef,
    args: Batch,
}

/// The jobs received and not started, in the order they came.
///
/// Every job comes through the job ring, in the order the slot sent it,
/// or is stood for there by a marker when it comes over the socket. So a
/// job from the ring that follows a marker waits until the job the marker
/// stands for has come, and the numbers the gate checks are the slot's.
#[derive(Default)]
struct Line {
    waiting: VecDeque<Pending>,
    received: u64,
    /// Taken from the ring and not yet in line: jobs, and markers (`None`)
    /// for jobs that come over the socket.
    ring: VecDeque<Option<Msg>>,
    /// Jobs that came over the socket, not yet matched with their markers.
    socket: VecDeque<Msg>,
    /// A record taken from the ring.
    scratch: Vec<u8>,
}

impl Line {
    /// Files a message that came over the socket: a job waits for its
    /// marker; a doorbell says only that the ring holds jobs.
    fn take_from_socket(&mut self, msg: Msg) {
        if let Msg::Job { .. } = msg {
            self.socket.push_back(msg);
            self.settle();
        }
    }

    /// Takes every job waiting in the shared page's job ring.
    ///
    /// # Errors
    ///
    /// What is wrong with the ring or a record in it, which only a broken
    /// parent leaves; the worker then exits.
    fn take_from_ring(&mut self, page: &Page) -> Result<(), String> {
        let mut took = false;
        while page.pop_job(&mut self.scratch)? {
            took = true;
            self.ring.push_back(decode_job_record(&self.scratch)?);
        }
        if took {
            self.settle();
        }
        Ok(())
    }

    /// Puts in line the jobs from the ring, in order, as far as the
    /// socket's jobs for their markers have come.
    fn settle(&mut self) {
        while let Some(front) = self.ring.front_mut() {
            let job = match front.take() {
                Some(job) => job,
                None => match self.socket.pop_front() {
                    Some(job) => job,
                    None => break,
                },
            };
            self.ring.pop_front();
            self.file(job);
        }
    }

    /// A job joins the line, numbered in the order sent.
    fn file(&mut self, msg: Msg) {
        if let Msg::Job { id, target, args } = msg {
            let seq = self.received;
            self.received += 1;
            self.waiting.push_back(Pending {
                id,
                seq,
                target,
                args,
            });
        }
    }

    /// The next job the parent has not taken back, marked started in the
    /// shared page; the ones it took back are dropped on the way.
    fn start_next(&mut self, page: &Page) -> Option<Pending> {
        while let Some(job) = self.waiting.pop_front() {
            if page.try_start(job.seq) {
                return Some(job);
            }
        }
        None
    }
}

/// Turns a target reference from the parent into its trampoline.
fn resolve_target(target: TargetRef) -> Resolved {
    // SAFETY: `serve` is crate-private, so it only runs as the target of a
    // pool worker, in a child this library started, whose handshake
    // checked that it runs the parent's executable image (the build
    // fingerprint); every `TargetRef` it receives was made by the parent's
    // `Target::__target_ref` or `StarTarget::__target_ref` (see the pool's
    // calls and its builder).
    unsafe { resolve(target) }
}

/// Runs the initializer in a remote worker: `Err` says why it did not
/// return.
pub(crate) async fn run_init(target: TargetRef, args: &[u8]) -> Result<(), String> {
    match run(target, args).await {
        Outcome::Returned(_) => Ok(()),
        other => Err(describe(&other)),
    }
}

/// Runs job `id` in a remote worker, where the pool's `Go` was its gate.
pub(crate) async fn run_remote_job(
    id: u64,
    seq: u64,
    target: TargetRef,
    args: Batch,
) -> (u64, Results) {
    run_job(Pending {
        id,
        seq,
        target,
        args,
    })
    .await
}

/// Runs one target on one argument (the initializer).
async fn run(target: TargetRef, args: &[u8]) -> Outcome {
    match resolve_target(target) {
        Resolved::Sync(entry) => call_sync(entry, args),
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

/// Runs every argument of a job, in order. A synchronous target encodes
/// its values straight into the reply's buffer.
async fn run_job(mut job: Pending) -> (u64, Results) {
    let mut values = BatchBuilder::default();
    let mut failures = Vec::new();
    let entry = resolve_target(job.target);
    let mut handles = std::mem::take(&mut job.args.handles).into_iter().peekable();
    for (i, a) in job.args.iter().enumerate() {
        // The handles in an argument take their descriptors as it decodes,
        // which the trampolines do first thing (an async one before it
        // returns its future); those no handle took close after the call.
        let mut fds = match handles.next_if(|(at, _)| *at == i as u64) {
            Some((_, fds)) => fds.into_slots(),
            None => Vec::new(),
        };
        // The handles in its value put their descriptors here as it is
        // encoded, at the end of the call (or of the future's last poll).
        let mut out = Vec::new();
        let ran = match entry {
            Resolved::Sync(entry) => accept_value_handles(&mut out, || {
                provide_handles_from(&mut fds, || values.push_with(|buf| entry(a, buf)))
            }),
            Resolved::Async(entry) => {
                let mut fut = provide_handles_from(&mut fds, || entry(a));
                let outcome =
                    poll_fn(|cx| accept_value_handles(&mut out, || fut.as_mut().poll(cx))).await;
                match outcome {
                    Outcome::Returned(bytes) => {
                        values.push_raw(&bytes);
                        Ok(())
                    }
                    failure => Err(failure),
                }
            }
        };
        match ran {
            Ok(()) => values.add_value_handles(FdList::new(out)),
            Err(failure) => {
                values.push_raw(&[]);
                failures.push((i as u64, failure));
            }
        }
    }
    drop(handles);
    let results = Results {
        values: values.take(),
        failures,
    };
    (job.id, results)
}

/// Takes every message already read from the socket, without a system
/// call. `false` once the parent's end is gone.
fn take_arrived(conn: &mut Connection<Msg>, line: &mut Line) -> bool {
    loop {
        match conn.take_buffered() {
            Ok(Some(msg)) => line.take_from_socket(msg),
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// Sends a reply through the shared page's ring, ringing the doorbell if
/// the slot sleeps, or over the socket if it does not fit. False
/// once the parent's end is gone.
async fn reply(
    conn: &Connection<Msg>,
    page: &Page,
    (id, results): (u64, Results),
    buf: &mut Vec<u8>,
) -> bool {
    // A reply whose values alone are too big for the ring is encoded once,
    // for the socket. So is one with handles in its values: their
    // descriptors go with it, which the ring cannot carry.
    let too_big =
        record::reply_len(results.values.items()) > MAX_REPLY || !results.values.handles.is_empty();
    let pushed = if too_big {
        None
    } else {
        buf.clear();
        match record::put_reply(buf, id, results.values.items(), &results.failures) {
            Ok(()) => page.push(buf),
            Err(_) => None,
        }
    };
    match pushed {
        Some(false) => true,
        Some(true) => conn.send(&Msg::Ring).await.is_ok(),
        None => conn.send(&Msg::Done { id, results }).await.is_ok(),
    }
}

/// Takes what arrived, over the socket (without a system call) and in
/// the job ring. `false` once the parent's end is gone, or if it broke the
/// ring.
fn take_all(conn: &mut Connection<Msg>, line: &mut Line, page: &Page) -> bool {
    if !take_arrived(conn, line) {
        return false;
    }
    match line.take_from_ring(page) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "the pool's job ring is broken; the worker exits");
            false
        }
    }
}

/// With nothing to run: watches the job ring for `spin`, then asks for
/// the doorbell and sleeps on the socket, and rests if the sleep lasts
/// `rest_after`. `false` once the parent's end is gone.
async fn idle(conn: &mut Connection<Msg>, line: &mut Line, page: &Page, waiting: Waiting) -> bool {
    if page.watch_jobs(waiting.spin) || page.sleep_jobs() {
        return true;
    }
    let msg = match waiting.rest_after {
        None => conn.recv().await,
        // `recv` is cancel safe: a message that arrives as the timer
        // fires stays with the connection for the next one.
        Some(after) => match tokio::time::timeout(after, conn.recv()).await {
            Ok(msg) => msg,
            Err(_) => {
                rest(conn);
                conn.recv().await
            }
        },
    };
    let Ok(msg) = msg else {
        return false;
    };
    page.wake_jobs();
    line.take_from_socket(msg);
    true
}

/// A long sleep of an idle worker: it gives back the pages of its code (see
/// [`crate::sys::release_code_pages`]), so that its resident size is what
/// it owns, and waits for the parent's next message in the kernel, on its
/// socket. Waiting through the runtime instead would bring back, by the
/// time it sleeps, about a megabyte of the code it just gave back (the
/// kernel maps 16 pages around each one the runtime's path touches). It
/// waits there only when no task of its own (one a task spawned) is left
/// on its runtime, which that wait would hold up.
///
/// Nothing waits to be written: the loops flush before they go idle.
fn rest(conn: &Connection<Msg>) {
    let alone =
        tokio::runtime::Handle::try_current().is_ok_and(|rt| rt.metrics().num_alive_tasks() == 0);
    let wait_on = if alone { conn.handle() } else { None };
    match crate::sys::release_code_pages(wait_on) {
        Ok(bytes) => tracing::trace!(bytes, "idle pool worker rested"),
        Err(e) => tracing::debug!(error = %e, "idle pool worker kept its code pages"),
    }
}

/// The worker loop: runs jobs in the order they come, up to `concurrency`
/// at once, until the parent closes its end.
pub(crate) async fn serve((mut conn, init, concurrency, page, waiting): WorkerArgs) {
    // Ctrl-C reaches the whole process group. A worker is the pool's to
    // stop: the parent may handle the key and finish or cancel its tasks,
    // and if the key ends the parent, the worker follows it.
    let _ = crate::sys::set_interrupt_ignored(true);
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
    let mut line = Line::default();
    if concurrency <= 1 {
        serve_one_at_a_time(conn, line, page, waiting).await;
        return;
    }
    let mut running = FuturesUnordered::new();
    // Where a reply is encoded for the ring.
    let mut buf = Vec::new();
    loop {
        if conn.flush().await.is_err() || !take_all(&mut conn, &mut line, &page) {
            return;
        }
        while running.len() < concurrency {
            let Some(job) = line.start_next(&page) else {
                break;
            };
            running.push(run_job(job));
        }
        if running.is_empty() {
            if !idle(&mut conn, &mut line, &page, waiting).await {
                return;
            }
            continue;
        }
        // Jobs run on this task: a job put in the ring meanwhile rings the
        // doorbell, so that it can start beside them.
        if page.sleep_jobs() {
            continue;
        }
        tokio::select! {
            biased;
            Some((id, results)) = running.next() => {
                if !reply(&conn, &page, (id, results), &mut buf).await {
                    return;
                }
            }
            msg = conn.recv() => {
                let Ok(msg) = msg else { return };
                page.wake_jobs();
                line.take_from_socket(msg);
            }
        }
    }
}

/// [`serve`] with one job at a time: each runs on this task, and its
/// reply is published before the next starts.
async fn serve_one_at_a_time(
    mut conn: Connection<Msg>,
    mut line: Line,
    page: Page,
    waiting: Waiting,
) {
    // Where a reply is encoded for the ring.
    let mut buf = Vec::new();
    loop {
        // A doorbell or a reply that went over the socket is written
        // before the next job runs: a synchronous target blocks this
        // thread, and a reply held back behind it would be late, or lost
        // if the target kills the process.
        if conn.flush().await.is_err() || !take_all(&mut conn, &mut line, &page) {
            return;
        }
        let Some(job) = line.start_next(&page) else {
            if !idle(&mut conn, &mut line, &page, waiting).await {
                return;
            }
            continue;
        };
        let (id, results) = run_job(job).await;
        if !reply(&conn, &page, (id, results), &mut buf).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::message::TargetKind;

    #[test]
    fn a_maps_batches_share_one_buffer_and_keep_their_arguments() {
        let words: Vec<String> = (0..7).map(|i| "x".repeat(i * 3)).collect();
        let mut all = BatchBuilder::default();
        for w in &words {
            all.push(w).unwrap();
        }
        let batches = all.take_chunks(3);
        assert!(all.is_empty(), "the builder starts over");
        assert_eq!(
            batches.iter().map(Batch::len).collect::<Vec<_>>(),
            [3, 3, 1]
        );
        let got: Vec<String> = batches
            .iter()
            .flat_map(Batch::iter)
            .map(|b| rmp_serde::from_slice(b).unwrap())
            .collect();
        assert_eq!(got, words);
        // One buffer: each batch's bytes start where the one before ended.
        let base = batches[0].bytes.as_ptr() as usize;
        let mut at = 0;
        for b in &batches {
            assert_eq!(b.bytes.as_ptr() as usize - base, at);
            at += b.bytes.len();
        }
        // A record of a batch cut from the middle reads back the same.
        let mut buf = Vec::new();
        let msg = Msg::Job {
            id: 9,
            target: TargetRef {
                kind: TargetKind::Sync,
                offset: 0,
            },
            args: batches[1].clone(),
        };
        encode_job_record(&mut buf, &msg).unwrap();
        let Some(Msg::Job { args, .. }) = decode_job_record(&buf).unwrap() else {
            panic!("not a job");
        };
        assert_eq!(
            args.iter().collect::<Vec<_>>(),
            batches[1].iter().collect::<Vec<_>>()
        );
        assert!(BatchBuilder::default().take_chunks(4).is_empty());
    }

    fn job(id: u64) -> Msg {
        let mut args = BatchBuilder::default();
        args.push(&id).unwrap();
        Msg::Job {
            id,
            target: TargetRef {
                kind: TargetKind::Sync,
                offset: 0,
            },
            args: args.take(),
        }
    }

    fn put(page: &Page, msg: &Msg) {
        let mut bytes = Vec::new();
        encode_job_record(&mut bytes, msg).unwrap();
        assert!(page.push_job(&bytes).is_some());
    }

    /// A marker: the next job comes over the socket.
    fn marker(page: &Page) {
        assert!(page.push_job(&[]).is_some());
    }

    /// The ids and numbers of the jobs in line, in order.
    fn in_line(line: &Line) -> Vec<(u64, u64)> {
        line.waiting.iter().map(|p| (p.id, p.seq)).collect()
    }

    #[test]
    fn a_job_behind_a_marker_waits_for_the_socket_s_job() {
        let page = Page::new().unwrap();
        let mut line = Line::default();
        put(&page, &job(10));
        marker(&page);
        put(&page, &job(12));
        line.take_from_ring(&page).unwrap();
        assert_eq!(in_line(&line), [(10, 0)], "job 12 waits behind the marker");
        // A doorbell is no job.
        line.take_from_socket(Msg::Ring);
        assert_eq!(in_line(&line), [(10, 0)]);
        line.take_from_socket(job(11));
        assert_eq!(in_line(&line), [(10, 0), (11, 1), (12, 2)]);
    }

    #[test]
    fn a_socket_job_that_comes_before_its_marker_waits_for_it() {
        let page = Page::new().unwrap();
        let mut line = Line::default();
        line.take_from_socket(job(7));
        assert!(in_line(&line).is_empty(), "its place is the marker's");
        put(&page, &job(6));
        marker(&page);
        line.take_from_ring(&page).unwrap();
        assert_eq!(in_line(&line), [(6, 0), (7, 1)]);
    }

    #[test]
    fn the_gate_numbers_jobs_in_the_order_sent_across_both_paths() {
        let page = Page::new().unwrap();
        let mut line = Line::default();
        for id in 0..300u64 {
            if id % 3 == 1 {
                marker(&page);
                line.take_from_socket(job(id));
            } else {
                put(&page, &job(id));
            }
            if id % 7 == 0 {
                line.take_from_ring(&page).unwrap();
            }
        }
        line.take_from_ring(&page).unwrap();
        let mut started = Vec::new();
        while let Some(p) = line.start_next(&page) {
            started.push(p.id);
        }
        assert_eq!(started, (0..300).collect::<Vec<_>>());
        assert_eq!(page.started_count(), 300);
    }

    #[test]
    fn failures_out_of_order_or_beyond_the_values_are_refused() {
        let values = || {
            let mut b = BatchBuilder::default();
            b.push(&1u8).unwrap();
            b.push(&2u8).unwrap();
            b.take()
        };
        let failure = |at: u64| (at, Outcome::DecodeArgs("bad".into()));
        assert!(Results::from_parts(values(), vec![failure(0), failure(1)]).is_ok());
        assert!(Results::from_parts(values(), vec![failure(2)]).is_err());
        assert!(Results::from_parts(values(), vec![failure(1), failure(0)]).is_err());
        assert!(Results::from_parts(values(), vec![failure(1), failure(1)]).is_err());
    }

    #[test]
    fn a_record_that_is_no_job_is_an_error() {
        let page = Page::new().unwrap();
        let bytes = crate::target::encode_value(&Msg::Ready).unwrap();
        assert!(page.push_job(&bytes).is_some());
        assert!(Line::default().take_from_ring(&page).is_err());
    }
}
