//! Logs from children: a child's `tracing` events forwarded to its parent
//! and re-emitted there, labelled with the child.
//!
//! See [Logs from children](crate#logs-from-children) for what users see.

pub(crate) mod child;
mod replay;

pub(crate) use replay::Replayer;

use tracing::Level;
use tracing::level_filters::LevelFilter;

/// The target of the events this crate emits on a child's behalf (its
/// captured output, its panic).
pub(crate) const CHILD_TARGET: &str = "tokio_multiprocessing::child";

/// A level as it travels: 1 (ERROR) to 5 (TRACE).
pub(crate) fn level_to_u8(level: Level) -> u8 {
    match level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The level a byte names, if any.
pub(crate) fn u8_to_level(v: u8) -> Option<Level> {
    Some(match v {
        1 => Level::ERROR,
        2 => Level::WARN,
        3 => Level::INFO,
        4 => Level::DEBUG,
        5 => Level::TRACE,
        _ => return None,
    })
}

/// The most verbose level this process's subscribers want, as the byte a
/// child is told: 0 when no subscriber wants anything (none is set yet).
pub(crate) fn parent_level() -> u8 {
    LevelFilter::current().into_level().map_or(0, level_to_u8)
}

/// Warnings emitted before this process had a subscriber, kept for the
/// first child's start (see [`warn_when_heard`]).
static UNHEARD: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Emits `message` as a warning now if a subscriber hears warnings, or
/// else keeps it until [`say_unheard`] (the first child's start), for
/// what `init()` notices: the order the docs teach calls it before the
/// subscriber is installed.
pub(crate) fn warn_when_heard(message: String) {
    if LevelFilter::current() >= LevelFilter::WARN {
        tracing::warn!("{message}");
    } else {
        UNHEARD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(message);
    }
}

/// Emits the warnings kept by [`warn_when_heard`], once.
pub(crate) fn say_unheard() {
    let kept = std::mem::take(
        &mut *UNHEARD
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for message in kept {
        tracing::warn!("{message}");
    }
}

/// The span that labels what a child sent: `child{process, pid}`, at
/// `level` (the level of the event inside it, so that a filter that lets
/// the event through lets its label through too).
pub(crate) fn child_span(level: Level, process: &str, pid: u32) -> tracing::Span {
    macro_rules! span_at {
        ($lvl:expr) => {
            tracing::span!(target: CHILD_TARGET, $lvl, "child", process, pid)
        };
    }
    match level {
        Level::ERROR => span_at!(Level::ERROR),
        Level::WARN => span_at!(Level::WARN),
        Level::INFO => span_at!(Level::INFO),
        Level::DEBUG => span_at!(Level::DEBUG),
        Level::TRACE => span_at!(Level::TRACE),
    }
}
