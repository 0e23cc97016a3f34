//! The page of memory a worker shares with its slot in the parent: which jobs it
//! has started, and a ring of replies.
//!
//! ```text
//!  HEADER   +8      +16     +24       +32
//! +--------+-------+-------+---------+--------------------------+
//! | started| head  | tail  | sleeping| ring: RING bytes          |
//! +--------+-------+-------+---------+--------------------------+
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
//! The ring carries the worker's replies, one producer (the worker) and
//! one consumer (the slot). A reply in the ring is safe the moment
//! `tail` is published, even if the worker dies right after, so the worker
//! need not make a system call per reply. `head` and `tail` are byte
//! positions that only grow; a record is an 8-byte length word and the
//! encoded reply, padded to 8 bytes, and a length of `u32::MAX` says the
//! rest of the ring up to its end is skipped. The worker writes only
//! between `tail` and `head + RING`, and publishes with a release store of
//! `tail`; the slot reads only between `head` and `tail`, and frees
//! with a release store of `head`.
//!
//! Either side may find anything in the page: a worker can write over
//! every word of it. So the slot checks every position and length
//! it reads before it uses them (a bad one makes `pop_into` fail, and the
//! worker is replaced), and the worker does the same with the words the
//! slot writes (a bad one sends the reply over the socket).
//!
//! `sleeping` is how the slot asks to be woken: it sets the word,
//! looks at the ring once more, and only then waits on the socket. A
//! worker that publishes a reply and finds the word set clears it and
//! sends a one-frame doorbell over the socket. A reply that does not fit
//! goes over the socket instead.

use std::sync::atomic::Ordering;

use crate::shm::{HEADER, Kind, Segment};

/// Bytes of the reply ring.
const RING: u64 = 64 * 1024;

const STARTED: usize = HEADER;
const HEAD: usize = HEADER + 8;
const TAIL: usize = HEADER + 16;
const SLEEPING: usize = HEADER + 24;
const DATA: usize = HEADER + 32;

/// The top bit of `started`: the slot has taken back every job not
/// started.
const FENCE: u64 = 1 << 63;

/// The length word that skips to the end of the ring.
const WRAP: u32 = u32::MAX;

// 64 KiB fits any `usize`.
#[allow(clippy::cast_possible_truncation)]
pub(crate) const PAGE_LEN: usize = DATA + RING as usize;

/// The largest reply the ring takes; a larger one goes over the socket.
pub(crate) const MAX_REPLY: usize = (RING / 2) as usize - 8;

/// A worker's shared page. Cloning shares it.
#[derive(Debug, Clone)]
pub(crate) struct Page(Segment);

crate::shm::segment_serde!(Page, Kind::PoolWorker, PAGE_LEN, |seg| Page(seg), 0);

fn padded(len: usize) -> u64 {
    8 + (len as u64).div_ceil(8) * 8
}

impl Page {
    pub(crate) fn new() -> std::io::Result<Page> {
        Segment::create(Kind::PoolWorker, PAGE_LEN).map(Page)
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
        if reply.len() > MAX_REPLY {
            return None;
        }
        let need = padded(reply.len());
        let tail = self.0.u64(TAIL).load(Ordering::Relaxed);
        let head = self.0.u64(HEAD).load(Ordering::Acquire);
        // Positions the slot could not have left (out of order, too
        // far apart, off a record boundary, at the end of their range):
        // the reply goes over the socket, where the slot notices.
        let used = tail.checked_sub(head).filter(|&u| u <= RING)?;
        if tail % 8 != 0 {
            return None;
        }
        let to_end = RING - tail % RING;
        let skip = if need > to_end { to_end } else { 0 };
        // Each term is at most `RING`.
        if used + skip + need > RING {
            return None;
        }
        tail.checked_add(skip + need)?;
        if skip > 0 {
            self.write_at(tail, &(WRAP as u64).to_ne_bytes());
        }
        let at = tail + skip;
        self.write_at(at, &(reply.len() as u64).to_ne_bytes());
        self.write_at(at + 8, reply);
        self.0.u64(TAIL).store(at + need, Ordering::SeqCst);
        // Ordered after the publication (both SeqCst): either the
        // slot sees the reply before it sleeps, or this sees its
        // request to be woken.
        Some(self.0.u32(SLEEPING).swap(0, Ordering::SeqCst) == 1)
    }

    fn write_at(&self, pos: u64, bytes: &[u8]) {
        // SAFETY: the worker is the ring's only writer, and it writes only
        // at positions from `tail` up to `head + RING` (checked by `push`),
        // which the slot does not read until `tail` is published
        // past them; the bytes are ordinary data, never accessed as
        // atomics. The range is inside the mapping: `pos % RING` plus a
        // record never crosses the ring's end (`push` skips to the start
        // first), and a wrap marker is written only at a `tail` that is a
        // multiple of 8 (checked by `push`), so before the end too.
        unsafe { self.0.write_bytes(DATA + (pos % RING) as usize, bytes) }
    }

    // ---- the slot's side ----

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
        let head_word = self.0.u64(HEAD);
        let mut head = head_word.load(Ordering::Relaxed);
        let tail = self.0.u64(TAIL).load(Ordering::Acquire);
        // At most two rounds: a wrap marker, then a record at offset 0.
        for _ in 0..2 {
            if head == tail {
                return Ok(false);
            }
            if tail < head || tail - head > RING {
                return Err(format!("reply ring positions out of order: {head}..{tail}"));
            }
            if head % 8 != 0 || tail % 8 != 0 {
                return Err(format!(
                    "reply ring positions off a record boundary: {head}..{tail}"
                ));
            }
            let mut word = [0u8; 8];
            self.read_at(head, &mut word);
            let len = u64::from_ne_bytes(word);
            let to_end = RING - head % RING;
            if len == u64::from(WRAP) {
                // Only a record that did not fit before the end is moved
                // to the start, so something follows the marker.
                if to_end >= tail - head {
                    return Err(format!(
                        "reply ring wrap marker at {head} with nothing after it"
                    ));
                }
                head += to_end;
                continue;
            }
            if len > RING {
                return Err(format!("reply ring record of {len} bytes"));
            }
            // At most `RING` (checked above), so it fits.
            let len = usize::try_from(len).map_err(|e| e.to_string())?;
            let need = padded(len);
            if need > to_end || need > tail - head {
                return Err(format!("reply ring record of {len} bytes is out of bounds"));
            }
            reply.clear();
            reply.resize(len, 0);
            self.read_at(head + 8, reply);
            head_word.store(head + need, Ordering::Release);
            return Ok(true);
        }
        Err(format!(
            "reply ring holds two wrap markers in a row at {head}"
        ))
    }

    fn read_at(&self, pos: u64, out: &mut [u8]) {
        // SAFETY: the slot is the ring's only reader, and it reads
        // only between `head` and the published `tail` (checked by
        // `pop_into`), which the worker does not write again until `head`
        // moves past them; the bytes are ordinary data. The range is
        // inside the mapping: `pop_into` reads a length word only at a
        // multiple of 8 (so all 8 bytes are before the ring's end) and
        // checks the record against the ring's end.
        unsafe { self.0.read_bytes(DATA + (pos % RING) as usize, out) }
    }

    /// Watches the ring for up to `d`: true as soon as a reply is in it,
    /// false if none came (or `d` is zero).
    pub(crate) fn watch(&self, d: std::time::Duration) -> bool {
        if d.is_zero() {
            return false;
        }
        let until = std::time::Instant::now() + d;
        loop {
            if self.0.u64(TAIL).load(Ordering::Acquire) != self.0.u64(HEAD).load(Ordering::Relaxed)
            {
                return true;
            }
            if std::time::Instant::now() >= until {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Takes back a request to be woken (the slot is awake).
    pub(crate) fn wake(&self) {
        self.0.u32(SLEEPING).store(0, Ordering::Relaxed);
    }

    /// Asks the worker to ring the doorbell for its next reply. Returns
    /// true if replies are already waiting (then there is no need to sleep).
    pub(crate) fn sleep(&self) -> bool {
        self.0.u32(SLEEPING).store(1, Ordering::SeqCst);
        let waiting =
            self.0.u64(TAIL).load(Ordering::SeqCst) != self.0.u64(HEAD).load(Ordering::Relaxed);
        if waiting {
            self.0.u32(SLEEPING).store(0, Ordering::Relaxed);
        }
        waiting
    }
}

/// Lays a fuzz input over a real page's words and reply ring, as a worker
/// (or, for the worker's side, a slot) might have written them, then
/// pops, pushes and works the gate (see `crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static PAGE: OnceLock<Page> = OnceLock::new();
    let page = PAGE.get_or_init(|| Page::new().expect("a page"));
    let seg = &page.0;
    seg.u64(STARTED).store(input.u64(), Ordering::SeqCst);
    let head = input.u64();
    seg.u64(HEAD).store(head, Ordering::SeqCst);
    seg.u64(TAIL)
        .store(input.near(head, 2 * RING), Ordering::SeqCst);
    seg.u32(SLEEPING).store(input.u32(), Ordering::SeqCst);
    let ops = input.u8();
    // The rest of the input lies in the ring from `head` on, wrapping.
    let mut ring = vec![0u8; PAGE_LEN - DATA];
    let start = (head % RING) as usize;
    for (i, b) in input.rest().iter().take(ring.len()).enumerate() {
        ring[(start + i) % (PAGE_LEN - DATA)] = *b;
    }
    // SAFETY: the fuzzer runs one input at a time on one thread, and no
    // other process maps this page, so nothing else touches the ring.
    unsafe { seg.write_bytes(DATA, &ring) };
    let mut reply = Vec::new();
    for i in 0..4u8 {
        match ops >> (2 * i) & 3 {
            0 => {
                for _ in 0..4 {
                    match page.pop_into(&mut reply) {
                        Ok(true) => assert!(reply.len() as u64 <= RING),
                        Ok(false) | Err(_) => break,
                    }
                }
            }
            1 => {
                let len = (usize::from(ops) * 31 + usize::from(i)) % (MAX_REPLY + 2);
                let _ = page.push(&vec![i; len]);
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
                if !page.sleep() {
                    page.wake();
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
        assert!(page.push(&vec![0u8; PAGE_LEN - DATA]).is_none());
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
        page.0.u64(HEAD).store(RING - 4, Ordering::Release);
        page.0.u64(TAIL).store(RING + 16, Ordering::Release);
        let r = survives(|| page.pop()).expect("pop panicked");
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn positions_at_the_end_of_their_range_are_an_error_not_a_panic() {
        let page = Page::new().unwrap();
        // A wrap marker whose skip would carry `head` past 2^64.
        for (head, tail) in [(u64::MAX - 7, u64::MAX), (u64::MAX - 15, u64::MAX - 7)] {
            page.0.u64(HEAD).store(head, Ordering::Release);
            page.0.u64(TAIL).store(tail, Ordering::Release);
            page.write_at(head, &u64::from(WRAP).to_ne_bytes());
            let r = survives(|| page.pop()).expect("pop panicked");
            assert!(r.is_err(), "{head}..{tail}: {r:?}");
        }
    }

    #[test]
    fn the_worker_survives_bad_positions_from_the_supervisor() {
        let page = Page::new().unwrap();
        for (head, tail) in [(1000, 0), (0, RING * 5), (0, u64::MAX - 3), (3, 3)] {
            page.0.u64(HEAD).store(head, Ordering::Release);
            page.0.u64(TAIL).store(tail, Ordering::Release);
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
        page.0.u64(TAIL).store(RING * 3, Ordering::Release);
        assert!(page.pop().is_err());
        page.0.u64(TAIL).store(16, Ordering::Release);
        page.0.u64(HEAD).store(0, Ordering::Release);
        page.write_at(0, &(RING * 2).to_ne_bytes());
        assert!(page.pop().is_err());
    }
}
