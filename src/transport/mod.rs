//! Bytes and descriptors between processes, over the operating system's
//! sockets: the one place outside `sys` that handles descriptors.
//!
//! - [`handle`]: descriptors carried inside serialized arguments (a handle
//!   serializes the index of its descriptor; the descriptors travel beside
//!   the bytes);
//! - [`fdstream`]: an async stream socket whose writes carry queued
//!   descriptors and whose reads collect the ones that arrive;
//! - [`net`]: TCP and Unix-path listeners and the streams they accept,
//!   before they become pipe ends;
//! - [`blocking`]: the blocking reader and writer of frames, for code that
//!   runs without a runtime (a child reading its orders, the fork server).
//!
//! Frames themselves are the wire's (`crate::wire::frame`): every reader
//! here decodes through its one codec.

pub(crate) mod blocking;
#[cfg(unix)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod fdstream;
#[cfg(windows)]
#[path = "pipestream.rs"]
pub(crate) mod fdstream;
pub(crate) mod handle;
pub(crate) mod net;
pub(crate) mod socket;
