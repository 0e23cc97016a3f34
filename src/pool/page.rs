//! The page of memory a worker shares with its slot in the parent: which jobs it
//! has started, a ring of jobs and a ring of replies.
//!
//! ```text
//!  HEADER  +8       +16        +48      +56        +112       +176       +240
//! +-------+--------+--------+-+--------+--------+-+--------+-+--------+-+-----------------+--------------+
//! |started|reply   |job     | |job     |reply   | |job     | |reply   | | replies: 64 KiB | jobs: 32 KiB |
//! |       |tail    |head    | |tail    |head    | |sleeping| |sleeping| |                 |              |
//! +-------+--------+--------+-+--------+--------+-+--------+-+--------+-+-----------------+--------------+
//!  `- by the worker (a line) -'`- by the slot ---'`- a line each, written when a side sleeps -'
//! ```
//!
//! `started` is the gate through which the worker starts jobs: it holds the
//! number (in the order sent, from 0) of the next job the worker may
//! start. The worker starts job `k` by moving the word from `k` to `k + 1`
//! with a compare-and-swap, before the job runs; if the swap fails, the
//! slot took the job back, and the worker drops it. The slot
//! takes back every job not started by setting the word's top bit (the
//! fence): no swap succeeds after that, and the word's value says which
//! jobs had started. Before it sends the next job it opens the gate again
//! at that job's number, past the ones it took back. So when the worker
//! dies, or when the slot wants jobs back (their results were
//! dropped, or an idle worker could run them), the word says exactly which
//! jobs ran, without a message and even while a synchronous task holds
//! the worker's thread.
//!
//! Each ring has one producer and one consumer: the worker puts replies in
//! the reply ring for the slot, and the slot puts jobs in the job ring for
//! the worker. A record in a ring is safe the moment `tail` is published,
//! even if its producer dies right after, so neither side makes a system
//! call per message. `head` and `tail` are byte positions that only grow;
//! a record is an 8-byte length word and the encoded message, padded to 8
//! bytes, and a length of `u32::MAX` says the rest of the ring up to its
//! end is skipped. The producer writes only between `tail` and
//! `head + size`, and publishes with a release store of `tail`; the
//! consumer reads only between `head` and `tail`, and frees with a release
//! store of `head`.
//!
//! Either side may find anything in the page: a worker can write over
//! every word of it. So each side checks every position and length it
//! reads before it uses them: a bad one makes the slot's `pop_into` fail
//! (the worker is replaced), and makes the worker's `push` refuse (the
//! reply goes over the socket, where the slot notices) and its `pop_job`
//! fail (the worker exits).
//!
//! A ring's `sleeping` word is how its consumer asks to be woken: it sets
//! the word, looks at the ring once more, and only then waits on the
//! socket. A producer that publishes a record and finds the word set
//! clears it and sends a one-frame doorbell over the socket. A message
//! that does not fit its ring goes over the socket instead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::shm::{HEADER, Kind, Segment};

/// One ring in the page: where its words and its bytes are.
#[derive(Debug, Clone, Copy)]
struct Ring {
    /// Its index in [`Seen`].
    id: usize,
    head: usize,
    tail: usize,
    sleeping: usize,
    data: usize,
    size: u64,
}

impl Ring {
    /// Where byte position `pos` of the ring lies in the page.
    // Below the ring's size, which fits any `usize`.
    #[allow(clippy::cast_possible_truncation)]
    fn at(self, pos: u64) -> usize {
        self.data + (pos % self.size) as usize
    }
}

const STARTED: usize = HEADER;

/// The worker's replies to the slot.
///
/// The words are grouped by who writes them, one cache line each side, so
/// that a line moves between the processes only when the other side has
/// news: the worker's (the gate, the reply ring's `tail`, the job ring's
/// `head`) in the segment's first line, the slot's (the job ring's
/// `tail`, the reply ring's `head`) in the second. Each `sleeping` word
/// has a line of its own: a producer reads it after every record, and it
/// changes only when its consumer goes to sleep or wakes, so the read
/// finds it in the producer's cache. A producer reads its consumer's
/// `head` only when the ring looks full, and a consumer its producer's
/// `tail` only when it has taken every record it saw (see [`Seen`]).
const REPLIES: Ring = Ring {
    id: 0,
    head: HEADER + 56,
    tail: HEADER + 8,
    sleeping: HEADER + 176,
    data: HEADER + 240,
    size: 64 * 1024,
};

/// The slot's jobs for the worker.
// The reply ring's size fits any `usize`.
#[allow(clippy::cast_possible_truncation)]
const JOBS: Ring = Ring {
    id: 1,
    head: HEADER + 16,
    tail: HEADER + 48,
    sleeping: HEADER + 112,
    data: REPLIES.data + REPLIES.size as usize,
    size: 32 * 1024,
};

/// The top bit of `started`: the slot has taken back every job not
/// started.
const FENCE: u64 = 1 << 63;

/// The length word that skips to the end of the ring.
const WRAP: u32 = u32::MAX;

// The rings' sizes fit any `usize`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) const PAGE_LEN: usize = JOBS.data + JOBS.size as usize;

/// The largest reply the ring takes; a larger one goes over the socket.
pub(crate) const MAX_REPLY: usize = (REPLIES.size / 2) as usize - 8;

/// The largest job the ring takes; a larger one goes over the socket.
pub(crate) const MAX_JOB: usize = (JOBS.size / 2) as usize - 8;

/// A worker's shared page. Cloning shares the page, not what this handle
/// has seen of it.
#[derive(Debug)]
pub(crate) struct Page(Segment, Seen);

impl Clone for Page {
    fn clone(&self) -> Page {
        Page(self.0.clone(), Seen::default())
    }
}

crate::shm::segment_serde!(
    Page,
    Kind::PoolWorker,
    PAGE_LEN,
    |seg| Page(seg, Seen::default()),
    0
);

/// What this side last read of the other side's position in each ring,
/// in this process's memory: the consumer's `head` as its producer last
/// saw it, and the producer's `tail` as its consumer last saw it. A
/// position only grows, so an old one errs on the safe side (less room,
/// fewer records) and is read again only then: while the other side works
/// through a batch, its line is not pulled across. Every position, seen
/// or read, is checked at each use.
#[derive(Debug)]
struct Seen {
    /// Per ring (`Ring::id`): the consumer's `head`.
    head: [AtomicU64; 2],
    /// Per ring: the producer's `tail`.
    tail: [AtomicU64; 2],
}

impl Default for Seen {
    fn default() -> Seen {
        // Nothing seen: a value no check accepts, so the first use reads
        // the page.
        Seen {
            head: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
            tail: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
        }
    }
}

fn padded(len: usize) -> u64 {
    8 + (len as u64).div_ceil(8) * 8
}

impl Page {
    pub(crate) fn new() -> std::io::Result<Page> {
        Segment::create(Kind::PoolWorker, PAGE_LEN).map(|seg| Page(seg, Seen::default()))
    }

    // ---- the worker's side ----

    /// Starts job `seq`: true if the gate let it through, false if the
    /// slot took it back.
    pub(crate) fn try_start(&self, seq: u64) -> bool {
        // The fence bit is never a job number.
        let Some(next) = seq.checked_add(1).filter(|n| n & FENCE == 0) else {
            return false;
        };
        self.0
            .u64(STARTED)
            .compare_exchange(seq, next, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    /// Puts a reply in the ring. `None` if it does not fit (it goes over
    /// the socket instead); otherwise whether the slot asked to be
    /// woken (then the caller rings the doorbell).
    pub(crate) fn push(&self, reply: &[u8]) -> Option<bool> {
        self.push_to(REPLIES, reply)
    }

    /// Takes the next job from the job ring into `job`, as
    /// [`pop_into`](Page::pop_into) does replies.
    ///
    /// # Errors
    ///
    /// A description of what is wrong if the ring is in a state the slot
    /// cannot have left it in.
    pub(crate) fn pop_job(&self, job: &mut Vec<u8>) -> Result<bool, String> {
        self.pop_from(JOBS, job)
    }

    /// Watches the job ring for up to `d`, as [`watch`](Page::watch) does
    /// the reply ring.
    pub(crate) fn watch_jobs(&self, d: Duration) -> bool {
        self.watch_ring(JOBS, d)
    }

    /// Asks the slot to ring the doorbell for its next job; true if jobs
    /// already wait.
    pub(crate) fn sleep_jobs(&self) -> bool {
        self.sleep_on(JOBS)
    }

    /// Takes back a request for the job doorbell (the worker is awake).
    pub(crate) fn wake_jobs(&self) {
        self.wake_on(JOBS);
    }

    // ---- the slot's side ----

    /// Puts a job in the job ring. `None` if it does not fit; otherwise
    /// whether the worker asked to be woken (then the caller rings the
    /// doorbell).
    pub(crate) fn push_job(&self, job: &[u8]) -> Option<bool> {
        self.push_to(JOBS, job)
    }

    /// How many jobs, in the order sent, have started (or were taken
    /// back before the gate was last opened): job `k` has started if `k`
    /// is below this and still the slot's.
    pub(crate) fn started_count(&self) -> u64 {
        self.0.u64(STARTED).load(Ordering::SeqCst) & !FENCE
    }

    /// Closes the gate: no job starts from now on. Returns how many had
    /// started; every job from that number on is the slot's again.
    pub(crate) fn fence(&self) -> u64 {
        // One atomic step, so no loop a worker rewriting the word could
        // keep spinning.
        self.0.u64(STARTED).fetch_or(FENCE, Ordering::SeqCst) & !FENCE
    }

    /// Opens the gate at job `next`, the next one to be sent, after a
    /// fence. Jobs before it that had not started stay shut out.
    pub(crate) fn reopen(&self, next: u64) {
        self.0.u64(STARTED).store(next, Ordering::SeqCst);
    }

    /// Whether the gate is closed.
    pub(crate) fn fenced(&self) -> bool {
        self.0.u64(STARTED).load(Ordering::SeqCst) & FENCE != 0
    }

    /// Takes the next reply from the ring, if there is one.
    #[cfg(test)]
    fn pop(&self) -> Result<Option<Vec<u8>>, String> {
        let mut reply = Vec::new();
        Ok(self.pop_into(&mut reply)?.then_some(reply))
    }

    /// Takes the next reply from the ring into `reply` (its old contents
    /// dropped), reusing its memory. False if the ring was empty.
    ///
    /// # Errors
    ///
    /// A description of what is wrong if the worker left the ring in a
    /// state it cannot be in; the slot then treats the worker as
    /// broken.
    pub(crate) fn pop_into(&self, reply: &mut Vec<u8>) -> Result<bool, String> {
        self.pop_from(REPLIES, reply)
    }

    /// Watches the reply ring for up to `d`: true as soon as a reply is in
    /// it, false if none came (or `d` is zero).
    pub(crate) fn watch(&self, d: Duration) -> bool {
        self.watch_ring(REPLIES, d)
    }

    /// Takes back a request to be woken (the slot is awake).
    pub(crate) fn wake(&self) {
        self.wake_on(REPLIES);
    }

    /// Asks the worker to ring the doorbell for its next reply. Returns
    /// true if replies are already waiting (then there is no need to sleep).
    pub(crate) fn sleep(&self) -> bool {
        self.sleep_on(REPLIES)
    }

    // ---- either ring, from its producer's or its consumer's side ----

    /// The producer's push: see [`push`](Page::push).
    fn push_to(&self, r: Ring, record: &[u8]) -> Option<bool> {
        if record.len() as u64 > r.size / 2 - 8 {
            return None;
        }
        let need = padded(record.len());
        let tail = self.0.u64(r.tail).load(Ordering::Relaxed);
        if tail % 8 != 0 {
            return None;
        }
        let to_end = r.size - tail % r.size;
        let skip = if need > to_end { to_end } else { 0 };
        // Positions the consumer could not have left (out of order, too
        // far apart, off a record boundary, at the end of their range):
        // the message goes over the socket, where the other side notices.
        // Each term is at most the ring's size.
        let fits = |head: u64| {
            tail.checked_sub(head)
                .is_some_and(|used| used <= r.size && used + skip + need <= r.size)
        };
        let seen = &self.1.head[r.id];
        if !fits(seen.load(Ordering::Relaxed)) {
            let head = self.0.u64(r.head).load(Ordering::Acquire);
            if !fits(head) {
                return None;
            }
            seen.store(head, Ordering::Relaxed);
        }
        tail.checked_add(skip + need)?;
        if skip > 0 {
            self.write_at(r, tail, &u64::from(WRAP).to_ne_bytes());
        }
        let at = tail + skip;
        self.write_at(r, at, &(record.len() as u64).to_ne_bytes());
        self.write_at(r, at + 8, record);
        self.0.u64(r.tail).store(at + need, Ordering::SeqCst);
        // Ordered after the publication (both SeqCst): either the
        // consumer sees the record before it sleeps, or this sees its
        // request to be woken. Looked at before it is taken, so that a
        // consumer awake costs no write to its line.
        let sleeping = self.0.u32(r.sleeping);
        Some(sleeping.load(Ordering::SeqCst) == 1 && sleeping.swap(0, Ordering::SeqCst) == 1)
    }

    fn write_at(&self, r: Ring, pos: u64, bytes: &[u8]) {
        // SAFETY: each ring has one producer (the worker for replies, the
        // slot for jobs), the only one that writes its bytes, and it
        // writes only at positions from `tail` up to `head + size`
        // (checked by `push_to`), which the consumer does not read until
        // `tail` is published past them; the bytes are ordinary data,
        // never accessed as atomics. The range is inside the ring:
        // `pos % size` plus a record never crosses the ring's end
        // (`push_to` skips to the start first), and a wrap marker is
        // written only at a `tail` that is a multiple of 8 (checked by
        // `push_to`), so before the end too.
        unsafe { self.0.write_bytes(r.at(pos), bytes) }
    }

    /// The consumer's pop: see [`pop_into`](Page::pop_into).
    fn pop_from(&self, r: Ring, out: &mut Vec<u8>) -> Result<bool, String> {
        let head_word = self.0.u64(r.head);
        let mut head = head_word.load(Ordering::Relaxed);
        let seen = &self.1.tail[r.id];
        let mut tail = seen.load(Ordering::Relaxed);
        if tail == head || tail.wrapping_sub(head) > r.size {
            // Every record seen is taken (or nothing was seen yet).
            tail = self.0.u64(r.tail).load(Ordering::Acquire);
            seen.store(tail, Ordering::Relaxed);
        }
        // At most two rounds: a wrap marker, then a record at offset 0.
        for _ in 0..2 {
            if head == tail {
                return Ok(false);
            }
            if tail < head || tail - head > r.size {
                return Err(format!("ring positions out of order: {head}..{tail}"));
            }
            if head % 8 != 0 || tail % 8 != 0 {
                return Err(format!(
                    "ring positions off a record boundary: {head}..{tail}"
                ));
            }
            let mut word = [0u8; 8];
            self.read_at(r, head, &mut word);
            let len = u64::from_ne_bytes(word);
            let to_end = r.size - head % r.size;
            if len == u64::from(WRAP) {
                // Only a record that did not fit before the end is moved
                // to the start, so something follows the marker.
                if to_end >= tail - head {
                    return Err(format!("ring wrap marker at {head} with nothing after it"));
                }
                head += to_end;
                continue;
            }
            if len > r.size {
                return Err(format!("ring record of {len} bytes"));
            }
            // At most the ring's size (checked above), so it fits.
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            let need = padded(len);
            if need > to_end || need > tail - head {
                return Err(format!("ring record of {len} bytes is out of bounds"));
            }
            out.clear();
            out.resize(len, 0);
            self.read_at(r, head + 8, out);
            head_word.store(head + need, Ordering::Release);
            return Ok(true);
        }
        Err(format!("ring holds two wrap markers in a row at {head}"))
    }

    fn read_at(&self, r: Ring, pos: u64, out: &mut [u8]) {
        // SAFETY: each ring has one consumer (the slot for replies, the
        // worker for jobs), and it reads only between `head` and the
        // published `tail` (checked by `pop_from`), which the producer
        // does not write again until `head` moves past them; the bytes are
        // ordinary data. The range is inside the ring: `pop_from` reads a
        // length word only at a multiple of 8 (so all 8 bytes are before
        // the ring's end) and checks the record against the ring's end.
        unsafe { self.0.read_bytes(r.at(pos), out) }
    }

    fn watch_ring(&self, r: Ring, d: Duration) -> bool {
        if d.is_zero() {
            return false;
        }
        let until = Instant::now() + d;
        let (tail, head) = (self.0.u64(r.tail), self.0.u64(r.head));
        loop {
            // The clock is read once every few dozen looks: reading it
            // costs more than a look.
            for _ in 0..32 {
                if tail.load(Ordering::Acquire) != head.load(Ordering::Relaxed) {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    fn wake_on(&self, r: Ring) {
        self.0.u32(r.sleeping).store(0, Ordering::Relaxed);
    }

    fn sleep_on(&self, r: Ring) -> bool {
        self.0.u32(r.sleeping).store(1, Ordering::SeqCst);
        let waiting =
            self.0.u64(r.tail).load(Ordering::SeqCst) != self.0.u64(r.head).load(Ordering::Relaxed);
        if waiting {
            self.0.u32(r.sleeping).store(0, Ordering::Relaxed);
        }
        waiting
    }
}

/// Lays a fuzz input over a real page's words and one of its rings, as the
/// other side might have written them, then pops, pushes and works the
/// gate (see `crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static PAGE: OnceLock<Page> = OnceLock::new();
    let page = PAGE.get_or_init(|| Page::new().expect("a page"));
    let seg = &page.0;
    seg.u64(STARTED).store(input.u64(), Ordering::SeqCst);
    let ops = input.u8();
    let r = if ops & 1 == 0 { REPLIES } else { JOBS };
    let head = input.u64();
    seg.u64(r.head).store(head, Ordering::SeqCst);
    seg.u64(r.tail)
        .store(input.near(head, 2 * r.size), Ordering::SeqCst);
    seg.u32(r.sleeping).store(input.u32(), Ordering::SeqCst);
    // The rest of the input lies in the ring from `head` on, wrapping.
    let size = r.size as usize;
    let mut ring = vec![0u8; size];
    let start = (head % r.size) as usize;
    for (i, b) in input.rest().iter().take(size).enumerate() {
        ring[(start + i) % size] = *b;
    }
    // SAFETY: the fuzzer runs one input at a time on one thread, and no
    // other process maps this page, so nothing else touches the ring.
    unsafe { seg.write_bytes(r.data, &ring) };
    let mut out = Vec::new();
    for i in 0..4u8 {
        match ops >> (2 * i) & 3 {
            0 => {
                for _ in 0..4 {
                    match page.pop_from(r, &mut out) {
                        Ok(true) => assert!(out.len() as u64 <= r.size),
                        Ok(false) | Err(_) => break,
                    }
                }
            }
            1 => {
                let len = (usize::from(ops) * 31 + usize::from(i)) % (size / 2 + 2);
                let _ = page.push_to(r, &vec![i; len]);
            }
            2 => {
                let started = page.started_count();
                assert_eq!(started & FENCE, 0);
                let _ = page.try_start(started);
                let _ = page.fenced();
            }
            _ => {
                let started = page.fence();
                assert_eq!(started & FENCE, 0);
                assert!(page.fenced());
                page.reopen(started.wrapping_add(u64::from(i)));
                if !page.sleep_on(r) {
                    page.wake_on(r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_come_out_in_order_across_many_wraps() {
        let page = Page::new().unwrap();
        let mut next_out = 0u32;
        for round in 0..20_000u32 {
            let len = (round as usize * 7919) % 3000;
            let reply: Vec<u8> = (0..len)
                .map(|i| (i ^ round as usize).to_le_bytes()[0])
                .collect();
            let mut pushed = page.push(&reply);
            if pushed.is_none() {
                // Full: drain, then it fits.
                while let Some(r) = page.pop().unwrap() {
                    let want = (next_out as usize * 7919) % 3000;
                    assert_eq!(r.len(), want);
                    next_out += 1;
                }
                pushed = page.push(&reply);
            }
            assert!(pushed.is_some(), "round {round}");
            if round % 3 == 0 {
                let r = page.pop().unwrap().expect("a reply");
                let want = (next_out as usize * 7919) % 3000;
                assert_eq!(r.len(), want);
                assert!(
                    r.iter()
                        .enumerate()
                        .all(|(i, b)| *b == (i ^ next_out as usize).to_le_bytes()[0])
                );
                next_out += 1;
            }
        }
        while page.pop().unwrap().is_some() {
            next_out += 1;
        }
        assert_eq!(next_out, 20_000);
    }

    #[test]
    fn jobs_and_replies_keep_to_their_own_rings() {
        let page = Page::new().unwrap();
        let mut job = Vec::new();
        for round in 0..5_000u32 {
            let j = vec![(round % 251) as u8; (round as usize * 31) % MAX_JOB];
            let r = vec![(round % 241) as u8 ^ 0x5a; (round as usize * 17) % 3000];
            assert!(page.push_job(&j).is_some(), "round {round}");
            assert!(page.push(&r).is_some(), "round {round}");
            assert!(page.pop_job(&mut job).unwrap());
            assert_eq!(job, j, "round {round}: the job");
            assert_eq!(page.pop().unwrap().unwrap(), r, "round {round}: the reply");
        }
        assert!(!page.pop_job(&mut job).unwrap());
        assert!(page.pop().unwrap().is_none());
    }

    #[test]
    fn a_job_too_big_for_its_ring_is_refused() {
        let page = Page::new().unwrap();
        assert!(page.push_job(&vec![1u8; MAX_JOB + 1]).is_none());
        assert!(page.push_job(&vec![1u8; MAX_JOB]).is_some());
        // The ring holds half its size more at most: the next big one
        // waits for room.
        assert!(page.push_job(&vec![2u8; MAX_JOB]).is_some());
        assert!(page.push_job(&vec![3u8; MAX_JOB]).is_none(), "full");
        let mut job = Vec::new();
        assert!(page.pop_job(&mut job).unwrap());
        assert!(page.push_job(&vec![3u8; MAX_JOB]).is_some(), "room again");
    }

    #[test]
    fn the_job_doorbell_is_asked_for_once() {
        let page = Page::new().unwrap();
        assert!(!page.sleep_jobs(), "nothing waits yet");
        assert!(!page.sleep(), "the reply ring's word is its own");
        page.wake();
        assert_eq!(page.push_job(b"a"), Some(true), "the worker sleeps");
        assert_eq!(page.push_job(b"b"), Some(false), "already rung");
        assert!(page.sleep_jobs(), "jobs wait: no need to sleep");
        assert!(page.watch_jobs(std::time::Duration::from_micros(1)));
    }

    #[test]
    fn jobs_cross_between_threads_intact_and_in_order() {
        let page = Page::new().unwrap();
        let worker = page.clone();
        const N: u32 = 50_000;
        let t = std::thread::spawn(move || {
            let mut job = Vec::new();
            let mut next = 0u32;
            while next < N {
                if !worker.pop_job(&mut job).unwrap() {
                    std::hint::spin_loop();
                    continue;
                }
                let len = (next as usize * 7919) % 2000 + 4;
                assert_eq!(job.len(), len, "job {next}");
                assert_eq!(job[..4], next.to_le_bytes(), "job {next}");
                assert!(job[4..].iter().all(|&b| b == next.to_le_bytes()[0]));
                next += 1;
            }
        });
        for k in 0..N {
            let len = (k as usize * 7919) % 2000 + 4;
            let mut j = vec![k.to_le_bytes()[0]; len];
            j[..4].copy_from_slice(&k.to_le_bytes());
            while page.push_job(&j).is_none() {
                std::hint::spin_loop();
            }
        }
        t.join().unwrap();
    }

    #[test]
    fn the_gate_starts_jobs_in_order_and_shuts_out_the_ones_taken_back() {
        let page = Page::new().unwrap();
        assert!(page.try_start(0));
        assert!(page.try_start(1));
        assert!(!page.try_start(3), "job 2 has not started");
        assert_eq!(page.fence(), 2, "jobs 0 and 1 started");
        assert!(page.fenced());
        assert!(!page.try_start(2), "taken back");
        assert_eq!(page.fence(), 2, "a second fence changes nothing");
        assert_eq!(page.started_count(), 2);
        // Jobs 2 to 4 were sent and taken back; job 5 is sent next.
        page.reopen(5);
        assert!(!page.fenced());
        for taken_back in 2..5 {
            assert!(!page.try_start(taken_back));
        }
        assert!(page.try_start(5));
        assert_eq!(page.started_count(), 6);
    }

    #[test]
    fn a_start_and_a_fence_racing_agree() {
        for _ in 0..200 {
            let page = Page::new().unwrap();
            let worker = page.clone();
            let t = std::thread::spawn(move || {
                (0..1000u64).take_while(|&k| worker.try_start(k)).count()
            });
            let fenced_at = page.fence();
            let started = t.join().unwrap() as u64;
            assert_eq!(
                started, fenced_at,
                "the worker started exactly the jobs the fence counted"
            );
        }
    }

    #[test]
    fn a_reply_too_big_for_the_ring_is_refused() {
        let page = Page::new().unwrap();
        assert!(page.push(&vec![0u8; MAX_REPLY + 1]).is_none());
        assert!(page.push(&[1, 2, 3]).is_some());
    }

    #[test]
    fn the_doorbell_is_asked_for_once() {
        let page = Page::new().unwrap();
        assert!(!page.sleep(), "nothing waits yet");
        assert_eq!(page.push(b"a"), Some(true), "the slot sleeps");
        assert_eq!(page.push(b"b"), Some(false), "already rung");
        assert!(page.sleep(), "replies wait: no need to sleep");
    }

    fn survives<R>(f: impl FnOnce() -> R) -> Option<R> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
    }

    #[test]
    fn a_head_off_a_record_boundary_is_an_error_not_a_panic() {
        let page = Page::new().unwrap();
        // 8 bytes read at 65532 would cross the end of the page.
        page.0
            .u64(REPLIES.head)
            .store(REPLIES.size - 4, Ordering::Release);
        page.0
            .u64(REPLIES.tail)
            .store(REPLIES.size + 16, Ordering::Release);
        let r = survives(|| page.pop()).expect("pop panicked");
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn positions_at_the_end_of_their_range_are_an_error_not_a_panic() {
        let page = Page::new().unwrap();
        // A wrap marker whose skip would carry `head` past 2^64.
        for (head, tail) in [(u64::MAX - 7, u64::MAX), (u64::MAX - 15, u64::MAX - 7)] {
            page.0.u64(REPLIES.head).store(head, Ordering::Release);
            page.0.u64(REPLIES.tail).store(tail, Ordering::Release);
            page.write_at(REPLIES, head, &u64::from(WRAP).to_ne_bytes());
            let r = survives(|| page.pop()).expect("pop panicked");
            assert!(r.is_err(), "{head}..{tail}: {r:?}");
        }
    }

    #[test]
    fn the_worker_survives_bad_positions_from_the_supervisor() {
        let page = Page::new().unwrap();
        for (head, tail) in [(1000, 0), (0, REPLIES.size * 5), (0, u64::MAX - 3), (3, 3)] {
            page.0.u64(REPLIES.head).store(head, Ordering::Release);
            page.0.u64(REPLIES.tail).store(tail, Ordering::Release);
            let r = survives(|| page.push(b"reply")).unwrap_or_else(|| panic!("{head}..{tail}"));
            assert_eq!(r, None, "{head}..{tail}: over the socket instead");
        }
    }

    #[test]
    fn a_gate_word_with_every_bit_set_is_no_panic() {
        let page = Page::new().unwrap();
        page.0.u64(STARTED).store(u64::MAX, Ordering::SeqCst);
        let r = survives(|| (page.fenced(), page.fence(), page.started_count()));
        assert_eq!(r, Some((true, u64::MAX >> 1, u64::MAX >> 1)));
        page.0.u64(STARTED).store(u64::MAX >> 1, Ordering::SeqCst);
        assert!(survives(|| page.try_start(u64::MAX >> 1)).is_some());
        assert!(survives(|| page.try_start(u64::MAX)).is_some());
    }

    #[test]
    fn a_corrupt_ring_is_an_error_not_a_panic() {
        let page = Page::new().unwrap();
        page.push(b"hello").unwrap();
        page.0
            .u64(REPLIES.tail)
            .store(REPLIES.size * 3, Ordering::Release);
        assert!(page.pop().is_err());
        page.0.u64(REPLIES.tail).store(16, Ordering::Release);
        page.0.u64(REPLIES.head).store(0, Ordering::Release);
        page.write_at(REPLIES, 0, &(REPLIES.size * 2).to_ne_bytes());
        assert!(page.pop().is_err());
    }
}
