//! The wire: length-prefixed frames carrying MessagePack messages.
