//! [`Event`]: a flag that processes can wait on.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::shm::park::{Park, deadline_after, slice};
use crate::shm::{HEADER, Kind, Segment, segment_serde};
use crate::sys::futex;

/// 1 when set (the futex word).
const FLAG: usize = HEADER;
/// How many threads sleep waiting for the flag.
const WAITERS: usize = HEADER + 4;
const LEN: usize = HEADER + 8;

/// A flag that any number of processes can share and wait on: Python's
/// `multiprocessing.Event`.
///
/// [`set`](Self::set) in one process wakes every waiter in every process;
/// [`clear`](Self::clear) resets it. The flag lives in shared memory:
/// setting, clearing and checking are atomic operations, and `set` makes a
/// system call only when someone waits.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// async fn waiter(ready: mp::Event) -> String {
///     ready.wait().await;
///     "released".to_owned()
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _init = mp::init();
///     let ready = mp::Event::new()?;
///     let p = mp::Process::new(waiter, ready.clone());
///     p.start().await?;
///     ready.set();
///     assert_eq!(p.join().await?, "released");
///     Ok(())
/// }
/// ```
#[derive(Clone)]
pub struct Event {
    seg: Segment,
}

segment_serde!(Event, Kind::Event, LEN, |seg| Event { seg }, seg);

impl Event {
    /// Creates an event whose flag is clear.
    ///
    /// # Errors
    ///
    /// When the shared memory cannot be created.
    pub fn new() -> std::io::Result<Event> {
        Ok(Event {
            seg: Segment::create(Kind::Event, LEN)?,
        })
    }

    fn flag(&self) -> &AtomicU32 {
        self.seg.u32(FLAG)
    }

    /// Sets the flag and wakes every waiter, in every process.
    pub fn set(&self) {
        if self.flag().swap(1, Ordering::SeqCst) == 0
            && self.seg.u32(WAITERS).load(Ordering::SeqCst) > 0
        {
            futex::wake_all(self.flag());
        }
    }

    /// Clears the flag.
    pub fn clear(&self) {
        self.flag().store(0, Ordering::SeqCst);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.flag().load(Ordering::SeqCst) != 0
    }

    fn park() -> Park {
        Park {
            word: FLAG,
            expected: 0,
            waiters: Some(WAITERS),
        }
    }

    fn wait_blocking_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.is_set() {
                return true;
            }
            let Some(timeout) = slice(deadline) else {
                return false;
            };
            Self::park().blocking(&self.seg, timeout);
        }
    }

    async fn wait_until(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.is_set() {
                return true;
            }
            let Some(timeout) = slice(deadline) else {
                return false;
            };
            Self::park().sleep(&self.seg, timeout).await;
        }
    }

    /// Waits until the flag is set; returns at once if it is.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: waiting changes nothing. A dropped future's sleep on a
    /// blocking thread ends by itself within about 50 ms.
    pub async fn wait(&self) {
        self.wait_until(None).await;
    }

    /// [`wait`](Self::wait) for synchronous code: waits on this thread.
    pub fn blocking_wait(&self) {
        self.wait_blocking_until(None);
    }

    /// Waits at most `timeout` for the flag; returns whether it is set
    /// (`false` after about `timeout`), as Python's `wait(timeout)`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`wait`](Self::wait).
    pub async fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_until(deadline_after(timeout)).await
    }

    /// [`wait_timeout`](Self::wait_timeout) for synchronous code.
    pub fn blocking_wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_blocking_until(deadline_after(timeout))
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("set", &self.is_set())
            .finish()
    }
}

/// Lays a fuzz input over an event's words, then sets, clears and waits
/// without sleeping (`crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::sync::OnceLock;
    static EVENT: OnceLock<Event> = OnceLock::new();
    let e = EVENT.get_or_init(|| Event::new().expect("an event"));
    e.flag().store(input.u32(), Ordering::SeqCst);
    e.seg.u32(WAITERS).store(input.u32(), Ordering::SeqCst);
    let ops = input.u8();
    for i in 0..4 {
        match ops >> (2 * i) & 3 {
            0 => e.set(),
            1 => e.clear(),
            2 => assert_eq!(e.blocking_wait_timeout(Duration::ZERO), e.is_set()),
            _ => {
                let _ = format!("{e:?}");
            }
        }
    }
}
