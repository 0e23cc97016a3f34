//! [`SharedMemory`]: a block of raw bytes shared between processes, by name
//! (with Python's `multiprocessing.shared_memory`) or by handle.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::sys::OwnedHandle;
use crate::sys::shm::{self, Mapping};

/// The longest name: `NAME_MAX` (255) less the leading `/`.
const MAX_NAME: usize = 254;

/// A block of raw bytes in shared memory: Python's
/// `multiprocessing.shared_memory.SharedMemory`.
///
/// A block is either *named* or *anonymous*:
///
/// - [`create(name, size)`](Self::create), [`create_unique(size)`](Self::create_unique)
///   and [`open(name)`](Self::open) make or attach to a POSIX shared-memory
///   object named `/NAME` (`/dev/shm/NAME` on Linux), exactly as Python
///   does: `shm_open` with mode `0o600`, sized by `ftruncate`, mapped whole.
///   A Python process and a Rust process share the block by its name, in
///   either direction ([`name`](Self::name) is Python's `shm.name`, without
///   the `/`; [`create_unique`](Self::create_unique) makes names like
///   Python's, `psm_` and 8 hex digits).
/// - [`anonymous(size)`](Self::anonymous) makes a block with no name (a
///   `memfd`, sealed at its size), reachable only through its handle.
///
/// Either kind travels to a child inside a target's arguments as a handle
/// (its descriptor, and its name if it has one). Cloning shares the
/// mapping; the block is unmapped and its descriptor closed when the last
/// clone in a process goes (Python's `close()`).
///
/// # Lifetime of a named block
///
/// As in Python, dropping never removes the name: the block lives until
/// some process calls [`unlink`](Self::unlink) (Python's `unlink()`), once,
/// and the last process unmaps it. Python's resource tracker unlinks, when
/// the Python program ends, every block that program created *or
/// attached to* (Python 3.8 to 3.12); a Python process that attaches to a
/// block a Rust process created and must leave it in place calls
/// `resource_tracker.unregister(shm._name, "shared_memory")`. Nothing
/// tracks the blocks this crate creates: the creator unlinks them.
///
/// # Reading and writing
///
/// Another process may write the block at any moment, and nothing in the
/// block itself orders those writes (Python's `memoryview` writes plain
/// bytes). So the safe accessors treat every byte as an atomic:
/// [`read_at`](Self::read_at) and [`write_at`](Self::write_at) copy with
/// relaxed atomic loads and stores, [`atomic_bytes`](Self::atomic_bytes)
/// is the whole block as `&[AtomicU8]`, and
/// [`atomic_u32`](Self::atomic_u32)/[`atomic_u64`](Self::atomic_u64) are
/// aligned words (for a flag or a counter shared with other Rust
/// processes). What the bytes mean, and who writes them when, is for the
/// processes to agree on, with a [`Lock`](crate::Lock), an
/// [`Event`](crate::Event), a message, or a flag word. Where such a
/// protocol guarantees that nobody else writes (or reads) meanwhile,
/// [`buf`](Self::buf) and [`buf_mut`](Self::buf_mut) give plain slices;
/// they are `unsafe` because the compiler cannot see the other processes.
///
/// # Examples
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// # fn main() -> std::io::Result<()> {
/// // Python: shm = SharedMemory(name="demo", create=True, size=16)
/// let shm = mp::SharedMemory::create("demo", 16)?;
/// shm.write_at(0, b"hello");
/// // Python: bytes(SharedMemory(name="demo").buf[:5]) == b"hello"
/// let other = mp::SharedMemory::open("demo")?;
/// let mut out = [0u8; 5];
/// other.read_at(0, &mut out);
/// assert_eq!(&out, b"hello");
/// shm.unlink()?;
/// # Ok(())
/// # }
/// ```
///
/// # Caveats
///
/// A named block cannot be sealed: a process that shrinks it (`ftruncate`
/// on its descriptor) makes the next access to the lost pages in every
/// process that maps it die of `SIGBUS`, as it would in Python. An
/// anonymous block is sealed at its size and has no such risk.
#[derive(Clone)]
pub struct SharedMemory {
    inner: Arc<Inner>,
}

struct Inner {
    map: Mapping,
    fd: OwnedHandle,
    /// The name without its leading `/`, for a named block.
    name: Option<String>,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg.into())
}

/// `/NAME`, checked.
fn posix_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', '\0']) {
        return Err(invalid(format!(
            "{name:?} is not a shared-memory name (1 to {MAX_NAME} bytes, no '/' or NUL)"
        )));
    }
    CString::new(format!("/{name}")).map_err(|e| invalid(e.to_string()))
}

fn check_size(size: usize) -> io::Result<()> {
    if size == 0 {
        return Err(invalid("a shared-memory block of 0 bytes"));
    }
    Ok(())
}

impl SharedMemory {
    /// Creates the named block `name` of `size` zero bytes: Python's
    /// `SharedMemory(name, create=True, size=size)`.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` if a block of that name exists; `InvalidInput` for
    /// a size of 0 or a name that is empty, has a `/` or is longer than
    /// 254 bytes; otherwise when the block cannot be created or mapped
    /// (then it is unlinked again).
    pub fn create(name: &str, size: usize) -> io::Result<SharedMemory> {
        check_size(size)?;
        let path = posix_name(name)?;
        let fd = shm::create_named(&path, size)?;
        match Mapping::new(&fd, size) {
            Ok(map) => Ok(SharedMemory {
                inner: Arc::new(Inner {
                    map,
                    fd,
                    name: Some(name.to_owned()),
                }),
            }),
            Err(e) => {
                let _ = shm::unlink_named(&path);
                Err(e)
            }
        }
    }

    /// Creates a named block of `size` zero bytes under a fresh name made
    /// as Python makes them, `psm_` and 8 random hex digits: Python's
    /// `SharedMemory(create=True, size=size)`. Read it with
    /// [`name`](Self::name).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub fn create_unique(size: usize) -> io::Result<SharedMemory> {
        loop {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).map_err(|e| io::Error::other(e.to_string()))?;
            let name = format!("psm_{:08x}", u32::from_be_bytes(bytes));
            match Self::create(&name, size) {
                Err(e) if shm::is_exists(&e) => continue,
                other => return other,
            }
        }
    }

    /// Attaches to the existing named block `name`, all of it: Python's
    /// `SharedMemory(name)`. Its [`size`](Self::size) is the object's size.
    ///
    /// # Errors
    ///
    /// `NotFound` if no block has that name; `InvalidInput` for a bad name
    /// (see [`create`](Self::create)) or an empty block; otherwise when it
    /// cannot be opened or mapped.
    pub fn open(name: &str) -> io::Result<SharedMemory> {
        let path = posix_name(name)?;
        let fd = shm::open_named(&path)?;
        let size = shm::size(&fd)?;
        check_size(size)?;
        let map = Mapping::new(&fd, size)?;
        Ok(SharedMemory {
            inner: Arc::new(Inner {
                map,
                fd,
                name: Some(name.to_owned()),
            }),
        })
    }

    /// Creates a block of `size` zero bytes with no name, which other
    /// processes reach only through this handle (sent in a target's
    /// arguments). It is sealed at its size.
    ///
    /// # Errors
    ///
    /// `InvalidInput` for a size of 0; otherwise when the memory cannot be
    /// created or mapped.
    pub fn anonymous(size: usize) -> io::Result<SharedMemory> {
        check_size(size)?;
        let fd = shm::create_anonymous(size)?;
        let map = Mapping::new(&fd, size)?;
        Ok(SharedMemory {
            inner: Arc::new(Inner {
                map,
                fd,
                name: None,
            }),
        })
    }

    /// The block's name without the leading `/` (Python's `shm.name`), or
    /// `None` for an anonymous block.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The block's size in bytes, all of it mapped: Python's `shm.size`
    /// (the object's size when it was attached).
    pub fn size(&self) -> usize {
        self.inner.map.len()
    }

    /// Removes the block's name, so that no process can [`open`](Self::open)
    /// it any more; the memory itself lives until every process has
    /// dropped its handles. Python's `shm.unlink()`: call it once, in one
    /// process. Does nothing for an anonymous block.
    ///
    /// # Errors
    ///
    /// `NotFound` if the name was removed already.
    pub fn unlink(&self) -> io::Result<()> {
        match &self.inner.name {
            Some(name) => shm::unlink_named(&posix_name(name)?),
            None => Ok(()),
        }
    }

    /// The block as bytes that are each accessed atomically: sound to share
    /// with any other process, with no copy.
    pub fn atomic_bytes(&self) -> &[AtomicU8] {
        // SAFETY: the mapping is `size()` bytes, valid while `self` (and so
        // the mapping) is borrowed; `AtomicU8` has the size and alignment
        // of `u8` and any bits are a valid value; every access through the
        // slice is atomic, so writes by other threads or processes are
        // not data races with it. The crate makes no non-atomic access to
        // the block except through `buf`/`buf_mut`, whose callers promise
        // that nothing else accesses it meanwhile.
        unsafe {
            std::slice::from_raw_parts(self.inner.map.as_ptr().cast::<AtomicU8>(), self.size())
        }
    }

    /// The aligned 32-bit word at byte `offset`, as an atomic.
    ///
    /// # Panics
    ///
    /// If `offset` is not a multiple of 4 or the word is not inside the
    /// block.
    pub fn atomic_u32(&self, offset: usize) -> &AtomicU32 {
        self.inner.map.u32_at(offset)
    }

    /// The aligned 64-bit word at byte `offset`, as an atomic.
    ///
    /// # Panics
    ///
    /// If `offset` is not a multiple of 8 or the word is not inside the
    /// block.
    pub fn atomic_u64(&self, offset: usize) -> &AtomicU64 {
        self.inner.map.u64_at(offset)
    }

    fn check_range(&self, offset: usize, len: usize) {
        let size = self.size();
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= size),
            "range {offset}..{offset}+{len} outside a shared-memory block of {size} bytes"
        );
    }

    /// Copies `out.len()` bytes from the block at `offset` into `out`, with
    /// relaxed atomic loads: a byte another process writes meanwhile is
    /// either its old or its new value, and the copy as a whole may mix
    /// both (see the type's docs).
    ///
    /// # Panics
    ///
    /// If the range is not inside the block.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) {
        self.check_range(offset, out.len());
        let src = &self.atomic_bytes()[offset..offset + out.len()];
        let (head, words, tail) = split_words(src);
        let (out_head, rest) = out.split_at_mut(head.len());
        let (out_words, out_tail) = rest.split_at_mut(words.len() * 8);
        for (o, b) in out_head.iter_mut().zip(head) {
            *o = b.load(Ordering::Relaxed);
        }
        for (o, w) in out_words.chunks_exact_mut(8).zip(words) {
            o.copy_from_slice(&w.load(Ordering::Relaxed).to_ne_bytes());
        }
        for (o, b) in out_tail.iter_mut().zip(tail) {
            *o = b.load(Ordering::Relaxed);
        }
    }

    /// Copies `bytes` into the block at `offset`, with relaxed atomic
    /// stores (see [`read_at`](Self::read_at)).
    ///
    /// # Panics
    ///
    /// If the range is not inside the block.
    pub fn write_at(&self, offset: usize, bytes: &[u8]) {
        self.check_range(offset, bytes.len());
        let dst = &self.atomic_bytes()[offset..offset + bytes.len()];
        let (head, words, tail) = split_words(dst);
        let (in_head, rest) = bytes.split_at(head.len());
        let (in_words, in_tail) = rest.split_at(words.len() * 8);
        for (b, &i) in head.iter().zip(in_head) {
            b.store(i, Ordering::Relaxed);
        }
        for (w, i) in words.iter().zip(in_words.chunks_exact(8)) {
            let word: [u8; 8] = i.try_into().expect("chunks of 8");
            w.store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        for (b, &i) in tail.iter().zip(in_tail) {
            b.store(i, Ordering::Relaxed);
        }
    }

    /// The first byte of the block (page aligned), valid for
    /// [`size`](Self::size) bytes while this handle or a clone lives in
    /// this process.
    pub fn as_ptr(&self) -> *mut u8 {
        self.inner.map.as_ptr()
    }

    /// The block as a plain byte slice, with no copy.
    ///
    /// # Safety
    ///
    /// While the slice lives, no thread or process may write the block
    /// (through any handle, a clone, or another process's mapping, Python's
    /// included), and nobody in this process may use
    /// [`buf_mut`](Self::buf_mut) on it. The processes' own protocol must
    /// ensure it: the compiler assumes the bytes do not change.
    pub unsafe fn buf(&self) -> &[u8] {
        // SAFETY: the mapping is `size()` bytes, valid while `self` is
        // borrowed; the caller guarantees nobody writes it meanwhile.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.size()) }
    }

    /// The block as a plain mutable byte slice, with no copy.
    ///
    /// # Safety
    ///
    /// While the slice lives, no other thread or process may read or write
    /// the block, through any handle, clone or mapping: this must be the
    /// only access to it anywhere, which the processes' own protocol (a
    /// [`Lock`](crate::Lock) that every user of the block takes, say) must
    /// ensure.
    pub unsafe fn buf_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `buf`; the caller guarantees this is the only
        // access to the bytes.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.size()) }
    }
}

/// Splits atomic bytes into an unaligned head, 8-byte words and a tail.
fn split_words(bytes: &[AtomicU8]) -> (&[AtomicU8], &[AtomicU64], &[AtomicU8]) {
    let start = bytes.as_ptr() as usize;
    let head = (start.next_multiple_of(8) - start).min(bytes.len());
    let (head, rest) = bytes.split_at(head);
    let words = rest.len() / 8;
    let (body, tail) = rest.split_at(words * 8);
    if words == 0 {
        return (head, &[], tail);
    }
    // SAFETY: `body` starts at an 8-byte boundary and holds `words * 8`
    // bytes of the mapping, borrowed for as long as `bytes`; an `AtomicU64`
    // is 8 bytes aligned to 8, and every bit pattern is valid. Accessing
    // the same memory as bytes elsewhere is mixed-size atomic access,
    // which the hardware makes whole per byte.
    let body = unsafe { std::slice::from_raw_parts(body.as_ptr().cast::<AtomicU64>(), words) };
    (head, body, tail)
}

/// How a block travels: its descriptor (by `SCM_RIGHTS`), its name and
/// its size.
#[derive(Serialize)]
struct Wire<'a> {
    #[serde(serialize_with = "serialize_fd")]
    fd: &'a OwnedHandle,
    name: Option<&'a str>,
    size: u64,
}

fn serialize_fd<S: Serializer>(fd: &&OwnedHandle, serializer: S) -> Result<S::Ok, S::Error> {
    crate::transport::handle::serialize_handle(fd, serializer)
}

#[derive(Deserialize)]
struct WireIn {
    #[serde(deserialize_with = "crate::transport::handle::deserialize_handle")]
    fd: OwnedHandle,
    name: Option<String>,
    size: u64,
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Wire {
            fd: &self.inner.fd,
            name: self.name(),
            size: self.size() as u64,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let w = WireIn::deserialize(deserializer)?;
        let size = usize::try_from(w.size).map_err(D::Error::custom)?;
        check_size(size).map_err(D::Error::custom)?;
        let actual = shm::size(&w.fd).map_err(D::Error::custom)?;
        if actual < size {
            return Err(D::Error::custom(format!(
                "shared-memory block of {actual} bytes, expected {size}"
            )));
        }
        if w.name.is_none() && !shm::is_sealed(&w.fd).map_err(D::Error::custom)? {
            return Err(D::Error::custom(
                "anonymous shared-memory block not sealed at its size",
            ));
        }
        if let Some(name) = &w.name {
            posix_name(name).map_err(D::Error::custom)?;
        }
        let map = Mapping::new(&w.fd, size).map_err(D::Error::custom)?;
        Ok(SharedMemory {
            inner: Arc::new(Inner {
                map,
                fd: w.fd,
                name: w.name,
            }),
        })
    }
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("size", &self.size())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unique() -> String {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        format!(
            "tmp_test_{}",
            b.iter().map(|x| format!("{x:02x}")).collect::<String>()
        )
    }

    #[test]
    fn a_named_block_is_shared_by_name_and_unlinked_explicitly() {
        let name = unique();
        let a = SharedMemory::create(&name, 100).unwrap();
        assert_eq!(a.size(), 100);
        assert_eq!(a.name(), Some(name.as_str()));
        let err = SharedMemory::create(&name, 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
        let b = SharedMemory::open(&name).unwrap();
        // Windows tells a section's size by the page, as Python there does.
        assert_eq!(b.size(), if cfg!(windows) { 4096 } else { 100 });
        a.write_at(3, b"across mappings, unaligned");
        let mut out = [0u8; 26];
        b.read_at(3, &mut out);
        assert_eq!(&out, b"across mappings, unaligned");
        drop(b);
        assert!(SharedMemory::open(&name).is_ok(), "drop does not unlink");
        a.unlink().unwrap();
        if cfg!(windows) {
            // A section lives while some process holds it: unlink does
            // nothing there (as in Python), the last handle ends it.
            assert!(SharedMemory::open(&name).is_ok(), "alive while held");
        } else {
            let err = SharedMemory::open(&name).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
        }
        a.write_at(0, b"still mapped");
        drop(a);
        let err = SharedMemory::open(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn a_unique_name_is_pythons() {
        let a = SharedMemory::create_unique(10).unwrap();
        let name = a.name().unwrap().to_owned();
        assert!(name.starts_with("psm_") && name.len() == 12, "{name}");
        #[cfg(unix)]
        assert!(std::path::Path::new(&format!("/dev/shm/{name}")).exists());
        assert!(SharedMemory::open(&name).is_ok(), "found by its name");
        a.unlink().unwrap();
    }

    #[test]
    fn bad_names_and_sizes_are_refused() {
        for name in ["", "a/b", "/x", "nul\0", &"x".repeat(255)] {
            let err = SharedMemory::create(name, 8).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{name:?}: {err}");
        }
        let err = SharedMemory::create(&unique(), 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(SharedMemory::anonymous(0).is_err());
        let err = SharedMemory::open(&unique()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    fn blocks_travel_as_handles() {
        let anon = SharedMemory::anonymous(4096).unwrap();
        anon.atomic_u64(8).store(42, Ordering::Relaxed);
        let name = unique();
        let named = SharedMemory::create(&name, 64).unwrap();
        named.write_at(0, b"n");
        let pair = (&anon, &named);
        let (bytes, fds) = crate::transport::handle::collect_handles(|| rmp_serde::to_vec(&pair));
        let (a2, n2): (SharedMemory, SharedMemory) =
            crate::transport::handle::provide_handles(fds, || {
                rmp_serde::from_slice(&bytes.unwrap())
            })
            .unwrap();
        assert_eq!(a2.name(), None);
        assert_eq!(a2.size(), 4096);
        assert_eq!(a2.atomic_u64(8).load(Ordering::Relaxed), 42);
        assert_eq!(n2.name(), Some(name.as_str()));
        assert_eq!(n2.atomic_bytes()[0].load(Ordering::Relaxed), b'n');
        named.unlink().unwrap();
        // Unlinking twice fails where names are removed (not on Windows,
        // where unlink does nothing).
        assert_eq!(n2.unlink().is_err(), cfg!(unix), "once");
        anon.unlink().unwrap();
    }

    #[test]
    fn copies_of_every_alignment_round_trip() {
        let shm = SharedMemory::anonymous(64).unwrap();
        for off in 0..8 {
            for len in 0..(64 - off).min(40) {
                let data: Vec<u8> = (0..len)
                    .map(|i| u8::try_from((i * 7 + off) % 256).unwrap())
                    .collect();
                shm.write_at(off, &data);
                let mut back = vec![0u8; len];
                shm.read_at(off, &mut back);
                assert_eq!(back, data, "{off}+{len}");
            }
        }
        let r = std::panic::catch_unwind(|| shm.read_at(60, &mut [0u8; 5]));
        assert!(r.is_err());
    }
}
