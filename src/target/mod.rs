//! Naming a function across a re-exec.
//!
//! A target is a plain function or a closure that captures nothing. Both
//! have zero-sized types, so the type alone *is* the function: the parent
//! monomorphises a trampoline for that type and sends the trampoline's
//! distance from a fixed symbol of this crate ([`anchor`]). The child runs
//! the same executable image (checked by the build fingerprint in the
//! handshake), where ASLR has moved every function by the same amount, so
//! `anchor + distance` is the same trampoline. The trampoline conjures the
//! zero-sized target value, decodes the arguments, calls, and encodes the
//! result.
//!

use std::future::Future;
use std::mem::size_of;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;

use futures::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::wire::message::{Outcome, TargetKind, TargetRef};

mod image;
pub(crate) mod panic;

use image::{anchor_addr, offset_of};
pub(crate) use image::{fingerprint, fn_from_offset, fn_to_offset};
use panic::panic_info;

/// A boxed future that yields a target's outcome.
pub(crate) type OutcomeFuture = Pin<Box<dyn Future<Output = Outcome> + Send + 'static>>;

/// The trampoline of a synchronous target: arguments in; the encoded
/// value appended to the buffer, or how the call failed (never
/// `Outcome::Returned`, and the buffer is left as it was).
pub(crate) type SyncEntry = fn(&[u8], &mut Vec<u8>) -> Result<(), Outcome>;

/// Calls a synchronous trampoline for its outcome alone.
pub(crate) fn call_sync(entry: SyncEntry, args: &[u8]) -> Outcome {
    let mut out = Vec::new();
    match entry(args, &mut out) {
        Ok(()) => Outcome::Returned(out.into()),
        Err(outcome) => outcome,
    }
}
/// The trampoline of an asynchronous target: arguments in, a future of the outcome out.
pub(crate) type AsyncEntry = fn(&[u8]) -> OutcomeFuture;

/// A function that can run in a child process.
///
/// Implemented for plain functions and non-capturing closures, synchronous
/// (`fn(A) -> R`) or asynchronous (`fn(A) -> impl Future<Output = R>`),
/// where `A` and `R` are `Serialize + DeserializeOwned + Send + 'static`.
/// Several arguments travel as one tuple: `fn((a, b): (u32, String))`.
/// Users never name `M`; it tells the synchronous and asynchronous
/// implementations apart.
///
/// A closure that captures anything cannot be sent to another process, and
/// is refused at compile time: the build fails with "a target must be a
/// plain function or a closure that captures nothing".
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a target taking `{A}` and returning `{R}`",
    label = "not a plain function or non-capturing closure of the right signature",
    note = "a target is a plain fn or a closure that captures nothing, `fn(A) -> R` or `async fn(A) -> R`, \
            with A and R: Serialize + DeserializeOwned + Send + 'static; pass several arguments as one tuple"
)]
pub trait Target<A, R, M>: Copy + Send + Sync + 'static {
    #[doc(hidden)]
    fn __target_ref(&self) -> TargetRefHidden;
}

/// Opaque: how a target is named on the wire.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct TargetRefHidden(pub(crate) TargetRef);

/// Markers that keep the two implementations of [`Target`] apart.
pub mod marker {
    use std::marker::PhantomData;

    /// A synchronous target, `fn(A) -> R`.
    #[derive(Debug)]
    pub struct Sync(());

    /// An asynchronous target, `fn(A) -> Fut` with `Fut: Future`.
    #[derive(Debug)]
    pub struct Async<Fut>(PhantomData<Fut>);
}

/// What a target's type must be besides a function: a plain `fn` item or
/// a closure that captures nothing. Implemented for every `Copy` type (a
/// closure is `Copy` when everything it captures is); a closure that
/// captures a `String`, say, fails `cargo check` at its own line with "a
/// target cannot capture anything: `{closure@..}` does". A closure that captures
/// only `Copy` values passes this bound, and fails when the program is
/// built, on the check that a target is zero-sized: the note "the above
/// error was encountered while instantiating" under that error names the
/// closure, with its file and line.
///
/// A target runs in another process, where nothing the parent captured
/// exists: pass what it needs as its argument.
#[diagnostic::on_unimplemented(
    message = "a target cannot capture anything: `{Self}` does",
    label = "this captures",
    note = "a target runs in another process: pass what it needs as its argument"
)]
pub trait CapturesNothing: Copy {}

// Without this, rustc reports the leaf of the failed bound ("`String:
// Copy` is not satisfied") instead of this trait's own message.
#[diagnostic::do_not_recommend]
impl<F: Copy> CapturesNothing for F {}

/// Fails the build when a target type is not zero-sized.
const fn assert_zero_sized<F>() {
    assert!(
        size_of::<F>() == 0,
        "a target must be a plain function or a closure that captures nothing: this one \
         captures (see the note below for which, and pass what it needs as its argument)"
    );
}

/// Produces the target value in the child.
///
/// # Safety
///
/// `F` must be zero-sized, `Copy`, and inhabited: a value of `F` must have
/// existed somewhere (in the parent, which passed one to `Process::new`).
unsafe fn conjure<F: Copy>() -> F {
    const { assert_zero_sized::<F>() };
    // SAFETY: `F` is zero-sized (asserted at compile time above), so a value
    // has no bytes and every value is bit-identical to the one the parent
    // held; `F: Copy` means duplicating that value is allowed; and the
    // caller guarantees `F` is inhabited. Fn items and non-capturing
    // closures, the only zero-sized types implementing `Fn` on stable Rust,
    // carry no invariant beyond their type.
    unsafe { std::mem::zeroed::<F>() }
}

/// Encodes a value the way every payload on the wire is encoded.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(value).map_err(|e| e.to_string())
}

/// Encodes `value` as [`encode_value`] does, unless its encoding grows
/// past `cap` bytes: then it stops there and returns `Ok(None)`.
pub(crate) fn encode_value_within<T: Serialize + ?Sized>(
    value: &T,
    cap: usize,
) -> Result<Option<Vec<u8>>, String> {
    /// A buffer that refuses to grow past its cap, and says it did.
    struct Capped {
        buf: Vec<u8>,
        cap: usize,
        over: bool,
    }
    impl std::io::Write for Capped {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if self.buf.len() + b.len() > self.cap {
                self.over = true;
                return Err(std::io::Error::other("over the cap"));
            }
            self.buf.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped {
        buf: Vec::with_capacity(128),
        cap,
        over: false,
    };
    match rmp_serde::encode::write(&mut out, value) {
        Ok(()) => Ok(Some(out.buf)),
        Err(_) if out.over => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Decodes a payload encoded by [`encode_value`].
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}

fn finish<R: Serialize>(value: R) -> Outcome {
    match crate::transport::handle::encode_value_handles(|| encode_value(&value)) {
        Ok(bytes) => Outcome::Returned(bytes.into()),
        Err(e) => Outcome::EncodeResult(e),
    }
}

/// Decodes the arguments, calls, and appends the encoded value to `out`,
/// catching a panic.
fn run_sync<A, R>(args: &[u8], out: &mut Vec<u8>, call: impl FnOnce(A) -> R) -> Result<(), Outcome>
where
    A: DeserializeOwned,
    R: Serialize,
{
    let args: A = decode_value(args).map_err(Outcome::DecodeArgs)?;
    match std::panic::catch_unwind(AssertUnwindSafe(move || call(args))) {
        Ok(value) => {
            let before = out.len();
            crate::transport::handle::encode_value_handles(|| {
                rmp_serde::encode::write(&mut *out, &value).inspect_err(|_| out.truncate(before))
            })
            .map_err(|e| Outcome::EncodeResult(e.to_string()))
        }
        Err(payload) => Err(Outcome::Panicked(panic_info(payload))),
    }
}

/// [`run_sync`] for a call that returns a future.
fn run_async<A, R, Fut>(args: &[u8], call: impl FnOnce(A) -> Fut) -> OutcomeFuture
where
    Fut: Future<Output = R> + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    let args: A = match decode_value(args) {
        Ok(a) => a,
        Err(e) => return Box::pin(std::future::ready(Outcome::DecodeArgs(e))),
    };
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(move || call(args))) {
        Ok(fut) => fut,
        Err(payload) => {
            return Box::pin(std::future::ready(Outcome::Panicked(panic_info(payload))));
        }
    };
    Box::pin(async move {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(value) => finish(value),
            Err(payload) => Outcome::Panicked(panic_info(payload)),
        }
    })
}

fn sync_trampoline<F, A, R>(args: &[u8], out: &mut Vec<u8>) -> Result<(), Outcome>
where
    F: Fn(A) -> R + Copy,
    A: DeserializeOwned,
    R: Serialize,
{
    run_sync(args, out, |a| {
        // SAFETY: this trampoline is only named by `Target::__target_ref`
        // for a value of `F` the caller held, so `F` is inhabited;
        // `conjure` checks the size at compile time and `F: Copy` is
        // required above.
        let f: F = unsafe { conjure::<F>() };
        f(a)
    })
}

fn async_trampoline<F, A, R, Fut>(args: &[u8]) -> OutcomeFuture
where
    F: Fn(A) -> Fut + Copy,
    Fut: Future<Output = R> + Send + 'static,
    A: DeserializeOwned,
    R: Serialize,
{
    run_async(args, |a| {
        // SAFETY: as in `sync_trampoline`: named only for a value of `F`
        // that existed, zero-sized by the compile-time check, and `Copy`.
        let f: F = unsafe { conjure::<F>() };
        f(a)
    })
}

impl<F, A, R> Target<A, R, marker::Sync> for F
where
    F: Fn(A) -> R + CapturesNothing + Send + Sync + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn __target_ref(&self) -> TargetRefHidden {
        const { assert_zero_sized::<F>() };
        let entry: SyncEntry = sync_trampoline::<F, A, R>;
        TargetRefHidden(TargetRef {
            kind: TargetKind::Sync,
            offset: offset_of(entry as usize),
        })
    }
}

impl<F, A, R, Fut> Target<A, R, marker::Async<Fut>> for F
where
    F: Fn(A) -> Fut + CapturesNothing + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    A: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    fn __target_ref(&self) -> TargetRefHidden {
        const { assert_zero_sized::<F>() };
        let entry: AsyncEntry = async_trampoline::<F, A, R, Fut>;
        TargetRefHidden(TargetRef {
            kind: TargetKind::Async,
            offset: offset_of(entry as usize),
        })
    }
}

/// A function of several arguments that [`Pool::starmap`](crate::Pool::starmap)
/// can run in a worker, each item being the tuple of its arguments.
///
/// Implemented for plain functions and non-capturing closures of one to
/// six arguments, synchronous (`fn(A1, A2) -> R`) or asynchronous
/// (`async fn(A1, A2) -> R`), with every argument and `R`
/// `Serialize + DeserializeOwned + Send + 'static`. `Args` is the tuple
/// `(A1, A2)` (or `(A1,)` for one argument).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a target taking the arguments `{Args}` and returning `{R}`",
    label = "not a plain function or non-capturing closure of the right signature",
    note = "a starmap target is a plain fn or a closure that captures nothing, with one to six \
            arguments, each and the value Serialize + DeserializeOwned + Send + 'static"
)]
pub trait StarTarget<Args, R, M>: Copy + Send + Sync + 'static {
    #[doc(hidden)]
    fn __target_ref(&self) -> TargetRefHidden;
}

macro_rules! star_targets {
    ($($arg:ident),+) => {
        impl<F, R, $($arg,)+> StarTarget<($($arg,)+), R, marker::Sync> for F
        where
            F: Fn($($arg),+) -> R + CapturesNothing + Send + Sync + 'static,
            $($arg: Serialize + DeserializeOwned + Send + 'static,)+
            R: Serialize + DeserializeOwned + Send + 'static,
        {
            fn __target_ref(&self) -> TargetRefHidden {
                #[allow(non_snake_case)]
                fn trampoline<F, R, $($arg,)+>(args: &[u8], out: &mut Vec<u8>) -> Result<(), Outcome>
                where
                    F: Fn($($arg),+) -> R + Copy,
                    $($arg: DeserializeOwned,)+
                    R: Serialize,
                {
                    run_sync(args, out, |($($arg,)+): ($($arg,)+)| {
                        // SAFETY: as in `sync_trampoline`: named only for a
                        // value of `F` that existed, zero-sized by the
                        // compile-time check, and `Copy`.
                        let f: F = unsafe { conjure::<F>() };
                        f($($arg),+)
                    })
                }
                const { assert_zero_sized::<F>() };
                let entry: SyncEntry = trampoline::<F, R, $($arg,)+>;
                TargetRefHidden(TargetRef {
                    kind: TargetKind::Sync,
                    offset: offset_of(entry as usize),
                })
            }
        }

        impl<F, R, Fut, $($arg,)+> StarTarget<($($arg,)+), R, marker::Async<Fut>> for F
        where
            F: Fn($($arg),+) -> Fut + CapturesNothing + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            $($arg: Serialize + DeserializeOwned + Send + 'static,)+
            R: Serialize + DeserializeOwned + Send + 'static,
        {
            fn __target_ref(&self) -> TargetRefHidden {
                #[allow(non_snake_case)]
                fn trampoline<F, R, Fut, $($arg,)+>(args: &[u8]) -> OutcomeFuture
                where
                    F: Fn($($arg),+) -> Fut + Copy,
                    Fut: Future<Output = R> + Send + 'static,
                    $($arg: DeserializeOwned,)+
                    R: Serialize,
                {
                    run_async(args, |($($arg,)+): ($($arg,)+)| {
                        // SAFETY: as in `sync_trampoline`.
                        let f: F = unsafe { conjure::<F>() };
                        f($($arg),+)
                    })
                }
                const { assert_zero_sized::<F>() };
                let entry: AsyncEntry = trampoline::<F, R, Fut, $($arg,)+>;
                TargetRefHidden(TargetRef {
                    kind: TargetKind::Async,
                    offset: offset_of(entry as usize),
                })
            }
        }
    };
}

star_targets!(A1);
star_targets!(A1, A2);
star_targets!(A1, A2, A3);
star_targets!(A1, A2, A3, A4);
star_targets!(A1, A2, A3, A4, A5);
star_targets!(A1, A2, A3, A4, A5, A6);

/// A target resolved in the child, ready to call.
#[derive(Clone, Copy)]
pub(crate) enum Resolved {
    Sync(SyncEntry),
    Async(AsyncEntry),
}

/// Turns a [`TargetRef`] from our parent back into a callable trampoline.
///
/// # Safety
///
/// The caller must have checked that the parent runs the same executable
/// image as this process (the build fingerprint in the handshake) and that
/// the reference came from that parent's `Target::__target_ref`.
pub(crate) unsafe fn resolve(target: TargetRef) -> Resolved {
    // Two's complement: a negative distance wraps to the same address.
    #[allow(clippy::cast_possible_truncation)]
    let addr = anchor_addr().wrapping_add(target.offset as usize);
    // SAFETY (both arms): in the parent, `offset` was computed from a
    // function of exactly the type this arm produces (`SyncEntry` for
    // `Sync`, `AsyncEntry` for `Async`, see `__target_ref`). The caller
    // guarantees the same image is mapped here; ASLR moves the whole image
    // by one amount, so distances between its functions are preserved and
    // `anchor + offset` is that same function. A `usize` holding a
    // function's address converts to a valid pointer to that function.
    match target.kind {
        TargetKind::Sync => {
            // SAFETY: see above.
            let entry = unsafe { std::mem::transmute::<usize, SyncEntry>(addr) };
            Resolved::Sync(entry)
        }
        TargetKind::Async => {
            // SAFETY: see above.
            let entry = unsafe { std::mem::transmute::<usize, AsyncEntry>(addr) };
            Resolved::Async(entry)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    async fn shout(s: String) -> String {
        s.to_uppercase()
    }

    fn target_ref<A, R, M>(t: impl Target<A, R, M>) -> TargetRef {
        t.__target_ref().0
    }

    #[test]
    fn sync_target_round_trips_through_its_offset() {
        let r = target_ref(double);
        assert_eq!(r.kind, TargetKind::Sync);
        // SAFETY: same process, same image; the reference came from __target_ref.
        let Resolved::Sync(entry) = (unsafe { resolve(r) }) else {
            panic!("kind")
        };
        let out = call_sync(entry, &encode_value(&21u32).unwrap());
        let Outcome::Returned(bytes) = out else {
            panic!("{out:?}")
        };
        assert_eq!(decode_value::<u32>(&bytes).unwrap(), 42);
    }

    #[test]
    fn closures_are_targets_and_bad_args_are_reported() {
        let r = target_ref(|(a, b): (i64, i64)| a - b);
        // SAFETY: as above.
        let Resolved::Sync(entry) = (unsafe { resolve(r) }) else {
            panic!("kind")
        };
        assert!(matches!(call_sync(entry, b"\xc1"), Outcome::DecodeArgs(_)));
        let Outcome::Returned(bytes) = call_sync(entry, &encode_value(&(5i64, 7i64)).unwrap())
        else {
            panic!()
        };
        assert_eq!(decode_value::<i64>(&bytes).unwrap(), -2);
    }

    #[test]
    fn async_target_resolves() {
        let r = target_ref(shout);
        assert_eq!(r.kind, TargetKind::Async);
        // SAFETY: as above.
        let Resolved::Async(entry) = (unsafe { resolve(r) }) else {
            panic!("kind")
        };
        let fut = entry(&encode_value(&"hi".to_owned()).unwrap());
        let out = futures::executor::block_on(fut);
        let Outcome::Returned(bytes) = out else {
            panic!("{out:?}")
        };
        assert_eq!(decode_value::<String>(&bytes).unwrap(), "HI");
    }

    #[test]
    fn panics_are_caught_with_their_message() {
        let r = target_ref(|x: u8| -> u8 { panic!("boom {x}") });
        // SAFETY: as above.
        let Resolved::Sync(entry) = (unsafe { resolve(r) }) else {
            panic!("kind")
        };
        let out = call_sync(entry, &encode_value(&7u8).unwrap());
        let Outcome::Panicked(info) = out else {
            panic!("{out:?}")
        };
        assert_eq!(info.message, "boom 7");
    }

    static CALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    fn mark() {
        CALLED.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    #[test]
    fn a_plain_fn_round_trips_through_its_offset() {
        let off = fn_to_offset(mark);
        // SAFETY: same process, same image; the offset came from fn_to_offset.
        let f = unsafe { fn_from_offset(off) };
        f();
        assert!(CALLED.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn distinct_targets_have_distinct_offsets() {
        assert_ne!(target_ref(double).offset, target_ref(|x: u32| x + 1).offset);
        assert_eq!(target_ref(double).offset, target_ref(double).offset);
        assert_eq!(fingerprint(), fingerprint());
    }
}
