//! [`Barrier`]: a meeting point for a fixed number of parties, shared
//! between processes.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::shm::park::{Park, deadline_after, slice};
use crate::shm::{HEADER, Kind, ReceivedFd, Segment, SegmentFd};
use crate::sync::error::BrokenBarrier;
use crate::sys::futex;

/// The barrier's state word (the futex word), see [`State`].
const STATE: usize = HEADER;
/// The number of parties, read by a child when it receives the barrier.
const PARTIES: usize = HEADER + 4;
const LEN: usize = HEADER + 8;

/// The most parties a barrier can have.
pub(crate) const MAX_PARTIES: u32 = COUNT_MASK;

const COUNT_MASK: u32 = (1 << 15) - 1;
const MODE_SHIFT: u32 = 15;
const GEN_SHIFT: u32 = 17;

/// Parties arrive and wait for the round to fill.
const FILLING: u32 = 0;
/// `reset` was called while parties waited: they leave with an error, and
/// the last to leave opens the next round.
const RESETTING: u32 = 1;
/// Broken until `reset`.
const BROKEN: u32 = 2;

/// The state word, unpacked:
///
/// ```text
///  31 ............. 17  16  15  14 ............. 0
/// +--------------------+------+--------------------+
/// | generation (15 b)  | mode |  count (15 bits)   |
/// +--------------------+------+--------------------+
/// ```
///
/// `count` is the number of parties inside the current round (arrived and
/// not yet left); it reaches `parties` when the last one arrives, which
/// then runs the action and opens the next round: count 0, generation + 1.
/// A waiter leaves with its index as soon as the generation differs from
/// the one it arrived in; it leaves with an error when the mode says
/// broken or resetting first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    generation: u32,
    mode: u32,
    count: u32,
}

impl State {
    fn unpack(w: u32) -> State {
        let mode = (w >> MODE_SHIFT) & 0b11;
        State {
            generation: w >> GEN_SHIFT,
            // The fourth mode is never written; another process that
            // wrote it broke the barrier.
            mode: mode.min(BROKEN),
            count: w & COUNT_MASK,
        }
    }

    fn pack(self) -> u32 {
        ((self.generation & ((1 << 15) - 1)) << GEN_SHIFT) | (self.mode << MODE_SHIFT) | self.count
    }
}

/// Where a party stands after trying to enter a round.
enum Entry {
    /// Waiting in `generation` with arrival `index`.
    Waiting { generation: u32, index: usize },
    /// The last to arrive, holding the round full: run the action.
    Last { index: usize },
    /// Must wait for the word to move on from this value first.
    Blocked(u32),
}

/// Where a waiting party stands.
enum Progress {
    Done(Result<usize, BrokenBarrier>),
    Sleep(u32),
}

/// A barrier that a fixed number of parties, in any processes, meet at:
/// Python's `multiprocessing.Barrier`.
///
/// Each of the `n` parties calls [`wait`](Self::wait); all of them are
/// released together when the `n`-th arrives, each with a distinct index
/// from `0` to `n - 1` (its order of arrival). The barrier can then be
/// used again, as many rounds as wanted. An action given to
/// [`with_action`](Self::with_action) runs once per round, in the process
/// of the last party to arrive, before anyone is released.
///
/// The barrier breaks when a waiter times out, on [`abort`](Self::abort),
/// or when the action panics: every party waiting then, and every one that
/// arrives later, gets [`BrokenBarrier`] until [`reset`](Self::reset).
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn round_done() {
///     println!("everyone is here");
/// }
///
/// async fn party(barrier: mp::Barrier) -> usize {
///     barrier.wait().await.expect("not broken")
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let barrier = mp::Barrier::with_action(3, round_done)?;
///     let a = mp::Process::builder().spawn(party, barrier.clone()).await?;
///     let b = mp::Process::builder().spawn(party, barrier.clone()).await?;
///     let mine = barrier.wait().await.expect("not broken");
///     let mut indexes = vec![mine, a.join().await?, b.join().await?];
///     indexes.sort();
///     assert_eq!(indexes, [0, 1, 2]);
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Barrier {
    seg: Segment,
    /// Kept here, not read back from the segment, which another process
    /// could rewrite.
    parties: u32,
    /// Kept here, for the same reason: a function pointer read from shared
    /// memory would let any process that maps it choose what this one
    /// calls.
    action: Option<fn()>,
}

/// A barrier travels as its segment and its action's distance from the
/// crate's anchor (see `crate::target`).
impl Serialize for Barrier {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let action = self.action.map(crate::target::fn_to_offset);
        (SegmentFd(&self.seg), action).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Barrier {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        // The descriptor decodes only inside `handle::provide_handles`, so the
        // action below is reached only for arguments from our parent.
        let (fd, action): (ReceivedFd, Option<i64>) = Deserialize::deserialize(deserializer)?;
        let seg = Segment::open(fd.0, Kind::Barrier, LEN).map_err(D::Error::custom)?;
        let parties = seg.u32(PARTIES).load(Ordering::Acquire);
        if !(1..=MAX_PARTIES).contains(&parties) {
            return Err(D::Error::custom(format!(
                "a barrier segment of {parties} parties"
            )));
        }
        let action = action.map(|offset| {
            // SAFETY: descriptors are provided only while a child decodes
            // its target's arguments (`bootstrap::run_target`), after the
            // handshake proved that the parent runs this same executable
            // image; the parent wrote `offset` with `fn_to_offset` from a
            // `fn()` in `serialize` above.
            unsafe { crate::target::fn_from_offset(offset) }
        });
        Ok(Barrier {
            seg,
            parties,
            action,
        })
    }
}

impl Barrier {
    /// Creates a barrier for `parties` parties, with no action.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `parties` is 0 or above 32767; otherwise when the
    /// shared memory cannot be created.
    pub fn new(parties: u32) -> std::io::Result<Barrier> {
        Self::create(parties, None)
    }

    /// Creates a barrier whose `action` runs once per round, in the last
    /// party to arrive, before the others are released.
    ///
    /// The action is a plain function (or a closure that captures
    /// nothing). It is named across processes as a target is, so it runs
    /// in whichever process arrives last, which must be this program or a
    /// child of it. If it panics, the barrier breaks and the panic goes on
    /// in the party that ran it.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_action(parties: u32, action: fn()) -> std::io::Result<Barrier> {
        Self::create(parties, Some(action))
    }

    fn create(parties: u32, action: Option<fn()>) -> std::io::Result<Barrier> {
        if parties == 0 || parties > MAX_PARTIES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("a barrier needs 1 to {MAX_PARTIES} parties, not {parties}"),
            ));
        }
        let seg = Segment::create(Kind::Barrier, LEN)?;
        seg.u32(PARTIES).store(parties, Ordering::Release);
        Ok(Barrier {
            seg,
            parties,
            action,
        })
    }

    fn state(&self) -> &AtomicU32 {
        self.seg.u32(STATE)
    }

    /// The number of parties the barrier waits for.
    pub fn parties(&self) -> u32 {
        self.parties
    }

    /// How many parties wait in the current round.
    pub fn n_waiting(&self) -> u32 {
        let s = State::unpack(self.state().load(Ordering::Acquire));
        if s.mode == FILLING { s.count } else { 0 }
    }

    /// Whether the barrier is broken.
    pub fn is_broken(&self) -> bool {
        State::unpack(self.state().load(Ordering::Acquire)).mode == BROKEN
    }

    fn cas(&self, from: u32, to: State) -> Result<(), u32> {
        self.state()
            .compare_exchange(from, to.pack(), Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    fn wake(&self) {
        futex::wake_all(self.state());
    }

    fn enter(&self) -> Result<Entry, BrokenBarrier> {
        let parties = self.parties;
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            // More parties inside than the barrier has: another process
            // wrote the count. Waiting could never end.
            if s.mode == BROKEN || s.count > parties {
                return Err(BrokenBarrier);
            }
            if s.mode == RESETTING || s.count >= parties {
                return Ok(Entry::Blocked(w));
            }
            let next = State {
                count: s.count + 1,
                ..s
            };
            match self.cas(w, next) {
                Ok(()) if next.count == parties => {
                    return Ok(Entry::Last {
                        index: s.count as usize,
                    });
                }
                Ok(()) => {
                    return Ok(Entry::Waiting {
                        generation: s.generation,
                        index: s.count as usize,
                    });
                }
                Err(now) => w = now,
            }
        }
    }

    /// Takes this party out of a broken or resetting round; the last out
    /// of a resetting round opens the next one.
    fn leave_broken(&self) -> BrokenBarrier {
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            let mut next = State {
                count: s.count.saturating_sub(1),
                ..s
            };
            if s.mode == RESETTING && next.count == 0 {
                next.mode = FILLING;
                next.generation = s.generation.wrapping_add(1);
            }
            match self.cas(w, next) {
                Ok(()) => {
                    if next.mode != s.mode || next.count == 0 {
                        self.wake();
                    }
                    return BrokenBarrier;
                }
                Err(now) => w = now,
            }
        }
    }

    /// Breaks the barrier and takes this party out of the round.
    fn break_and_leave(&self) -> BrokenBarrier {
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            if s.mode != FILLING {
                return self.leave_broken();
            }
            let next = State {
                mode: BROKEN,
                count: s.count.saturating_sub(1),
                ..s
            };
            match self.cas(w, next) {
                Ok(()) => {
                    self.wake();
                    return BrokenBarrier;
                }
                Err(now) => w = now,
            }
        }
    }

    /// The last party: run the action, then open the next round.
    fn finish_round(&self, index: usize) -> Result<usize, BrokenBarrier> {
        if let Err(payload) = std::panic::catch_unwind(|| self.run_action()) {
            self.break_and_leave();
            std::panic::resume_unwind(payload);
        }
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            if s.mode != FILLING {
                // Broken or reset while the action ran.
                return Err(self.leave_broken());
            }
            let next = State {
                generation: s.generation.wrapping_add(1),
                mode: FILLING,
                count: 0,
            };
            match self.cas(w, next) {
                Ok(()) => {
                    self.wake();
                    return Ok(index);
                }
                Err(now) => w = now,
            }
        }
    }

    fn run_action(&self) {
        if let Some(action) = self.action {
            action();
        }
    }

    /// One look at a waiting party's round.
    fn progress(&self, generation: u32, index: usize, timed_out: bool) -> Progress {
        let w = self.state().load(Ordering::Acquire);
        let s = State::unpack(w);
        if s.generation != generation {
            return Progress::Done(Ok(index));
        }
        if s.mode != FILLING {
            return Progress::Done(Err(self.leave_broken()));
        }
        if timed_out {
            return Progress::Done(Err(self.break_and_leave()));
        }
        Progress::Sleep(w)
    }

    fn park(w: u32) -> Park {
        Park {
            word: STATE,
            expected: w,
            waiters: None,
        }
    }

    fn wait_blocking_until(&self, deadline: Option<Instant>) -> Result<usize, BrokenBarrier> {
        let (generation, index) = loop {
            match self.enter()? {
                Entry::Waiting { generation, index } => break (generation, index),
                Entry::Last { index } => return self.finish_round(index),
                Entry::Blocked(w) => {
                    let Some(timeout) = slice(deadline) else {
                        return Err(BrokenBarrier);
                    };
                    Self::park(w).blocking(&self.seg, timeout);
                }
            }
        };
        let mut timed_out = false;
        loop {
            match self.progress(generation, index, timed_out) {
                Progress::Done(r) => return r,
                Progress::Sleep(w) => match slice(deadline) {
                    None => timed_out = true,
                    Some(timeout) => {
                        Self::park(w).blocking(&self.seg, timeout);
                    }
                },
            }
        }
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> Result<usize, BrokenBarrier> {
        let (generation, index) = loop {
            match self.enter()? {
                Entry::Waiting { generation, index } => break (generation, index),
                Entry::Last { index } => return self.finish_round(index),
                Entry::Blocked(w) => {
                    let Some(timeout) = slice(deadline) else {
                        return Err(BrokenBarrier);
                    };
                    Self::park(w).sleep(&self.seg, timeout).await;
                }
            }
        };
        let mut leave = Leave {
            barrier: self,
            active: true,
        };
        let mut timed_out = false;
        loop {
            match self.progress(generation, index, timed_out) {
                Progress::Done(r) => {
                    leave.active = false;
                    return r;
                }
                Progress::Sleep(w) => match slice(deadline) {
                    None => timed_out = true,
                    Some(timeout) => {
                        Self::park(w).sleep(&self.seg, timeout).await;
                    }
                },
            }
        }
    }

    /// Waits until all parties have arrived; returns this party's index
    /// in the round, `0` to `parties - 1` in order of arrival. The last to
    /// arrive runs the action first.
    ///
    /// # Errors
    ///
    /// [`BrokenBarrier`] if the barrier is broken, or breaks while this
    /// party waits.
    ///
    /// # Panics
    ///
    /// If the action panics, in the party that ran it (the barrier breaks
    /// first).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: a party that stops waiting breaks the round, as a
    /// timeout does, so that the others are not left waiting for it.
    pub async fn wait(&self) -> Result<usize, BrokenBarrier> {
        self.wait_until(None).await
    }

    /// [`wait`](Self::wait) for synchronous code: waits on this thread.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn blocking_wait(&self) -> Result<usize, BrokenBarrier> {
        self.wait_blocking_until(None)
    }

    /// Like [`wait`](Self::wait), but after about `timeout` without the
    /// round filling, breaks the barrier (every waiting party gets
    /// [`BrokenBarrier`]) and returns the error, as Python does.
    ///
    /// # Errors
    ///
    /// As [`wait`](Self::wait), and on timeout.
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    ///
    /// # Cancel safety
    ///
    /// As [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrier> {
        self.wait_until(deadline_after(timeout)).await
    }

    /// [`wait_timeout`](Self::wait_timeout) for synchronous code.
    ///
    /// # Errors
    ///
    /// As [`wait_timeout`](Self::wait_timeout).
    ///
    /// # Panics
    ///
    /// As [`wait`](Self::wait).
    pub fn blocking_wait_timeout(&self, timeout: Duration) -> Result<usize, BrokenBarrier> {
        self.wait_blocking_until(deadline_after(timeout))
    }

    /// Breaks the barrier: every waiting party, and every one that arrives
    /// until [`reset`](Self::reset), gets [`BrokenBarrier`].
    pub fn abort(&self) {
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            let next = State { mode: BROKEN, ..s };
            match self.cas(w, next) {
                Ok(()) => break,
                Err(now) => w = now,
            }
        }
        self.wake();
    }

    /// Returns the barrier to its empty, unbroken state. Parties waiting
    /// in the current round get [`BrokenBarrier`]; parties arriving
    /// meanwhile wait until they have left, then start a new round.
    pub fn reset(&self) {
        let mut w = self.state().load(Ordering::Acquire);
        loop {
            let s = State::unpack(w);
            let next = if s.count == 0 {
                State {
                    generation: s.generation.wrapping_add(1),
                    mode: FILLING,
                    count: 0,
                }
            } else {
                State {
                    mode: RESETTING,
                    ..s
                }
            };
            match self.cas(w, next) {
                Ok(()) => break,
                Err(now) => w = now,
            }
        }
        self.wake();
    }
}

/// Breaks the round when a waiting future is dropped.
struct Leave<'a> {
    barrier: &'a Barrier,
    active: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.active {
            self.barrier.break_and_leave();
        }
    }
}

impl fmt::Debug for Barrier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Barrier")
            .field("parties", &self.parties())
            .field("n_waiting", &self.n_waiting())
            .field("broken", &self.is_broken())
            .finish()
    }
}

/// Lays a fuzz input over a barrier's words, then waits (without
/// sleeping), aborts and resets (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static BARRIERS: OnceLock<[Barrier; 3]> = OnceLock::new();
    let all =
        BARRIERS.get_or_init(|| [1, 3, MAX_PARTIES].map(|n| Barrier::new(n).expect("a barrier")));
    let b = &all[usize::from(input.u8()) % 3];
    b.state().store(input.u32(), Ordering::SeqCst);
    b.seg.u32(PARTIES).store(input.u32(), Ordering::SeqCst);
    let ops = input.u8();
    for i in 0..4 {
        match ops >> (2 * i) & 3 {
            0 | 1 => {
                if let Ok(index) = b.blocking_wait_timeout(Duration::ZERO) {
                    assert!(index < b.parties() as usize);
                }
            }
            2 => b.abort(),
            _ => b.reset(),
        }
        assert!(b.n_waiting() <= MAX_PARTIES);
        let _ = b.is_broken();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_word_round_trips() {
        let s = State {
            generation: 32767,
            mode: BROKEN,
            count: 12345,
        };
        assert_eq!(State::unpack(s.pack()), s);
        let wrapped = State {
            generation: 32768,
            ..s
        };
        assert_eq!(State::unpack(wrapped.pack()).generation, 0);
    }

    #[test]
    fn one_party_passes_at_once_round_after_round() {
        let b = Barrier::new(1).unwrap();
        for _ in 0..40_000 {
            assert_eq!(b.blocking_wait(), Ok(0));
        }
    }

    #[test]
    fn threads_get_distinct_indexes() {
        let b = Barrier::new(4).unwrap();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .map(|_| b.blocking_wait().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Vec<usize>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for round in 0..200 {
            let mut idx: Vec<usize> = all.iter().map(|v| v[round]).collect();
            idx.sort_unstable();
            assert_eq!(idx, [0, 1, 2, 3]);
        }
    }

    fn survives<R>(f: impl FnOnce() -> R) -> Option<R> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok()
    }

    /// Waits with a long timeout; returns the result and how long it took.
    fn timed_wait(b: &Barrier) -> (Option<Result<usize, BrokenBarrier>>, Duration) {
        let t0 = Instant::now();
        let r = survives(|| b.blocking_wait_timeout(Duration::from_secs(3)));
        (r, t0.elapsed())
    }

    #[test]
    fn a_parties_word_rewritten_by_another_process_changes_nothing_here() {
        for parties in [0, MAX_PARTIES + 1, u32::MAX] {
            let b = Barrier::new(1).unwrap();
            b.seg.u32(PARTIES).store(parties, Ordering::Relaxed);
            let (r, took) = timed_wait(&b);
            assert_eq!(r, Some(Ok(0)), "{parties}");
            assert!(took < Duration::from_secs(1), "{parties}: {took:?}");
            assert_eq!(b.parties(), 1);
        }
    }

    #[test]
    fn a_child_refuses_a_barrier_whose_parties_word_is_out_of_range() {
        let b = Barrier::new(2).unwrap();
        let (bytes, fds) = crate::transport::handle::collect_handles(|| rmp_serde::to_vec(&b));
        let bytes = bytes.unwrap();
        b.seg.u32(PARTIES).store(0, Ordering::Relaxed);
        let back: Result<Barrier, _> =
            crate::transport::handle::provide_handles(fds, || rmp_serde::from_slice(&bytes));
        let err = back.unwrap_err().to_string();
        assert!(err.contains("0 parties"), "{err}");
    }

    static ACTION_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn action() {
        ACTION_RAN.store(true, Ordering::SeqCst);
    }

    #[test]
    fn a_barrier_travels_with_its_parties_and_action() {
        let b = Barrier::with_action(1, action).unwrap();
        let (bytes, fds) = crate::transport::handle::collect_handles(|| rmp_serde::to_vec(&b));
        let back: Barrier = crate::transport::handle::provide_handles(fds, || {
            rmp_serde::from_slice(&bytes.unwrap())
        })
        .unwrap();
        assert_eq!(back.parties(), 1);
        assert_eq!(back.seg.id(), b.seg.id());
        assert_eq!(back.blocking_wait(), Ok(0));
        assert!(ACTION_RAN.load(Ordering::SeqCst), "the action did not run");
    }

    #[test]
    fn a_count_past_the_parties_breaks_the_barrier_at_once() {
        let b = Barrier::new(2).unwrap();
        let w = State {
            generation: 3,
            mode: FILLING,
            count: 9,
        };
        b.state().store(w.pack(), Ordering::Relaxed);
        let (r, took) = timed_wait(&b);
        assert_eq!(r, Some(Err(BrokenBarrier)));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn the_unused_mode_counts_as_broken() {
        let b = Barrier::new(1).unwrap();
        b.state().store(3 << MODE_SHIFT, Ordering::Relaxed);
        assert!(b.is_broken());
        assert_eq!(b.n_waiting(), 0);
        let (r, _) = timed_wait(&b);
        assert_eq!(r, Some(Err(BrokenBarrier)));
        b.reset();
        assert_eq!(b.blocking_wait(), Ok(0));
    }

    static FORGED_RAN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn forged() {
        FORGED_RAN.store(true, Ordering::SeqCst);
    }

    #[test]
    fn nothing_in_the_segment_makes_a_barrier_run_an_action() {
        // The action no longer lives in shared memory (it did, with a
        // fingerprint that any process of this build could copy): fill
        // every word after the header with what a forged action would be.
        let b = Barrier::new(1).unwrap();
        let offset = crate::target::fn_to_offset(forged) as u64;
        b.seg.u32(PARTIES).store(
            u32::try_from(offset & 0xffff_ffff).unwrap(),
            Ordering::Relaxed,
        );
        assert_eq!(survives(|| b.blocking_wait()), Some(Ok(0)));
        assert!(!FORGED_RAN.load(Ordering::SeqCst), "an action ran");
    }

    #[test]
    fn zero_parties_is_refused() {
        assert!(Barrier::new(0).is_err());
        assert!(Barrier::new(MAX_PARTIES + 1).is_err());
    }
}
