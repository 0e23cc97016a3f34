//! The machinery under [`Process`](crate::Process): starting children
//! (forked by the fork server or re-executed), the parent's record of each
//! and the task that watches and reaps it, the registry of live ones, who
//! this process is, and the child's side of it all.
//!
//! Nothing here knows of the public handles above it. What it needs from
//! them, the exit rule that a child applies when its target returns, is
//! handed down by [`init`].

pub(crate) mod bootstrap;
pub(crate) mod capture;
pub(crate) mod exec;
pub(crate) mod forkserver;
pub(crate) mod identity;
pub(crate) mod latch;
pub(crate) mod logs;
pub(crate) mod registry;
pub(crate) mod spawn;
pub(crate) mod watch;

/// Marks the program as initialised and, in a child started by this
/// library, runs the child's work and exits: see [`crate::init`].
/// `exit_rule` is what a child applies when its target has returned.
pub(crate) fn init(exit_rule: fn()) {
    // Called before (before `main`, by `enable_test_support!`), the program
    // was judged then, with one thread; a runtime built since changes
    // nothing for the fork server, which stopped at that earlier call.
    let first = !identity::init_called();
    identity::mark_init_called();
    bootstrap::run_if_child(exit_rule);
    if !first {
        return;
    }
    // A parent. The fork server is a copy of this program that runs up to
    // `init()` too: if this one has threads by now (a Tokio runtime built
    // before `init()`, as `#[tokio::main]` does), so will the copy, and it
    // cannot fork. Known now, it is not tried, and the start method says so.
    let threads = crate::sys::thread_count();
    if threads > 1 {
        forkserver::mark_unavailable(format!(
            "cannot serve forks: this program had {threads} threads when init() ran \
             (init() must run before any thread starts, and before the Tokio runtime is built)"
        ));
    }
}
