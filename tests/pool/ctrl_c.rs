//! Ctrl-C while a program awaits a `Pool::map` of slow tasks.
//!
//! The test binary re-runs itself as the program under test (the mode is
//! in an environment variable), in a process group of its own, and sends
//! it `SIGINT` once its four workers are busy:
//!
//! - a program that handles `ctrl_c()` in a `select!` with the map, then
//!   terminates the pool (or just returns, dropping it), reaps every
//!   worker and exits 0 at once;
//! - a program that does not handle it dies by the signal, and its workers
//!   follow it within a second;
//! - `SIGINT` to the whole process group, as a terminal sends it, reaches
//!   the workers and the fork server too; the program that handles it
//!   still ends cleanly, with 0, leaving nothing behind.
//!
//! The test process is a child subreaper while these cases run (each
//! alone): whatever the program leaves running when it ends becomes the
//! test's child, where the test sees it.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, Reap, case_as_subreaper, ensure};

const MODE_ENV: &str = "TMP_POOL_CTRL_C_MODE";
const WORKERS: usize = 4;
/// How long a task would run if nothing stopped it.
const LONG: Duration = Duration::from_secs(120);
/// A program that handles Ctrl-C must have exited within this after it.
const EXIT_WITHIN: Duration = Duration::from_secs(2);
/// The workers of a program killed by Ctrl-C must be gone within this.
const GONE_WITHIN: Duration = Duration::from_secs(1);

/// A task of the map: says which worker runs it, then outlasts the test.
fn slow(i: u32) -> u32 {
    println!("task {}", std::process::id());
    std::thread::sleep(LONG);
    i
}

/// What the program under test does about Ctrl-C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Waits for it beside the map, then `terminate()`s the pool, prints
    /// `terminated <microseconds it took> <workers replaced>` and returns.
    Terminates,
    /// Waits for it beside the map, prints `returning` and returns: the
    /// pool is dropped, then the `InitGuard`, inside the runtime (as when
    /// `init()` is called in a `#[tokio::main]`).
    Drops,
    /// Does not listen for it: `SIGINT` kills the program.
    Ignores,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Terminates, Mode::Drops, Mode::Ignores];

    fn name(self) -> String {
        format!("{self:?}")
    }
}

/// The program under test: maps `slow` over sixteen items on a pool of
/// four, prints `busy <fork server pid>` once every worker has a job,
/// then does what `mode` says. Returns its exit code.
pub(crate) fn program(mode: Mode) -> i32 {
    // The test relies on what `SIGINT` does to a program that does not
    // handle it: it must not inherit that from whoever ran the tests (a
    // background job of a non-interactive shell starts with `SIGINT`
    // ignored, and an ignored disposition survives `exec`).
    // SAFETY: `SIG_DFL` runs no code of ours in a signal handler, and no
    // other thread exists yet.
    unsafe { nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigDfl) }
        .expect("reset SIGINT");
    let mut guard = Some(mp::init());
    let inner_guard = if mode == Mode::Drops {
        guard.take()
    } else {
        None
    };
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let code = rt.block_on(async move {
        let _guard = inner_guard;
        let pool = mp::Pool::new(WORKERS).await.expect("the pool starts");
        let interrupted = {
            let map = pool.map(slow, 0..4 * u32::try_from(WORKERS).expect("a few"));
            tokio::pin!(map);
            // `ctrl_c` installs its handler when first polled, in the
            // loop's first round: before `busy` is printed.
            let ctrl_c = async {
                if mode == Mode::Ignores {
                    std::future::pending().await
                } else {
                    tokio::signal::ctrl_c().await
                }
            };
            tokio::pin!(ctrl_c);
            let mut announced = false;
            loop {
                tokio::select! {
                    r = &mut map => break Err(format!("the map ended first: {r:?}")),
                    r = &mut ctrl_c => break r.map_err(|e| format!("listening for Ctrl-C: {e}")),
                    _ = tokio::time::sleep(Duration::from_millis(5)), if !announced => {
                        if pool.stats().busy == WORKERS {
                            println!("busy {}", mp::__fork_server_pid().unwrap_or(0));
                            announced = true;
                        }
                    }
                }
            }
        };
        if let Err(e) = interrupted {
            eprintln!("{e}");
            return 3;
        }
        if mode == Mode::Drops {
            println!("returning");
            return 0;
        }
        let t0 = Instant::now();
        pool.terminate().await;
        let took = t0.elapsed();
        println!("terminated {} {}", took.as_micros(), pool.stats().restarted);
        0
    });
    drop(rt);
    drop(guard);
    code
}

/// How the test sends the `SIGINT`, and to which program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Variant {
    mode: Mode,
    /// To the program's whole process group, as a terminal does; else to
    /// the program alone.
    group: bool,
    /// The program is started with `SIGINT` ignored, as a background job
    /// of a non-interactive shell is.
    started_ignoring: bool,
}

/// The running program and the lines it (and its workers) print.
struct Program {
    child: tokio::process::Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Program {
    fn start(mode: Mode, ignoring: bool) -> Result<Program, Failed> {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env(MODE_ENV, mode.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if ignoring {
            // SAFETY: runs in the forked child before `exec`, where only
            // async-signal-safe calls are allowed: `sigaction` is one.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn)
                        .map(drop)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn()?;
        let pid = child.id().ok_or("no pid")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Program { child, pid, lines })
    }

    /// Reads lines until the pool is busy and a task runs in each worker;
    /// returns the fork server's pid (if any) and the workers' pids.
    async fn until_busy(&mut self) -> Result<(Option<u32>, BTreeSet<u32>), Failed> {
        let mut server = None;
        let mut workers = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while server.is_none() || workers.len() < WORKERS {
            let line = tokio::time::timeout_at(deadline, self.lines.recv())
                .await
                .map_err(|_| format!("not busy in time: server {server:?}, workers {workers:?}"))?
                .ok_or("the program's output ended")?;
            if let Some(pid) = line.strip_prefix("busy ") {
                server = Some(pid.parse::<u32>()?);
            } else if let Some(pid) = line.strip_prefix("task ") {
                workers.insert(pid.parse::<u32>()?);
            }
        }
        Ok((server.filter(|&s| s != 0), workers))
    }
}

/// This process's children other than `known`: what a program that
/// ended left to the subreaper.
fn adopted(known: &BTreeSet<u32>) -> Vec<(u32, Option<(char, u32)>)> {
    common::children()
        .into_iter()
        .filter(|p| !known.contains(p))
        .map(|p| (p, common::stat_of(p)))
        .collect()
}

/// Waits up to a second for each of `pids` (children of this process) to
/// end, kills those that do not, reaps them all, and says how each ended:
/// what a failed round left behind.
fn clean_up(pids: impl IntoIterator<Item = u32>) -> Vec<String> {
    let mut out = Vec::new();
    for p in pids {
        let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let what = format!(
            "{p} ({})",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
        let t0 = Instant::now();
        let mut end = common::reap_if_ended(p);
        while end == Reap::NotYet && t0.elapsed() < Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(1));
            end = common::reap_if_ended(p);
        }
        if end != Reap::NotYet {
            out.push(format!(
                "{what} ended by itself after {:?}: {end:?}",
                t0.elapsed()
            ));
            continue;
        }
        let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        while common::reap_if_ended(p) == Reap::NotYet && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
        out.push(format!("{what} still ran 1 s later; killed"));
    }
    out
}

/// One round of `variant`; returns how long after the `SIGINT` the program
/// (if it handles it) or its last worker (if not) was gone.
async fn round(variant: Variant, n: usize) -> Result<Duration, Failed> {
    let before: BTreeSet<u32> = common::children().into_iter().collect();
    let mut prog = Program::start(variant.mode, variant.started_ignoring)?;
    let (server, workers) = prog.until_busy().await?;

    // The pool's workers and the fork server, and nothing else, are the
    // program's children, all running.
    let mut family = workers.clone();
    family.extend(server);
    // Its fork server's spare comes and goes (and ends with the program).
    let (spares, found): (BTreeSet<u32>, BTreeSet<u32>) = common::children_of(prog.pid)
        .into_iter()
        .partition(|p| common::is_spare_of(*p, server));
    ensure(
        found == family,
        format!("children of the program: {found:?}, expected {family:?}"),
    )?;
    ensure(
        family.iter().all(|&p| common::is_running(p)),
        "every worker runs",
    )?;

    let target = if variant.group {
        -(prog.pid as i32)
    } else {
        prog.pid as i32
    };
    let sent = Instant::now();
    kill(Pid::from_raw(target), Signal::SIGINT)?;
    let status = prog.child.wait().await?;
    let exited = sent.elapsed();
    let mut known = before.clone();
    known.insert(prog.pid);

    if variant.mode == Mode::Ignores {
        use std::os::unix::process::ExitStatusExt;
        ensure(
            status.signal() == Some(Signal::SIGINT as i32),
            format!("the program should die by SIGINT: {status:?}"),
        )?;
        // Its workers and fork server are ours now; each must end.
        let mut pending = family.clone();
        pending.extend(&spares);
        let mut last = Duration::ZERO;
        while !pending.is_empty() {
            let now = sent.elapsed();
            for pid in pending.clone() {
                match common::reap_if_ended(pid) {
                    Reap::NotYet => {}
                    Reap::Reaped(code) => {
                        pending.remove(&pid);
                        last = last.max(now);
                        // The server leaves when its channel closes; a
                        // worker it forked is killed with the program by
                        // the kernel's parent-death signal; the spare,
                        // by that signal or by leaving when its channel
                        // closes (2), whichever comes first.
                        let ok = if Some(pid) == server {
                            code == 0
                        } else if spares.contains(&pid) {
                            code == -9 || code == 2
                        } else {
                            code == -9
                        };
                        ensure(ok, format!("{pid} ended with {code}"))?;
                    }
                    Reap::Vanished => return Err(format!("{pid} was reaped elsewhere").into()),
                }
            }
            if !pending.is_empty() && now > GONE_WITHIN {
                let states: Vec<_> = pending.iter().map(|&p| (p, common::stat_of(p))).collect();
                let fates = clean_up(pending);
                return Err(format!(
                    "round {n}: still there {now:?} after the SIGINT (pid, (state, parent)): \
                     {states:?}; then: {fates:?}"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let left = adopted(&known);
        if !left.is_empty() {
            let fates = clean_up(left.iter().map(|l| l.0));
            return Err(format!("also left behind: {left:?}; then: {fates:?}").into());
        }
        println!(
            "{variant:?} round {n}: program dead {exited:?} after the SIGINT, workers gone {last:?} after it"
        );
        return Ok(last);
    }

    // Handled: whatever the program left running or unreaped is ours now.
    let left = adopted(&known);
    if !left.is_empty() {
        let fates = clean_up(left.iter().map(|l| l.0));
        return Err(format!(
            "round {n}: the program ({status:?}, {exited:?} after the SIGINT) left behind \
             (pid, (state, parent)): {left:?}; then: {fates:?}"
        )
        .into());
    }
    ensure(
        family.iter().all(|&p| common::stat_of(p).is_none()),
        "the program reaped its workers and its fork server",
    )?;
    ensure(
        status.code() == Some(0),
        format!("the program should exit 0: {status:?}"),
    )?;
    ensure(
        exited < EXIT_WITHIN,
        format!("the program took {exited:?} to exit after Ctrl-C"),
    )?;
    let mut last_word = None;
    while let Some(line) = prog.lines.recv().await {
        if line.starts_with("terminated ") || line == "returning" {
            last_word = Some(line);
        }
    }
    let last_word = last_word.ok_or("the program never got past the Ctrl-C")?;
    let how = match last_word.strip_prefix("terminated ") {
        Some(rest) => {
            let (us, replaced) = rest.split_once(' ').ok_or("terminated <us> <n>")?;
            format!("terminate took {us} us, {replaced} workers replaced")
        }
        None => "returned, dropping the pool".to_owned(),
    };
    println!("{variant:?} round {n}: exit 0 {exited:?} after the SIGINT; {how}");
    Ok(exited)
}

async fn rounds(variant: Variant, count: usize) -> Result<(), Failed> {
    let mut worst = Duration::ZERO;
    for n in 0..count {
        worst = worst.max(round(variant, n).await?);
    }
    println!("{variant:?}: longest over {count} rounds: {worst:?}");
    Ok(())
}

/// The program under test, in a run of the test binary with its mode in
/// the environment: `main` runs it first thing, instead of its own
/// `init()`. `None` in any other run.
pub(crate) fn program_asked() -> Option<Mode> {
    let name = std::env::var(MODE_ENV).ok()?;
    Some(
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .expect("a known mode"),
    )
}

pub(crate) fn cases() -> Vec<Case> {
    let t = Duration::from_secs(60);
    let handled = |group| Variant {
        mode: Mode::Terminates,
        group,
        started_ignoring: false,
    };
    let dropped = |group| Variant {
        mode: Mode::Drops,
        group,
        started_ignoring: false,
    };
    let unhandled = |started_ignoring| Variant {
        mode: Mode::Ignores,
        group: false,
        started_ignoring,
    };
    vec![
        case_as_subreaper(
            "ctrl_c_handled_terminates_and_reaps_the_pool",
            t,
            move || rounds(handled(false), 3),
        ),
        case_as_subreaper("ctrl_c_handled_by_dropping_the_pool", t, move || {
            rounds(dropped(false), 3)
        }),
        case_as_subreaper("ctrl_c_unhandled_takes_the_workers_along", t, move || {
            rounds(unhandled(false), 3)
        }),
        // Whoever ran the tests may have started them with `SIGINT`
        // ignored; the program sets the disposition it relies on.
        case_as_subreaper(
            "ctrl_c_unhandled_takes_the_workers_along_when_started_ignoring_it",
            t,
            move || rounds(unhandled(true), 2),
        ),
        case_as_subreaper("ctrl_c_to_the_process_group_ends_cleanly", t, move || {
            rounds(handled(true), 3)
        }),
        // A worker being replaced as the program drops the pool and
        // `main` ends: the exit rule refuses new starts and handles
        // the ones under way.
        case_as_subreaper(
            "ctrl_c_to_the_process_group_with_the_pool_dropped",
            t,
            move || rounds(dropped(true), 5),
        ),
    ]
}
