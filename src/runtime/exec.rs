//! Re-executing the program as a child: the marker in the environment
//! that makes a copy of the program a child, and the spawn itself.

use std::ffi::{CString, OsString};
use std::io;

use crate::sys::{self, OwnedHandle};
use crate::wire::message::Group;

/// The OS's name for a group placement.
pub(crate) fn sys_group(group: Group) -> sys::Group {
    match group {
        Group::Inherit => sys::Group::Inherit,
        Group::Own => sys::Group::Own,
        Group::Session => sys::Group::Session,
    }
}

/// Set by the parent in a child's environment: `WHERE:NONCE`, where the
/// child finds its control channel (see `sys::control_locator`: the
/// inherited descriptor's number on Unix) and a random value the
/// handshake repeats.
pub(crate) const CHILD_ENV: &str = "TOKIO_MULTIPROCESSING_CHILD";

/// The environment of a re-executed child: ours, changed by `changes`
/// (a value, or `None` to remove), with the marker for a child whose
/// handshake carries `nonce`.
pub(crate) fn child_env(
    nonce: u64,
    control: &OwnedHandle,
    changes: &[(OsString, Option<OsString>)],
) -> Vec<CString> {
    let marker = format!("{}:{nonce:016x}", sys::control_locator(control));
    sys::child_env(CHILD_ENV, changes, (CHILD_ENV, &marker))
}

/// Where the control channel is, and the nonce, of a marker.
pub(crate) fn parse_marker(value: &str) -> Option<(&str, u64)> {
    let (at, nonce) = value.rsplit_once(':')?;
    if at.is_empty() {
        return None;
    }
    Some((at, u64::from_str_radix(nonce, 16).ok()?))
}

/// Re-executes the program with `control` as its control socket and `env`
/// as its environment (see [`child_env`], which must have been given the
/// same `control`); `stdio`, if given, as its standard output and error.
pub(crate) fn reexec(
    control: OwnedHandle,
    env: &[CString],
    group: Group,
    stdio: Option<(OwnedHandle, OwnedHandle)>,
) -> io::Result<sys::Child> {
    sys::Child::spawn(control, &sys::own_argv(), env, sys_group(group), stdio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_parses_back() {
        let (_ours, theirs) = sys::socketpair().unwrap();
        let env = child_env(0xdead_beef, &theirs, &[]);
        let marker = env
            .iter()
            .rev()
            .find_map(|kv| kv.to_str().ok()?.strip_prefix(&format!("{CHILD_ENV}=")))
            .unwrap()
            .to_owned();
        let at = sys::control_locator(&theirs);
        assert_eq!(parse_marker(&marker), Some((at.as_str(), 0xdead_beef)));
        assert_eq!(parse_marker("3:zz"), None);
        assert_eq!(parse_marker(":00"), None);
        assert_eq!(parse_marker("nonsense"), None);
    }
}
