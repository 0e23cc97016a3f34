//! Carrying file descriptors inside serialized values.
//!
//! A handle that owns an OS resource (a socket, a shared memory segment)
//! serializes its descriptor out of band: while a value that may hold
//! handles is encoded (a target's arguments for a child, a Pipe message, a
//! Pool task's argument), [`collect_handles`] gathers a duplicate of every
//! descriptor a handle serializes, and the handle writes only the
//! descriptor's index among them. The descriptors then travel with the
//! frame that carries the value, by `SCM_RIGHTS`, and on the other side
//! [`provide_handles`] hands them back to the handles as they deserialize.
//!
//! A pool worker encodes a task's value the same way (see
//! [`accept_value_handles`]), and the reply goes over its socket.
//!
//! Encoding a handle anywhere else (to JSON, into a Queue's shared memory,
//! as a Process's return value) fails with a clear error that names the paths
//! that can carry it: a descriptor number means nothing outside the
//! process that owns it.

use std::cell::{Cell, RefCell};

use crate::sys::OwnedHandle;

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    /// The list being collected into, while [`collect_handles_into`] runs
    /// on this thread; null otherwise. A plain pointer in a `Cell` (no
    /// destructor, no borrow flag), since every message sent through a
    /// pipe sets and restores it: it must cost next to nothing.
    static SINK: Cell<*mut Vec<OwnedHandle>> = const { Cell::new(std::ptr::null_mut()) };
    /// A handle was encoded while no list was being collected into: the
    /// sign that an encoding failed for want of one (see [`encode`]).
    static MISSED: Cell<bool> = const { Cell::new(false) };
    static SOURCE: RefCell<Option<Vec<Option<OwnedHandle>>>> = const { RefCell::new(None) };
    /// Where a target's value may put the descriptors of its handles,
    /// while [`accept_value_handles`] runs on this thread (a pool worker
    /// running a task); null otherwise. Only [`encode_value_handles`]
    /// reads it, never the target's own code.
    static VALUE_SINK: Cell<*mut Vec<OwnedHandle>> = const { Cell::new(std::ptr::null_mut()) };
    /// How many handles this thread has encoded inside the bytes (Windows,
    /// where a handle travels as a token in the value itself).
    static INLINE: Cell<usize> = const { Cell::new(0) };
    /// Whether the handles being encoded go beside the bytes on Windows
    /// too (see [`collect_handles_beside`]); on Unix they always do.
    static BESIDE: Cell<bool> = const { Cell::new(false) };
}

/// [`collect_handles`] for a value whose handles go beside its bytes on
/// every platform: a child's arguments. On Unix that is how every handle
/// travels; on Windows the descriptors collected here are duplicated into
/// the child once it exists (see `sys::give_handle`), so a copy made for
/// a child that dies before it takes it dies with it, and each start of a
/// supervised child gets copies of its own.
pub(crate) fn collect_handles_beside<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedHandle>) {
    /// Puts the outer mode back, even if `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            BESIDE.with(|b| b.set(self.0));
        }
    }
    let _restore = Restore(BESIDE.with(|b| b.replace(true)));
    collect_handles(f)
}

/// [`encode`], also saying whether the value carried handles: beside the
/// bytes (the descriptors returned) or, on Windows, inside them.
pub(crate) fn encode_noting<R, E>(
    f: impl FnMut() -> Result<R, E>,
) -> (Result<R, E>, Vec<OwnedHandle>, bool) {
    let before = INLINE.with(Cell::get);
    let (result, fds) = encode(f);
    let carried = !fds.is_empty() || INLINE.with(Cell::get) != before;
    (result, fds, carried)
}

/// Runs `f` (which encodes something) and returns its result with the
/// descriptors the handles in it serialized, in index order.
pub(crate) fn collect_handles<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedHandle>) {
    let mut fds = Vec::new();
    let result = collect_handles_into(&mut fds, f);
    (result, fds)
}

/// Runs `f` (which encodes something) as it is, and only if it failed
/// because a handle was in it, again under [`collect_handles`]: a value
/// without handles (nearly every message) costs nothing more than its
/// encoding. Returns the result with the descriptors collected (none when
/// the first run succeeded). `f` must leave nothing behind when it fails.
pub(crate) fn encode<R, E>(
    mut f: impl FnMut() -> Result<R, E>,
) -> (Result<R, E>, Vec<OwnedHandle>) {
    match f() {
        Err(_) if MISSED.with(|m| m.replace(false)) => collect_handles(f),
        plain => (plain, Vec::new()),
    }
}

/// [`collect_handles`] that appends to `fds`: the handles encoded by `f`
/// take the indexes after those already in `fds`, so several values
/// encoded one after another (the arguments of a batch) share one list.
pub(crate) fn collect_handles_into<R>(fds: &mut Vec<OwnedHandle>, f: impl FnOnce() -> R) -> R {
    /// Puts the outer list back, even if `f` panics.
    struct Restore(*mut Vec<OwnedHandle>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SINK.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SINK.with(|s| s.replace(std::ptr::from_mut(fds))));
    f()
}

/// Runs `f` (which runs a target) so that the handles in the target's
/// value put their descriptors into `fds` as the value is encoded (see
/// [`encode_value_handles`]). The target's own code does not collect into
/// it: a handle it sends elsewhere (into a Queue) is refused as ever.
pub(crate) fn accept_value_handles<R>(fds: &mut Vec<OwnedHandle>, f: impl FnOnce() -> R) -> R {
    let _restore = RestoreValueSink(VALUE_SINK.with(|s| s.replace(std::ptr::from_mut(fds))));
    f()
}

/// Puts a value sink back when dropped, even if what ran meanwhile
/// panicked.
struct RestoreValueSink(*mut Vec<OwnedHandle>);

impl Drop for RestoreValueSink {
    fn drop(&mut self) {
        VALUE_SINK.with(|s| s.set(self.0));
    }
}

/// Encodes a target's value with `f`: under [`accept_value_handles`] the
/// handles in it go into that list, as [`encode`] collects them;
/// elsewhere (a Process's value) `f` runs as it is, and a handle in the
/// value fails to encode. `f` must leave nothing behind when it fails.
pub(crate) fn encode_value_handles<R, E>(mut f: impl FnMut() -> Result<R, E>) -> Result<R, E> {
    // Taken, not just read: whatever `f` runs must not find it.
    let sink = VALUE_SINK.with(|s| s.replace(std::ptr::null_mut()));
    if sink.is_null() {
        return f();
    }
    let _restore = RestoreValueSink(sink);
    let (result, fds) = encode(f);
    // SAFETY: `sink` is non-null only while `accept_value_handles` runs on
    // this thread, holding the list's `&mut` for that whole time without
    // touching it; it was taken out of the thread-local above, so no other
    // code reaches it until `_restore` puts it back, and the `&mut` made
    // here lives only for this `extend`.
    unsafe { (*sink).extend(fds) };
    result
}

/// Runs `f` (which decodes something) with `fds` available to the handles
/// in it. Descriptors no handle claimed are closed afterwards.
pub(crate) fn provide_handles<R>(fds: Vec<OwnedHandle>, f: impl FnOnce() -> R) -> R {
    let mut fds = fds.into_iter().map(Some).collect();
    provide_handles_from(&mut fds, f)
}

/// [`provide_handles`] from a list the caller keeps: each descriptor a
/// handle takes is left `None`, the others stay for later calls (the
/// other arguments of a batch) or for the caller to drop.
pub(crate) fn provide_handles_from<R>(
    fds: &mut Vec<Option<OwnedHandle>>,
    f: impl FnOnce() -> R,
) -> R {
    let outer = SOURCE.with(|s| s.borrow_mut().replace(std::mem::take(fds)));
    let result = f();
    *fds = SOURCE
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), outer))
        .unwrap_or_default();
    result
}

/// What a handle says when it is encoded where no descriptor can go.
pub(crate) const NOT_HERE: &str = "this handle owns an OS resource (a descriptor), which can only \
     travel as a Process's or a Pool task's argument, as a Pool task's value, or inside a Pipe \
     message; send it one of those ways";

/// Serializes `fd` as its index among the descriptors being collected.
pub(crate) fn serialize_handle<S: Serializer>(
    fd: &OwnedHandle,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let sink = SINK.with(Cell::get);
    if sink.is_null() {
        MISSED.with(|m| m.set(true));
        return Err(S::Error::custom(NOT_HERE));
    }
    // Windows: the handle travels inside the bytes, as a copy the
    // receiver takes out of this process (see `sys::handle_token`), unless
    // it goes beside them (see `collect_handles_beside`).
    #[cfg(windows)]
    if !BESIDE.with(Cell::get) {
        let token = crate::sys::handle_token(fd).map_err(S::Error::custom)?;
        INLINE.with(|n| n.set(n.get().wrapping_add(1)));
        return token.serialize(serializer);
    }
    serialize_index(fd, sink, serializer)
}

/// Serializes `fd` as its index in `sink`, the list being collected into.
fn serialize_index<S: Serializer>(
    fd: &OwnedHandle,
    sink: *mut Vec<OwnedHandle>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let dup = fd.try_clone().map_err(S::Error::custom)?;
    // SAFETY: `sink` is non-null only while `collect_handles_into` runs on
    // this thread, which holds the list's `&mut` for that whole time and
    // does not touch it meanwhile (its caller cannot either: the borrow is
    // lent to it). A nested call installs its own list and restores this
    // one when it returns, so the pointer names a live list; the `&mut`
    // made here lives only for this push, and nothing in `push` calls back
    // into serialization.
    let index = unsafe {
        let sink = &mut *sink;
        sink.push(dup);
        sink.len() - 1
    };
    u32::try_from(index)
        .map_err(S::Error::custom)?
        .serialize(serializer)
}

/// Deserializes a descriptor serialized by [`serialize_handle`].
pub(crate) fn deserialize_handle<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedHandle, D::Error> {
    #[cfg(windows)]
    {
        deserializer.deserialize_any(WindowsHandle)
    }
    #[cfg(unix)]
    {
        let index = u32::deserialize(deserializer)?;
        take_index(index)
    }
}

/// A handle as Windows encodes it: an index among the handles beside the
/// bytes (an integer), or a token inside them (a pair, pid and value).
#[cfg(windows)]
struct WindowsHandle;

#[cfg(windows)]
impl<'de> serde::de::Visitor<'de> for WindowsHandle {
    type Value = OwnedHandle;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a handle's index or its token (pid, value)")
    }

    fn visit_u64<E: serde::de::Error>(self, index: u64) -> Result<OwnedHandle, E> {
        take_index(u32::try_from(index).map_err(E::custom)?)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<OwnedHandle, A::Error> {
        let pid: u32 = seq.next_element()?.ok_or_else(|| {
            <A::Error as serde::de::Error>::custom("a handle token without its pid")
        })?;
        let value: u64 = seq.next_element()?.ok_or_else(|| {
            <A::Error as serde::de::Error>::custom("a handle token without its value")
        })?;
        crate::sys::claim_handle_token(pid, value).map_err(<A::Error as serde::de::Error>::custom)
    }
}

/// The descriptor at `index` among those provided (see
/// [`provide_handles`]).
fn take_index<E: serde::de::Error>(index: u32) -> Result<OwnedHandle, E> {
    let index = index as usize;
    SOURCE.with(|s| {
        let mut source = s.borrow_mut();
        let Some(source) = source.as_mut() else {
            return Err(E::custom(
                "this handle can only be decoded where it was sent with its descriptor: \
                 as a Process's or a Pool task's argument, as a Pool task's value, or \
                 inside a Pipe message",
            ));
        };
        source
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| E::custom(format!("descriptor {index} is missing or already taken")))
    })
}

/// The descriptors of one encoded value (the handles in a pool task's
/// argument), kept beside its bytes and shared, so that the value can be
/// sent again (a job handed to another worker) without encoding it again.
///
/// Serializes as the list of its descriptors, each out of band like a
/// handle's: it travels wherever a handle does.
///
/// On Windows the handles travel inside the value's bytes, and the list is
/// empty; it still says that the value carries some (`inline`), so that
/// the value takes the paths a value with handles takes.
///
/// An empty list (nearly every value's) allocates nothing.
#[derive(Debug, Clone, Default)]
pub(crate) struct FdList(Option<std::sync::Arc<Vec<OwnedHandle>>>, bool);

impl FdList {
    /// Keeps `fds`.
    pub(crate) fn new(fds: Vec<OwnedHandle>) -> Self {
        Self::noting(fds, false)
    }

    /// Keeps `fds`, for a value that carried handles if `carried` (inside
    /// its bytes on Windows, where `fds` is empty).
    pub(crate) fn noting(fds: Vec<OwnedHandle>, carried: bool) -> Self {
        Self((!fds.is_empty()).then(|| std::sync::Arc::new(fds)), carried)
    }

    fn fds(&self) -> &[OwnedHandle] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Whether the value carries no handle.
    pub(crate) fn is_empty(&self) -> bool {
        self.fds().is_empty() && !self.1
    }

    /// The descriptors, for [`provide_handles_from`]: taken if this is the
    /// only copy, else duplicated (a duplicate that fails is missing, and
    /// the handle that wants it fails to decode).
    pub(crate) fn into_slots(self) -> Vec<Option<OwnedHandle>> {
        match self.0.map(std::sync::Arc::try_unwrap) {
            None => Vec::new(),
            Some(Ok(fds)) => fds.into_iter().map(Some).collect(),
            Some(Err(shared)) => shared.iter().map(|fd| fd.try_clone().ok()).collect(),
        }
    }
}

impl Serialize for FdList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(Some(self.fds().len()))?;
        for fd in self.fds() {
            seq.serialize_element(&Out(fd))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for FdList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fds: Vec<In> = Vec::deserialize(deserializer)?;
        Ok(Self::new(fds.into_iter().map(|In(fd)| fd).collect()))
    }
}

/// One descriptor of an [`FdList`] on its way out.
struct Out<'a>(&'a OwnedHandle);

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_handle(self.0, serializer)
    }
}

/// One descriptor of an [`FdList`] on its way in.
struct In(OwnedHandle);

impl<'de> Deserialize<'de> for In {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize_handle(deserializer).map(In)
    }
}

/// `#[serde(with = "crate::transport::handle::fd")]` for an `OwnedHandle` field.
pub(crate) mod fd {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        fd: &OwnedHandle,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serialize_handle(fd, serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OwnedHandle, D::Error> {
        deserialize_handle(deserializer)
    }
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;

    #[derive(Serialize, Deserialize)]
    struct Carrier {
        name: String,
        #[serde(with = "fd")]
        sock: OwnedFd,
    }

    #[test]
    fn descriptors_travel_beside_the_bytes() {
        let (a, b) = UnixStream::pair().unwrap();
        let carrier = Carrier {
            name: "x".into(),
            sock: OwnedFd::from(b),
        };
        let (bytes, fds) = collect_handles(|| rmp_serde::to_vec(&carrier));
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 1);
        drop(carrier);
        let back: Carrier = provide_handles(fds, || rmp_serde::from_slice(&bytes)).unwrap();
        assert_eq!(back.name, "x");
        let mut b = UnixStream::from(back.sock);
        (&a).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn encoding_a_handle_elsewhere_is_an_error() {
        let (_a, b) = UnixStream::pair().unwrap();
        let carrier = Carrier {
            name: "x".into(),
            sock: OwnedFd::from(b),
        };
        let err = rmp_serde::to_vec(&carrier).unwrap_err().to_string();
        assert!(err.contains("inside a Pipe message"), "{err}");
        let (bytes, _fds) = collect_handles(|| rmp_serde::to_vec(&carrier));
        let err = rmp_serde::from_slice::<Carrier>(&bytes.unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("where it was sent with its descriptor"),
            "{err}"
        );
    }

    #[test]
    fn a_descriptor_is_taken_once() {
        let (_a, b) = UnixStream::pair().unwrap();
        let carrier = Carrier {
            name: "x".into(),
            sock: OwnedFd::from(b),
        };
        let (bytes, fds) = collect_handles(|| rmp_serde::to_vec(&(&carrier, &carrier)));
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 2, "each serialization carries its own duplicate");
        let pair: (Carrier, Carrier) =
            provide_handles(fds, || rmp_serde::from_slice(&bytes)).unwrap();
        drop(pair);
    }
}
