//! Remote pool workers: programs that join a pool through
//! `PoolBuilder::listen` with `worker_main` (here this binary, started
//! again with `MP_TEST_REMOTE_WORKER` naming the pool's address). They
//! serve the queue beside the local workers; one killed, or stopped past
//! the heartbeat timeout, fails only the task it had started; a wrong
//! authkey or another build is refused before any task.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case, ensure};

const KEY: &str = "the remote workers' key";
const ADDRESS_ENV: &str = "MP_TEST_REMOTE_WORKER";
const KEY_ENV: &str = "MP_TEST_REMOTE_KEY";
/// A DER certificate file: the worker joins over TLS, trusting it.
const CA_ENV: &str = "MP_TEST_REMOTE_CA";
const T: Duration = Duration::from_secs(60);

/// The pool's address, when this run is a remote worker.
pub(crate) fn worker_asked() -> Option<String> {
    std::env::var(ADDRESS_ENV).ok()
}

/// A remote worker: joins the pool and serves until it closes. Exits 0
/// then, 3 with the error on stdout otherwise.
pub(crate) fn worker_program(address: String) -> i32 {
    let _guard = mp::init();
    let key = std::env::var(KEY_ENV).unwrap_or_else(|_| KEY.to_owned());
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return 2;
    };
    let mut client = mp::connection::Client::builder(address.as_str()).authkey(key.as_bytes());
    // Over TLS, trusting the certificate in this file.
    if let Ok(ca) = std::env::var(CA_ENV) {
        let Ok(der) = std::fs::read(ca) else {
            return 2;
        };
        let mut roots = mp::connection::rustls::RootCertStore::empty();
        if roots
            .add(mp::connection::rustls::pki_types::CertificateDer::from(der))
            .is_err()
        {
            return 2;
        }
        let tls = mp::connection::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client = client.tls(std::sync::Arc::new(tls));
    }
    match rt.block_on(mp::worker_main_with(client)) {
        Ok(()) => 0,
        Err(e) => {
            println!("{e:?}");
            3
        }
    }
}

/// Kills and reaps the worker when the case ends, however it ends.
struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(pool: &mp::Pool, env: &[(&str, &str)]) -> Result<Worker, Failed> {
    let address = pool.listen_address().ok_or("the pool does not listen")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ADDRESS_ENV, address.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(Worker(cmd.spawn()?))
}

/// Waits until the pool counts `n` remote workers.
async fn joined(pool: &mp::Pool, n: usize) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while pool.stats().remote_workers != n {
        if Instant::now() > deadline {
            return Err(format!("{n} remote workers never joined: {:?}", pool.stats()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn listening_pool(local: usize, beat: Option<Duration>) -> Result<mp::Pool, Failed> {
    let mut b = mp::Pool::builder()
        .processes(local)
        .listen("127.0.0.1:0", KEY.as_bytes());
    if let Some(timeout) = beat {
        b = b.heartbeat(Duration::from_millis(50), timeout);
    }
    Ok(b.build().await?)
}

/// Sleeps `ms`, then says which process ran it.
fn pid_after(ms: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

/// Writes this process's pid to `path` as it starts, then sleeps `ms`.
fn mark_then_sleep((path, ms): (String, u64)) -> u32 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    std::process::id()
}

fn scratch(name: &str) -> Result<PathBuf, Failed> {
    let dir = std::env::temp_dir().join(format!("mp-remote-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Which task indexes a process marked as started, from the files.
fn marked_by(dir: &Path, pid: u32, n: usize) -> Vec<usize> {
    (0..n)
        .filter(|i| {
            std::fs::read_to_string(dir.join(i.to_string()))
                .is_ok_and(|s| s.trim() == pid.to_string())
        })
        .collect()
}

async fn remote_workers_serve_the_queue_beside_local_ones() -> Result<(), Failed> {
    let pool = listening_pool(1, None).await?;
    let a = start_worker(&pool, &[])?;
    let b = start_worker(&pool, &[])?;
    joined(&pool, 2).await?;
    let stats = pool.stats();
    ensure(
        stats.workers == 3,
        format!("1 local and 2 remote: {stats:?}"),
    )?;
    let pids: HashSet<u32> = pool
        .map_chunked(pid_after, vec![20u64; 60], 1)
        .await?
        .into_iter()
        .collect();
    ensure(
        pids.contains(&a.0.id()) && pids.contains(&b.0.id()) && pids.len() == 3,
        format!("ran in {pids:?}; remote {} and {}", a.0.id(), b.0.id()),
    )?;
    // Closing the pool ends the remote workers' service: they exit 0.
    pool.close();
    pool.join().await?;
    for mut w in [a, b] {
        let status = w.0.wait()?;
        ensure(status.success(), format!("a remote worker ended {status}"))?;
    }
    Ok(())
}

/// Submits `n` tasks of 400 ms that mark their start in `dir`, and
/// waits until process `pid` has started one of them.
async fn submit_marked(
    pool: &mp::Pool,
    dir: &Path,
    n: usize,
    pid: u32,
) -> Result<Vec<mp::AsyncResult<u32>>, Failed> {
    let pending: Vec<_> = (0..n)
        .map(|i| {
            let path = dir.join(i.to_string()).display().to_string();
            pool.apply_async(mark_then_sleep, (path, 400))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while marked_by(dir, pid, n).is_empty() {
        if Instant::now() > deadline {
            return Err("the remote worker never started a task".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(pending)
}

/// Runs 8 tasks of 400 ms on one local and one remote worker; once the
/// remote one has started a task, `stop` is done to it. Returns the
/// outcomes, and the tasks the remote worker marked started.
async fn lose_the_remote_worker(
    beat: Option<Duration>,
    stop: fn(u32),
) -> Result<(Vec<Result<u32, mp::TaskError>>, Vec<usize>, u32), Failed> {
    let pool = listening_pool(1, beat).await?;
    let w = start_worker(&pool, &[])?;
    let pid = w.0.id();
    joined(&pool, 1).await?;
    let dir = scratch(&format!("lose-{pid}"))?;
    let n = 8;
    let pending = submit_marked(&pool, &dir, n, pid).await?;
    stop(pid);
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(p.await);
    }
    let marked = marked_by(&dir, pid, n);
    ensure(
        pool.stats().remote_workers == 0,
        format!("the lost worker is no longer counted: {:?}", pool.stats()),
    )?;
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((outcomes, marked, pid))
}

/// The task the remote worker was running failed as lost; every other
/// task ran, once.
fn only_the_started_task_failed(
    outcomes: &[Result<u32, mp::TaskError>],
    marked: &[usize],
    pid: u32,
    reason: &str,
) -> Result<(), Failed> {
    let lost: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_err())
        .map(|(i, _)| i)
        .collect();
    ensure(lost.len() == 1, format!("one task lost: {outcomes:?}"))?;
    let i = lost[0];
    ensure(
        marked.contains(&i),
        format!("the lost task {i} is one the remote worker started ({marked:?})"),
    )?;
    let Err(mp::TaskError::WorkerLost { reason: why, .. }) = &outcomes[i] else {
        return Err(format!("task {i}: {:?}", outcomes[i]).into());
    };
    ensure(why.contains(reason), format!("the reason: {why}"))?;
    for (j, o) in outcomes.iter().enumerate() {
        if j != i {
            let ran = o.as_ref().map_err(|e| format!("task {j}: {e}"))?;
            ensure(
                *ran != pid || marked.contains(&j),
                format!("task {j} ran on the lost worker unmarked"),
            )?;
        }
    }
    Ok(())
}

/// `SIGKILL` on Unix, `TerminateProcess` on Windows.
fn sigkill(pid: u32) {
    let _ = common::kill_hard(pid);
}

#[cfg(unix)]
fn sigstop(pid: u32) {
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
}

async fn a_killed_remote_worker_fails_only_the_task_it_started() -> Result<(), Failed> {
    let (outcomes, marked, pid) = lose_the_remote_worker(None, sigkill).await?;
    only_the_started_task_failed(&outcomes, &marked, pid, "connection")
}

#[cfg(unix)]
async fn a_silent_remote_worker_is_given_up_after_the_heartbeat_timeout() -> Result<(), Failed> {
    let (outcomes, marked, pid) =
        lose_the_remote_worker(Some(Duration::from_millis(600)), sigstop).await?;
    only_the_started_task_failed(&outcomes, &marked, pid, "said nothing")
}

async fn a_worker_with_another_key_or_build_is_refused() -> Result<(), Failed> {
    let pool = listening_pool(1, None).await?;
    for (env, want) in [
        ((KEY_ENV, "not the key"), "Authentication"),
        (("MP_TEST_REMOTE_WRONG_BUILD", "1"), "Refused"),
    ] {
        let mut w = start_worker(&pool, &[env])?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = w.0.try_wait()? {
                break s;
            }
            if Instant::now() > deadline {
                return Err(format!("the worker with {env:?} did not exit").into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut out = String::new();
        if let Some(mut so) = w.0.stdout.take() {
            std::io::Read::read_to_string(&mut so, &mut out)?;
        }
        ensure(
            status.code() == Some(3) && out.contains(want),
            format!("with {env:?}: {status}, {out:?}"),
        )?;
        ensure(
            pool.stats().remote_workers == 0,
            format!("not counted: {:?}", pool.stats()),
        )?;
    }
    ensure(pool.apply(pid_after, 0).await? != 0, "the pool goes on")?;
    Ok(())
}

/// What a launched worker was started as, from its environment.
fn launched_as(_: u64) -> Option<String> {
    std::thread::sleep(Duration::from_millis(20));
    std::env::var("MP_LAUNCHED_AS").ok()
}

async fn a_launcher_command_starts_workers_that_join() -> Result<(), Failed> {
    // `env` stands in for `ssh {host}`: the placeholders are filled in,
    // and the copies of this binary join the pool from `init()`. Windows
    // has no `env`: `cmd /C set VAR=VALUE&& {exe}` does the same there.
    let command: &[&str] = if cfg!(windows) {
        &[
            "cmd",
            "/C",
            "set",
            "MP_LAUNCHED_AS={index}@{host}&&",
            "{exe}",
        ]
    } else {
        &["env", "MP_LAUNCHED_AS={index}@{host}", "{exe}"]
    };
    let launcher = mp::LauncherCommand::new(command.iter().copied()).hosts(["alpha", "beta"]);
    let pool = mp::Pool::builder()
        .processes(1)
        .listen("127.0.0.1:0", KEY.as_bytes())
        .launch(launcher)
        .build()
        .await?;
    joined(&pool, 2).await?;
    let seen: HashSet<Option<String>> = pool
        .map_chunked(launched_as, vec![0u64; 60], 1)
        .await?
        .into_iter()
        .collect();
    let want: HashSet<Option<String>> =
        [None, Some("0@alpha".to_owned()), Some("1@beta".to_owned())]
            .into_iter()
            .collect();
    ensure(seen == want, format!("tasks ran in {seen:?}"))?;
    pool.close();
    pool.join().await?;
    // The launched workers leave with the pool.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().remote_workers != 0 {
        if Instant::now() > deadline {
            return Err(format!("{:?}", pool.stats()).into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = mp::Pool::builder()
        .launch(mp::LauncherCommand::new(["{exe}"]))
        .build()
        .await;
    ensure(
        matches!(refused, Err(mp::BuildError::InvalidSetting(_))),
        format!("a launcher without listen: {refused:?}"),
    )?;
    Ok(())
}

/// Runs `ip` with `args`; its error output if it fails.
#[cfg(unix)]
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A network namespace joined to this one by a veth pair: this side
/// `10.77.N.1`, the namespace's `10.77.N.2`. Removed when dropped.
#[cfg(unix)]
struct Netns {
    name: String,
    veth: String,
    here: String,
}

#[cfg(unix)]
impl Netns {
    fn create() -> Result<Netns, String> {
        let n = std::process::id() % 250 + 1;
        let name = format!("mp-remote-{}", std::process::id());
        let veth = format!("mpv{n}");
        let peer = format!("mpw{n}");
        let ns = Netns {
            name: name.clone(),
            veth: veth.clone(),
            here: format!("10.77.{n}.1"),
        };
        ip(&["netns", "add", &name])?;
        ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer])?;
        ip(&["link", "set", &peer, "netns", &name])?;
        ip(&["addr", "add", &format!("10.77.{n}.1/30"), "dev", &veth])?;
        ip(&["link", "set", &veth, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &format!("10.77.{n}.2/30"), "dev", &peer])?;
        inside(&["link", "set", &peer, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

#[cfg(unix)]
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.veth]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

#[cfg(unix)]
async fn a_worker_cut_off_mid_task_fails_only_that_task() -> Result<(), Failed> {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            // On loopback, a stopped worker stands for one cut off: it
            // goes as silent.
            eprintln!("no network namespace here ({why}): a stopped worker on loopback instead");
            let (outcomes, marked, pid) =
                lose_the_remote_worker(Some(Duration::from_millis(800)), sigstop).await?;
            return only_the_started_task_failed(&outcomes, &marked, pid, "said nothing");
        }
    };
    let listener = mp::connection::Listener::builder(format!("{}:0", ns.here))
        .authkey(KEY.as_bytes())
        .insecure_plaintext();
    let pool = mp::Pool::builder()
        .processes(1)
        .listen_with(listener)
        .heartbeat(Duration::from_millis(50), Duration::from_millis(800))
        .build()
        .await?;
    let address = pool.listen_address().ok_or("no address")?.to_string();
    let w = Worker(
        Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(std::env::current_exe()?)
            .env(ADDRESS_ENV, &address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    joined(&pool, 1).await?;
    let dir = scratch("netns")?;
    let n = 8;
    // The worker's tasks write the files too (the namespace shares the
    // file system); `ip netns exec` runs the worker in its own process.
    let remote = w.0.id();
    let pending = submit_marked(&pool, &dir, n, remote).await?;
    ip(&["link", "set", &ns.veth, "down"])?;
    let mut outcomes = Vec::new();
    for p in pending {
        outcomes.push(p.await);
    }
    let marked = marked_by(&dir, remote, n);
    let lost: Vec<usize> = (0..n).filter(|&i| outcomes[i].is_err()).collect();
    // The task the pool had let the worker start fails: whether the
    // worker got to run it, behind a cut link, nobody can tell, so it
    // is not run again. Every other task ran, once, and the worker's
    // earlier ones count.
    ensure(lost.len() == 1, format!("one task lost: {outcomes:?}"))?;
    for (i, o) in outcomes.iter().enumerate() {
        if let Ok(pid) = o {
            ensure(
                (*pid == remote) == marked.contains(&i),
                format!("task {i} ran in {pid}; the worker marked {marked:?}"),
            )?;
        }
    }
    ensure(
        matches!(&outcomes[lost[0]], Err(mp::TaskError::WorkerLost { reason, .. }) if reason.contains("said nothing")),
        format!("{:?}", outcomes[lost[0]]),
    )?;
    ensure(
        pool.apply(pid_after, 0).await? != remote,
        "the pool goes on",
    )?;
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn remote_workers_join_over_tls_beyond_loopback() -> Result<(), Failed> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let dir = scratch("tls")?;
    let ca = dir.join("ca.der");
    std::fs::write(&ca, made.cert.der())?;
    let key = mp::connection::rustls::pki_types::PrivatePkcs8KeyDer::from(
        made.signing_key.serialize_der(),
    );
    let tls = mp::connection::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key.into())?;
    let pool = mp::Pool::builder()
        .processes(1)
        .listen_with(
            mp::connection::Listener::builder("0.0.0.0:0")
                .authkey(KEY.as_bytes())
                .tls(std::sync::Arc::new(tls)),
        )
        .build()
        .await?;
    let port = pool
        .listen_address()
        .ok_or("no address")?
        .to_string()
        .rsplit_once(':')
        .map(|(_, p)| p.to_owned())
        .ok_or("no port")?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(ADDRESS_ENV, format!("localhost:{port}"))
        .env(CA_ENV, &ca)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let w = Worker(cmd.spawn()?);
    joined(&pool, 1).await?;
    let pids: HashSet<u32> = pool
        .map_chunked(pid_after, vec![20u64; 30], 1)
        .await?
        .into_iter()
        .collect();
    ensure(
        pids.contains(&w.0.id()) && pids.len() == 2,
        format!("ran in {pids:?}, the TLS worker is {}", w.0.id()),
    )?;
    // Without TLS, or without the key, nobody joins.
    let plain = start_worker(&pool, &[])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure(
        pool.stats().remote_workers == 1,
        format!("a plaintext worker stayed out: {:?}", pool.stats()),
    )?;
    drop(plain);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[cfg(unix)]
fn length(v: serde_bytes::ByteBuf) -> usize {
    v.len()
}

#[cfg(unix)]
async fn a_stopped_worker_does_not_hold_a_large_job() -> Result<(), Failed> {
    let pool = listening_pool(1, Some(Duration::from_millis(600))).await?;
    let w = start_worker(&pool, &[])?;
    joined(&pool, 1).await?;
    sigstop(w.0.id());
    // More than the sockets hold: the send to the stopped worker cannot
    // finish, and must not hold its job past the heartbeat timeout.
    let big = serde_bytes::ByteBuf::from(vec![7u8; 16 << 20]);
    let pending: Vec<_> = (0..3)
        .map(|_| pool.apply_async(length, big.clone()))
        .collect();
    for p in pending {
        ensure(p.await? == 16 << 20, "each large job ran")?;
    }
    ensure(
        pool.stats().remote_workers == 0,
        format!("the stopped worker was given up: {:?}", pool.stats()),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "remote_workers_serve_the_queue_beside_local_ones",
            T,
            remote_workers_serve_the_queue_beside_local_ones,
        ),
        case(
            "a_killed_remote_worker_fails_only_the_task_it_started",
            T,
            a_killed_remote_worker_fails_only_the_task_it_started,
        ),
        // Unix only: SIGSTOP.
        #[cfg(unix)]
        case(
            "a_silent_remote_worker_is_given_up_after_the_heartbeat_timeout",
            T,
            a_silent_remote_worker_is_given_up_after_the_heartbeat_timeout,
        ),
        // Unix only: a network namespace cut off with `ip`, or else SIGSTOP.
        #[cfg(unix)]
        case(
            "a_worker_cut_off_mid_task_fails_only_that_task",
            T,
            a_worker_cut_off_mid_task_fails_only_that_task,
        ),
        case(
            "remote_workers_join_over_tls_beyond_loopback",
            T,
            remote_workers_join_over_tls_beyond_loopback,
        ),
        // Unix only: SIGSTOP.
        #[cfg(unix)]
        case(
            "a_stopped_worker_does_not_hold_a_large_job",
            T,
            a_stopped_worker_does_not_hold_a_large_job,
        ),
        case(
            "a_launcher_command_starts_workers_that_join",
            T,
            a_launcher_command_starts_workers_that_join,
        ),
        case(
            "a_worker_with_another_key_or_build_is_refused",
            T,
            a_worker_with_another_key_or_build_is_refused,
        ),
    ]
}
