//! Warm starts: the fork server keeps a child forked ahead of the next
//! start (a spare), which takes its orders when that start comes. Each
//! case runs alone: it looks at every child of the test process.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, case_as_subreaper, ensure, eventually};

/// Who ran the target: its pid, its name in `/proc`, its parent, one
/// variable of its environment and its working directory.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Seen {
    pid: u32,
    comm: String,
    parent: u32,
    var: Option<String>,
    dir: String,
    name: String,
}

fn seen(var: String) -> Seen {
    Seen {
        pid: std::process::id(),
        comm: std::fs::read_to_string("/proc/self/comm")
            .unwrap_or_default()
            .trim_end()
            .to_owned(),
        parent: std::os::unix::process::parent_id(),
        var: std::env::var(var).ok(),
        dir: std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        name: mp::current_process().name().to_owned(),
    }
}

/// The spares waiting now: children of this process with the fork
/// server's name that are not the server.
fn spares() -> Vec<u32> {
    let server = mp::__fork_server_pid();
    common::children()
        .into_iter()
        .filter(|p| Some(*p) != server && common::is_fork_server_or_spare(*p))
        .filter(|p| common::is_running(*p))
        .collect()
}

async fn one_spare() -> Result<u32, Failed> {
    eventually("one spare waits", || spares().len() == 1).await?;
    Ok(spares()[0])
}

/// After a start, one spare waits; the next start is that very process,
/// which takes the program's name back, and a new spare follows.
async fn a_spare_takes_the_next_start() -> Result<(), Failed> {
    let p = mp::Process::new(seen, "HOME".to_owned());
    p.start().await?;
    p.join().await?;
    let spare = one_spare().await?;
    ensure(
        common::stat_of(spare).map(|(_, ppid)| ppid) == Some(std::process::id()),
        "the spare is a child of this process",
    )?;
    ensure(
        !mp::active_children().iter().any(|c| c.pid() == spare),
        "a spare is not an active child",
    )?;
    let q = mp::Process::builder()
        .name("warm")
        .build(seen, "HOME".to_owned());
    q.start().await?;
    ensure(
        q.pid() == Some(spare),
        format!("{:?} is not the spare {spare}", q.pid()),
    )?;
    let s = q.join().await?;
    ensure(s.pid == spare, format!("the target ran in {}", s.pid))?;
    ensure(
        s.parent == std::process::id(),
        format!("its parent is {}", s.parent),
    )?;
    ensure(s.name == "warm", format!("its name is {}", s.name))?;
    let program = std::fs::read_to_string("/proc/self/comm")?;
    ensure(
        s.comm == program.trim_end(),
        format!("it calls itself {}, not {}", s.comm, program.trim_end()),
    )?;
    let next = one_spare().await?;
    ensure(next != spare, "a new spare follows")?;
    Ok(())
}

/// A spare killed while it waits costs the next start nothing: that start
/// reaps it and takes a fresh one.
async fn a_killed_spare_is_reaped_and_replaced() -> Result<(), Failed> {
    let p = mp::Process::new(seen, String::new());
    p.start().await?;
    p.join().await?;
    let spare = one_spare().await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(spare)?),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    eventually("the spare is dead", || !common::is_running(spare)).await?;
    let q = mp::Process::new(seen, String::new());
    q.start().await?;
    ensure(q.pid() != Some(spare), "the dead spare was not taken")?;
    let s = q.join().await?;
    ensure(Some(s.pid) == q.pid(), format!("{s:?}"))?;
    ensure(
        common::stat_of(spare).is_none(),
        "the dead spare was reaped",
    )?;
    Ok(())
}

/// Environment and working directory are the start's own, though the
/// spare was forked before they were known.
async fn each_start_gets_its_own_setting() -> Result<(), Failed> {
    let warm = mp::Process::new(seen, String::new());
    warm.start().await?;
    warm.join().await?;
    let dirs = [std::env::temp_dir(), std::path::PathBuf::from("/")];
    for (i, dir) in dirs.iter().enumerate() {
        let spare = one_spare().await?;
        let value = format!("value-{i}");
        let p = mp::Process::builder()
            .env("TMP_WARM_VAR", &value)
            .current_dir(dir)
            .build(seen, "TMP_WARM_VAR".to_owned());
        p.start().await?;
        ensure(p.pid() == Some(spare), "the spare took the start")?;
        let s = p.join().await?;
        ensure(s.var.as_deref() == Some(value.as_str()), format!("{s:?}"))?;
        let want = dir.canonicalize()?.display().to_string();
        ensure(s.dir == want, format!("{s:?}, not in {want}"))?;
    }
    // Nothing of the last start stays for the next.
    let p = mp::Process::new(seen, "TMP_WARM_VAR".to_owned());
    p.start().await?;
    let s = p.join().await?;
    ensure(s.var.is_none(), format!("{s:?}"))?;
    Ok(())
}

/// The pids of this process's fork server and spare, once both exist.
fn machinery(_: ()) -> (u32, u32) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let g = mp::Process::new(seen, String::new());
        g.start().await.expect("a grandchild starts");
        g.join().await.expect("and ends");
        let server = mp::__fork_server_pid().expect("a fork server runs");
        for _ in 0..500 {
            if let Some(spare) = spares().first() {
                return (server, *spare);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no spare showed up");
    })
}

/// Reports its fork server and spare through `tx`, then waits to be
/// killed.
fn machinery_then_wait(tx: mp::Connection<(u32, u32)>) {
    let pids = machinery(());
    tx.blocking_send(&pids).expect("report");
    std::thread::sleep(Duration::from_secs(60));
}

/// A program's spare (and its fork server) end with the program: when it
/// returns (its exit rule) and when it is killed (the kernel's
/// parent-death signal; the server sees its channel close). The orphans
/// would come to this process, the subreaper: none stays.
async fn a_spare_ends_with_its_program() -> Result<(), Failed> {
    let m = mp::Process::new(machinery, ());
    m.start().await?;
    let (server, spare) = m.join().await?;
    for pid in [server, spare] {
        eventually("the returned program's machinery is gone", || {
            !common::is_running(pid)
        })
        .await?;
    }
    let (rx, tx) = mp::Pipe::new::<(u32, u32)>()?;
    let mut rx = rx;
    let k = mp::Process::new(machinery_then_wait, tx);
    k.start().await?;
    let (server, spare) = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await??;
    ensure(common::is_running(spare), "the spare waits")?;
    k.kill()?;
    k.join().await.ok();
    for pid in [server, spare] {
        eventually("the killed program's machinery is gone", || {
            !common::is_running(pid)
        })
        .await?;
    }
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case_alone(
            "a_spare_takes_the_next_start",
            Duration::from_secs(30),
            a_spare_takes_the_next_start,
        ),
        case_alone(
            "each_start_gets_its_own_setting",
            Duration::from_secs(30),
            each_start_gets_its_own_setting,
        ),
        case_alone(
            "a_killed_spare_is_reaped_and_replaced",
            Duration::from_secs(30),
            a_killed_spare_is_reaped_and_replaced,
        ),
        case_as_subreaper(
            "a_spare_ends_with_its_program",
            Duration::from_secs(60),
            a_spare_ends_with_its_program,
        ),
    ]
}
