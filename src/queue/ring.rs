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

/// The ring has no room for the record now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

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
pub(crate) struct Ring<'a, M: Memory> {
    pub(crate) mem: M,
    pub(crate) head: &'a AtomicU64,
    pub(crate) tail: &'a AtomicU64,
    pub(crate) count: &'a AtomicU64,
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// The bytes a record with a `len`-byte payload occupies.
pub(crate) fn record_size(len: usize) -> usize {
    HEADER + len.div_ceil(8) * 8
}

impl<M: Memory> Ring<'_, M> {
    /// The largest payload this ring can ever hold.
    pub(crate) fn max_payload(&self) -> usize {
        (self.mem.capacity() - HEADER).min(WRAP as usize - 1)
    }

    /// Appends a record. Fails with [`Full`] when it does not fit now; a
    /// payload over [`max_payload`](Self::max_payload) never fits.
    pub(crate) fn push(&self, payload: &[u8]) -> Result<(), Full> {
        if payload.len() > self.max_payload() {
            return Err(Full);
        }
        let cap = self.mem.capacity() as u64;
        let head = self.head.load(Ordering::Acquire);
        let mut tail = self.tail.load(Ordering::Acquire);
        if head == tail && tail % cap != 0 {
            // Empty: start again at the beginning of the buffer, so that
            // any record up to the capacity fits.
            tail = round_up(tail, cap);
            self.head.store(tail, Ordering::Release);
            self.tail.store(tail, Ordering::Release);
        }
        let head = self.head.load(Ordering::Acquire);
        let need = record_size(payload.len()) as u64;
        let mut pos = tail % cap;
        let to_end = cap - pos;
        let skip = if need > to_end { to_end } else { 0 };
        if (tail - head) + skip + need > cap {
            return Err(Full);
        }
        if skip > 0 {
            self.mem.write(pos as usize, &WRAP.to_le_bytes());
            tail += skip;
            pos = 0;
        }
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.mem.write(pos as usize, &header);
        self.mem.write(pos as usize + HEADER, payload);
        // The commit point: the record becomes visible here.
        self.tail.store(tail + need, Ordering::Release);
        self.count.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Removes the oldest record, if any.
    pub(crate) fn pop(&self) -> Option<Vec<u8>> {
        let cap = self.mem.capacity() as u64;
        let mut head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let mut pos = head % cap;
        let mut len_bytes = [0u8; 4];
        self.mem.read(pos as usize, &mut len_bytes);
        let mut len = u32::from_le_bytes(len_bytes);
        if len == WRAP {
            head += cap - pos;
            pos = 0;
            self.mem.read(0, &mut len_bytes);
            len = u32::from_le_bytes(len_bytes);
        }
        let mut payload = vec![0u8; len as usize];
        self.mem.read(pos as usize + HEADER, &mut payload);
        // The commit point: the record is retired here.
        self.head
            .store(head + record_size(len as usize) as u64, Ordering::Release);
        self.count.fetch_sub(1, Ordering::AcqRel);
        Some(payload)
    }

    /// How many records the ring holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.count.load(Ordering::Acquire)
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
            assert_eq!(r.pop().as_deref(), Some(msg));
        }
        assert_eq!(r.pop(), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn full_is_reported_and_space_comes_back() {
        let f = Fixture::new(64);
        let r = f.ring();
        r.push(&[1; 24]).unwrap(); // 32 bytes
        r.push(&[2; 24]).unwrap(); // 64
        assert_eq!(r.push(b"x"), Err(Full));
        assert_eq!(r.pop().unwrap(), vec![1; 24]);
        r.push(&[3; 16]).unwrap(); // wraps to the front
        assert_eq!(r.pop().unwrap(), vec![2; 24]);
        assert_eq!(r.pop().unwrap(), vec![3; 16]);
        assert_eq!(r.max_payload(), 56);
        assert_eq!(r.push(&[0; 57]), Err(Full), "never fits");
        r.push(&[9; 56]).unwrap(); // fits once empty, realigned to the start
        assert_eq!(r.pop().unwrap(), vec![9; 56]);
    }

    #[test]
    fn a_push_cut_short_before_its_commit_leaves_nothing() {
        let f = Fixture::new(128);
        let r = f.ring();
        r.push(b"kept").unwrap();
        // A producer that died after writing its bytes but before moving
        // `tail` wrote into free space only.
        f.mem.write(16, &[0xFF; 32]);
        assert_eq!(r.pop().as_deref(), Some(&b"kept"[..]));
        assert_eq!(r.pop(), None);
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
                let msg: Vec<u8> = (0..len).map(|j| (i as usize + j) as u8).collect();
                match r.push(&msg) {
                    Ok(()) => {
                        used += record_size(len);
                        model.push_back(msg);
                    }
                    Err(Full) => {
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
                }
            } else {
                let got = r.pop();
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
