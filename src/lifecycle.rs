//! Python's exit rule, applied when the program leaves `main` (the
//! [`InitGuard`](crate::InitGuard) drops), and at the end of every child.

use std::collections::HashSet;
use std::time::Duration;

use crate::runtime::{forkserver, registry, watch};
use crate::sys::Signal;

/// How long the exit rule waits for supervisors that are shutting down in
/// the background to finish, before it stops their children itself.
const SUPERVISORS_GRACE: Duration = Duration::from_secs(10);

/// How long the exit rule waits for starts already under way to register
/// their children.
const STARTS_GRACE: Duration = Duration::from_secs(1);

/// Python's exit rule: terminate daemonic children, then join every child
/// that was not started detached. Blocks the calling thread.
///
/// No child starts once it has begun; children whose start was under way
/// (a pool replacing a worker, say) are waited for and handled too.
pub(crate) fn exit_rule() {
    // Supervisors stop their children first, in their own order.
    crate::supervisor::stop_all_blocking(SUPERVISORS_GRACE);
    let mut handled = HashSet::new();
    loop {
        registry::begin_exit(STARTS_GRACE);
        let children: Vec<_> = watch::active_children()
            .into_iter()
            .filter(|c| !c.detached && handled.insert(c.key))
            .collect();
        if children.is_empty() {
            break;
        }
        for c in children.iter().filter(|c| c.daemon) {
            if let Err(e) = c.signal(Signal::Terminate) {
                tracing::warn!(pid = c.pid(), error = %e, "could not terminate a daemonic child");
            }
        }
        // A child may be waiting for messages that dropped pipe ends still
        // hold, on a thread that is about to block here.
        crate::connection::flush_orphans();
        for c in &children {
            c.join_blocking();
        }
    }
    forkserver::client::shutdown();
}
