//! Starting a child: forked by the fork server, or re-executed.

use std::ffi::OsString;
use std::io;

use super::exec;
use super::forkserver::StartMethod;
use super::forkserver::client::{self, Forked};
use crate::sys::{self, OwnedHandle};
use crate::wire::message::Group;

/// A child just started, waiting for its handshake on `ours`.
pub(crate) struct Started {
    pub(crate) child: sys::Child,
    /// The parent's end of the child's control socket.
    pub(crate) ours: OwnedHandle,
    /// Whether the fork server forked it (rather than a re-exec).
    pub(crate) forked: bool,
}

/// Starts a child whose handshake will carry `nonce`, by `method`: through
/// the fork server, which may decline (then the program re-executes), or
/// by re-executing. A fork server lost with the request leaves its
/// socketpair spent: the child is re-executed on a new one, so that no
/// other process shares its channel.
///
/// A re-executed child starts with `env` applied to this process's
/// environment; a forked one applies it itself (see `bootstrap`).
pub(crate) async fn start(
    method: StartMethod,
    nonce: u64,
    group: Group,
    env: &[(OsString, Option<OsString>)],
) -> io::Result<Started> {
    // What `init()` noticed before a subscriber was installed.
    super::logs::say_unheard();
    if method == StartMethod::Spawn {
        // The program asked for the fork server, which cannot serve it:
        // said once, at the first start, where a subscriber hears it.
        client::say_if_declined();
    }
    let (ours, theirs) = sys::socketpair()?;
    let forked = match method {
        StartMethod::ForkServer => client::fork(&ours, theirs, nonce, group).await,
        StartMethod::Spawn => Forked::Declined(theirs),
    };
    let reexec = |theirs: &OwnedHandle| exec::reexec(theirs, &exec::child_env(nonce, env), group);
    match forked {
        Forked::Child(child) => {
            if group == Group::Own {
                // The child makes itself the leader too; whichever runs
                // first, the group exists when `start` returns.
                sys::lead_own_group(child.pid());
            }
            Ok(Started {
                child,
                ours,
                forked: true,
            })
        }
        Forked::Declined(theirs) => Ok(Started {
            child: reexec(&theirs)?,
            ours,
            forked: false,
        }),
        Forked::Spent => {
            let (fresh_ours, fresh_theirs) = sys::socketpair()?;
            Ok(Started {
                child: reexec(&fresh_theirs)?,
                ours: fresh_ours,
                forked: false,
            })
        }
    }
}
