//! Starting processes when things go wrong. The fork server misbehaves:
//! it is killed at random, dies between a fork and its reply, or is
//! stopped while starts wait on it. Starts never put two children on one
//! channel, never leave a zombie, never wait without a deadline, and never
//! block the runtime's threads. A start that fails says why. A program
//! started with `SIGINT` ignored passes that on to its children, whatever
//! the start method.
//!
//! While these cases run, every fork server exits right after its seventh
//! fork, before it replies (`mp::__set_fork_server_faults`, a hook of the
//! crate's `test-support` feature), on top of the kills the cases deal
//! out. Each case runs alone, starts with a fork server that has the
//! faults and leaves one that has none (see [`FaultyForkServers`]).

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure, run, zombie_children};

/// Which process ran the target.
fn whoami(tag: u32) -> (u32, u32) {
    (std::process::id(), tag)
}

/// A little pseudo-randomness from the clock.
fn jitter(max_ms: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    Duration::from_millis(u64::from(nanos) % max_ms.max(1))
}

fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// The faults of the fork servers started while a case of this module runs.
const FAULTS: &str = "forkserver-exit-after-fork=7";

/// Fork servers with [`FAULTS`], until this drops. The hook applies to the
/// servers started after it is set: the one running (if any) is killed,
/// and the next start replaces it. On drop, even when the watchdog ends
/// the case, the faults are unset and the running server is killed, so
/// that the next start gets a healthy one.
struct FaultyForkServers;

impl FaultyForkServers {
    fn from_now() -> FaultyForkServers {
        mp::__set_fork_server_faults(Some(FAULTS));
        if let Some(pid) = mp::__fork_server_pid() {
            signal(pid, Signal::SIGKILL);
        }
        FaultyForkServers
    }

    /// Back to healthy fork servers: drops this, then starts and joins a
    /// child, which replaces the killed server and reaps it.
    async fn restore(self) -> Result<(), Failed> {
        drop(self);
        common::start_join_cycles(1, 1).await
    }
}

impl Drop for FaultyForkServers {
    fn drop(&mut self) {
        mp::__set_fork_server_faults(None);
        if let Some(pid) = mp::__fork_server_pid() {
            signal(pid, Signal::SIGKILL);
        }
    }
}

/// A case of this module: alone in the test process, with
/// [`FaultyForkServers`].
fn faulty<F, Fut>(name: &str, body: F) -> Case
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    case_alone(name, Duration::from_secs(60), move || async move {
        let faults = FaultyForkServers::from_now();
        let result = body().await;
        let restored = faults.restore().await;
        result?;
        restored
    })
}

/// Four tasks start and join processes for 8 s while the fork server is
/// SIGKILLed at random (and dies by itself after every seventh fork,
/// between the fork and its reply). Each join gives the value of the very
/// process the parent tracks, quickly; no zombie is left.
async fn a_lost_fork_server_never_puts_two_children_on_one_channel() -> Result<(), Failed> {
    // What an earlier case left is not this case's to answer for.
    let before = common::children();
    let until = Instant::now() + Duration::from_secs(8);
    let starts = Arc::new(AtomicUsize::new(0));
    let servers = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let mut tasks = Vec::new();
    for task in 0..4u32 {
        let starts = starts.clone();
        let servers = servers.clone();
        tasks.push(tokio::spawn(async move {
            let mut tag = task * 1_000_000;
            while Instant::now() < until {
                tag += 1;
                let t0 = Instant::now();
                let p = mp::Process::new(whoami, tag);
                p.start().await.map_err(|e| format!("start: {e}"))?;
                if let Some(pid) = mp::__fork_server_pid() {
                    servers.lock().unwrap().insert(pid);
                }
                let (ran_in, echoed) = p.join().await.map_err(|e| format!("join: {e}"))?;
                let took = t0.elapsed();
                if Some(ran_in) != p.pid() || echoed != tag {
                    return Err(format!(
                        "the target ran in {ran_in} (tag {echoed}) but the parent tracks {:?} (tag {tag})",
                        p.pid()
                    ));
                }
                if took > Duration::from_secs(6) {
                    return Err(format!("a start and join took {took:?}"));
                }
                starts.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, String>(())
        }));
    }
    let mut kills = 0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5) + jitter(40)).await;
        if let Some(pid) = mp::__fork_server_pid() {
            signal(pid, Signal::SIGKILL);
            kills += 1;
        }
    }
    for t in tasks {
        t.await?.map_err(Failed::from)?;
    }
    let starts = starts.load(Ordering::Relaxed);
    let servers = servers.lock().unwrap().len();
    println!("{starts} starts, {kills} kills, {servers} fork servers seen");
    ensure(starts > 100, format!("only {starts} starts"))?;
    ensure(
        servers > 10,
        format!("only {servers} fork servers: lost ones are not replaced"),
    )?;
    // Everything reaped: the children, the dead servers and the children
    // they forked for starts that lost them.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut zombies = zombie_children();
        zombies.retain(|p| !before.contains(p));
        if zombies.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("zombies left: {zombies:?}").into());
        }
        // Strays are reaped at the next start.
        let p = mp::Process::new(whoami, 0);
        p.start().await?;
        p.join().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fork server is stopped (SIGSTOP) while starts wait on it. The
/// runtime's timers go on ticking, the starts finish within the reply
/// deadline plus a moment (the server is killed and replaced, or the start
/// re-executes), and the stopped server is reaped.
async fn a_stopped_fork_server_freezes_nothing() -> Result<(), Failed> {
    // Make sure a server runs (one dies after every seventh fork here),
    // then stop it.
    let mut running = None;
    for _ in 0..20 {
        let p = mp::Process::new(whoami, 1);
        p.start().await?;
        p.join().await?;
        running = mp::__fork_server_pid();
        if running.is_some() {
            break;
        }
    }
    let Some(server) = running else {
        return Err("no fork server runs".into());
    };
    signal(server, Signal::SIGSTOP);
    // Should the runtime freeze, this thread lets the server go after 30 s,
    // so that the case fails on its figures instead of hanging.
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !done.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
            signal(server, Signal::SIGCONT);
        });
    }
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let t0 = Instant::now();
    let mut starts = Vec::new();
    for tag in 0..4 {
        starts.push(tokio::spawn(async move {
            let p = mp::Process::new(whoami, tag);
            p.start().await.map_err(|e| e.to_string())?;
            let (ran_in, _) = p.join().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(Some(ran_in) == p.pid())
        }));
    }
    // Two seconds in, the starts still wait on the stopped server, but the
    // runtime is free.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticked = ticks.load(Ordering::Relaxed);
    for s in starts {
        ensure(s.await?.map_err(Failed::from)?, "the tracked child ran it")?;
    }
    let took = t0.elapsed();
    done.store(true, Ordering::Relaxed);
    ticker.abort();
    println!("{ticked} ticks in the first 2 s; the starts took {took:?}");
    ensure(
        ticked >= 50,
        format!("the runtime froze: {ticked} ticks of 10 ms in 2 s"),
    )?;
    ensure(
        took < Duration::from_secs(8),
        format!("the starts took {took:?} with the server stopped"),
    )?;
    ensure(
        mp::__fork_server_pid() != Some(server),
        "the stopped server was replaced",
    )?;
    // The stopped server was killed and reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::stat_of(server).is_some() {
        if Instant::now() >= deadline {
            return Err(format!("the stopped server {server} was not reaped").into());
        }
        let p = mp::Process::new(whoami, 9);
        p.start().await?;
        p.join().await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// With no descriptor left, tries to start a child; returns what the
/// error says.
async fn start_without_descriptors(_: ()) -> String {
    let taken = common::exhaust_descriptors();
    let p = mp::Process::new(whoami, 0);
    let said = match p.start().await {
        Ok(()) => "started".to_owned(),
        Err(e) => e.to_string(),
    };
    drop(taken);
    said
}

/// A start that fails for want of descriptors says so in its `Display`
/// (it said only "failed to spawn the child process").
async fn a_failed_start_says_why() -> Result<(), Failed> {
    let p = mp::Process::new(start_without_descriptors, ());
    p.start().await?;
    let said = p.join().await?;
    ensure(
        said.contains("Too many open files"),
        format!("the error says: {said:?}"),
    )
}

/// Set in the program that never calls `init()`.
const NO_INIT_PROGRAM: &str = "TMP_NO_INIT_PROGRAM";

fn echo(x: u32) -> u32 {
    x
}

/// Whether this run of the test binary is the program that never calls
/// `init()`, [`no_init_program`].
pub(crate) fn no_init_program_asked() -> bool {
    std::env::var_os(NO_INIT_PROGRAM).is_some()
}

/// The program that forgot `init()`: tries a `Process` and a `Pool`, and
/// prints what each error says, one line each.
pub(crate) fn no_init_program() -> i32 {
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        match mp::Process::new(echo, 1).start().await {
            Ok(()) => println!("process: started"),
            Err(e) => println!("process: {e}"),
        }
        match mp::Pool::new(1).await {
            Ok(_) => println!("pool: started"),
            Err(e) => println!("pool: {e}"),
        }
    });
    0
}

/// A program that never called `init()` gets errors that say so, and
/// where to call it, from `Process::start` and from `Pool::new` alike
/// (the pool's said "initializer", and the process's said only "failed to
/// spawn" outside its `Debug`).
async fn a_missing_init_is_named_in_the_error() -> Result<(), Failed> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.env(NO_INIT_PROGRAM, "1")
        .stdin(std::process::Stdio::null());
    let out =
        tokio::task::spawn_blocking(move || run::run_with_watchdog(cmd, Duration::from_secs(30)))
            .await??;
    let lines: Vec<&str> = out.stdout.lines().collect();
    ensure(
        lines.len() == 2 && out.status.success(),
        format!("{lines:?}, {}; {}", out.status, out.stderr),
    )?;
    for line in &lines {
        ensure(
            line.contains("init() was never called") && line.contains("first thing in main"),
            format!("the error does not name init(): {line:?}"),
        )?;
    }
    ensure(lines[0].starts_with("process: "), lines[0])?;
    ensure(
        lines[1].starts_with("pool: ") && !lines[1].contains("initializer"),
        lines[1],
    )
}

/// Arguments over the frame limit are refused before anything starts,
/// with an error that says "oversized" and how to raise the limit (it
/// said the control channel broke).
async fn an_oversized_argument_says_so() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .max_frame(1024)
        .build(echo_bytes, vec![7u8; 4096]);
    let err = p.start().await.expect_err("over the limit");
    let said = err.to_string();
    ensure(
        matches!(err, mp::ProcessError::Oversized { max: 1024, .. })
            && said.contains("oversized")
            && said.contains("max_frame"),
        format!("{err:?}: {said}"),
    )?;
    ensure(p.pid().is_none(), "nothing was started")
}

fn echo_bytes(b: Vec<u8>) -> usize {
    b.len()
}

/// Set in the program that `children_inherit_an_ignored_sigint` runs.
const SIGINT_PROGRAM: &str = "TMP_SIGINT_PROGRAM";

/// Whether `SIGINT` is ignored in this process (`SigIgn` in its status).
fn sigint_ignored(_: ()) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// The program: starts a child with each start method and prints whether
/// `SIGINT` is ignored in itself and in each child.
pub(crate) fn sigint_program() -> i32 {
    let _guard = mp::init();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    rt.block_on(async {
        let mut line = format!("self {}", sigint_ignored(()));
        for (name, method) in [
            ("forkserver", mp::StartMethod::ForkServer),
            ("spawn", mp::StartMethod::Spawn),
        ] {
            let p = mp::Process::builder()
                .start_method(method)
                .build(sigint_ignored, ());
            p.start().await.expect("start");
            line += &format!(" {name} {}", p.join().await.expect("join"));
        }
        println!("{line}");
    });
    0
}

/// A child ignores `SIGINT` exactly when its parent was started with it
/// ignored (as a background job of a non-interactive shell is), under
/// either start method: a re-executed child inherits the disposition
/// through `exec`, and a forked one gets back the one the fork server
/// inherited.
async fn children_inherit_an_ignored_sigint() -> Result<(), Failed> {
    for ignoring in [true, false] {
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.env(SIGINT_PROGRAM, "1")
            .stdin(std::process::Stdio::null());
        if ignoring {
            use std::os::unix::process::CommandExt;
            // SAFETY: runs in the forked child before `exec`, where only
            // async-signal-safe calls are allowed: `sigaction` is one.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn)
                        .map(drop)
                        .map_err(std::io::Error::from)
                });
            }
        } else {
            use std::os::unix::process::CommandExt;
            // SAFETY: as above.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl)
                        .map(drop)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let out = tokio::task::spawn_blocking(move || {
            run::run_with_watchdog(cmd, Duration::from_secs(30))
        })
        .await??;
        let want = format!("self {ignoring} forkserver {ignoring} spawn {ignoring}");
        ensure(
            out.status.success() && out.stdout.trim() == want,
            format!(
                "started ignoring SIGINT: {ignoring}; printed {:?} (want {want:?}), {}; {}",
                out.stdout, out.status, out.stderr
            ),
        )?;
    }
    Ok(())
}

/// Whether this run of the test binary is the program that
/// `children_inherit_an_ignored_sigint` runs, [`sigint_program`]: `main`
/// runs it first thing, before `init()`.
pub(crate) fn sigint_program_asked() -> bool {
    std::env::var_os(SIGINT_PROGRAM).is_some()
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        faulty(
            "a_lost_fork_server_never_puts_two_children_on_one_channel",
            a_lost_fork_server_never_puts_two_children_on_one_channel,
        ),
        faulty(
            "a_stopped_fork_server_freezes_nothing",
            a_stopped_fork_server_freezes_nothing,
        ),
        faulty("a_failed_start_says_why", a_failed_start_says_why),
        faulty(
            "a_missing_init_is_named_in_the_error",
            a_missing_init_is_named_in_the_error,
        ),
        faulty(
            "an_oversized_argument_says_so",
            an_oversized_argument_says_so,
        ),
        faulty(
            "children_inherit_an_ignored_sigint",
            children_inherit_an_ignored_sigint,
        ),
    ]
}
