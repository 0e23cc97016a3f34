//! Who holds a lock, and whether that process still lives.
//!
//! A process is named by its pid and, against pid reuse, by the low 32 bits
//! of its start time (field 22 of `/proc/PID/stat`, in clock ticks since
//! boot). This process's own pair is read once and cached; a raw fork
//! (the fork server's) and a `fork(2)` through the C library both clear the
//! cache in the new process.

use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// `pid << 32 | start_tag` of this process, or 0 before the first use.
static IDENTITY: AtomicU64 = AtomicU64::new(0);

pub(crate) use super::super::proc_id::{Liveness, ProcId};

/// This process: its pid and start tag. A relaxed load after the first call.
#[inline]
pub(crate) fn me() -> ProcId {
    let bits = IDENTITY.load(Ordering::Relaxed);
    if bits != 0 {
        return ProcId::from_bits(bits);
    }
    me_slow()
}

#[cold]
fn me_slow() -> ProcId {
    static AT_FORK: Once = Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: `forget_identity` is an `extern "C" fn()` that only
        // stores to an atomic, which is async-signal-safe and so fine in a
        // child handler after fork; the other two handlers are absent.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forget_identity_at_fork)) };
        if rc != 0 {
            tracing::warn!(
                rc,
                "pthread_atfork failed; fork(2) children must not use a lock their parent used"
            );
        }
    });
    let pid = std::process::id();
    let start = stat(pid).map_or(0, |s| start_tag(s.start));
    let id = ProcId { pid, start };
    IDENTITY.store(id.to_bits(), Ordering::Relaxed);
    id
}

/// Forgets the cached identity; the next [`me`] reads it afresh. Called in
/// a new process right after a fork.
pub(crate) fn forget_identity() {
    IDENTITY.store(0, Ordering::Relaxed);
}

extern "C" fn forget_identity_at_fork() {
    forget_identity();
}

/// The start tag of a start time: its low 32 bits.
fn start_tag(start: u64) -> u32 {
    (start & 0xffff_ffff) as u32
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy)]
struct Stat {
    state: u8,
    start: u64,
}

fn stat(pid: u32) -> std::io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))
}

/// Parses the state (field 3) and start time (field 22) of a stat line.
fn parse_stat(text: &str) -> Option<Stat> {
    // The command name (field 2) is in parentheses and may contain spaces
    // and parentheses: everything after the last ')' is plain fields.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    // `fields` now stands after field 3; field 22 is 19 further on.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start })
}

/// Whether a process of group `pgid` has not exited yet: a zombie, which
/// waits for a parent (often init, for an orphan) to reap it, does not
/// count. When `/proc` cannot be read, assumes one has (the caller waits
/// and asks again).
pub(crate) fn group_has_live_member(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            // Gone meanwhile, or unreadable: not counted as gone.
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return true;
            }
            continue;
        };
        if let Some((state, group)) = parse_state_and_group(&text)
            && group == pgid
            && state != b'Z'
            && state != b'X'
        {
            return true;
        }
    }
    false
}

/// The state (field 3) and process group (field 5) of a stat line.
fn parse_state_and_group(text: &str) -> Option<(u8, u32)> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    let state = *fields.next()?.as_bytes().first()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Whether the process recorded as `who` still lives. `check_start` says
/// whether `who.start` was recorded by that very process; when it was not,
/// only existence is checked.
///
/// Existence is asked of the kernel first (`kill(pid, 0)`, which needs no
/// descriptor); only `ESRCH` there, or a readable `/proc` entry that
/// says so, makes a process [`Dead`](Liveness::Dead). A failure to read
/// `/proc` never does: "cannot tell" is not "gone".
pub(crate) fn liveness(who: ProcId, check_start: bool) -> Liveness {
    if who.pid == 0 {
        return Liveness::Alive;
    }
    let Ok(raw) = i32::try_from(who.pid) else {
        // No process has such a pid: a word from a peer that lies.
        return Liveness::Dead;
    };
    let exists = || kill(Pid::from_raw(raw), None) != Err(Errno::ESRCH);
    if !exists() {
        return Liveness::Dead;
    }
    match stat(who.pid) {
        Ok(s) => {
            let exited = matches!(s.state, b'Z' | b'X' | b'x');
            let reused = check_start && who.start != 0 && start_tag(s.start) != who.start;
            if exited || reused {
                Liveness::Dead
            } else {
                Liveness::Alive
            }
        }
        // No entry: the process ended between the two looks (then the
        // kernel now says so too), or `/proc` hides it from us.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if exists() {
                Liveness::Unknown
            } else {
                Liveness::Dead
            }
        }
        Err(_) => Liveness::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_state_and_group_of_a_stat_line() {
        let line = "4242 (a) b (c)) Z 1 4200 4200 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_state_and_group(line), Some((b'Z', 4200)));
        assert_eq!(parse_state_and_group("4242 (x"), None);
    }

    #[test]
    fn parses_a_stat_line_with_an_awkward_name() {
        let line =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, b'S');
        assert_eq!(s.start, 987654);
    }

    #[test]
    fn this_process_is_alive_and_a_bogus_start_time_is_not() {
        let me = me();
        assert_eq!(me.pid, std::process::id());
        assert_ne!(me.start, 0);
        assert_eq!(liveness(me, true), Liveness::Alive);
        let impostor = ProcId {
            pid: me.pid,
            start: me.start.wrapping_add(1),
        };
        assert_eq!(liveness(impostor, true), Liveness::Dead);
        assert_eq!(
            liveness(impostor, false),
            Liveness::Alive,
            "without a start time only existence counts"
        );
        assert_eq!(ProcId::from_bits(me.to_bits()), me);
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(liveness(ProcId { pid, start: 0 }, false), Liveness::Dead);
    }

    #[test]
    fn a_zombie_is_dead_and_a_pid_out_of_range_too() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        let t0 = std::time::Instant::now();
        while liveness(ProcId { pid, start: 0 }, false) != Liveness::Dead {
            assert!(
                t0.elapsed().as_secs() < 10,
                "the zombie never showed as dead"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let mut child = child;
        child.wait().unwrap();
        let huge = ProcId {
            pid: u32::MAX,
            start: 0,
        };
        assert_eq!(liveness(huge, false), Liveness::Dead);
    }
}
