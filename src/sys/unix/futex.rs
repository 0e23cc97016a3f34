//! Futex waits and wake-ups on a 32-bit word that may be shared between
//! processes.
//!
//! The operations are the plain `FUTEX_WAIT` and `FUTEX_WAKE`, not their
//! `_PRIVATE` forms: a private futex is keyed by the virtual address in one
//! process, a shared one by the page it lives on, so two processes that map
//! the same memory (at different addresses, even) meet on the same word.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use nix::errno::Errno;

/// How a [`wait`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// A wake-up arrived, or the wait ended early for no reason it could
    /// tell (a signal): look at the word again.
    Woken,
    /// The word did not hold the expected value when the wait began.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, for at most `timeout` (forever
/// with `None`).
///
/// The comparison and the sleep are one atomic step in the kernel, so a
/// wake-up sent after the word changed is never missed. A return says only
/// that it is worth looking at the word again: wake-ups can be spurious.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Wait {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live reference to an aligned 32-bit atomic for the
    // whole call (the kernel only reads it, atomically, to compare), and
    // `ts_ptr` is null or points at `ts`, which outlives the call. With
    // FUTEX_WAIT the last two arguments are ignored.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if ret == 0 {
        return Wait::Woken;
    }
    match Errno::last() {
        Errno::EAGAIN => Wait::Changed,
        Errno::ETIMEDOUT => Wait::TimedOut,
        // EINTR: a signal handler ran; anything else cannot happen with a
        // valid word. Either way the caller looks at the word again.
        _ => Wait::Woken,
    }
}

/// Wakes at most `n` threads, in any process, sleeping in [`wait`] on
/// `word`. Returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, n: u32) -> usize {
    let n = n.min(i32::MAX as u32) as i32;
    // SAFETY: `word` is a live reference to an aligned 32-bit atomic; the
    // kernel uses its address only as a key and reads no other memory of
    // ours for FUTEX_WAKE (the timeout, second address and third value are
    // ignored).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    usize::try_from(ret).unwrap_or(0)
}

/// Wakes every thread sleeping in [`wait`] on `word`.
pub(crate) fn wake_all(word: &AtomicU32) -> usize {
    wake(word, u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn a_changed_word_returns_at_once() {
        let word = AtomicU32::new(1);
        let t0 = Instant::now();
        assert_eq!(wait(&word, 0, Some(Duration::from_secs(5))), Wait::Changed);
        assert!(t0.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_wait_times_out_after_about_its_timeout() {
        let word = AtomicU32::new(0);
        let t0 = Instant::now();
        assert_eq!(
            wait(&word, 0, Some(Duration::from_millis(50))),
            Wait::TimedOut
        );
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(45), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
    }

    #[test]
    fn wake_reaches_a_sleeping_thread() {
        let word = Arc::new(AtomicU32::new(0));
        let w = word.clone();
        let sleeper = std::thread::spawn(move || {
            while w.load(Ordering::Acquire) == 0 {
                wait(&w, 0, Some(Duration::from_secs(10)));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        word.store(1, Ordering::Release);
        wake_all(&word);
        sleeper.join().unwrap();
    }

    #[test]
    fn wake_with_no_sleeper_wakes_nobody() {
        let word = AtomicU32::new(0);
        assert_eq!(wake(&word, 1), 0);
    }
}
