//! Shared harness for the integration tests that start child processes.
//!
//! Every such test binary has `harness = false`: its `main` calls
//! `mp::init()` first (a child re-executes the test binary and must never
//! reach the harness), then hands its cases to `libtest-mimic`, which keeps
//! `cargo test` filters, `--list`, `--exact` and the summary line.
//!
//! Each case runs under a watchdog: a per-case timeout inside its own Tokio
//! runtime, and a whole-binary deadline on a plain thread that ends the
//! process if something blocks outside the runtime.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use tokio_multiprocessing as mp;

/// The deadline for a whole test binary.
const BINARY_DEADLINE: Duration = Duration::from_secs(600);

/// A case that runs `body` on a fresh multi-threaded runtime and fails if
/// it takes longer than `limit`.
pub fn case<F, Fut>(name: &str, limit: Duration, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    Trial::test(name, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        rt.block_on(async move {
            match tokio::time::timeout(limit, body()).await {
                Ok(result) => result,
                Err(_) => Err(format!("watchdog: the case did not finish within {limit:?}").into()),
            }
        })
    })
}

/// Runs the cases and exits, applying the exit rule to any child a case
/// left behind first.
pub fn run(guard: mp::InitGuard, tests: Vec<Trial>) -> ! {
    run_with(Arguments::from_args(), guard, tests)
}

/// As [`run`], but one case at a time (unless `--test-threads` says
/// otherwise), for binaries whose cases look at every child of the test
/// process, such as the orphans it adopts as a child subreaper.
pub fn run_one_at_a_time(guard: mp::InitGuard, tests: Vec<Trial>) -> ! {
    let mut args = Arguments::from_args();
    args.test_threads.get_or_insert(1);
    run_with(args, guard, tests)
}

fn run_with(args: Arguments, guard: mp::InitGuard, tests: Vec<Trial>) -> ! {
    std::thread::spawn(|| {
        std::thread::sleep(BINARY_DEADLINE);
        eprintln!("watchdog: the test binary did not finish within {BINARY_DEADLINE:?}");
        std::process::exit(101);
    });
    let conclusion = libtest_mimic::run(&args, tests);
    drop(guard);
    conclusion.exit()
}

fn echo(x: u32) -> u32 {
    x
}

/// Starts and joins `n` children that echo their argument, `batch` at a
/// time, checking every value.
pub async fn start_join_cycles(n: u32, batch: u32) -> Result<(), Failed> {
    for start in (0..n).step_by(batch.max(1) as usize) {
        let mut procs = Vec::new();
        for i in start..(start + batch).min(n) {
            let p = mp::Process::new(echo, i);
            p.start().await?;
            procs.push((i, p));
        }
        for (i, p) in procs {
            ensure(p.join().await? == i, "value")?;
        }
    }
    Ok(())
}

/// Waits until `cond` holds, checking every 5 ms; fails with `what` if it
/// does not within 10 s.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) -> Result<(), Failed> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("not within 10 s: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Fails with `msg` unless `cond` holds.
pub fn ensure(cond: bool, msg: impl std::fmt::Display) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

/// The number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The number of open descriptors once it has fallen back to `target`,
/// or after about a second: the tasks that watch children close their
/// sockets a moment after the values arrive.
pub async fn open_fds_settled(target: usize) -> usize {
    let mut now = open_fds();
    for _ in 0..100 {
        if now <= target {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        now = open_fds();
    }
    now
}

/// Pids of this process's children that are zombies.
pub fn zombie_children() -> Vec<u32> {
    children_in_state(|s| s == 'Z')
}

/// Pids of this process's children, in any state.
pub fn children() -> Vec<u32> {
    children_in_state(|_| true)
}

/// Pids of the children of process `parent`, in any state.
pub fn children_of(parent: u32) -> Vec<u32> {
    processes_where(|_, ppid| ppid == parent)
}

fn children_in_state(want: impl Fn(char) -> bool) -> Vec<u32> {
    let me = std::process::id();
    processes_where(|state, ppid| ppid == me && want(state))
}

/// Pids of the processes whose state and parent pass `want`.
fn processes_where(want: impl Fn(char, u32) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, ppid)) = stat_of(pid)
            && want(state, ppid)
        {
            out.push(pid);
        }
    }
    out
}

/// `(state, ppid)` from `/proc/PID/stat`.
pub fn stat_of(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether `pid` names a process that is running (not gone, not a zombie).
pub fn is_running(pid: u32) -> bool {
    matches!(stat_of(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// What a look at process `pid`, without waiting, found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reap {
    /// It still runs, or it is a zombie that is not this process's to reap.
    NotYet,
    /// It was this process's child and is reaped now: its exit code, or
    /// `-N` for signal N.
    Reaped(i32),
    /// It is no longer in `/proc`, and was not this process's to reap:
    /// another process reaped it.
    Vanished,
}

/// Reaps `pid` if it is a child of this process that has ended.
pub fn reap_if_ended(pid: u32) -> Reap {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    match waitpid(
        nix::unistd::Pid::from_raw(pid as i32),
        Some(WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::Exited(_, code)) => Reap::Reaped(code),
        Ok(WaitStatus::Signaled(_, sig, _)) => Reap::Reaped(-(sig as i32)),
        Ok(_) => Reap::NotYet,
        Err(_) if stat_of(pid).is_none() => Reap::Vanished,
        Err(_) => Reap::NotYet,
    }
}

/// Lowers this process's descriptor limit to 64 and opens `/dev/null`
/// until no descriptor is left; returns the descriptors it took, to be
/// dropped when done.
pub fn exhaust_descriptors() -> Vec<std::fs::File> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, 64, hard).expect("setrlimit");
    let mut taken = Vec::new();
    loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => taken.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(nix::libc::EMFILE), "{e}");
                return taken;
            }
        }
    }
}
