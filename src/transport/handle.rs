//! Carrying file descriptors inside serialized arguments.
//!
//! A handle that owns an OS resource (a socket, a shared memory segment)
//! serializes its descriptor out of band: while a target's arguments are
//! encoded for a child, [`collect_handles`] gathers a duplicate of every
//! descriptor a handle serializes, and the handle writes only the
//! descriptor's index among them. The descriptors then travel with the
//! frame that carries the arguments, by `SCM_RIGHTS`, and in the child
//! [`provide_handles`] hands them back to the handles as they deserialize.
//!
//! Encoding a handle anywhere else (to JSON, say) fails with a clear error:
//! a descriptor number means nothing outside the process that owns it.

use std::cell::RefCell;
use std::os::fd::OwnedFd;

use crate::sys::OwnedHandle;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

thread_local! {
    static SINK: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// Runs `f` (which encodes something) and returns its result with the
/// descriptors the handles in it serialized, in index order.
pub(crate) fn collect_handles<R>(f: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let outer = SINK.with(|s| s.borrow_mut().replace(Vec::new()));
    let result = f();
    let fds = SINK
        .with(|s| std::mem::replace(&mut *s.borrow_mut(), outer))
        .unwrap_or_default();
    (result, fds)
}

/// Runs `f` (which decodes something) with `fds` available to the handles
/// in it. Descriptors no handle claimed are closed afterwards.
pub(crate) fn provide_handles<R>(fds: Vec<OwnedFd>, f: impl FnOnce() -> R) -> R {
    let fds = fds.into_iter().map(Some).collect();
    let outer = SOURCE.with(|s| s.borrow_mut().replace(fds));
    let result = f();
    SOURCE.with(|s| *s.borrow_mut() = outer);
    result
}

/// Serializes `fd` as its index among the descriptors being collected.
pub(crate) fn serialize_handle<S: Serializer>(
    fd: &OwnedHandle,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let index = SINK.with(|s| {
        let mut sink = s.borrow_mut();
        let Some(sink) = sink.as_mut() else {
            return Err(S::Error::custom(
                "this handle owns an OS resource and can only be sent to a child process, \
                 inside a target's arguments",
            ));
        };
        let dup = fd.try_clone().map_err(S::Error::custom)?;
        sink.push(dup);
        Ok(sink.len() - 1)
    })?;
    u32::try_from(index)
        .map_err(S::Error::custom)?
        .serialize(serializer)
}

/// Deserializes a descriptor serialized by [`serialize_handle`].
pub(crate) fn deserialize_handle<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(deserializer)? as usize;
    SOURCE.with(|s| {
        let mut source = s.borrow_mut();
        let Some(source) = source.as_mut() else {
            return Err(D::Error::custom(
                "this handle can only be received by a child process",
            ));
        };
        source.get_mut(index).and_then(Option::take).ok_or_else(|| {
            D::Error::custom(format!("descriptor {index} is missing or already taken"))
        })
    })
}

/// `#[serde(with = "crate::transport::handle::fd")]` for an `OwnedFd` field.
pub(crate) mod fd {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(fd: &OwnedFd, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_handle(fd, serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OwnedFd, D::Error> {
        deserialize_handle(deserializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
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
        assert!(err.contains("can only be sent to a child process"), "{err}");
        let (bytes, _fds) = collect_handles(|| rmp_serde::to_vec(&carrier));
        let err = rmp_serde::from_slice::<Carrier>(&bytes.unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("can only be received by a child process"),
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
