//! A `Pool` runs 20,000 mixed tasks (fast ones, slow ones, ones that panic
//! and ones that abort their worker) through `apply_async`, `map` and
//! `map_chunked` while a thread SIGKILLs random workers at random
//! intervals. Every task resolves, with its value or the error its kind
//! and the kills allow; each task runs at most once (tasks log their id to
//! a file just before they return, panic or abort); the pool's counters
//! add up; the pool is whole and usable afterwards; and once it is
//! terminated no zombie, child or descriptor is left. Repeated with a
//! fresh pool for a bounded time.
//!
//! `POOL_CHAOS_SEED=N` replays a run's choices (the kill times still vary).

use std::collections::HashSet;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

const WORKERS: usize = 4;
/// Tasks per round.
const TASKS: u32 = 20_000;
/// Of which these go through `apply_async`; the rest through maps.
const APPLIED: u32 = 8_000;
/// Rounds start until this much time has passed.
const BUDGET: Duration = Duration::from_secs(20);
/// The longest pause between two kills.
const MAX_KILL_GAP_MS: u64 = 25;
/// A panic message with this prefix is not printed (see
/// [`quiet_planned_panics`]).
const QUIET: &str = "chaos panic";

/// What a task does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Fast,
    /// Sleeps this many milliseconds first.
    Slow(u8),
    Panic,
    Abort,
}

/// Which log a task writes to: the test process's pid and the round.
type Tag = (u32, u32);

fn log_path((pid, round): Tag) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pool-chaos-{pid}-{round}.log"))
}

fn value(id: u32) -> u64 {
    u64::from(id) * 3 + 1
}

/// A log record's high bit: set when a task ends, clear when it starts.
const END: u32 = 1 << 31;

/// Appends one 4-byte record to the run log (a single `write` to a file
/// opened for appending, so records never mix).
fn log_run(tag: Tag, record: u32) {
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(log_path(tag))
        .expect("open the run log");
    log.write_all(&record.to_le_bytes())
        .expect("write the run log");
}

/// The task: logs its start, sleeps if slow, logs its end, then returns,
/// panics or aborts.
fn work((kind, tag, id): (Kind, Tag, u32)) -> u64 {
    log_run(tag, id);
    if let Kind::Slow(ms) = kind {
        std::thread::sleep(Duration::from_millis(u64::from(ms)));
    }
    log_run(tag, id | END);
    match kind {
        Kind::Fast | Kind::Slow(_) => value(id),
        Kind::Panic => panic!("{QUIET} {id}"),
        Kind::Abort => {
            // No core file for an abort on purpose.
            let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
            std::process::abort()
        }
    }
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// A kind: `panic` and `abort` in parts per ten thousand, 6 % slow.
    fn kind(&mut self, panic: u64, abort: u64) -> Kind {
        let r = self.below(10_000);
        if r < abort {
            Kind::Abort
        } else if r < abort + panic {
            Kind::Panic
        } else if r < abort + panic + 600 {
            Kind::Slow(1 + self.below(4).to_le_bytes()[0])
        } else {
            Kind::Fast
        }
    }
}

/// Sends SIGKILL to `pid` if, and only if, it is a live child of this
/// process. A pidfd pins the process before the check, so a pid reaped and
/// reused in between is never signalled.
fn kill_child(pid: u32) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return false;
    }
    let fd = libc::c_int::try_from(fd).expect("a descriptor number");
    let ours = matches!(common::stat_of(pid), Some((state, ppid))
        if ppid == std::process::id() && state != 'Z' && state != 'X');
    // SAFETY: `fd` is the pidfd opened above; a null siginfo is allowed
    // and means "as kill(2) would send it".
    let sent = ours
        && unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd,
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        } == 0;
    // SAFETY: `fd` is open, owned here and closed once.
    unsafe { libc::close(fd) };
    sent
}

/// Kills a random child not in `spare` every 0 to `MAX_KILL_GAP_MS` ms
/// until `stop`; returns the pids it killed.
fn killer(seed: u64, spare: HashSet<u32>, stop: Arc<AtomicBool>) -> Vec<u32> {
    let mut rng = Rng(seed);
    let mut kills = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.below(MAX_KILL_GAP_MS + 1)));
        // Not the fork server's spare either: one killed while it waits is
        // reaped by the next start (`tests/process/warm.rs`), which may not
        // come before the round checks that every killed child is reaped.
        let server = mp::__fork_server_pid();
        let victims: Vec<u32> = common::children()
            .into_iter()
            .filter(|p| !spare.contains(p) && !common::is_spare_of(*p, server))
            .collect();
        if victims.is_empty() {
            continue;
        }
        let victim = victims[usize::try_from(rng.below(victims.len() as u64)).unwrap_or(0)];
        if kill_child(victim) {
            kills.push(victim);
        }
    }
    kills
}

/// How each task ended, by kind, for the figures.
#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    panicked: usize,
    aborted: usize,
    killed: usize,
    /// Of `killed`, the tasks that had not started.
    killed_unstarted: usize,
    maps_ok: usize,
    maps_failed: usize,
}

/// Checks one `apply_async` outcome against its kind; true if the task
/// must have run (it returned, panicked or aborted).
fn judge(
    kind: Kind,
    id: u32,
    got: Result<u64, mp::TaskError>,
    tally: &mut Tally,
) -> Result<bool, Failed> {
    match (kind, got) {
        (Kind::Fast | Kind::Slow(_), Ok(v)) if v == value(id) => tally.ok += 1,
        (Kind::Panic, Err(mp::TaskError::Panicked(info)))
            if info.message == format!("{QUIET} {id}") =>
        {
            tally.panicked += 1
        }
        (Kind::Abort, Err(mp::TaskError::WorkerDied { exitcode: -6 })) => tally.aborted += 1,
        (_, Err(mp::TaskError::WorkerDied { exitcode: -9 })) => {
            tally.killed += 1;
            return Ok(false);
        }
        (kind, got) => return Err(format!("task {id} ({kind:?}) ended with {got:?}").into()),
    }
    Ok(true)
}

/// The error a map must report when no kill touches it: the first chunk,
/// in input order, that fails by itself. A chunk with an abort fails as a
/// whole with the worker's death; otherwise its first panic is reported.
fn expected_map_error(items: &[(Kind, Tag, u32)], chunk: usize) -> Option<mp::TaskError> {
    items.chunks(chunk).find_map(|c| {
        if c.iter().any(|(k, _, _)| *k == Kind::Abort) {
            Some(mp::TaskError::WorkerDied { exitcode: -6 })
        } else {
            c.iter()
                .find(|(k, _, _)| *k == Kind::Panic)
                .map(|(_, _, id)| {
                    mp::TaskError::Panicked(mp::PanicInfo {
                        message: format!("{QUIET} {id}"),
                        location: None,
                        backtrace: None,
                    })
                })
        }
    })
}

fn same_error(a: &mp::TaskError, b: &mp::TaskError) -> bool {
    match (a, b) {
        (mp::TaskError::Panicked(x), mp::TaskError::Panicked(y)) => x.message == y.message,
        _ => a == b,
    }
}

/// One map of the round: its items, its chunk size (`None`: `map`'s
/// default) and what it may return.
struct MapRun {
    items: Vec<(Kind, Tag, u32)>,
    chunk: Option<usize>,
}

impl MapRun {
    fn effective_chunk(&self) -> usize {
        self.chunk
            .unwrap_or_else(|| self.items.len().div_ceil(4 * WORKERS))
            .max(1)
    }
}

/// Waits until the pool has all its workers again.
async fn whole(pool: &mp::Pool) -> Result<mp::PoolStats, Failed> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = pool.stats();
        if stats.workers == WORKERS && stats.busy == 0 && stats.queued == 0 {
            return Ok(stats);
        }
        ensure(
            Instant::now() < deadline,
            format!("the pool did not get its workers back: {stats:?}"),
        )?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct RoundFigures {
    kills: usize,
    restarted: usize,
    tally: Tally,
}

async fn round(
    round: u32,
    rng: &mut Rng,
    spare: &HashSet<u32>,
    fds0: usize,
) -> Result<RoundFigures, Failed> {
    let tag: Tag = (std::process::id(), round);
    let _ = std::fs::remove_file(log_path(tag));
    let pool = mp::Pool::new(WORKERS).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let (seed, spare, stop) = (rng.next(), spare.clone(), stop.clone());
        std::thread::spawn(move || killer(seed, spare, stop))
    };

    // apply_async: 4 % panics, 2 % aborts.
    let applied: Vec<(Kind, u32)> = (0..APPLIED).map(|id| (rng.kind(400, 200), id)).collect();
    let pending: Vec<_> = applied
        .iter()
        .map(|&(kind, id)| pool.apply_async(work, (kind, tag, id)))
        .collect();

    // Maps over the other ids: four long ones (default chunks and chunk
    // sizes 1, 7 and 50; one with panics, one with rare aborts) that a kill
    // almost always reaches, and forty short ones of 100 items, which a
    // kill often misses.
    let mut plan: Vec<(u32, Option<usize>, u64, u64)> = vec![
        (3_000, None, 0, 0),
        (2_000, Some(1), 0, 0),
        (1_500, Some(7), 100, 0),
        (1_500, Some(50), 50, 20),
    ];
    for i in 0..40 {
        let chunk = if i % 2 == 0 { None } else { Some(5) };
        let panic = if i % 4 == 3 { 50 } else { 0 };
        plan.push((100, chunk, panic, 0));
    }
    let mut next_id = APPLIED;
    let mut maps = Vec::new();
    for (n, chunk, panic, abort) in plan {
        let items: Vec<(Kind, Tag, u32)> = (next_id..next_id + n)
            .map(|id| (rng.kind(panic, abort), tag, id))
            .collect();
        next_id += n;
        maps.push(MapRun { items, chunk });
    }
    ensure(next_id == TASKS, "the plan covers every task")?;
    // Each worker death is a kill or an abort, so these bound the
    // replacements.
    let aborts = applied.iter().filter(|(k, _)| *k == Kind::Abort).count()
        + maps
            .iter()
            .flat_map(|m| &m.items)
            .filter(|(k, _, _)| *k == Kind::Abort)
            .count();
    let running: Vec<_> = maps
        .iter()
        .map(|m| {
            let (pool, items, chunk) = (pool.clone(), m.items.clone(), m.chunk);
            tokio::spawn(async move {
                match chunk {
                    None => pool.map(work, items).await,
                    Some(c) => pool.map_chunked(work, items, c).await,
                }
            })
        })
        .collect();

    let mut tally = Tally::default();
    // Ids whose task must have run exactly once; the others at most once.
    let mut once: HashSet<u32> = HashSet::new();
    let mut lost = Vec::new();
    for ((kind, id), r) in applied.iter().zip(pending) {
        if judge(*kind, *id, r.await, &mut tally)? {
            once.insert(*id);
        } else {
            lost.push(*id);
        }
    }
    let mut map_values = 0;
    for (m, handle) in maps.iter().zip(running) {
        let got = handle.await?;
        let want = expected_map_error(&m.items, m.effective_chunk());
        match (got, want) {
            (Ok(values), None) => {
                ensure(values.len() == m.items.len(), "every value")?;
                for ((_, _, id), v) in m.items.iter().zip(values) {
                    ensure(v == value(*id), format!("map item {id}: {v}"))?;
                    once.insert(*id);
                }
                map_values += m.items.len();
                tally.maps_ok += 1;
            }
            (Err(mp::TaskError::WorkerDied { exitcode: -9 }), _) => tally.maps_failed += 1,
            (Err(e), Some(w)) if same_error(&e, &w) => tally.maps_failed += 1,
            (got, want) => {
                return Err(format!(
                    "map of {} (chunk {:?}): {:?}, expected {want:?} or a SIGKILL",
                    m.items.len(),
                    m.chunk,
                    got.map(|v| v.len())
                )
                .into());
            }
        }
    }

    stop.store(true, Ordering::Relaxed);
    let killed = killer.join().map_err(|_| "the killer thread panicked")?;
    let kills = killed.len();
    // Every worker killed is reaped (so its slot has seen the death)
    // before the pool is expected whole.
    let deadline = Instant::now() + Duration::from_secs(10);
    while killed
        .iter()
        .any(|&p| common::stat_of(p).is_some_and(|(_, ppid)| ppid == std::process::id()))
    {
        ensure(Instant::now() < deadline, "killed workers not reaped")?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The counters add up, and the pool gets every worker back.
    let stats = whole(&pool).await?;
    ensure(
        stats.completed + stats.failed == TASKS as usize,
        format!("{TASKS} tasks, {stats:?}"),
    )?;
    ensure(
        stats.completed >= tally.ok + map_values && stats.failed >= tally.panicked + tally.aborted,
        format!("{tally:?}, {stats:?}"),
    )?;
    ensure(
        stats.restarted >= tally.aborted && stats.restarted <= kills + aborts,
        format!("{kills} kills, {aborts} aborts submitted, {tally:?}, {stats:?}"),
    )?;

    // Still usable.
    let extra: Vec<(Kind, Tag, u32)> = (TASKS..TASKS + 1_000)
        .map(|id| (Kind::Fast, tag, id))
        .collect();
    let values = pool.map(work, extra).await?;
    ensure(
        values.iter().zip(TASKS..).all(|(v, id)| *v == value(id)),
        "the map after the chaos",
    )?;
    ensure(
        pool.apply(work, (Kind::Fast, tag, TASKS + 1_000)).await? == value(TASKS + 1_000),
        "an apply after the chaos",
    )?;
    let after = pool.stats();
    ensure(
        after.completed + after.failed == TASKS as usize + 1_001
            && after.completed == stats.completed + 1_001,
        format!("after the chaos: {after:?}"),
    )?;

    // Each task started at most once and ended at most once, never ended
    // without starting, and the ones that returned, panicked or aborted
    // ended exactly once.
    let log = std::fs::read(log_path(tag))?;
    let _ = std::fs::remove_file(log_path(tag));
    ensure(log.len() % 4 == 0, "whole log records")?;
    let n = TASKS as usize + 1_001;
    let (mut starts, mut ends) = (vec![0u8; n], vec![0u8; n]);
    for rec in log.chunks_exact(4) {
        let rec = u32::from_le_bytes(rec.try_into().expect("4 bytes"));
        let (seen, id) = match rec & END {
            0 => (&mut starts, rec as usize),
            _ => (&mut ends, (rec & !END) as usize),
        };
        ensure(id < n, format!("unknown id {id} in the log"))?;
        seen[id] = seen[id].saturating_add(1);
    }
    for id in 0..n {
        ensure(
            starts[id] <= 1 && ends[id] <= starts[id],
            format!(
                "task {id} started {} and ended {} times",
                starts[id], ends[id]
            ),
        )?;
    }
    let check_once = |id: u32| ensure(ends[id as usize] == 1, format!("task {id} never ran"));
    for id in TASKS..=TASKS + 1_000 {
        check_once(id)?;
    }
    for id in &once {
        check_once(*id)?;
    }
    // Tasks failed with their worker's SIGKILL before they had started.
    tally.killed_unstarted = lost.iter().filter(|&&id| starts[id as usize] == 0).count();

    pool.terminate().await;
    drop(pool);
    ensure(
        common::zombie_children().is_empty(),
        format!("zombies: {:?}", common::zombie_children()),
    )?;
    // The fork server's spare comes and goes (the killer may take it too).
    let left: HashSet<u32> = common::started_children().into_iter().collect();
    let server = mp::__fork_server_pid();
    let kept: HashSet<u32> = spare
        .iter()
        .copied()
        .filter(|p| Some(*p) != server)
        .collect();
    ensure(
        left == kept,
        format!("children {left:?}, expected {kept:?}"),
    )?;
    let fds = common::open_fds_settled(fds0).await;
    ensure(fds <= fds0, format!("descriptors {fds0} -> {fds}"))?;
    Ok(RoundFigures {
        kills,
        restarted: stats.restarted,
        tally,
    })
}

async fn twenty_thousand_tasks_under_random_kills() -> Result<(), Failed> {
    let seed = std::env::var("POOL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| u64::try_from(d.as_nanos()).unwrap_or(1))
        });
    println!("POOL_CHAOS_SEED={seed}");
    let mut rng = Rng(seed);
    // Start the fork server first: it is a child too, and must be spared.
    let first = mp::Process::new(value, 1);
    first.start().await?;
    ensure(first.join().await? == value(1), "a first child")?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Spared: the fork server, not the child it keeps forked ahead of the
    // next start (which becomes a worker, and may be killed as one).
    let server = mp::__fork_server_pid();
    let spare: HashSet<u32> = common::children()
        .into_iter()
        .filter(|p| !common::is_spare_of(*p, server))
        .collect();
    ensure(
        common::zombie_children().is_empty(),
        "no zombie before the rounds",
    )?;
    let fds0 = common::open_fds();
    let started = Instant::now();
    let (mut rounds, mut kills, mut restarted) = (0u32, 0, 0);
    let mut total = Tally::default();
    let tasks = AtomicUsize::new(0);
    while rounds == 0 || started.elapsed() < BUDGET {
        let t0 = Instant::now();
        let f = round(rounds, &mut rng, &spare, fds0).await?;
        println!(
            "round {rounds}: {TASKS} tasks in {:?}, {} kills, {} workers replaced, {:?}",
            t0.elapsed(),
            f.kills,
            f.restarted,
            f.tally
        );
        rounds += 1;
        tasks.fetch_add(TASKS as usize, Ordering::Relaxed);
        kills += f.kills;
        restarted += f.restarted;
        total.ok += f.tally.ok;
        total.panicked += f.tally.panicked;
        total.aborted += f.tally.aborted;
        total.killed += f.tally.killed;
        total.killed_unstarted += f.tally.killed_unstarted;
        total.maps_ok += f.tally.maps_ok;
        total.maps_failed += f.tally.maps_failed;
    }
    println!(
        "{rounds} rounds, {} tasks, {kills} workers SIGKILLed, {restarted} replaced, in {:?}; \
         apply_async outcomes: {} values, {} panics, {} aborts, {} lost to SIGKILL ({} of them not yet started); \
         maps: {} whole, {} failed",
        tasks.load(Ordering::Relaxed),
        started.elapsed(),
        total.ok,
        total.panicked,
        total.aborted,
        total.killed,
        total.killed_unstarted,
        total.maps_ok,
        total.maps_failed,
    );
    ensure(kills > 0, "the killer killed")?;
    Ok(())
}

/// Panics the tasks raise on purpose are not printed. `main` calls this
/// before `init`, so that it runs in the workers too, and the crate's hook
/// wraps it.
pub(crate) fn quiet_planned_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with(QUIET));
        if !planned {
            default(info);
        }
    }));
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case_alone(
        "twenty_thousand_tasks_under_random_kills",
        Duration::from_secs(120),
        twenty_thousand_tasks_under_random_kills,
    )]
}
