//! [`ProcessInfo`]: what a process is, for the code that runs in it
//! ([`current_process`]) and for its parent ([`active_children`]); and
//! [`cpu_count`].

use crate::runtime::identity::{Current, current};
use crate::runtime::watch;

/// What [`current_process`] tells about the running process, or
/// [`active_children`] about a live child of it.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    who: Who,
}

#[derive(Debug, Clone)]
enum Who {
    /// The running process.
    Current(&'static Current),
    /// A live child of the running process.
    Child {
        name: String,
        pid: u32,
        daemon: bool,
    },
}

impl ProcessInfo {
    /// `MainProcess` in the root process, `Process-N` (or a name given to
    /// the builder) in a child.
    pub fn name(&self) -> &str {
        match &self.who {
            Who::Current(current) => &current.name,
            Who::Child { name, .. } => name,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        match &self.who {
            Who::Current(_) => std::process::id(),
            Who::Child { pid, .. } => *pid,
        }
    }

    /// The 32-byte authentication key, random in the root process and
    /// inherited by every child.
    pub fn authkey(&self) -> &[u8] {
        // A child's key is the one it inherited: its parent's.
        &current().authkey
    }

    /// Whether the process was started by this library.
    pub fn is_child(&self) -> bool {
        match &self.who {
            Who::Current(current) => current.parent_pid.is_some(),
            Who::Child { .. } => true,
        }
    }

    /// Whether the process is daemonic.
    pub fn daemon(&self) -> bool {
        match &self.who {
            Who::Current(current) => current.daemon,
            Who::Child { daemon, .. } => *daemon,
        }
    }
}

/// The running process: its name, pid and authkey.
pub fn current_process() -> ProcessInfo {
    ProcessInfo {
        who: Who::Current(current()),
    }
}

/// The pid of the process that started this one, if this library did.
pub fn parent_pid() -> Option<u32> {
    current().parent_pid
}

/// The children of this process that still run, in the order they were
/// started.
///
/// Python's `multiprocessing.active_children()`. As there, it reaps the
/// children that have ended meanwhile (they are left out). Every child this
/// library started counts, whatever started it: a [`Process`], a
/// [`Pool`]'s workers, a [`Supervisor`]'s children.
///
/// [`Process`]: crate::Process
/// [`Pool`]: crate::Pool
/// [`Supervisor`]: crate::Supervisor
pub fn active_children() -> Vec<ProcessInfo> {
    let mut live: Vec<_> = watch::active_children()
        .into_iter()
        .filter(|child| child.try_reap().is_none())
        .collect();
    live.sort_by_key(|child| child.key);
    live.into_iter()
        .filter_map(|child| {
            Some(ProcessInfo {
                who: Who::Child {
                    name: child.name.clone(),
                    pid: child.pid()?,
                    daemon: child.daemon,
                },
            })
        })
        .collect()
}

/// The number of CPUs this process can use, at least 1.
///
/// Python's `multiprocessing.cpu_count()`, from
/// [`std::thread::available_parallelism`]: on Linux it counts the CPUs of
/// the process's affinity mask and any cgroup quota, as Python 3.13's
/// `os.process_cpu_count()` does, which is what a pool should be sized by
/// (Python's `cpu_count()` counts every CPU of the machine). It is
/// 1 when the number cannot be told. A [`Pool`](crate::Pool) built without
/// a number of processes starts this many.
#[doc(alias = "os.cpu_count")]
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
