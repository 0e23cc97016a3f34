//! Cross-process queues (in progress: the storage ring is here; the
//! `Queue` handle lands with the shared-memory lock it runs under).

#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod ring;
