//! The executable image both sides run: the fixed point every target is
//! named from, and the build fingerprint that proves both sides run the
//! same image.

/// The fixed point that every target offset is measured from.
#[inline(never)]
fn anchor() -> u64 {
    // A body that no other function shares, so the linker cannot fold it.
    0x746f_6b69_6f6d_7031
}

/// Where the anchor is in this process.
pub(crate) fn anchor_addr() -> usize {
    anchor as fn() -> u64 as usize
}

/// The distance of `addr` from the anchor.
pub(crate) fn offset_of(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

/// Names a plain function for another process running this same image
/// (a barrier's action, sent to a child in its arguments): its distance
/// from the anchor.
pub(crate) fn fn_to_offset(f: fn()) -> i64 {
    offset_of(f as usize)
}

/// Turns an offset from [`fn_to_offset`] back into the function.
///
/// # Safety
///
/// `offset` must have been returned by [`fn_to_offset`] in a process
/// running the same executable image as this one (same build
/// fingerprint, see [`fingerprint`]).
pub(crate) unsafe fn fn_from_offset(offset: i64) -> fn() {
    // Two's complement: a negative distance wraps to the same address.
    #[allow(clippy::cast_possible_truncation)]
    let addr = anchor_addr().wrapping_add(offset as usize);
    // SAFETY: the caller guarantees that `offset` is the distance from the
    // anchor to a `fn()` in this same image; ASLR moves the image as a
    // whole, so `anchor + offset` is that function here, and a `usize`
    // holding a function's address converts to a valid pointer to it.
    unsafe { std::mem::transmute::<usize, fn()>(addr) }
}

/// A build fingerprint: the executable's identity plus a layout constant of
/// this build (the distance between two of our functions).
pub(crate) fn fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    static FP: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *FP.get_or_init(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        crate::sys::exe_identity().unwrap_or_default().hash(&mut h);
        offset_of(fingerprint as fn() -> u64 as usize).hash(&mut h);
        env!("CARGO_PKG_VERSION").hash(&mut h);
        crate::wire::message::PROTOCOL_VERSION.hash(&mut h);
        h.finish()
    })
}
