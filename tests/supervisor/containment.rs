//! Process-group containment: every supervised child leads a process group
//! of its own, a child's grandchildren die with it before its replacement
//! starts, and a shutdown leaves nothing behind but the fork server.
//!
//! These cases count processes, so they run alone, with the test process a
//! child subreaper: a grandchild orphaned by its parent's death becomes a
//! child of the test process (the supervisor's process), where a leftover
//! is visible and a zombie is the supervisor's to reap. This module also
//! holds the process and event helpers the other modules of this binary
//! share.
//!
//! The cases are Unix only: they run as child subreaper, read process
//! groups and parents in /proc, and start programs (`ChildSpec::command`).
//! On Windows only the event and scratch helpers are used.

#![cfg_attr(windows, allow(dead_code, unused_imports))]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use libtest_mimic::Failed;
use mp::supervisor::{ChildSpec, Event, EventStream, ExitKind, Shutdown, Supervisor};
use tokio_multiprocessing as mp;

#[cfg(unix)]
use crate::common::case_as_subreaper;
use crate::common::{self, Case, case, ensure, eventually, is_running};

// ------------------------------------------------ helpers shared in this binary

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    pub(crate) state: char,
    pub(crate) ppid: u32,
    pub(crate) pgid: u32,
}

/// `/proc/PID/stat` of `pid`: its state, parent and process group
/// (fields 3, 4 and 5), if it exists.
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(ProcStat { state, ppid, pgid })
}

/// The process group of `pid`, if it exists.
pub(crate) fn pgid_of(pid: u32) -> Option<u32> {
    proc_stat(pid).map(|s| s.pgid)
}

/// Whether any process (a zombie included) is left in group `pgid`.
#[cfg(unix)]
pub(crate) fn group_exists(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), None)
        != Err(nix::errno::Errno::ESRCH)
}

/// Every process whose chain of parents leads to this one, zombies
/// included.
pub(crate) fn descendants() -> Vec<u32> {
    let mut parent_of = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some(s) = proc_stat(pid) {
                parent_of.insert(pid, s.ppid);
            }
        }
    }
    let me = std::process::id();
    let mut below: HashSet<u32> = HashSet::new();
    // Parents come and go while /proc is read: walk until nothing changes.
    loop {
        let before = below.len();
        for (&pid, &ppid) in &parent_of {
            if ppid == me || below.contains(&ppid) {
                below.insert(pid);
            }
        }
        if below.len() == before {
            break;
        }
    }
    let mut out: Vec<u32> = below.into_iter().collect();
    out.sort_unstable();
    out
}

/// The descendants of this process that are neither in `baseline` (there
/// before the case) nor the fork server or its spare, each with its
/// `/proc` stat line, for the failure message.
pub(crate) fn leftovers(baseline: &[u32]) -> Vec<String> {
    descendants()
        .into_iter()
        .filter(|p| !baseline.contains(p) && !common::is_fork_server_or_spare(*p))
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .unwrap_or_else(|_| format!("{p} (gone)"))
        })
        .collect()
}

/// Sends `SIGKILL` to `pid`; a process that is gone already is fine.
#[cfg(unix)]
pub(crate) fn sigkill(pid: u32) -> Result<(), Failed> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The next event that passes `want`; the ones before it are dropped.
pub(crate) async fn until(
    events: &mut EventStream,
    mut want: impl FnMut(&Event) -> bool,
) -> Result<Event, Failed> {
    loop {
        let e = events.next().await.ok_or("the event stream ended")?;
        if let Event::Lagged(n) = e {
            return Err(format!("the event stream lagged by {n}").into());
        }
        if want(&e) {
            return Ok(e);
        }
    }
}

/// The events up to and including the first that passes `want`.
pub(crate) async fn collect_until(
    events: &mut EventStream,
    mut want: impl FnMut(&Event) -> bool,
) -> Result<Vec<Event>, Failed> {
    let mut seen = Vec::new();
    loop {
        let e = events.next().await.ok_or("the event stream ended")?;
        if let Event::Lagged(n) = e {
            return Err(format!("the event stream lagged by {n}").into());
        }
        let done = want(&e);
        seen.push(e);
        if done {
            return Ok(seen);
        }
    }
}

/// Every event left on `events` once `sup`, stopped, is dropped (the
/// stream ends when its supervisor is gone).
pub(crate) async fn drain(sup: Supervisor, mut events: EventStream) -> Result<Vec<Event>, Failed> {
    drop(sup);
    let mut seen = Vec::new();
    while let Some(e) = events.next().await {
        if let Event::Lagged(n) = e {
            return Err(format!("the event stream lagged by {n}").into());
        }
        seen.push(e);
    }
    Ok(seen)
}

/// The pid of the next `Started` of `child` with `generation`.
pub(crate) async fn started(
    events: &mut EventStream,
    child: &str,
    generation: u64,
) -> Result<u32, Failed> {
    match until(events, |e| {
        matches!(e, Event::Started { child: c, generation: g, .. } if c == child && *g == generation)
    })
    .await?
    {
        Event::Started { pid, .. } => Ok(pid),
        _ => unreachable!("matched above"),
    }
}

/// How the next `Exited` of `child` says it ended, with its pid.
pub(crate) async fn exited(
    events: &mut EventStream,
    child: &str,
) -> Result<(u32, ExitKind), Failed> {
    match until(
        events,
        |e| matches!(e, Event::Exited { child: c, .. } if c == child),
    )
    .await?
    {
        Event::Exited { pid, exit, .. } => Ok((pid, exit)),
        _ => unreachable!("matched above"),
    }
}

/// A scratch directory, removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Result<Scratch, Failed> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce)?;
        let dir = std::env::temp_dir().join(format!(
            "sup-test-{}-{name}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(nonce)
        ));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// `name` in the directory.
    pub(crate) fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` at once: a reader sees all of it or nothing.
pub(crate) fn publish(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write a scratch file");
    std::fs::rename(&tmp, path).expect("publish a scratch file");
}

/// The number in file `path`, once it is there.
pub(crate) async fn read_pid(path: &Path) -> Result<u32, Failed> {
    let mut text = None;
    eventually(&format!("{} is written", path.display()), || {
        text = std::fs::read_to_string(path).ok();
        text.is_some()
    })
    .await?;
    Ok(text.unwrap_or_default().trim().parse()?)
}

// ---------------------------------------------------------------- targets

/// A target that, in its first incarnation (no `grandchild` file in `dir`
/// yet), starts `sleep 1000`, publishes its pid in `dir/grandchild`, and
/// panics once `dir/crash` appears. Later incarnations serve until stopped.
// The grandchild is never waited for: it is the supervisor's to clean up.
#[allow(clippy::zombie_processes)]
async fn grandchild_then_panic(dir: PathBuf) {
    if dir.join("grandchild").exists() {
        mp::notify_ready();
        mp::shutdown_requested().await;
        return;
    }
    let g = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("sleep starts");
    publish(&dir.join("grandchild"), &g.id().to_string());
    while !dir.join("crash").exists() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("crashing with a grandchild alive");
}

/// A target that starts a grandchild which ignores `SIGTERM`, publishes
/// its pid in `file`, then serves until stopped (and leaves the grandchild
/// running when it returns).
// The grandchild is never waited for: it is the supervisor's to clean up.
#[allow(clippy::zombie_processes)]
async fn grandchild_deaf_to_sigterm(file: PathBuf) {
    let g = std::process::Command::new("sh")
        .args(["-c", "trap '' TERM; exec sleep 1000"])
        .spawn()
        .expect("sh starts");
    publish(&file, &g.id().to_string());
    mp::notify_ready();
    mp::shutdown_requested().await;
}

async fn serve(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

// ------------------------------------------------------------------ cases

/// A panicked target's grandchild is killed and reaped before its replacement starts.
#[cfg(unix)]
async fn a_crashed_targets_grandchild_dies_before_the_replacement() -> Result<(), Failed> {
    let dir = Scratch::new("target-grandchild")?;
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new(
            "t",
            grandchild_then_panic,
            dir.path().to_owned(),
        ))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = started(&mut events, "root/t", 1).await?;
    let g = read_pid(&dir.join("grandchild")).await?;
    let stat = proc_stat(g).ok_or("the grandchild is gone before the crash")?;
    ensure(
        stat.ppid == first && stat.pgid == first && is_running(g),
        format!("grandchild {g} runs in group {first} under it: {stat:?}"),
    )?;
    publish(&dir.join("crash"), "");
    let (pid, exit) = exited(&mut events, "root/t").await?;
    ensure(
        pid == first && matches!(&exit, ExitKind::Panicked(m) if m.contains("grandchild alive")),
        format!("the first incarnation panicked: {pid} {exit:?}"),
    )?;
    let second = started(&mut events, "root/t", 2).await?;
    // The replacement is announced only once the old group is reaped.
    ensure(
        proc_stat(g).is_none(),
        format!(
            "grandchild {g} still exists when the replacement starts: {:?}",
            proc_stat(g)
        ),
    )?;
    ensure(!group_exists(first), "the old process group is empty")?;
    ensure(
        second != first && pgid_of(second) == Some(second),
        "the replacement leads a group of its own",
    )?;
    sup.shutdown().await?;
    Ok(())
}

/// A crashed program's background grandchild is killed and reaped before its replacement starts.
#[cfg(unix)]
async fn a_crashed_programs_grandchild_dies_before_the_replacement() -> Result<(), Failed> {
    let dir = Scratch::new("program-grandchild")?;
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(
            r#"if [ -e "$1/grandchild" ]; then exec sleep 1000; fi
            sleep 1000 &
            echo $! > "$1/grandchild.tmp" && mv "$1/grandchild.tmp" "$1/grandchild"
            while [ ! -e "$1/crash" ]; do sleep 0.01; done
            exit 3"#,
        )
        .arg("sh")
        .arg(dir.path());
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::command("p", cmd))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = started(&mut events, "root/p", 1).await?;
    let g = read_pid(&dir.join("grandchild")).await?;
    let stat = proc_stat(g).ok_or("the grandchild is gone before the crash")?;
    ensure(
        stat.pgid == first && is_running(g),
        format!("grandchild {g} runs in group {first}: {stat:?}"),
    )?;
    publish(&dir.join("crash"), "");
    let (pid, exit) = exited(&mut events, "root/p").await?;
    ensure(
        pid == first && exit == ExitKind::Code(3),
        format!("the program exited with code 3: {pid} {exit:?}"),
    )?;
    started(&mut events, "root/p", 2).await?;
    ensure(
        proc_stat(g).is_none(),
        format!(
            "grandchild {g} still exists when the replacement starts: {:?}",
            proc_stat(g)
        ),
    )?;
    ensure(!group_exists(first), "the old process group is empty")?;
    sup.shutdown().await?;
    Ok(())
}

/// A shutdown leaves no descendant but the fork server, even a grandchild deaf to SIGTERM.
#[cfg(unix)]
async fn shutdown_leaves_only_the_fork_server() -> Result<(), Failed> {
    let baseline = descendants();
    let dir = Scratch::new("shutdown")?;
    let mut prog = tokio::process::Command::new("sh");
    prog.arg("-c")
        .arg("sleep 1000 & (trap '' TERM; exec sleep 1000) & systemd-notify --ready; wait");
    let inner = Supervisor::builder().name("sub").child(
        ChildSpec::new("deaf", grandchild_deaf_to_sigterm, dir.join("inner"))
            .ready_timeout(Duration::from_secs(10)),
    );
    let sup = Supervisor::builder()
        .name("root")
        .child(
            ChildSpec::new("deaf", grandchild_deaf_to_sigterm, dir.join("outer"))
                .ready_timeout(Duration::from_secs(10)),
        )
        .child(ChildSpec::command("prog", prog).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::pool("jobs", mp::Pool::builder().processes(2)))
        .child(ChildSpec::supervisor("sub", inner))
        .child(
            ChildSpec::new("plain", serve, ())
                .shutdown(Shutdown::BrutalKill)
                .ready_timeout(Duration::from_secs(10)),
        )
        .start()
        .await?;
    let grandchildren = [
        read_pid(&dir.join("inner")).await?,
        read_pid(&dir.join("outer")).await?,
    ];
    ensure(
        grandchildren.iter().all(|&g| is_running(g)),
        "the grandchildren run before the shutdown",
    )?;
    let before = descendants();
    ensure(
        before.len() >= baseline.len() + 7,
        format!("the tree is up: {before:?} beside {baseline:?}"),
    )?;
    sup.shutdown().await?;
    ensure(
        sup.which_children().is_empty(),
        "no children after shutdown",
    )?;
    let left = leftovers(&baseline);
    ensure(
        left.is_empty(),
        format!("processes left after shutdown: {left:?}"),
    )?;
    Ok(())
}

/// Every supervised process (target, program, nested, replacement) leads its own group.
#[cfg(unix)]
async fn every_supervised_child_leads_its_own_group() -> Result<(), Failed> {
    let mut prog = tokio::process::Command::new("sh");
    prog.arg("-c")
        .arg("sleep 1000 & systemd-notify --ready; wait");
    let inner = Supervisor::builder()
        .name("sub")
        .child(ChildSpec::new("x", serve, ()).ready_timeout(Duration::from_secs(10)));
    let sup = Supervisor::builder()
        .name("root")
        .child(ChildSpec::new("t", serve, ()).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::command("prog", prog).ready_timeout(Duration::from_secs(10)))
        .child(ChildSpec::supervisor("sub", inner))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let t = started(&mut events, "root/t", 1).await?;
    let p = started(&mut events, "root/prog", 1).await?;
    let x = started(&mut events, "root/sub/x", 1).await?;
    let ours = pgid_of(std::process::id()).ok_or("our own group")?;
    for pid in [t, p, x] {
        ensure(
            pgid_of(pid) == Some(pid) && pid != ours,
            format!("{pid} leads its own group: {:?}", proc_stat(pid)),
        )?;
    }
    // The program's own child shares its group.
    let mut members = Vec::new();
    eventually("the program's sleep runs", || {
        members = crate::common::children_of(p);
        members.iter().any(|&c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "sleep")
        })
    })
    .await?;
    ensure(
        members.iter().all(|&c| pgid_of(c).is_none_or(|g| g == p)),
        format!("the program's children are in its group: {members:?}"),
    )?;
    sigkill(t)?;
    let t2 = started(&mut events, "root/t", 2).await?;
    ensure(
        t2 != t && pgid_of(t2) == Some(t2),
        "the replacement leads its own group",
    )?;
    sup.shutdown().await?;
    Ok(())
}

#[cfg(unix)]
pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_as_subreaper(
            "a_crashed_targets_grandchild_dies_before_the_replacement",
            Duration::from_secs(30),
            a_crashed_targets_grandchild_dies_before_the_replacement,
        ),
        case_as_subreaper(
            "a_crashed_programs_grandchild_dies_before_the_replacement",
            Duration::from_secs(30),
            a_crashed_programs_grandchild_dies_before_the_replacement,
        ),
        case_as_subreaper(
            "shutdown_leaves_only_the_fork_server",
            Duration::from_secs(40),
            shutdown_leaves_only_the_fork_server,
        ),
        case(
            "every_supervised_child_leads_its_own_group",
            Duration::from_secs(30),
            every_supervised_child_leads_its_own_group,
        ),
    ]
}
