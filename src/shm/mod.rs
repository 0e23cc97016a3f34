//! Shared-memory segments that travel to child processes.
//!
//! A [`Segment`] is a small anonymous shared-memory file (a `memfd`) mapped
//! into this process. Cloning a segment shares the mapping; serializing it
//! (only possible inside a target's arguments, see `crate::transport::handle`) sends a
//! duplicate of its descriptor, and deserializing it in the child maps the
//! same memory there. Its words are read and written only as atomics.
//!
//! Every segment starts with a 16-byte header:
//!
//! ```text
//!  0        4        8                16
//! +--------+--------+-----------------+----------------------
//! | magic  | kind   | id (random)     | the primitive's words
//! +--------+--------+-----------------+----------------------
//! ```
//!
//! `kind` says which primitive laid the segment out, so a handle that
//! arrives as the wrong type is refused instead of misread; `id` tells two
//! handles of the same segment apart from two handles of equal-looking
//! ones, in any process.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde::de::Error as _;
use serde::{Deserializer, Serializer};

use crate::sys::OwnedHandle;
use crate::sys::shm::{self, Mapping};

#[cfg(fuzzing)]
pub(crate) mod fuzz_input;
pub(crate) mod park;
pub(crate) mod raw;

/// `"tmps"`: the first word of every segment.
const MAGIC: u32 = 0x746d_7073;

/// Byte offset of the first word after the header.
pub(crate) const HEADER: usize = 16;

/// Which primitive a segment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    BoundedSemaphore = 4,
    Event = 5,
    Condition = 6,
    Barrier = 7,
    Queue = 8,
    JoinableQueue = 9,
    PoolWorker = 10,
    Value = 11,
    Array = 12,
}

impl Kind {
    fn memfd_name(self) -> &'static CStr {
        match self {
            Kind::Lock => c"tokio-mp-lock",
            Kind::RLock => c"tokio-mp-rlock",
            Kind::Semaphore => c"tokio-mp-semaphore",
            Kind::BoundedSemaphore => c"tokio-mp-bounded-semaphore",
            Kind::Event => c"tokio-mp-event",
            Kind::Condition => c"tokio-mp-condition",
            Kind::Barrier => c"tokio-mp-barrier",
            Kind::Queue => c"tokio-mp-queue",
            Kind::JoinableQueue => c"tokio-mp-joinable-queue",
            Kind::PoolWorker => c"tokio-mp-pool-worker",
            Kind::Value => c"tokio-mp-value",
            Kind::Array => c"tokio-mp-array",
        }
    }
}

/// A shared-memory segment: a mapped `memfd` and the descriptor it came
/// from. Cheap to clone; the memory is unmapped when the last clone goes.
#[derive(Clone)]
pub(crate) struct Segment {
    inner: Arc<Inner>,
}

struct Inner {
    map: Mapping,
    fd: OwnedHandle,
}

impl Segment {
    /// Creates a zeroed segment of `len` bytes (header included) for a
    /// primitive of `kind`, and writes its header.
    ///
    /// # Errors
    ///
    /// `InvalidInput` unless `len` is a multiple of 8 of at least
    /// [`HEADER`] bytes; otherwise when the memory cannot be created or
    /// mapped.
    pub(crate) fn create(kind: Kind, len: usize) -> io::Result<Segment> {
        if len < HEADER || len % 8 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a shared-memory segment of {len} bytes (not a multiple of 8 from {HEADER})"
                ),
            ));
        }
        let fd = shm::create(kind.memfd_name(), len)?;
        let map = Mapping::new(&fd, len)?;
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).map_err(|e| io::Error::other(e.to_string()))?;
        let seg = Segment {
            inner: Arc::new(Inner { map, fd }),
        };
        seg.u64(8)
            .store(u64::from_ne_bytes(id) | 1, Ordering::Relaxed);
        seg.u32(4).store(kind as u32, Ordering::Relaxed);
        seg.u32(0).store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Maps a segment received from another process, checking that it is
    /// at least `len` bytes long and was laid out for `kind`.
    pub(crate) fn open(fd: OwnedHandle, kind: Kind, len: usize) -> io::Result<Segment> {
        Self::open_with(fd, kind, len, false)
    }

    /// Maps the whole of a segment received from another process (its
    /// length is the file's), checking that it is at least `min` bytes
    /// long and was laid out for `kind`.
    pub(crate) fn open_whole(fd: OwnedHandle, kind: Kind, min: usize) -> io::Result<Segment> {
        Self::open_with(fd, kind, min, true)
    }

    fn open_with(fd: OwnedHandle, kind: Kind, len: usize, whole: bool) -> io::Result<Segment> {
        let size = shm::size(&fd)?;
        let len = if whole { size.max(len) } else { len };
        if size < len {
            return Err(invalid(format!(
                "shared-memory segment of {size} bytes, expected {len}"
            )));
        }
        if !shm::is_sealed(&fd)? {
            // Whoever holds the descriptor could shrink the file under
            // our mapping.
            return Err(invalid(
                "shared-memory segment not sealed at its size".to_owned(),
            ));
        }
        let map = Mapping::new(&fd, len)?;
        let seg = Segment {
            inner: Arc::new(Inner { map, fd }),
        };
        if seg.u32(0).load(Ordering::Acquire) != MAGIC {
            return Err(invalid("not a tokio-multiprocessing segment".to_owned()));
        }
        let found = seg.u32(4).load(Ordering::Relaxed);
        if found != kind as u32 {
            return Err(invalid(format!(
                "segment of kind {found} where a {kind:?} was expected"
            )));
        }
        Ok(seg)
    }

    /// The 32-bit word at byte `offset`.
    #[inline]
    pub(crate) fn u32(&self, offset: usize) -> &AtomicU32 {
        self.inner.map.u32_at(offset)
    }

    /// The 64-bit word at byte `offset`.
    #[inline]
    pub(crate) fn u64(&self, offset: usize) -> &AtomicU64 {
        self.inner.map.u64_at(offset)
    }

    /// The segment's random id, the same in every process that maps it.
    /// Copies `bytes` into the segment at `offset`.
    ///
    /// # Safety
    ///
    /// As [`Mapping::write_bytes`]: the caller holds the lock that guards
    /// the range, and the range holds no atomic word.
    pub(crate) unsafe fn write_bytes(&self, offset: usize, bytes: &[u8]) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.map.write_bytes(offset, bytes) }
    }

    /// Copies bytes out of the segment at `offset`.
    ///
    /// # Safety
    ///
    /// As [`Mapping::read_bytes`].
    pub(crate) unsafe fn read_bytes(&self, offset: usize, out: &mut [u8]) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.map.read_bytes(offset, out) }
    }

    /// The segment's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// A pointer to the `len` bytes at `offset`, for a region that holds
    /// no atomic word and that the caller guards (a `Value`'s data, under
    /// its lock). The pointer is valid while `self` lives.
    ///
    /// # Panics
    ///
    /// If the range is not inside the segment, or overlaps the header.
    pub(crate) fn region(&self, offset: usize, len: usize) -> *mut u8 {
        assert!(
            offset >= HEADER
                && offset
                    .checked_add(len)
                    .is_some_and(|end| end <= self.inner.map.len()),
            "bad region {offset}+{len}"
        );
        self.inner.map.as_ptr().wrapping_add(offset)
    }

    pub(crate) fn id(&self) -> u64 {
        self.u64(8).load(Ordering::Relaxed)
    }

    /// Serializes the segment as its descriptor (see `crate::transport::handle`).
    pub(crate) fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        crate::transport::handle::serialize_handle(&self.inner.fd, serializer)
    }

    /// Deserializes a segment written by [`serialize`](Self::serialize) and
    /// maps it, as [`open`](Self::open) does.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
        kind: Kind,
        len: usize,
    ) -> Result<Segment, D::Error> {
        let fd = crate::transport::handle::deserialize_handle(deserializer)?;
        Segment::open(fd, kind, len).map_err(D::Error::custom)
    }

    /// Deserializes a segment of any length from `min`, and maps all of it
    /// (see [`open_whole`](Self::open_whole)).
    pub(crate) fn deserialize_whole<'de, D: Deserializer<'de>>(
        deserializer: D,
        kind: Kind,
        min: usize,
    ) -> Result<Segment, D::Error> {
        let fd = crate::transport::handle::deserialize_handle(deserializer)?;
        Segment::open_whole(fd, kind, min).map_err(D::Error::custom)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Segment")
            .field("id", &format_args!("{:016x}", self.id()))
            .field("len", &self.inner.map.len())
            .finish()
    }
}

/// Serializes a segment as its descriptor, as an element of a handle that
/// carries more than its segment.
pub(crate) struct SegmentFd<'a>(pub(crate) &'a Segment);

impl serde::Serialize for SegmentFd<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// A descriptor received in a child, not yet mapped or checked: the
/// counterpart of [`SegmentFd`].
pub(crate) struct ReceivedFd(pub(crate) OwnedHandle);

impl<'de> serde::Deserialize<'de> for ReceivedFd {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::transport::handle::deserialize_handle(deserializer).map(ReceivedFd)
    }
}

/// Implements `Serialize` and `Deserialize` for a handle whose only state
/// is the segment at field path `$field` (rebuilt by `$wrap` from `$seg`).
macro_rules! segment_serde {
    ($ty:ty, $kind:expr, $len:expr, |$seg:ident| $wrap:expr, $($field:tt).+) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                self.$($field).+.serialize(serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let $seg = crate::shm::Segment::deserialize(deserializer, $kind, $len)?;
                Ok($wrap)
            }
        }
    };
}
pub(crate) use segment_serde;

// Shared memory is Unix only for now: see docs/windows.md.
#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use crate::sys::futex;
    use std::time::Duration;

    #[derive(Debug)]
    struct Probe(Segment);
    segment_serde!(Probe, Kind::Event, 64, |seg| Probe(seg), 0);

    #[test]
    fn a_new_segment_is_zeroed_with_a_header() {
        let seg = Segment::create(Kind::Lock, 64).unwrap();
        assert_eq!(seg.u32(0).load(Ordering::Relaxed), MAGIC);
        assert_eq!(seg.u32(4).load(Ordering::Relaxed), Kind::Lock as u32);
        assert_ne!(seg.id(), 0);
        for off in (HEADER..64).step_by(4) {
            assert_eq!(seg.u32(off).load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn two_mappings_of_one_segment_share_their_words() {
        let a = Segment::create(Kind::Event, 64).unwrap();
        let fd = a.inner.fd.try_clone().unwrap();
        let b = Segment::open(fd, Kind::Event, 64).unwrap();
        assert_ne!(a.u32(16).as_ptr(), b.u32(16).as_ptr(), "two mappings");
        a.u32(16).store(7, Ordering::Relaxed);
        assert_eq!(b.u32(16).load(Ordering::Relaxed), 7);
        b.u64(24).fetch_add(5, Ordering::Relaxed);
        assert_eq!(a.u64(24).load(Ordering::Relaxed), 5);
        assert_eq!(a.id(), b.id());
    }

    /// A shared futex keys on the memory, not on the address: a wake sent
    /// through one mapping reaches a sleeper on another, as it must between
    /// processes (a `FUTEX_PRIVATE` wait would sleep on).
    #[test]
    fn a_wake_through_one_mapping_reaches_a_sleeper_on_another() {
        let a = Segment::create(Kind::Event, 64).unwrap();
        let b = Segment::open(a.inner.fd.try_clone().unwrap(), Kind::Event, 64).unwrap();
        let sleeper = std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            while b.u32(16).load(Ordering::Acquire) == 0 {
                futex::wait(b.u32(16), 0, Some(Duration::from_secs(10)));
            }
            t0.elapsed()
        });
        std::thread::sleep(Duration::from_millis(50));
        a.u32(16).store(1, Ordering::Release);
        futex::wake_all(a.u32(16));
        let took = sleeper.join().unwrap();
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_segment_of_another_kind_or_size_is_refused() {
        let a = Segment::create(Kind::Event, 64).unwrap();
        let err = Segment::open(a.inner.fd.try_clone().unwrap(), Kind::Lock, 64).unwrap_err();
        assert!(err.to_string().contains("Lock"), "{err}");
        let err = Segment::open(a.inner.fd.try_clone().unwrap(), Kind::Event, 128).unwrap_err();
        assert!(err.to_string().contains("expected 128"), "{err}");
    }

    #[test]
    fn a_bad_segment_length_is_an_error_not_a_panic() {
        for len in [0, 3, HEADER - 8, 17, usize::MAX - 7] {
            let r = std::panic::catch_unwind(|| Segment::create(Kind::Event, len).map(drop));
            let r = r.unwrap_or_else(|_| panic!("length {len} panicked"));
            let err = r.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{len}: {err}");
        }
    }

    /// Another process holding the descriptor cannot shrink the file
    /// under our mapping (our next access would die of `SIGBUS`), nor
    /// grow it.
    #[test]
    fn a_segment_cannot_be_resized_by_whoever_holds_its_descriptor() {
        let seg = Segment::create(Kind::Event, 64).unwrap();
        let fd = seg.inner.fd.try_clone().unwrap();
        assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "shrunk");
        assert!(nix::unistd::ftruncate(&fd, 4096).is_err(), "grown");
        seg.u32(16).store(1, Ordering::Relaxed);
        assert_eq!(crate::sys::shm::size(&fd).unwrap(), 64);
    }

    #[test]
    fn a_segment_that_could_be_resized_is_refused() {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let fd = memfd_create(c"not-ours", MFdFlags::MFD_CLOEXEC).unwrap();
        nix::unistd::ftruncate(&fd, 64).unwrap();
        let err = Segment::open(fd, Kind::Event, 64).unwrap_err();
        assert!(err.to_string().contains("not sealed"), "{err}");
    }

    #[test]
    fn a_segment_travels_as_its_descriptor() {
        let probe = Probe(Segment::create(Kind::Event, 64).unwrap());
        probe.0.u32(16).store(42, Ordering::Relaxed);
        let (bytes, fds) = crate::transport::handle::collect_handles(|| rmp_serde::to_vec(&probe));
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 1);
        let back: Probe =
            crate::transport::handle::provide_handles(fds, || rmp_serde::from_slice(&bytes))
                .unwrap();
        assert_eq!(back.0.u32(16).load(Ordering::Relaxed), 42);
        assert_eq!(back.0.id(), probe.0.id());
    }
}
