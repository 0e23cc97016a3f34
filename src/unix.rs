//! Unix-only additions to the crate's portable API, as extension traits
//! (as `std::os::unix` and tokio's `unix` modules do).
//!
//! ```no_run
//! use std::io::Write;
//!
//! use tokio_multiprocessing as mp;
//! use mp::unix::PipeEndExt;
//!
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let (a, _b) = mp::Pipe::new::<u32>()?;
//! let mut raw = a.into_std()?; // a plain socket, for a protocol of one's own
//! raw.write_all(b"bytes")?;
//! # Ok(()) }
//! ```

use std::os::unix::net::UnixStream;

use crate::connection::{Connection, Receiver, Sender};
use crate::wire::ChannelError;

/// Gives a pipe end's socket up as a plain [`UnixStream`], for code that
/// speaks its own protocol over it.
pub trait PipeEndExt: private::Sealed {
    /// Writes out the queued messages, then gives the socket up.
    ///
    /// # Errors
    ///
    /// If the end is closed, if it holds received bytes that no `recv` has
    /// taken (they would be lost), if writing fails, or if the descriptor
    /// cannot be duplicated.
    fn into_std(self) -> Result<UnixStream, ChannelError>;
}

impl<T> PipeEndExt for Connection<T> {
    fn into_std(self) -> Result<UnixStream, ChannelError> {
        self.into_handle().map(UnixStream::from)
    }
}

impl<T> PipeEndExt for Sender<T> {
    fn into_std(self) -> Result<UnixStream, ChannelError> {
        self.into_handle().map(UnixStream::from)
    }
}

impl<T> PipeEndExt for Receiver<T> {
    fn into_std(self) -> Result<UnixStream, ChannelError> {
        self.into_handle().map(UnixStream::from)
    }
}

mod private {
    pub trait Sealed {}
    impl<T> Sealed for crate::Connection<T> {}
    impl<T> Sealed for crate::Sender<T> {}
    impl<T> Sealed for crate::Receiver<T> {}
}
