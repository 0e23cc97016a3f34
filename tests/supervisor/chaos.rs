//! Chaos over a tree: a root supervisor, two nested supervisors, several
//! targets (two of them with a grandchild each) and a program. For about
//! 20 s random supervised processes are killed with SIGKILL; afterwards
//! the tree must be whole (every child running, each leading its own
//! group, no process beyond the supervised groups and the fork server) and
//! a shutdown must leave nothing. Then, with a low intensity and fast
//! kills, the meltdown must climb the tree one level at a time and leave
//! nothing either.
//!
//! The kills are drawn from a seeded generator; the seed is printed
//! (`SUP_CHAOS_SEED=...`), and setting that variable replays its draws.
//! The case runs alone, with the test process a child subreaper, so that
//! an orphaned grandchild stays in view.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{
    ChildSpec, Event, EventStream, ExitKind, Strategy, Supervisor, SupervisorBuilder,
    SupervisorError,
};
use tokio::process::Command;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_as_subreaper, ensure, eventually, is_running};
use crate::containment::{descendants, leftovers, pgid_of, sigkill};

/// How long the first phase kills.
const CHAOS: Duration = Duration::from_secs(20);

/// The supervised processes of the tree, by path, and how many of each
/// group's processes there are once it is ready (a leader, and one
/// grandchild for two of them).
const LEAVES: [(&str, usize); 6] = [
    ("root/sub1/t1", 2),
    ("root/sub1/t2", 1),
    ("root/sub1/prog", 1),
    ("root/sub2/t3", 1),
    ("root/sub2/t4", 2),
    ("root/sub2/t5", 1),
];

/// SplitMix64: small, seedable, good enough to pick victims.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An index into a list of `len` (not empty).
    fn index(&mut self, len: usize) -> usize {
        let len = u64::try_from(len).expect("a list's length fits in u64");
        usize::try_from(self.next() % len).expect("below the length")
    }

    /// A number in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn seed() -> Result<u64, Failed> {
    let seed = match std::env::var("SUP_CHAOS_SEED") {
        Ok(s) => s.parse()?,
        Err(_) => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes)?;
            u64::from_ne_bytes(bytes)
        }
    };
    println!("SUP_CHAOS_SEED={seed}");
    Ok(seed)
}

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// Serves with a grandchild (`sleep 1000`) that it never waits for: the
/// supervisor must take it down with its parent.
#[allow(clippy::zombie_processes)]
async fn serve_with_grandchild(_: ()) {
    std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep starts");
    mp::notify_ready();
    mp::shutdown_requested().await;
}

fn ready(spec: ChildSpec) -> ChildSpec {
    spec.ready_timeout(Duration::from_secs(10))
}

/// The tree: root over sub1 (OneForOne: t1 with a grandchild, t2, a
/// program) and sub2 (RestForOne: t3, t4 with a grandchild, t5), with
/// the intensities given.
fn tree(root: (u32, Duration), subs: (u32, Duration)) -> Supervisor {
    let mut prog = Command::new("sh");
    prog.arg("-c")
        .arg("systemd-notify --ready; exec sleep 1000");
    let sub = |name: &str, strategy: Strategy| -> SupervisorBuilder {
        Supervisor::builder()
            .name(name)
            .strategy(strategy)
            .intensity(subs.0, subs.1)
    };
    let sub1 = sub("sub1", Strategy::OneForOne)
        .child(ready(ChildSpec::new("t1", serve_with_grandchild, ())))
        .child(ready(ChildSpec::new("t2", serve, ())))
        .child(ready(ChildSpec::command("prog", prog)));
    let sub2 = sub("sub2", Strategy::RestForOne)
        .child(ready(ChildSpec::new("t3", serve, ())))
        .child(ready(ChildSpec::new("t4", serve_with_grandchild, ())))
        .child(ready(ChildSpec::new("t5", serve, ())));
    Supervisor::builder()
        .name("root")
        .intensity(root.0, root.1)
        .child(ChildSpec::supervisor("sub1", sub1))
        .child(ChildSpec::supervisor("sub2", sub2))
        .build()
}

/// The latest incarnation of a supervised process, from the events.
#[derive(Debug, Clone, Copy)]
struct Leaf {
    pid: u32,
    ready: bool,
    running: bool,
}

/// What the root's events said so far.
#[derive(Debug, Default)]
struct Seen {
    leaves: BTreeMap<String, Leaf>,
    /// Every pid a supervised process had.
    pids: Vec<u32>,
    starts: usize,
    meltdowns: Vec<Event>,
    lagged: Option<u64>,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(seen: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads `events` into a [`Seen`] until the stream ends.
fn follow(mut events: EventStream) -> (Shared, tokio::task::JoinHandle<()>) {
    let seen = Shared::default();
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            while let Some(e) = events.next().await {
                let mut s = lock(&seen);
                match &e {
                    // Only processes: the nested supervisors are tasks.
                    Event::Started { child, pid, .. } if child.matches('/').count() == 2 => {
                        s.leaves.insert(
                            child.clone(),
                            Leaf {
                                pid: *pid,
                                ready: false,
                                running: true,
                            },
                        );
                        s.pids.push(*pid);
                        s.starts += 1;
                    }
                    Event::Ready { child, pid } => {
                        if let Some(l) = s.leaves.get_mut(child)
                            && l.pid == *pid
                        {
                            l.ready = true;
                        }
                    }
                    Event::Exited { child, pid, .. } => {
                        if let Some(l) = s.leaves.get_mut(child)
                            && l.pid == *pid
                        {
                            l.running = false;
                            l.ready = false;
                        }
                    }
                    Event::IntensityExceeded { .. } => s.meltdowns.push(e.clone()),
                    Event::Lagged(n) => s.lagged = Some(*n),
                    _ => {}
                }
            }
        }
    });
    (seen, task)
}

/// Kills one running supervised process drawn by `rng`; returns its pid.
fn kill_one(seen: &Shared, rng: &mut Rng) -> Result<Option<u32>, Failed> {
    let running: Vec<u32> = lock(seen)
        .leaves
        .values()
        .filter(|l| l.running)
        .map(|l| l.pid)
        .collect();
    if running.is_empty() {
        return Ok(None);
    }
    let victim = running[rng.index(running.len())];
    // Still the leader it was (not a pid reused since it ended).
    if pgid_of(victim) != Some(victim) {
        return Ok(None);
    }
    sigkill(victim)?;
    Ok(Some(victim))
}

/// Whether the tree is whole: every supervised process runs, ready, leads
/// its own group of the expected size, and nothing else descends from the
/// test process but the fork server. `Err` says what is missing.
fn whole(seen: &Shared, baseline: &[u32]) -> Result<(), String> {
    let leaves = lock(seen).leaves.clone();
    let mut groups: HashMap<u32, (&str, usize, usize)> = HashMap::new();
    for (path, size) in LEAVES {
        let l = leaves.get(path).ok_or(format!("{path} never started"))?;
        if !(l.running && l.ready && is_running(l.pid) && pgid_of(l.pid) == Some(l.pid)) {
            return Err(format!("{path} is not up, leading its group: {l:?}"));
        }
        groups.insert(l.pid, (path, size, 0));
    }
    for pid in descendants() {
        if baseline.contains(&pid) || common::is_fork_server_or_spare(pid) {
            continue;
        }
        let pgid = pgid_of(pid).unwrap_or(0);
        match groups.get_mut(&pgid) {
            Some((_, _, n)) => *n += 1,
            None => {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                return Err(format!("a process outside every supervised group: {stat}"));
            }
        }
    }
    for (path, want, n) in groups.values() {
        if want != n {
            return Err(format!("{path}'s group has {n} processes, not {want}"));
        }
    }
    Ok(())
}

/// Phase one: random kills, a high intensity; the tree heals, and its
/// shutdown leaves nothing.
async fn survive(baseline: &[u32], rng: &mut Rng) -> Result<(), Failed> {
    let sup = tree(
        (10_000, Duration::from_secs(1)),
        (10_000, Duration::from_secs(1)),
    );
    let (seen, follower) = follow(sup.events());
    sup.start().await?;
    let deadline = tokio::time::Instant::now() + CHAOS;
    let mut kills = 0;
    while tokio::time::Instant::now() < deadline {
        if kill_one(&seen, rng)?.is_some() {
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(rng.range(20, 150))).await;
    }
    let mut why = String::new();
    let healed = eventually("the tree is whole again", || match whole(&seen, baseline) {
        Ok(()) => true,
        Err(e) => {
            why = e;
            false
        }
    })
    .await;
    healed.map_err(|e| format!("{}: {why}", e.message().unwrap_or_default()))?;
    let starts = lock(&seen).starts;
    println!("chaos: {kills} kills, {starts} starts of supervised processes");
    ensure(kills >= 50, format!("enough chaos: {kills} kills"))?;
    ensure(
        lock(&seen).meltdowns.is_empty(),
        "no supervisor melted down",
    )?;
    let kids = sup.which_children();
    ensure(
        kids.iter()
            .all(|k| k.generation == 1 && k.pid == Some(std::process::id())),
        format!("the nested supervisors never restarted: {kids:?}"),
    )?;
    sup.shutdown().await?;
    let left = leftovers(baseline);
    ensure(left.is_empty(), format!("left after shutdown: {left:?}"))?;
    let s = lock(&seen);
    ensure(
        s.lagged.is_none(),
        format!("the events lagged: {:?}", s.lagged),
    )?;
    let alive: Vec<u32> = s.pids.iter().copied().filter(|&p| is_running(p)).collect();
    ensure(
        alive.is_empty(),
        format!("supervised pids alive: {alive:?}"),
    )?;
    drop(s);
    follower.abort();
    Ok(())
}

/// Phase two: fast kills, intensities of 2 restarts per nested supervisor
/// and 1 for the root. A nested supervisor melts down first (its own
/// `IntensityExceeded`, over one of its children); the root counts each
/// such end as one exit and melts down at its second, over a nested
/// supervisor; `wait()` says so, and nothing is left.
async fn melt_down(baseline: &[u32], rng: &mut Rng) -> Result<(), Failed> {
    let period = Duration::from_secs(60);
    let sup = tree((1, period), (2, period));
    let (seen, follower) = follow(sup.events());
    sup.start().await?;
    let end = {
        let wait = sup.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                end = &mut wait => break end,
                () = tokio::time::sleep(Duration::from_millis(rng.range(5, 30))) => {
                    kill_one(&seen, rng)?;
                }
            }
        }
    };
    let left = leftovers(baseline);
    ensure(
        left.is_empty(),
        format!("left after the meltdown: {left:?}"),
    )?;
    let (child, last_exit) = match end {
        Err(SupervisorError::IntensityExceeded {
            child,
            restarts: 2,
            period: p,
            last_exit,
        }) if p == period => (child, last_exit),
        other => return Err(format!("the root melted down: {other:?}").into()),
    };
    ensure(
        (child == "root/sub1" || child == "root/sub2") && matches!(last_exit, ExitKind::Failed(_)),
        format!("over a nested supervisor that failed: {child} {last_exit:?}"),
    )?;
    // The stream holds everything once the supervisor is gone.
    drop(sup);
    follower.await?;
    let s = lock(&seen);
    ensure(
        s.lagged.is_none(),
        format!("the events lagged: {:?}", s.lagged),
    )?;
    let (last, inner) = s.meltdowns.split_last().ok_or("meltdowns were reported")?;
    ensure(
        *last
            == Event::IntensityExceeded {
                supervisor: "root".into(),
                child: child.clone(),
                restarts: 2,
            },
        format!("the root's meltdown comes last: {:?}", s.meltdowns),
    )?;
    ensure(
        !inner.is_empty()
            && inner.len() <= 2
            && inner.iter().all(|e| {
                matches!(e,
                Event::IntensityExceeded { supervisor, child, restarts: 3 }
                    if (supervisor == "root/sub1" || supervisor == "root/sub2")
                        && child.starts_with(&format!("{supervisor}/")))
            }),
        format!(
            "each nested meltdown is its own, over its own child: {:?}",
            s.meltdowns
        ),
    )?;
    let alive: Vec<u32> = s.pids.iter().copied().filter(|&p| is_running(p)).collect();
    ensure(
        alive.is_empty(),
        format!("supervised pids alive: {alive:?}"),
    )?;
    println!("meltdown: {:?}", s.meltdowns);
    Ok(())
}

/// Random SIGKILLs over a three-level tree heal without a trace; a meltdown climbs level by level.
async fn kills_heal_and_meltdowns_climb() -> Result<(), Failed> {
    let baseline = descendants();
    let mut rng = Rng(seed()?);
    survive(&baseline, &mut rng).await?;
    melt_down(&baseline, &mut rng).await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case_as_subreaper(
        "kills_heal_and_meltdowns_climb",
        Duration::from_secs(90),
        kills_heal_and_meltdowns_climb,
    )]
}
