//! What a child says about a panic: its message and where it happened.
//!
//! The hook records the location of each panic on the panicking thread;
//! the trampoline that catches the unwind pairs it with the payload's
//! message.

use std::cell::RefCell;

use crate::wire::PanicInfo;

thread_local! {
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The location of the last panic on this thread, recorded by the hook.
fn take_panic_location() -> Option<String> {
    PANIC_LOCATION.with(|l| l.borrow_mut().take())
}

/// Installs the hook that records each panic's location (and then runs
/// the hook that was there before, which prints the message).
pub(crate) fn install_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let loc = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        PANIC_LOCATION.with(|l| *l.borrow_mut() = loc);
        previous(info);
    }));
}

/// The report of a caught panic: its payload's message, and the location
/// the hook recorded on this thread.
pub(crate) fn panic_info(payload: Box<dyn std::any::Any + Send>) -> PanicInfo {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_owned()
    };
    PanicInfo {
        message,
        location: take_panic_location(),
        backtrace: None,
    }
}
