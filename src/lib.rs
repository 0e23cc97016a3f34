//! tokio-multiprocessing: Python's `multiprocessing`, rebuilt for async Rust on Tokio.

#![warn(missing_docs)]

mod error;
mod sys;
mod wire;

pub use error::{ChannelError, Error, PanicInfo, ProcessError, Result};
