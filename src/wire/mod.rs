//! The wire: length-prefixed frames carrying MessagePack messages.

pub(crate) mod blocking;
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod fdstream;
pub(crate) mod frame;
pub(crate) mod message;
#[cfg(test)]
mod proptests;
