//! The operating-system seam: every system call lives below here.
//!
//! This file is the contract. It names, one by one, what every backend
//! provides, and the rest of the crate uses nothing else from below it;
//! `tests.rs` checks the contract against the backend in use. Only the
//! transport floor (`crate::transport`) may also use the Unix descriptor
//! types directly, to carry descriptors beside bytes.
//!
//! | part | what | names |
//! |---|---|---|
//! | handles | an open descriptor this process owns | [`OwnedHandle`] |
//! | the child | start a re-executed copy, watch it end, reap it, signal it | [`Child`], [`Signal`], [`signal_pid`], [`signal_name`], [`python_exitcode`], [`own_argv`], [`child_env`], [`exe_identity`] |
//! | the child's setting | a forked child's environment changes, applied while it is alone | [`apply_env`] |
//! | the control socket | a connected pair, where the child finds its end and takes it, the parent's death | [`socketpair`], [`control_locator`], [`claim_control`], [`wait_peer_closed`], [`stream`] |
//! | shared mappings | an anonymous shared file, or a named POSIX one (Python's `shared_memory`), mapped | [`shm`] |
//! | park and wake | sleep on a shared word until it changes | [`futex`] |
//! | fork | the fork server's raw fork, and a forked child's end | [`fork_sibling`], [`libc_allows_raw_fork`], [`thread_count`], [`exit_forked`] |
//! | process groups | a child's own group or session, signalled as one | [`Group`], [`enter_group`], [`lead_own_group`], [`own_group_tied_to_us`], [`place_program`], [`signal_group`], [`group_exists`], [`reap_group`] |
//! | memory | an idle process's code pages, given back | [`release_code_pages`] |
//! | signals | Ctrl-C, and leaving at once | [`set_interrupt_ignored`], [`exit_immediately`] |
//! | processes by id | who holds a lock, and whether it lives | [`proc`] |
//! | readiness of programs | an `sd_notify` socket, and the group of a sender | [`notify`] |
//! | captured output | a pipe, its reading end on a runtime, a child's stdout and stderr put on pipes: by the child, or at its creation where [`OUTPUT_AT_SPAWN`] says | [`pipe`], [`pipe_reader`], [`redirect_stdout_stderr`], [`OUTPUT_AT_SPAWN`], [`Child::spawn`] |
//! | descriptors in messages | `SCM_RIGHTS` (for the transport floor) | [`scm`] |

#[cfg(unix)]
mod unix;
#[cfg(unix)]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;

#[cfg(test)]
mod tests;

// Handles.
pub(crate) use imp::OwnedHandle;

// The child.
pub(crate) use imp::{
    Child, Signal, apply_env, child_env, exe_identity, own_argv, python_exitcode, signal_name,
    signal_pid,
};

// The control socket.
#[cfg(test)]
pub(crate) use imp::NotOurs;
#[cfg(test)]
#[cfg(unix)]
pub(crate) use imp::claim_control_socket;
#[cfg(test)]
pub(crate) use imp::peer_closed;
pub(crate) use imp::stream;
#[cfg(windows)]
pub(crate) use imp::unsupported;
pub(crate) use imp::{claim_control, control_locator, socketpair, wait_peer_closed};

// Shared mappings.
mod mapping;
mod proc_id;
/// Shared-memory objects, and their mapping.
pub(crate) mod shm {
    pub(crate) use super::imp::shm::{
        create, create_anonymous, create_named, is_exists, is_sealed, open_named, size,
        unlink_named,
    };
    pub(crate) use super::mapping::Mapping;
}

// Park and wake.
pub(crate) use imp::futex;

// Fork.
pub(crate) use imp::{
    Group, die_with_parent, enter_group, exit_forked, fork_sibling, group_exists, lead_own_group,
    libc_allows_raw_fork, name_of, own_group_tied_to_us, parent_pid, place_program, process_name,
    reap_group, set_process_name, signal_group, thread_count,
};

// An idle process's code pages, given back to the page cache.
pub(crate) use imp::release_code_pages;

// The service manager's end of sd_notify, for supervised programs.
pub(crate) use imp::notify;

// Signals.
pub(crate) use imp::{TerminateSignal, exit_immediately, set_interrupt_ignored};

// Files.
pub(crate) use imp::create_private_dir;

// This machine.
pub(crate) use imp::host_name;

// Processes by id.
pub(crate) use imp::proc;

// Captured output.
pub(crate) use imp::{OUTPUT_AT_SPAWN, pipe, pipe_reader, redirect_stdout_stderr};

// Descriptors in messages.
pub(crate) use imp::scm;
#[cfg(windows)]
pub(crate) use imp::{claim_handle_token, handle_token, take_given_handle};
