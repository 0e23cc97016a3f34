//! A process as shared memory records it, and what can be told of it,
//! the same on every backend.

/// A process as recorded in shared memory: its pid and, against the reuse
/// of pids, the low 32 bits of its start time (each backend says in what
/// unit; 0 when it could not be read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcId {
    /// The process id.
    pub(crate) pid: u32,
    /// The low 32 bits of its start time.
    pub(crate) start: u32,
}

impl ProcId {
    /// Packs the pair into one word: the pid in the high half.
    pub(crate) fn to_bits(self) -> u64 {
        (u64::from(self.pid) << 32) | u64::from(self.start)
    }

    /// Unpacks [`to_bits`](Self::to_bits).
    pub(crate) fn from_bits(bits: u64) -> ProcId {
        // The high half is a pid and the low half a tag: each fits.
        #[allow(clippy::cast_possible_truncation)]
        ProcId {
            pid: (bits >> 32) as u32,
            start: (bits & 0xffff_ffff) as u32,
        }
    }
}

/// What can be told about a process recorded in shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// It runs: its pid exists, and where its start time could be
    /// compared, it matches.
    Alive,
    /// It is certainly gone: no process has its pid, it has exited (on
    /// Unix a zombie waiting to be reaped counts as gone), or its pid now
    /// names a process that started at another time.
    Dead,
    /// Its pid exists but the system could not say more (on Unix: out of
    /// descriptors, out of memory, `/proc` mounted with `hidepid`; on
    /// Windows: another user's process). Never treated as dead: the
    /// caller waits and asks again.
    Unknown,
}
