//! Shared harness for the integration tests that start child processes.
//!
//! The tests are grouped by area into a few binaries, `tests/<area>/main.rs`
//! with one submodule per topic, each with `harness = false`: its `main`
//! calls `mp::init()` first (a child re-executes the test binary and must
//! never reach the harness), then hands its cases to `libtest-mimic`, which
//! keeps `cargo test` filters, `--list`, `--exact` and the summary line.
//!
//! A topic module builds its cases with [`case`] (or [`case_alone`],
//! [`case_as_subreaper`], [`test`]); `main` names them `topic::case` with
//! [`module`] (or [`module_in_reruns`]) and runs them with [`run`].
//!
//! Each case runs under a watchdog: a per-case timeout inside its own Tokio
//! runtime, and a whole-binary deadline on a plain thread that ends the
//! process if something blocks outside the runtime.
//!
//! Cases run side by side (one per core at a time, libtest's default),
//! except those that need the test process to themselves: a case that
//! counts every child, zombie or descriptor of the process, kills children
//! it did not start, or changes something process-wide (the fork server,
//! the child subreaper flag) runs alone ([`case_alone`],
//! [`case_as_subreaper`]): it waits until no other case runs, and no other
//! case starts until it is done. An area's `main` lists the modules whose
//! cases count children or descriptors first, so that they run before any
//! case that may leave a straggler behind.

#![allow(dead_code, unreachable_pub)]

pub mod run;

use std::future::Future;
use std::process::{Command, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use tokio_multiprocessing as mp;

/// The deadline for a whole test binary.
const BINARY_DEADLINE: Duration = Duration::from_secs(600);

/// One case of a topic module, named within the module; [`module`] gives
/// it its full name.
pub struct Case {
    name: String,
    body: Box<dyn FnOnce() -> Result<(), Failed> + Send>,
}

/// The cases of module `prefix`, named `prefix::name`.
pub fn module(prefix: &str, cases: Vec<Case>) -> Vec<Trial> {
    cases
        .into_iter()
        .map(|c| Trial::test(format!("{prefix}::{}", c.name), c.body))
        .collect()
}

/// Held for reading by every case that shares the test process with
/// others while it runs, and for writing by a case that runs alone.
static TURNS: RwLock<()> = RwLock::new(());

/// A turn shared with the other cases that share.
fn shared_turn() -> RwLockReadGuard<'static, ()> {
    TURNS.read().unwrap_or_else(PoisonError::into_inner)
}

/// A turn alone: once every case under way is done, and until this one is.
fn lone_turn() -> RwLockWriteGuard<'static, ()> {
    TURNS.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `body` on a fresh multi-threaded runtime; fails if it takes longer
/// than `limit`. The runtime is gone when this returns.
fn on_a_runtime<F, Fut>(limit: Duration, body: F) -> Result<(), Failed>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
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
}

/// A case that runs `body` on a fresh multi-threaded runtime and fails if
/// it takes longer than `limit`. It may run beside other cases.
pub fn case<F, Fut>(name: &str, limit: Duration, body: F) -> Case
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    Case {
        name: name.to_owned(),
        body: Box::new(move || {
            let _turn = shared_turn();
            on_a_runtime(limit, body)
        }),
    }
}

/// As [`case`], but alone in the test process: for a case that looks at
/// every child or descriptor of the process, or disturbs other cases.
pub fn case_alone<F, Fut>(name: &str, limit: Duration, body: F) -> Case
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    Case {
        name: name.to_owned(),
        body: Box::new(move || {
            let _turn = lone_turn();
            on_a_runtime(limit, body)
        }),
    }
}

/// As [`case_alone`], with the test process a child subreaper while the
/// case runs: the orphans of its descendants become children of the test
/// process, where the case can watch and reap them. When it ends, the
/// flag is cleared and whatever it adopted and left unreaped is reaped.
#[cfg(unix)]
pub fn case_as_subreaper<F, Fut>(name: &str, limit: Duration, body: F) -> Case
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    Case {
        name: name.to_owned(),
        body: Box::new(move || {
            let _turn = lone_turn();
            let _subreaper = Subreaper::become_one()?;
            on_a_runtime(limit, body)
        }),
    }
}

/// A case that runs `body` on the harness thread, with no runtime and no
/// watchdog of its own (it keeps its own deadlines). It may run beside
/// other cases.
pub fn test<F>(name: &str, body: F) -> Case
where
    F: FnOnce() -> Result<(), Failed> + Send + 'static,
{
    Case {
        name: name.to_owned(),
        body: Box::new(move || {
            let _turn = shared_turn();
            body()
        }),
    }
}

/// The test process as a child subreaper, until this drops.
#[cfg(unix)]
struct Subreaper {
    /// This process's children when it became one.
    before: Vec<u32>,
}

#[cfg(unix)]
impl Subreaper {
    fn become_one() -> Result<Subreaper, Failed> {
        let before = children();
        nix::sys::prctl::set_child_subreaper(true)?;
        Ok(Subreaper { before })
    }
}

#[cfg(unix)]
impl Drop for Subreaper {
    /// Clears the flag, so that no later orphan is adopted, and reaps the
    /// zombies among the children the case added (a case reaps what it
    /// adopts, unless it failed first), so that later cases see none. The
    /// fork server, which may have been replaced, stays.
    fn drop(&mut self) {
        let _ = nix::sys::prctl::set_child_subreaper(false);
        let server = mp::__fork_server_pid();
        for pid in zombie_children() {
            if !self.before.contains(&pid) && Some(pid) != server {
                let _ = reap_if_ended(pid);
            }
        }
    }
}

/// The cases of module `prefix`, each run in a run of this test binary of
/// its own, whose environment has `var` set to `value`: something read
/// once per process (by `main` or by the library) and inherited by the
/// children, which one binary cannot change for some cases only. The run
/// is selected with `--exact prefix::name` and must pass that one case
/// within `limit`. In that run, where `var` has `value`, they are the
/// cases themselves.
pub fn module_in_reruns(
    prefix: &str,
    (var, value): (&'static str, &'static str),
    limit: Duration,
    cases: Vec<Case>,
) -> Vec<Trial> {
    if std::env::var_os(var).is_some_and(|v| v == value) {
        return module(prefix, cases);
    }
    cases
        .into_iter()
        .map(|c| {
            let name = format!("{prefix}::{}", c.name);
            let exact = name.clone();
            Trial::test(name, move || {
                let _turn = shared_turn();
                rerun(&exact, (var, value), limit)
            })
        })
        .collect()
}

/// Runs case `name` alone in a run of this test binary with `var=value`.
fn rerun(name: &str, (var, value): (&str, &str), limit: Duration) -> Result<(), Failed> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(var, value)
        .args(["--exact", name, "--color", "never"])
        .stdin(Stdio::null());
    let out = run::run_with_watchdog(cmd, limit)?;
    // A filter that matched nothing would pass too: the one case must
    // have run, and passed.
    if out.status.success() && out.stdout.contains("test result: ok. 1 passed;") {
        Ok(())
    } else {
        Err(format!(
            "the run with {var}={value}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status, out.stdout, out.stderr
        )
        .into())
    }
}

/// Runs the cases of `modules`, in this order, and exits, applying the
/// exit rule to any child a case left behind first.
pub fn run(guard: mp::InitGuard, modules: impl IntoIterator<Item = Vec<Trial>>) -> ! {
    let tests = modules.into_iter().flatten().collect();
    let args = Arguments::from_args();
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

/// `VmRSS` of `process` (a pid, or `"self"`) from `/proc/PROCESS/status`,
/// in KiB; 0 if it cannot be read.
pub fn rss_kib(process: impl std::fmt::Display) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
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

/// Whether `pid` is a spare of the fork server `server` (a process of the
/// server's name that is not the server).
pub fn is_spare_of(pid: u32, server: Option<u32>) -> bool {
    Some(pid) != server && is_fork_server_or_spare(pid)
}

/// Pids of this process's children other than the fork server and its
/// spare (see [`is_fork_server_or_spare`]), in any state.
pub fn started_children() -> Vec<u32> {
    children_in_state(|_| true)
        .into_iter()
        .filter(|p| !is_fork_server_or_spare(*p))
        .collect()
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

/// Whether `pid` is the fork server or a spare it forked ahead of a start:
/// both carry the server's name (`/proc/PID/comm`) until a spare's orders
/// come. Neither is a child a case started.
pub fn is_fork_server_or_spare(pid: u32) -> bool {
    Some(pid) == mp::__fork_server_pid()
        || std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim_end() == mp::__FORK_SERVER_NAME)
}

/// Whether `pid` names a process that is running (not gone, not a zombie).
#[cfg(unix)]
pub fn is_running(pid: u32) -> bool {
    matches!(stat_of(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Whether `pid` names a process that is running (see
/// [`run::is_running`]).
#[cfg(windows)]
pub fn is_running(pid: u32) -> bool {
    run::is_running(pid)
}

/// The exit code [`kill_hard`] gives a process on Windows.
#[cfg(windows)]
pub const KILLED_CODE: u32 = 137;

/// How the library reports a process ended by [`kill_hard`] (Python's
/// convention): `-SIGKILL` on Unix, [`KILLED_CODE`] on Windows.
#[cfg(unix)]
pub const KILLED_EXITCODE: i32 = -9;
#[cfg(windows)]
pub const KILLED_EXITCODE: i32 = KILLED_CODE as i32;

/// Whether process `pid` is gone for good: on Unix reaped too (not even a
/// zombie is left); on Windows, where nothing is left to reap, no longer
/// running.
pub fn is_gone(pid: u32) -> bool {
    #[cfg(unix)]
    {
        stat_of(pid).is_none()
    }
    #[cfg(windows)]
    {
        !is_running(pid)
    }
}

/// Kills process `pid` (not its group) from outside, as a crash would:
/// `SIGKILL` on Unix; on Windows `TerminateProcess` with [`KILLED_CODE`].
pub fn kill_hard(pid: u32) -> Result<(), Failed> {
    #[cfg(unix)]
    {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)?;
        Ok(())
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::CloseHandle;
        use windows_sys::Win32::System::Threading::{
            OpenProcess, PROCESS_TERMINATE, TerminateProcess,
        };
        // SAFETY: OpenProcess takes no pointers; a failure returns null.
        let process = unsafe { OpenProcess(PROCESS_TERMINATE, 0, pid) };
        if process.is_null() {
            return Err(format!(
                "cannot open process {pid}: {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
        // SAFETY: the handle is open with PROCESS_TERMINATE for the call.
        let ok = unsafe { TerminateProcess(process, KILLED_CODE) };
        let error = std::io::Error::last_os_error();
        // SAFETY: opened above, closed once here.
        unsafe { CloseHandle(process) };
        if ok == 0 {
            return Err(format!("cannot end process {pid}: {error}").into());
        }
        Ok(())
    }
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
#[cfg(unix)]
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
#[cfg(unix)]
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
