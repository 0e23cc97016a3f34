//! The wire: length-prefixed frames carrying MessagePack messages, and
//! what goes wrong with them. No operating-system code: the transports that
//! move these bytes are in `crate::transport`.

mod error;
pub(crate) mod frame;
pub(crate) mod log;
pub(crate) mod message;
#[cfg(test)]
mod proptests;

pub use error::ChannelError;
pub use message::PanicInfo;
