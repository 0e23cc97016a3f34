//! A ring of variable-length records in a byte buffer: the storage of a
//! `Queue`, laid out so that it can live in shared memory.
//!
//! The ring itself has no lock: every operation must run under the queue's
//! lock. What it guarantees is crash consistency. A producer writes the
//! record first and publishes it with one store to `tail`; a consumer
//! reads the record first and retires it with one store to `head`. A
//! process killed half-way through a push leaves nothing visible; one
//! killed half-way through a pop leaves the record in place for the next
//! consumer.
//!
//! Layout of a record, at an 8-byte aligned offset:
//!
//! ```text
//! +-------------+-------------+------------------------------+---------+
//! | len: u32 LE | 0: u32      | payload: len bytes           | padding |
//! +-------------+-------------+------------------------------+---------+
//! ```
//!
//! A record never wraps around the end of the buffer: when it does not fit
//! before the end, a wrap marker (`len = u32::MAX`) fills the rest and the
//! record starts at offset 0. `head` and `tail` are byte counters that only
//! grow; a position in the buffer is a counter modulo the capacity.

use std::sync::atomic::{AtomicU64, Ordering};

/// A position in the buffer (a cursor reduced modulo the capacity, which
/// is a `usize`) as an index.
fn index(pos: u64) -> usize {
    usize::try_from(pos).unwrap_or(usize::MAX)
}

/// The bytes a ring lives in.
pub(crate) trait Memory {
    /// The capacity, a multiple of 8.
    fn capacity(&self) -> usize;
    /// Copies `bytes` to offset `at`.
    fn write(&self, at: usize, bytes: &[u8]);
    /// Copies `out.len()` bytes from offset `at`.
    fn read(&self, at: usize, out: &mut [u8]);
}

const HEADER: usize = 8;
const WRAP: u32 = u32::MAX;

/// Why a push did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The ring has no room for the record now.
    Full,
    /// The ring's words hold what no sequence of pushes and pops leaves.
    Corrupt(Corrupt),
}

/// The ring's words or bytes hold what no sequence of pushes and pops
/// (each possibly cut short by a crash) leaves: another process wrote
/// over them. Says what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) String);

impl From<Corrupt> for PushError {
    fn from(c: Corrupt) -> PushError {
        PushError::Corrupt(c)
    }
}

impl<M: Memory + ?Sized> Memory for &M {
    fn capacity(&self) -> usize {
        (**self).capacity()
    }
    fn write(&self, at: usize, bytes: &[u8]) {
        (**self).write(at, bytes)
    }
    fn read(&self, at: usize, out: &mut [u8]) {
        (**self).read(at, out)
    }
}

/// The cursors of a ring and the buffer they index.
///
/// The cursors and the count live in shared memory, where another process
/// may have written anything: every value read from them, and every
/// record length, is checked before it is used, so that a bad one is a
/// [`Corrupt`] error and never a panic, an out-of-range access, or an
/// allocation the ring could not hold.
pub(crate) struct Ring<'a, M: Memory> {
    pub(crate) mem: M,
    pub(crate) head: &'a AtomicU64,
    pub(crate) tail: &'a AtomicU64,
    pub(crate) count: &'a AtomicU64,
}

/// The bytes a record with a `len`-byte payload occupies.
pub(crate) fn record_size(len: usize) -> usize {
    HEADER + len.div_ceil(8) * 8
}

/// The most records a ring of `capacity` bytes can hold.
pub(crate) fn max_records(capacity: usize) -> u64 {
    (capacity / HEADER) as u64
}

fn corrupt(what: String) -> Corrupt {
    Corrupt(what)
}

impl<M: Memory> Ring<'_, M> {
    /// The largest payload this ring can ever hold.
    pub(crate) fn max_payload(&self) -> usize {
        self.mem
            .capacity()
            .saturating_sub(HEADER)
            .min(WRAP as usize - 1)
    }

    /// The capacity, checked to be one a ring can have (a multiple of 8,
    /// room for a record); the memory is local, so a bad one is a bug, but
    /// it is reported, not trusted.
    fn cap(&self) -> Result<u64, Corrupt> {
        let cap = self.mem.capacity();
        if cap < 2 * HEADER || cap % HEADER != 0 {
            return Err(corrupt(format!("a ring of {cap} bytes")));
        }
        Ok(cap as u64)
    }

    /// Loads and checks the cursors: in order, at most `cap` apart, at
    /// record boundaries. Heals the one bad state a crash can leave (a
    /// realignment of an empty ring stopped between its two stores).
    fn cursors(&self, cap: u64) -> Result<(u64, u64), Corrupt> {
        let head = self.head.load(Ordering::Acquire);
        let mut tail = self.tail.load(Ordering::Acquire);
        if tail < head && head % cap == 0 && head - tail < cap && tail % HEADER as u64 == 0 {
            // `push` moved `head` of an empty ring to the next multiple of
            // the capacity and died before it moved `tail` there too.
            self.tail.store(head, Ordering::Release);
            tail = head;
        }
        if tail < head {
            return Err(corrupt(format!(
                "ring positions out of order: {head}..{tail}"
            )));
        }
        if tail - head > cap {
            return Err(corrupt(format!(
                "ring positions {head}..{tail} are further apart than its {cap} bytes"
            )));
        }
        if head % HEADER as u64 != 0 || tail % HEADER as u64 != 0 {
            return Err(corrupt(format!(
                "ring positions {head}..{tail} are not at record boundaries"
            )));
        }
        Ok((head, tail))
    }

    /// The length word of the record at `pos` (a multiple of 8 below the
    /// capacity, so the word is inside the buffer).
    fn len_at(&self, pos: u64) -> u32 {
        let mut len_bytes = [0u8; 4];
        self.mem.read(index(pos), &mut len_bytes);
        u32::from_le_bytes(len_bytes)
    }

    /// Appends a record. Fails with [`PushError::Full`] when it does not
    /// fit now (a payload over [`max_payload`](Self::max_payload) never
    /// fits), and with [`PushError::Corrupt`] when the cursors are bad.
    pub(crate) fn push(&self, payload: &[u8]) -> Result<(), PushError> {
        if payload.len() > self.max_payload() {
            return Err(PushError::Full);
        }
        let cap = self.cap()?;
        let (mut head, mut tail) = self.cursors(cap)?;
        if head == tail && tail % cap != 0 {
            // Empty: start again at the beginning of the buffer, so that
            // any record up to the capacity fits.
            tail = tail
                .checked_next_multiple_of(cap)
                .ok_or_else(|| corrupt(format!("ring position {tail} at the end of its range")))?;
            self.head.store(tail, Ordering::Release);
            self.tail.store(tail, Ordering::Release);
            head = tail;
        }
        let need = record_size(payload.len()) as u64;
        let mut pos = tail % cap;
        let to_end = cap - pos;
        let skip = if need > to_end { to_end } else { 0 };
        // Each term is at most `cap`, which is far below `u64::MAX`.
        if (tail - head) + skip + need > cap {
            return Err(PushError::Full);
        }
        let end = tail
            .checked_add(skip + need)
            .ok_or_else(|| corrupt(format!("ring position {tail} at the end of its range")))?;
        if skip > 0 {
            self.mem.write(index(pos), &WRAP.to_le_bytes());
            pos = 0;
        }
        let mut header = [0u8; HEADER];
        let len = u32::try_from(payload.len()).map_err(|_| PushError::Full)?;
        header[..4].copy_from_slice(&len.to_le_bytes());
        self.mem.write(index(pos), &header);
        self.mem.write(index(pos) + HEADER, payload);
        // The commit point: the record becomes visible here.
        self.tail.store(end, Ordering::Release);
        let most = (end - head) / HEADER as u64;
        let _ = self
            .count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(1).min(most))
            });
        Ok(())
    }

    /// Removes the oldest record, if any.
    ///
    /// # Errors
    ///
    /// [`Corrupt`] if the cursors or the record's length are bad; nothing
    /// is removed then, and every later pop fails alike.
    pub(crate) fn pop(&self) -> Result<Option<Vec<u8>>, Corrupt> {
        let cap = self.cap()?;
        let (mut head, tail) = self.cursors(cap)?;
        if head == tail {
            // Nothing is in the ring, so nothing is counted: this heals a
            // count left too high by a consumer that died mid-pop.
            self.count.store(0, Ordering::Release);
            return Ok(None);
        }
        let mut pos = head % cap;
        let mut len = self.len_at(pos);
        if len == WRAP {
            let skip = cap - pos;
            // A record always follows a wrap marker, at offset 0; so the
            // marker is never at offset 0 itself.
            if pos == 0 || skip >= tail - head {
                return Err(corrupt(format!(
                    "a wrap marker at ring position {head} with no record after it"
                )));
            }
            head += skip;
            pos = 0;
            len = self.len_at(0);
            if len == WRAP {
                return Err(corrupt("two wrap markers in a row in the ring".to_owned()));
            }
        }
        // `len` is below 2^32, so its record size does not overflow.
        let size = record_size(len as usize) as u64;
        if size > tail - head || size > cap - pos {
            return Err(corrupt(format!(
                "a ring record of {len} bytes at position {head} runs past the {} bytes written",
                (tail - head).min(cap - pos)
            )));
        }
        let mut payload = vec![0u8; len as usize];
        self.mem.read(index(pos) + HEADER, &mut payload);
        // The commit point: the record is retired here.
        let next = head + size;
        self.head.store(next, Ordering::Release);
        if next == tail {
            self.count.store(0, Ordering::Release);
        } else {
            let _ = self
                .count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        Ok(Some(payload))
    }

    /// How many records the ring holds: the count word, clamped to what
    /// the ring can hold between its cursors.
    ///
    /// # Errors
    ///
    /// [`Corrupt`] if the cursors are bad.
    pub(crate) fn count(&self) -> Result<u64, Corrupt> {
        let cap = self.cap()?;
        let (head, tail) = self.cursors(cap)?;
        let most = (tail - head) / HEADER as u64;
        Ok(self.count.load(Ordering::Acquire).min(most))
    }

    /// How many records the ring holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.count().unwrap_or(0)
    }
}

/// The ring over plain memory, with its cursors, count and bytes taken
/// from a fuzz input, then eight pushes and pops (see `crate::fuzz::shm`).
#[cfg(fuzzing)]
pub(crate) fn fuzz(mut input: crate::shm::fuzz_input::Input<'_>) {
    use std::cell::RefCell;

    /// Memory that panics on any access outside its bounds.
    struct Plain(RefCell<Vec<u8>>);

    impl Memory for Plain {
        fn capacity(&self) -> usize {
            self.0.borrow().len()
        }
        fn write(&self, at: usize, bytes: &[u8]) {
            self.0.borrow_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn read(&self, at: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.0.borrow()[at..at + out.len()]);
        }
    }

    let cap = (usize::from(input.u8()) + 2) * 8;
    let head = AtomicU64::new(input.u64());
    let tail = AtomicU64::new(input.near(head.load(Ordering::Relaxed), 2 * cap as u64));
    let count = AtomicU64::new(input.u64());
    let ops = input.u8();
    let mut bytes = input.rest().to_vec();
    bytes.resize(cap, 0);
    let ring = Ring {
        mem: Plain(RefCell::new(bytes)),
        head: &head,
        tail: &tail,
        count: &count,
    };
    for i in 0..8u32 {
        if ops >> i & 1 == 1 {
            match ring.pop() {
                Ok(Some(payload)) => assert!(payload.len() <= ring.max_payload()),
                Ok(None) => assert_eq!(ring.count(), Ok(0)),
                Err(Corrupt(_)) => {}
            }
        } else {
            let len = (usize::from(ops) * 7 + i as usize * 13) % cap;
            match ring.push(&vec![i.to_le_bytes()[0]; len]) {
                Ok(()) => assert!(ring.count().is_ok_and(|n| n >= 1)),
                Err(PushError::Full | PushError::Corrupt(_)) => {}
            }
        }
        if let Ok(n) = ring.count() {
            assert!(n <= max_records(cap), "{n} records in {cap} bytes");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    struct VecMemory(RefCell<Vec<u8>>);

    impl Memory for VecMemory {
        fn capacity(&self) -> usize {
            self.0.borrow().len()
        }
        fn write(&self, at: usize, bytes: &[u8]) {
            self.0.borrow_mut()[at..at + bytes.len()].copy_from_slice(bytes);
        }
        fn read(&self, at: usize, out: &mut [u8]) {
            out.copy_from_slice(&self.0.borrow()[at..at + out.len()]);
        }
    }

    struct Fixture {
        mem: VecMemory,
        head: AtomicU64,
        tail: AtomicU64,
        count: AtomicU64,
    }

    impl Fixture {
        fn new(cap: usize) -> Self {
            Fixture {
                mem: VecMemory(RefCell::new(vec![0xAA; cap])),
                head: AtomicU64::new(0),
                tail: AtomicU64::new(0),
                count: AtomicU64::new(0),
            }
        }
        fn ring(&self) -> Ring<'_, &VecMemory> {
            Ring {
                mem: &self.mem,
                head: &self.head,
                tail: &self.tail,
                count: &self.count,
            }
        }
    }

    #[test]
    fn records_come_out_in_order_and_keep_their_bounds() {
        let f = Fixture::new(256);
        let r = f.ring();
        for msg in [&b""[..], b"a", b"hello", b"12345678", b"123456789"] {
            r.push(msg).unwrap();
        }
        assert_eq!(r.len(), 5);
        for msg in [&b""[..], b"a", b"hello", b"12345678", b"123456789"] {
            assert_eq!(r.pop().unwrap().as_deref(), Some(msg));
        }
        assert_eq!(r.pop().unwrap(), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn full_is_reported_and_space_comes_back() {
        let f = Fixture::new(64);
        let r = f.ring();
        r.push(&[1; 24]).unwrap(); // 32 bytes
        r.push(&[2; 24]).unwrap(); // 64
        assert_eq!(r.push(b"x"), Err(PushError::Full));
        assert_eq!(r.pop().unwrap().unwrap(), vec![1; 24]);
        r.push(&[3; 16]).unwrap(); // wraps to the front
        assert_eq!(r.pop().unwrap().unwrap(), vec![2; 24]);
        assert_eq!(r.pop().unwrap().unwrap(), vec![3; 16]);
        assert_eq!(r.max_payload(), 56);
        assert_eq!(r.push(&[0; 57]), Err(PushError::Full), "never fits");
        r.push(&[9; 56]).unwrap(); // fits once empty, realigned to the start
        assert_eq!(r.pop().unwrap().unwrap(), vec![9; 56]);
    }

    #[test]
    fn a_push_cut_short_before_its_commit_leaves_nothing() {
        let f = Fixture::new(128);
        let r = f.ring();
        r.push(b"kept").unwrap();
        // A producer that died after writing its bytes but before moving
        // `tail` wrote into free space only.
        f.mem.write(16, &[0xFF; 32]);
        assert_eq!(r.pop().unwrap().as_deref(), Some(&b"kept"[..]));
        assert_eq!(r.pop().unwrap(), None);
    }

    fn is_corrupt<T: std::fmt::Debug>(r: Result<T, Corrupt>) -> bool {
        r.is_err()
    }

    #[test]
    fn a_record_longer_than_the_ring_is_corrupt_not_a_panic() {
        let f = Fixture::new(256);
        let r = f.ring();
        r.push(b"hello").unwrap();
        f.mem.write(0, &0x7fff_fff0u32.to_le_bytes());
        for _ in 0..3 {
            let err = r.pop().unwrap_err();
            assert!(err.0.contains("2147483632 bytes"), "{err:?}");
        }
        assert_eq!(f.head.load(Ordering::Relaxed), 0, "nothing was removed");
        // The cursors are sound, so a push still lands after the record.
        r.push(b"more").unwrap();
        assert!(r.pop().is_err());
    }

    #[test]
    fn cursors_out_of_order_or_misaligned_are_corrupt_not_a_panic() {
        for (head, tail) in [(1000, 0), (3, 16), (0, 4096), (8, 12)] {
            let f = Fixture::new(256);
            let r = f.ring();
            f.head.store(head, Ordering::Relaxed);
            f.tail.store(tail, Ordering::Relaxed);
            assert!(is_corrupt(r.pop()), "pop at {head}..{tail}");
            assert!(is_corrupt(r.count()), "count at {head}..{tail}");
            assert!(
                matches!(r.push(b"x"), Err(PushError::Corrupt(_))),
                "push at {head}..{tail}"
            );
        }
    }

    #[test]
    fn positions_at_the_end_of_their_range_are_corrupt_not_a_panic() {
        let f = Fixture::new(256);
        let r = f.ring();
        f.head.store(u64::MAX - 7, Ordering::Relaxed);
        f.tail.store(u64::MAX - 7, Ordering::Relaxed);
        assert_eq!(r.pop(), Ok(None));
        assert!(matches!(r.push(b"x"), Err(PushError::Corrupt(_))));
        // Aligned to the capacity, where a whole-ring record would end
        // at 2^64.
        let end = u64::MAX - u64::MAX % 256;
        f.head.store(end, Ordering::Relaxed);
        f.tail.store(end, Ordering::Relaxed);
        assert!(matches!(r.push(&[0; 248]), Err(PushError::Corrupt(_))));
        r.push(&[0; 200]).unwrap();
    }

    #[test]
    fn a_wrap_marker_with_nothing_after_it_is_corrupt_not_a_panic() {
        let f = Fixture::new(256);
        let r = f.ring();
        // A marker at 200 whose skip to the end is all there is.
        f.head.store(200, Ordering::Relaxed);
        f.tail.store(256, Ordering::Relaxed);
        f.mem.write(200, &WRAP.to_le_bytes());
        assert!(is_corrupt(r.pop()));
        // Followed by a second marker at 0.
        f.tail.store(264, Ordering::Relaxed);
        f.mem.write(0, &WRAP.to_le_bytes());
        assert!(is_corrupt(r.pop()));
        // A marker at offset 0, which no push writes.
        f.head.store(0, Ordering::Relaxed);
        f.tail.store(8, Ordering::Relaxed);
        assert!(is_corrupt(r.pop()));
    }

    #[test]
    fn a_record_past_the_end_of_the_buffer_is_corrupt() {
        let f = Fixture::new(256);
        let r = f.ring();
        // 24 bytes at 240 would end at 272: past the buffer's end even
        // though the cursors allow it.
        f.head.store(240, Ordering::Relaxed);
        f.tail.store(256 + 64, Ordering::Relaxed);
        f.mem.write(240, &24u32.to_le_bytes());
        assert!(is_corrupt(r.pop()));
    }

    #[test]
    fn the_count_never_wraps_below_zero() {
        let f = Fixture::new(256);
        let r = f.ring();
        r.push(b"a").unwrap();
        r.push(b"b").unwrap();
        // A peer zeroed the count (or a producer died between publishing
        // its record and counting it).
        f.count.store(0, Ordering::Relaxed);
        assert!(r.pop().unwrap().is_some());
        assert_eq!(r.len(), 0);
        f.count.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(r.len(), 2, "clamped to what 16 bytes can hold");
        assert!(r.pop().unwrap().is_some());
        assert_eq!(r.len(), 0, "an emptied ring counts nothing");
        assert_eq!(f.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_realignment_cut_short_between_its_two_stores_heals() {
        // An empty ring at 200 realigned to 256: `head` stored, `tail` not.
        let f = Fixture::new(256);
        let r = f.ring();
        f.head.store(256, Ordering::Relaxed);
        f.tail.store(200, Ordering::Relaxed);
        assert_eq!(r.pop(), Ok(None));
        r.push(b"after").unwrap();
        assert_eq!(r.pop().unwrap().as_deref(), Some(&b"after"[..]));
    }

    #[test]
    fn a_ring_too_small_to_hold_a_record_is_refused() {
        for cap in [0, 8, 12, 250] {
            let f = Fixture::new(cap);
            let r = f.ring();
            assert!(is_corrupt(r.pop()), "{cap}");
            assert!(r.push(b"").is_err(), "{cap}");
        }
    }

    #[test]
    fn matches_a_model_under_random_operations() {
        // A small deterministic generator, so failures reproduce.
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let f = Fixture::new(512);
        let r = f.ring();
        let mut model: VecDeque<Vec<u8>> = VecDeque::new();
        let mut used = 0usize;
        for i in 0..20_000u32 {
            if next() % 3 != 0 {
                let len = (next() % 90) as usize;
                let msg: Vec<u8> = (0..len)
                    .map(|j| (i as usize + j).to_le_bytes()[0])
                    .collect();
                match r.push(&msg) {
                    Ok(()) => {
                        used += record_size(len);
                        model.push_back(msg);
                    }
                    Err(PushError::Full) => {
                        // A record always fits an empty ring. Otherwise the
                        // live records hold `used` bytes plus at most one
                        // wrap gap (under one record, at most 96 bytes
                        // here), and a new record fits whenever the rest
                        // leaves it room even after a wrap of its own.
                        assert!(!model.is_empty(), "full while empty at step {i}");
                        let need = record_size(len);
                        let free = 512 - used;
                        assert!(
                            free < 2 * need + 96,
                            "full with {free} free for {need} at step {i}"
                        );
                    }
                    Err(PushError::Corrupt(c)) => panic!("corrupt at step {i}: {c:?}"),
                }
            } else {
                let got = r.pop().unwrap();
                let want = model.pop_front();
                if let Some(w) = &want {
                    used -= record_size(w.len());
                }
                assert_eq!(got, want, "step {i}");
            }
            assert_eq!(r.len(), model.len() as u64);
            assert!(used <= 512);
        }
    }
}
