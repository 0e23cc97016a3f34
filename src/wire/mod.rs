//! The wire: length-prefixed frames carrying MessagePack messages.

pub(crate) mod frame;
pub(crate) mod message;
