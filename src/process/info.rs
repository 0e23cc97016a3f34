//! [`ProcessInfo`]: what this process is, for the code that runs in it.

use crate::runtime::identity::{Current, current};

/// What [`current_process`] tells about the running process.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    current: &'static Current,
}

impl ProcessInfo {
    /// `MainProcess` in the root process, `Process-N` (or a name given to
    /// the builder) in a child.
    pub fn name(&self) -> &str {
        &self.current.name
    }

    /// This process's id.
    pub fn pid(&self) -> u32 {
        std::process::id()
    }

    /// The 32-byte authentication key, random in the root process and
    /// inherited by every child.
    pub fn authkey(&self) -> &[u8] {
        &self.current.authkey
    }

    /// Whether this process was started by this library.
    pub fn is_child(&self) -> bool {
        self.current.parent_pid.is_some()
    }

    /// Whether this process is daemonic.
    pub fn daemon(&self) -> bool {
        self.current.daemon
    }
}

/// The running process: its name, pid and authkey.
pub fn current_process() -> ProcessInfo {
    ProcessInfo { current: current() }
}

/// The pid of the process that started this one, if this library did.
pub fn parent_pid() -> Option<u32> {
    current().parent_pid
}
