//! Starting a child: forked by the fork server, or re-executed.

use std::ffi::OsString;
use std::io;

use super::exec;
use super::forkserver::StartMethod;
use super::forkserver::client::{self, Forked, WarmStart};
use super::identity;
use crate::sys::{self, OwnedHandle};
use crate::wire::message::Group;

/// A child just started, waiting for its handshake on `ours`.
pub(crate) struct Started {
    pub(crate) child: sys::Child,
    /// The parent's end of the child's control socket.
    pub(crate) ours: OwnedHandle,
    /// What the child's handshake must carry.
    pub(crate) nonce: u64,
    /// Whether the fork server forked it (rather than a re-exec).
    pub(crate) forked: bool,
}

/// Starts a child by `method`: through the fork server, which may decline
/// (then the program re-executes), or by re-executing.
///
/// Through the fork server the child is usually a spare, forked ahead of
/// this start and waiting for its orders (a warm start, see
/// [`client::fork_warm`]); a child that must start a session of its own
/// is forked for the start. A fork server lost with the request leaves its
/// socketpair spent: the child is re-executed on a new one, so that no
/// other process shares its channel.
///
/// A re-executed child starts with `env` applied to this process's
/// environment; a forked one applies it itself (see `bootstrap`).
///
/// `stdio`, the writing ends of a captured child's output pipes, is given
/// only where the child takes them when it is created
/// ([`sys::OUTPUT_AT_SPAWN`], Windows, where every child is re-executed);
/// elsewhere they come with its orders.
pub(crate) async fn start(
    method: StartMethod,
    group: Group,
    env: &[(OsString, Option<OsString>)],
    stdio: Option<(OwnedHandle, OwnedHandle)>,
) -> io::Result<Started> {
    // What `init()` noticed before a subscriber was installed.
    super::logs::say_unheard();
    #[cfg(windows)]
    if method == StartMethod::ForkServer {
        return Err(sys::unsupported(
            "StartMethod::ForkServer (Windows has no fork: every child is re-executed, \
             StartMethod::Spawn, the default there)",
        ));
    }
    if method == StartMethod::Spawn {
        // The program asked for the fork server, which cannot serve it:
        // said once, at the first start, where a subscriber hears it.
        client::say_if_declined();
    }
    debug_assert!(
        stdio.is_none() || sys::OUTPUT_AT_SPAWN,
        "output pipes at creation only where every child is created for its start"
    );
    if method == StartMethod::ForkServer
        && group != Group::Session
        && let WarmStart::Child(warm) = client::fork_warm().await
    {
        if group == Group::Own {
            // A spare was forked into our group: it leads its own before
            // its orders are sent, so before its target runs.
            sys::lead_own_group(warm.child.pid());
        }
        return Ok(Started {
            child: warm.child,
            ours: warm.ours,
            nonce: warm.nonce,
            forked: true,
        });
    }
    let nonce = identity::nonce()?;
    let (ours, theirs) = sys::socketpair()?;
    let forked = match method {
        StartMethod::ForkServer if group == Group::Session => {
            client::fork(&ours, theirs, nonce, group).await
        }
        StartMethod::ForkServer | StartMethod::Spawn => Forked::Declined(theirs),
    };
    let reexec = |theirs: OwnedHandle| {
        let child_env = exec::child_env(nonce, &theirs, env);
        exec::reexec(theirs, &child_env, group, stdio)
    };
    match forked {
        Forked::Child(child) => Ok(Started {
            child,
            ours,
            nonce,
            forked: true,
        }),
        Forked::Declined(theirs) => Ok(Started {
            child: reexec(theirs)?,
            ours,
            nonce,
            forked: false,
        }),
        Forked::Spent => {
            let (fresh_ours, fresh_theirs) = sys::socketpair()?;
            Ok(Started {
                child: reexec(fresh_theirs)?,
                ours: fresh_ours,
                nonce,
                forked: false,
            })
        }
    }
}
