//! What a child says about a panic: its message, where it happened and,
//! when `RUST_BACKTRACE` asks for one, its backtrace.
//!
//! The hook records the location (and the backtrace) of each panic on the
//! panicking thread; the trampoline that catches the unwind pairs them
//! with the payload's message.

use std::backtrace::{Backtrace, BacktraceStatus};
use std::cell::RefCell;

use crate::wire::PanicInfo;

/// Where the last panic on a thread happened, and its backtrace if one
/// was captured.
struct Recorded {
    location: Option<String>,
    backtrace: Option<String>,
}

thread_local! {
    static LAST_PANIC: RefCell<Option<Recorded>> = const { RefCell::new(None) };
}

/// What the hook recorded of the last panic on this thread.
fn take_recorded() -> Option<Recorded> {
    LAST_PANIC.with(|l| l.borrow_mut().take())
}

/// Installs the hook that records each panic's location and backtrace
/// ([`Backtrace::capture`], which honours `RUST_BACKTRACE` and
/// `RUST_LIB_BACKTRACE`). Then, if `print`, it runs the hook that was
/// there before, which prints the message; a child whose parent reports
/// its panics (it forwards its logs there) prints nothing.
pub(crate) fn install_hook(print: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let captured = Backtrace::capture();
        let backtrace = match captured.status() {
            BacktraceStatus::Captured => Some(captured.to_string()),
            _ => None,
        };
        LAST_PANIC.with(|l| {
            *l.borrow_mut() = Some(Recorded {
                location,
                backtrace,
            });
        });
        if print {
            previous(info);
        }
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
    let recorded = take_recorded();
    PanicInfo {
        message,
        location: recorded.as_ref().and_then(|r| r.location.clone()),
        backtrace: recorded.and_then(|r| r.backtrace),
    }
}
