//! The fork server itself: a single-threaded copy of the program that
//! forks a child for every request.

use super::REFUSED_EXIT;
use crate::sys::{self, OwnedHandle};
use crate::transport::blocking::{BlockingChannel, FrameReader, send_on};
use crate::wire::frame::{DEFAULT_MAX_FRAME, decode_message};
use crate::wire::message::{ChildMsg, Group, ParentMsg};

/// What a forked child runs: the child's side of a start, on its control
/// socket, with the request's nonce and group (the bootstrap's
/// `child_main`).
pub(crate) type ChildMain = fn(OwnedHandle, u64, Group) -> i32;

/// Serves fork requests until the parent closes the channel. Runs in the
/// re-executed server process; returns its exit code.
pub(crate) fn serve(ch: BlockingChannel, child_main: ChildMain) -> i32 {
    let threads = sys::thread_count();
    if threads != 1 || !sys::libc_allows_raw_fork() {
        let reason = format!(
            "cannot serve forks: {threads} threads (init() must run before any thread starts)"
        );
        let _ = ch.send(&ChildMsg::Refused { reason });
        return REFUSED_EXIT;
    }
    if ch.send(&ChildMsg::Serving).is_err() {
        return 1;
    }
    // Told apart from the program in `ps`; so are its spares, which start
    // with this name and take the program's back with their orders.
    super::name_server();
    // Ctrl-C reaches the whole process group; the server is the parent's
    // machinery, stopped by the parent (or its death), not by the key.
    // A forked child gets back the disposition the server inherited, as a
    // re-executed one inherits its parent's: `SIGINT` stays ignored in the
    // children of a program started with it ignored.
    let inherited_ignored = sys::set_interrupt_ignored(true);
    // The program; its keeper thread started this server (see the client),
    // so it is the parent thread of every child forked here.
    let program = sys::parent_pid();
    if ch.set_read_timeout(None).is_err() {
        return 1;
    }
    let mut reader = FrameReader::new(ch.max_frame);
    #[cfg(feature = "test-support")]
    let mut faults = Faults::from_env();
    loop {
        let body = match reader.next(&ch) {
            Ok(body) => body,
            // The parent closed the channel (or died), maybe with answers
            // unread (for a spare it no longer wanted): a reset.
            Err(e) if e.peer_left() => return 0,
            Err(e) => {
                eprintln!("tokio-multiprocessing: fork server: {e}");
                return 1;
            }
        };
        let (id, nonce, group) = match decode_message::<ParentMsg>(&body) {
            Ok(ParentMsg::Fork { id, nonce, group }) => (id, nonce, group),
            Ok(_) | Err(_) => {
                eprintln!("tokio-multiprocessing: fork server: unexpected message");
                return 1;
            }
        };
        let Some(control) = reader.take_fd() else {
            let error = "the request carried no control socket".to_owned();
            if ch.send(&ChildMsg::ForkFailed { id, error }).is_err() {
                return 1;
            }
            continue;
        };
        // SAFETY: this process has one thread (checked above; this loop
        // starts none) and its C library does not need its fork handlers
        // (`libc_allows_raw_fork`, checked above).
        match unsafe { sys::fork_sibling() } {
            Ok(None) => {
                // The new process: leave the server's channel, become the child.
                drop(reader);
                drop(ch);
                sys::set_interrupt_ignored(inherited_ignored);
                // Dies with the program: the kernel kills it when its
                // parent thread, the program's keeper thread, ends, which
                // is when the program ends. A child in a session of its own
                // may be detached, meant to outlive the program: not tied.
                if group != Group::Session && !sys::die_with_parent(program) {
                    std::process::exit(REFUSED_EXIT);
                }
                // Say who we are first, so that a parent that lost the
                // server before its reply still finds this child.
                let me = ChildMsg::Forked {
                    id,
                    pid: std::process::id(),
                };
                if send_on(&control, &me, DEFAULT_MAX_FRAME).is_err() {
                    // The parent is gone already.
                    std::process::exit(REFUSED_EXIT);
                }
                sys::enter_group(crate::runtime::exec::sys_group(group));
                let code = child_main(control, nonce, group);
                sys::exit_forked(code);
            }
            Ok(Some(pid)) => {
                drop(control);
                #[cfg(feature = "test-support")]
                faults.after_fork();
                if ch.send(&ChildMsg::Forked { id, pid }).is_err() {
                    return 1;
                }
            }
            Err(e) => {
                let error = e.to_string();
                if ch.send(&ChildMsg::ForkFailed { id, error }).is_err() {
                    return 1;
                }
            }
        }
    }
}

/// The faults this fork server injects, from `FAULTS_ENV`.
#[cfg(feature = "test-support")]
struct Faults {
    exit_after_fork: Option<u64>,
    forks: u64,
}

#[cfg(feature = "test-support")]
impl Faults {
    fn from_env() -> Faults {
        let spec = std::env::var(super::FAULTS_ENV).unwrap_or_default();
        // Not for the children it forks, nor their own fork servers.
        // SAFETY: the server has one thread (checked before it serves), so
        // nothing reads the environment while it changes.
        unsafe { std::env::remove_var(super::FAULTS_ENV) };
        let exit_after_fork = spec
            .split(',')
            .find_map(|f| f.strip_prefix("forkserver-exit-after-fork="))
            .and_then(|n| n.parse().ok());
        Faults {
            exit_after_fork,
            forks: 0,
        }
    }

    fn after_fork(&mut self) {
        self.forks += 1;
        if self.exit_after_fork == Some(self.forks) {
            sys::exit_immediately(0)
        }
    }
}
