//! The mutual-exclusion core shared by `Lock`, `RLock` and `Condition`.
//!
//! One 32-bit word is the lock, in the manner of the kernel's robust
//! futexes:
//!
//! ```text
//!  31        30 ........................ 0
//! +---------+-----------------------------+
//! | WAITERS |  pid of the holder (0: free) |
//! +---------+-----------------------------+
//! ```
//!
//! Locking is one compare-and-swap of 0 to our pid; unlocking is one swap
//! to 0, followed by a futex wake only if `WAITERS` was set. So an
//! uncontended lock and unlock make no system call. A waiter sets
//! `WAITERS` before it sleeps, and takes the lock with `WAITERS` set (it
//! cannot know whether others still sleep), so the next unlock wakes one.
//!
//! Because the holder's pid is in the word itself, there is no moment when
//! the lock is held by nobody known. Beside it, the holder records its pid
//! and start time (`OWNER`) right after it takes the lock, so that a waiter
//! can tell a dead holder from a new process that reuses its pid. A waiter
//! whose sleep times out (every [`INTERVAL`](crate::shm::park::INTERVAL)) checks
//! the holder; if it is certainly gone, the waiter swaps its own pid into
//! the word in place of the dead one, marks the lock poisoned, and is
//! handed the lock as `Err(Poisoned(guard))`. A holder whose state cannot
//! be read (the waiter is out of descriptors, or `/proc` hides it) counts
//! as alive: the waiter sleeps on and asks again, since taking a lock from
//! a live holder would break mutual exclusion.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use crate::shm::park::{Park, slice};
use crate::shm::{HEADER, Kind, Segment};
use crate::sys::futex::{self, Wait};
use crate::sys::proc::{self, Liveness, ProcId};

/// The lock word.
const WORD: usize = HEADER;
/// Non-zero once a holder died (or panicked) holding the lock.
const POISON: usize = HEADER + 4;
/// `ProcId::to_bits` of the holder, written after it took the lock.
const OWNER: usize = HEADER + 8;
/// The first byte after the lock's words; `RLock` and `Condition` put
/// theirs from here.
pub(crate) const END: usize = HEADER + 16;

/// Set in the lock word while someone sleeps (or may sleep) on it.
const WAITERS: u32 = 1 << 31;

/// How many times a contended locker looks at the word before it sleeps.
const SPINS: u32 = 100;

/// How a lock was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// From a holder that released it.
    Clean,
    /// From a holder that died holding it; the lock is now poisoned.
    FromTheDead,
}

enum Step {
    Taken(Taken),
    Sleep(u32),
}

/// A lock in a shared segment.
#[derive(Clone, Debug)]
pub(crate) struct RawLock {
    pub(crate) seg: Segment,
}

impl RawLock {
    /// A new, unlocked lock in a segment of `kind` and `len` bytes (at
    /// least [`END`]).
    pub(crate) fn create(kind: Kind, len: usize) -> std::io::Result<RawLock> {
        debug_assert!(len >= END);
        Ok(RawLock {
            seg: Segment::create(kind, len)?,
        })
    }

    #[inline]
    fn word(&self) -> &AtomicU32 {
        self.seg.u32(WORD)
    }

    /// Takes the lock if it is free: one compare-and-swap.
    #[inline]
    pub(crate) fn try_lock(&self, me: ProcId) -> bool {
        let ok = self
            .word()
            .compare_exchange(0, me.pid, Ordering::Acquire, Ordering::Relaxed)
            .is_ok();
        if ok {
            self.set_owner(me);
        }
        ok
    }

    #[inline]
    fn set_owner(&self, me: ProcId) {
        self.seg.u64(OWNER).store(me.to_bits(), Ordering::Relaxed);
    }

    /// Releases the lock; wakes one sleeper if any may sleep.
    #[inline]
    pub(crate) fn unlock(&self) {
        if self.word().swap(0, Ordering::Release) & WAITERS != 0 {
            futex::wake(self.word(), 1);
        }
    }

    /// The pid of the holder, if the lock is held.
    pub(crate) fn holder_pid(&self) -> Option<u32> {
        match self.word().load(Ordering::Relaxed) & !WAITERS {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Whether the lock is held by a process with pid `pid`.
    #[inline]
    pub(crate) fn held_by_pid(&self, pid: u32) -> bool {
        self.word().load(Ordering::Relaxed) & !WAITERS == pid
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        self.seg.u32(POISON).load(Ordering::Relaxed) != 0
    }

    pub(crate) fn set_poison(&self, poisoned: bool) {
        self.seg
            .u32(POISON)
            .store(u32::from(poisoned), Ordering::Relaxed);
    }

    /// Whether the process holding the lock (word value `word`) is gone.
    fn holder_is_dead(&self, word: u32, me: ProcId) -> bool {
        let pid = word & !WAITERS;
        if pid == 0 || pid == me.pid {
            return false;
        }
        let owner = ProcId::from_bits(self.seg.u64(OWNER).load(Ordering::Relaxed));
        // The start time is the holder's own only if it has written its
        // record already; otherwise only the pid's existence can be checked.
        let recorded = owner.pid == pid;
        // Only a certain death hands the lock on: a holder whose state
        // cannot be read (no descriptor left to open `/proc` with, say) is
        // waited for, and asked about again after the next sleep.
        let holder = ProcId {
            pid,
            start: if recorded { owner.start } else { 0 },
        };
        proc::liveness(holder, recorded) == Liveness::Dead
    }

    /// One step of the contended path: take the lock if it is free (or its
    /// holder is dead and `check_holder`), otherwise make sure `WAITERS` is
    /// set and say which value to sleep on.
    fn step(&self, me: ProcId, check_holder: bool) -> Step {
        let word = self.word();
        let mine = me.pid | WAITERS;
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            // Free; or `WAITERS` with no holder, which no locker of ours
            // leaves (an unlock clears the whole word) but another process
            // may have written: free too, or it would wedge the lock.
            if cur & !WAITERS == 0 {
                match word.compare_exchange(cur, mine, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => {
                        self.set_owner(me);
                        return Step::Taken(Taken::Clean);
                    }
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            if check_holder && self.holder_is_dead(cur, me) {
                match word.compare_exchange(cur, mine, Ordering::Acquire, Ordering::Relaxed) {
                    Ok(_) => {
                        self.set_owner(me);
                        self.set_poison(true);
                        tracing::warn!(
                            dead = cur & !WAITERS,
                            "took over a lock whose holder died; it is now poisoned"
                        );
                        return Step::Taken(Taken::FromTheDead);
                    }
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            if cur & WAITERS == 0 {
                match word.compare_exchange(
                    cur,
                    cur | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Step::Sleep(cur | WAITERS),
                    Err(now) => {
                        cur = now;
                        continue;
                    }
                }
            }
            return Step::Sleep(cur);
        }
    }

    /// Spins briefly, hoping the holder releases the lock soon.
    fn spin(&self, me: ProcId) -> bool {
        for _ in 0..SPINS {
            if self.word().load(Ordering::Relaxed) == 0 && self.try_lock(me) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    fn park(expected: u32) -> Park {
        Park {
            word: WORD,
            expected,
            waiters: None,
        }
    }

    /// Takes the lock, sleeping on this thread, or gives up at `deadline`
    /// (`None`: never).
    pub(crate) fn lock_blocking(&self, me: ProcId, deadline: Option<Instant>) -> Option<Taken> {
        if self.try_lock(me) || self.spin(me) {
            return Some(Taken::Clean);
        }
        let mut check = false;
        loop {
            let expected = match self.step(me, check) {
                Step::Taken(t) => return Some(t),
                Step::Sleep(v) => v,
            };
            let timeout = slice(deadline)?;
            check = Self::park(expected).blocking(&self.seg, timeout) == Wait::TimedOut;
        }
    }

    /// Takes the lock, sleeping on a blocking thread, or gives up at
    /// `deadline`. The lock is taken only inside a poll of this future, and
    /// the poll that takes it returns it: cancel safe.
    pub(crate) async fn lock_async(&self, deadline: Option<Instant>) -> Option<Taken> {
        let me = proc::me();
        if self.try_lock(me) || self.spin(me) {
            return Some(Taken::Clean);
        }
        let mut check = false;
        loop {
            let expected = match self.step(proc::me(), check) {
                Step::Taken(t) => return Some(t),
                Step::Sleep(v) => v,
            };
            let timeout = slice(deadline)?;
            check = Self::park(expected).sleep(&self.seg, timeout).await == Wait::TimedOut;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiters_flag_with_no_holder_is_a_free_lock() {
        let lock = RawLock::create(Kind::Lock, END).unwrap();
        // What no locker of ours leaves, but another process may write.
        lock.word().store(WAITERS, Ordering::Relaxed);
        let t0 = Instant::now();
        let taken = lock.lock_blocking(proc::me(), Some(t0 + std::time::Duration::from_secs(5)));
        assert_eq!(taken, Some(Taken::Clean));
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(lock.holder_pid(), Some(proc::me().pid));
        lock.unlock();
        assert_eq!(lock.holder_pid(), None);
    }
}
