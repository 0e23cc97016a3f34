//! The benchmark driver: runs one case `reps` times and prints one JSON
//! line with the median time per operation (or, for the memory case
//! `pool_idle_rss`, the median memory of an idle pool worker).
//!
//! ```text
//! cargo run --release --example bench -- spawn [--n 200] [--reps 5]
//! cargo run --release --example bench -- all
//! cargo run --release --example bench -- list
//! ```
//!
//! `bench/compare.py` runs these cases next to the same ones written with
//! Python's `multiprocessing` and prints the ratios.
//!
//! On Windows the cases that measure Linux itself (the fork floor, the raw
//! socket floor, memory from `/proc`, a restart after `SIGKILL`) are not
//! listed; the others run, though their figures under Wine say nothing
//! about Windows (see `docs/windows.md`).

use std::time::{Duration, Instant};

#[cfg(unix)]
use mp::unix::PipeEndExt;
use tokio_multiprocessing as mp;

/// Set in the environment of a `floor_spawn` child: it exits before doing
/// anything else, so the case measures a bare re-exec of this binary.
const FLOOR_ENV: &str = "TOKIO_MULTIPROCESSING_BENCH_FLOOR";

/// One benchmark case: its name, default n, and what it runs.
struct Case {
    name: &'static str,
    default_n: u64,
    about: &'static str,
    run: Run,
}

/// What a case measures.
enum Run {
    /// Runs n operations and returns the time they took.
    Time(fn(u64) -> futures::future::BoxFuture<'static, Result<Duration, String>>),
    /// Runs once with n and returns the memory it found, one sample per
    /// process measured.
    #[cfg(unix)]
    Memory(fn(u64) -> futures::future::BoxFuture<'static, Result<MemorySample, String>>),
    /// Runs n operations and returns what it measured, with `elapsed` the
    /// time of `ops` operations (fewer than n when some were dropped).
    Logs(fn(u64) -> futures::future::BoxFuture<'static, Result<LogSample, String>>),
}

const CASES: &[Case] = &[
    Case {
        name: "spawn",
        default_n: 200,
        about: "start + join a Process with an empty target (default start method: fork server)",
        run: Run::Time(|n| Box::pin(spawn(n))),
    },
    Case {
        name: "spawn_tokio_main",
        default_n: 200,
        about: "spawn from a #[tokio::main] program with mp::init_before_main!() (the spawn_tokio_main example, next to this binary)",
        run: Run::Time(|n| Box::pin(spawn_tokio_main(n))),
    },
    Case {
        name: "spawn_task",
        default_n: 200,
        about: "spawn from a spawned task (as a service awaits its children), not the block_on thread",
        run: Run::Time(|n| Box::pin(spawn_task(n))),
    },
    Case {
        name: "spawn_exec",
        default_n: 200,
        about: "start + join an empty target with StartMethod::Spawn (re-exec per child)",
        run: Run::Time(|n| Box::pin(spawn_exec(n))),
    },
    Case {
        name: "floor_spawn",
        default_n: 200,
        about: "re-exec this binary with no library code, started and reaped with tokio::process",
        run: Run::Time(|n| Box::pin(floor_spawn(n))),
    },
    #[cfg(unix)]
    Case {
        name: "floor_fork",
        default_n: 200,
        about: "fork this process, _exit(0) in the copy, wait for it: the floor a start that forks cannot go below",
        run: Run::Time(|n| Box::pin(floor_fork(n))),
    },
    #[cfg(unix)]
    Case {
        name: "floor_warm",
        default_n: 200,
        about: "a copy of this process forked ahead, asleep on a pipe: write it a byte, it _exits, wait for it (the fork untimed): the floor of a warm start",
        run: Run::Time(|n| Box::pin(floor_warm(n))),
    },
    Case {
        name: "queue_oneway",
        default_n: 100_000,
        about: "n small ints through a Queue, producer child to consumer child",
        run: Run::Time(|n| Box::pin(queue_oneway(n))),
    },
    Case {
        name: "queue_rtt",
        default_n: 10_000,
        about: "put to a Queue, a child echoes it on another, get: one round trip",
        run: Run::Time(|n| Box::pin(queue_rtt(n))),
    },
    Case {
        name: "lock_uncontended",
        default_n: 1_000_000,
        about: "acquire + release a Lock in a child, timed in the child",
        run: Run::Time(|n| Box::pin(lock_uncontended(n))),
    },
    Case {
        name: "lock_contended",
        default_n: 1_000_000,
        about: "2 children, n/2 acquire + release each on one Lock, from the first start to the last end",
        run: Run::Time(|n| Box::pin(lock_contended(n))),
    },
    Case {
        name: "value_incr",
        default_n: 1_000_000,
        about: "2 children, n/2 increments each of one Value<u64> under its lock, from the first start to the last end",
        run: Run::Time(|n| Box::pin(value_incr(n))),
    },
    Case {
        name: "pipe_oneway",
        default_n: 1_000_000,
        about: "n small ints parent -> child over a Pipe, until the reader confirms the count (seed 001)",
        run: Run::Time(|n| Box::pin(pipe_oneway(n))),
    },
    Case {
        name: "pipe_rtt",
        default_n: 10_000,
        about: "Pipe round trip: the parent sends an int, a child echoes it",
        run: Run::Time(|n| Box::pin(pipe_rtt(n))),
    },
    Case {
        name: "pipe_rtt_spin",
        default_n: 10_000,
        about: "pipe_rtt with PipeBuilder::spin(50 us): each end watches its socket after a send before it parks",
        run: Run::Time(|n| Box::pin(pipe_rtt_spin(n))),
    },
    #[cfg(unix)]
    Case {
        name: "pipe_rtt_floor",
        default_n: 10_000,
        about: "raw socketpair ping-pong of 8 bytes between the same two processes, no framing",
        run: Run::Time(|n| Box::pin(pipe_rtt_floor(n))),
    },
    Case {
        name: "pool_map_c1",
        default_n: 100_000,
        about: "Pool(2).map_chunked over n trivial tasks, chunksize 1",
        run: Run::Time(|n| Box::pin(pool_case(n, PoolRun::MapC1))),
    },
    Case {
        name: "pool_map",
        default_n: 100_000,
        about: "Pool(2).map over n trivial tasks, default chunks",
        run: Run::Time(|n| Box::pin(pool_case(n, PoolRun::Map))),
    },
    Case {
        name: "pool_apply_seq",
        default_n: 2_000,
        about: "Pool(2).apply of a trivial task, awaited one after another",
        run: Run::Time(|n| Box::pin(pool_case(n, PoolRun::ApplySeq))),
    },
    Case {
        name: "pool_apply_seq_task",
        default_n: 2_000,
        about: "pool_apply_seq from a spawned task (as a server's handler calls it), not the block_on thread",
        run: Run::Time(|n| Box::pin(pool_case(n, PoolRun::ApplySeqTask))),
    },
    Case {
        name: "pool_apply_seq_current_thread",
        default_n: 2_000,
        about: "pool_apply_seq on a thread of its own in block_on of a current-thread runtime, where the pool's slots run too (a synchronous program's way)",
        run: Run::Time(|n| Box::pin(pool_apply_seq_current_thread(n))),
    },
    Case {
        name: "pool_apply_async",
        default_n: 10_000,
        about: "Pool(2).apply_async of n trivial tasks in flight, then all awaited",
        run: Run::Time(|n| Box::pin(pool_case(n, PoolRun::ApplyAsync))),
    },
    #[cfg(unix)]
    Case {
        name: "sup_restart",
        default_n: 200,
        about: "SIGKILL a supervised child, until its replacement says it is ready (Event::Ready)",
        run: Run::Time(|n| Box::pin(sup_restart(n))),
    },
    Case {
        name: "sup_start_100",
        default_n: 100,
        about: "start a supervisor of n children, each ready before the next; one op is one child",
        run: Run::Time(|n| Box::pin(sup_start(n))),
    },
    Case {
        name: "sup_shutdown_100",
        default_n: 100,
        about: "shut down a supervisor of n cooperative children, in reverse order; one op is one child",
        run: Run::Time(|n| Box::pin(sup_shutdown(n))),
    },
    #[cfg(unix)]
    Case {
        name: "pool_idle_rss",
        default_n: 100,
        about: "memory of an idle Pool(2) worker after a map of n trivial tasks (VmRSS, Pss; KiB)",
        run: Run::Memory(|n| Box::pin(pool_idle_rss(n))),
    },
    Case {
        name: "log_forward",
        default_n: 1_000_000,
        about: "a child emits n info! events with two fields; the parent's fmt subscriber writes them to a sink; one op is one event received",
        run: Run::Logs(|n| Box::pin(log_forward(n))),
    },
];

fn empty(_: ()) {}

async fn start_join(n: u64, method: mp::StartMethod) -> Result<Duration, String> {
    let t0 = Instant::now();
    for _ in 0..n {
        let p = mp::Process::builder().start_method(method).build(empty, ());
        p.start().await.map_err(|e| e.to_string())?;
        p.join().await.map_err(|e| e.to_string())?;
    }
    Ok(t0.elapsed())
}

async fn spawn(n: u64) -> Result<Duration, String> {
    // The default method: the fork server, or on Windows (which has none)
    // a re-exec.
    let method = if cfg!(windows) {
        mp::StartMethod::Spawn
    } else {
        mp::StartMethod::ForkServer
    };
    start_join(n, method).await
}

/// `spawn`'s loop in a task of its own, as a service awaits its children,
/// rather than on the thread in `block_on`, which is not one of the
/// runtime's: there each `join` pays one more wake-up, of that thread.
async fn spawn_task(n: u64) -> Result<Duration, String> {
    tokio::spawn(spawn(n)).await.map_err(err)?
}

/// Runs the `spawn_tokio_main` example (built next to this binary) for n
/// starts and reads the time they took.
async fn spawn_tokio_main(n: u64) -> Result<Duration, String> {
    let me = std::env::current_exe().map_err(err)?;
    let program = me.with_file_name(format!("spawn_tokio_main{}", std::env::consts::EXE_SUFFIX));
    let out = tokio::process::Command::new(&program)
        .arg(n.to_string())
        .output()
        .await
        .map_err(|e| {
            format!(
                "{}: {e} (build it: cargo build --release --examples)",
                program.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let nanos: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(err)?;
    Ok(Duration::from_nanos(nanos))
}

async fn spawn_exec(n: u64) -> Result<Duration, String> {
    start_join(n, mp::StartMethod::Spawn).await
}

/// What a warm start cannot go below: waking a copy that waits, its exit,
/// and the parent's wait for it. Each copy is forked, and left 2 ms to
/// fall asleep on its pipe, outside the timed part.
#[cfg(unix)]
async fn floor_warm(n: u64) -> Result<Duration, String> {
    use std::os::fd::AsRawFd;
    tokio::task::spawn_blocking(move || {
        let mut timed = Duration::ZERO;
        for _ in 0..n {
            let (r, w) = nix::unistd::pipe().map_err(err)?;
            // SAFETY: the child calls only `read` and `_exit`, both
            // async-signal-safe, so the locks other threads held at the
            // fork do not matter.
            match unsafe { nix::unistd::fork() }.map_err(err)? {
                nix::unistd::ForkResult::Child => {
                    let mut byte = 0u8;
                    // SAFETY: a one-byte read into a live local, then
                    // `_exit`, which runs no destructor nor handler.
                    unsafe {
                        libc::read(r.as_raw_fd(), (&raw mut byte).cast(), 1);
                        libc::_exit(0)
                    }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    drop(r);
                    std::thread::sleep(Duration::from_millis(2));
                    let t0 = Instant::now();
                    nix::unistd::write(&w, &[1]).map_err(err)?;
                    let status = nix::sys::wait::waitpid(child, None).map_err(err)?;
                    timed += t0.elapsed();
                    if status != nix::sys::wait::WaitStatus::Exited(child, 0) {
                        return Err(format!("floor child ended with {status:?}"));
                    }
                }
            }
        }
        Ok(timed)
    })
    .await
    .map_err(err)?
}

#[cfg(unix)]
async fn floor_fork(n: u64) -> Result<Duration, String> {
    // On a blocking thread, as a start's fork would be; the copy calls
    // nothing but `_exit`, which is sound in a multi-threaded program.
    tokio::task::spawn_blocking(move || {
        let t0 = Instant::now();
        for _ in 0..n {
            // SAFETY: the child calls only `_exit`, async-signal-safe, so
            // the locks other threads held at the fork do not matter.
            match unsafe { nix::unistd::fork() }.map_err(err)? {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: `_exit` is async-signal-safe and runs no
                    // destructor nor handler of the copied process.
                    unsafe { libc::_exit(0) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let status = nix::sys::wait::waitpid(child, None).map_err(err)?;
                    if status != nix::sys::wait::WaitStatus::Exited(child, 0) {
                        return Err(format!("floor child ended with {status:?}"));
                    }
                }
            }
        }
        Ok(t0.elapsed())
    })
    .await
    .map_err(err)?
}

/// This binary: `/proc/self/exe` on Linux (no lookup), the path the
/// system gives elsewhere.
fn own_exe() -> Result<std::path::PathBuf, String> {
    if cfg!(target_os = "linux") {
        Ok("/proc/self/exe".into())
    } else {
        std::env::current_exe().map_err(err)
    }
}

async fn floor_spawn(n: u64) -> Result<Duration, String> {
    let t0 = Instant::now();
    for _ in 0..n {
        let status = tokio::process::Command::new(own_exe()?)
            .env(FLOOR_ENV, "1")
            .spawn()
            .map_err(|e| e.to_string())?
            .wait()
            .await
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("floor child failed: {status}"));
        }
    }
    Ok(t0.elapsed())
}

/// A supervised child that says it is ready, then waits to be stopped and
/// returns.
async fn cooperative(_: ()) {
    mp::notify_ready();
    mp::shutdown_requested().await;
}

/// A supervisor of `n` cooperative children, each with a ready timeout,
/// built but not started, and its events.
fn supervisor_of(n: u64) -> (mp::Supervisor, mp::supervisor::EventStream) {
    let mut builder = mp::Supervisor::builder()
        .name("bench")
        .intensity(u32::MAX, Duration::from_secs(1));
    for i in 0..n {
        builder = builder.child(
            mp::supervisor::ChildSpec::new(format!("c{i}"), cooperative, ())
                .ready_timeout(Duration::from_secs(10)),
        );
    }
    let sup = builder.build();
    let events = sup.events();
    (sup, events)
}

#[cfg(unix)]
async fn sup_restart(n: u64) -> Result<Duration, String> {
    use futures::StreamExt;
    let (sup, mut events) = supervisor_of(1);
    sup.start().await.map_err(err)?;
    let mut took = Duration::ZERO;
    for _ in 0..n {
        let old = sup.which_children()[0].pid.ok_or("no pid")?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(old).map_err(err)?);
        let t0 = Instant::now();
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).map_err(err)?;
        loop {
            match events.next().await {
                Some(mp::supervisor::Event::Ready { pid, .. }) if pid != old => break,
                Some(_) => {}
                None => return Err("the event stream ended".to_owned()),
            }
        }
        took += t0.elapsed();
    }
    sup.shutdown().await.map_err(err)?;
    Ok(took)
}

async fn sup_start(n: u64) -> Result<Duration, String> {
    let (sup, _events) = supervisor_of(n);
    let t0 = Instant::now();
    sup.start().await.map_err(err)?;
    let took = t0.elapsed();
    sup.shutdown().await.map_err(err)?;
    Ok(took)
}

async fn sup_shutdown(n: u64) -> Result<Duration, String> {
    let (sup, _events) = supervisor_of(n);
    sup.start().await.map_err(err)?;
    let t0 = Instant::now();
    sup.shutdown().await.map_err(err)?;
    Ok(t0.elapsed())
}

/// Nanoseconds since the Unix epoch: a clock that children can compare.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A child's side of the lock cases: meet the others (if there is a
/// barrier), then take and release the lock n times. Returns when it
/// started and ended.
fn lock_loop((lock, n, barrier): (mp::Lock, u64, Option<mp::Barrier>)) -> (u64, u64) {
    if let Some(b) = barrier {
        b.blocking_wait().expect("the start barrier");
    }
    let t0 = wall_ns();
    for _ in 0..n {
        drop(lock.blocking_lock().expect("not poisoned"));
    }
    (t0, wall_ns())
}

async fn lock_children(children: u64, n: u64) -> Result<Duration, String> {
    let lock = mp::Lock::new().map_err(|e| e.to_string())?;
    let barrier = if children > 1 {
        Some(
            mp::Barrier::new(u32::try_from(children).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let per_child = (n / children).max(1);
    let mut ps = Vec::new();
    for _ in 0..children {
        let p = mp::Process::new(lock_loop, (lock.clone(), per_child, barrier.clone()));
        p.start().await.map_err(|e| e.to_string())?;
        ps.push(p);
    }
    let (mut first, mut last) = (u64::MAX, 0);
    for p in ps {
        let (t0, t1) = p.join().await.map_err(|e| e.to_string())?;
        first = first.min(t0);
        last = last.max(t1);
    }
    // Report the time for exactly n operations' worth, scaled if n did
    // not split evenly.
    let took = last.saturating_sub(first) as f64 * n as f64 / (per_child * children) as f64;
    Ok(Duration::from_secs_f64(took / 1e9))
}

async fn lock_uncontended(n: u64) -> Result<Duration, String> {
    lock_children(1, n).await
}

async fn lock_contended(n: u64) -> Result<Duration, String> {
    lock_children(2, n).await
}

/// One side of `value_incr`: waits at the barrier, then adds 1 to the
/// value n times, each under its lock. Returns when it started and ended.
fn value_incr_loop((value, n, barrier): (mp::Value<u64>, u64, mp::Barrier)) -> (u64, u64) {
    barrier.blocking_wait().expect("the start barrier");
    let t0 = wall_ns();
    for _ in 0..n {
        *value.blocking_lock().expect("not poisoned") += 1;
    }
    (t0, wall_ns())
}

async fn value_incr(n: u64) -> Result<Duration, String> {
    let value = mp::Value::new(0u64).map_err(err)?;
    let barrier = mp::Barrier::new(2).map_err(err)?;
    let per_child = (n / 2).max(1);
    let mut ps = Vec::new();
    for _ in 0..2 {
        let p = mp::Process::new(value_incr_loop, (value.clone(), per_child, barrier.clone()));
        p.start().await.map_err(err)?;
        ps.push(p);
    }
    let (mut first, mut last) = (u64::MAX, 0);
    for p in ps {
        let (t0, t1) = p.join().await.map_err(err)?;
        first = first.min(t0);
        last = last.max(t1);
    }
    let total = value.get().await;
    if total != 2 * per_child {
        return Err(format!("the value is {total}, not {}", 2 * per_child));
    }
    let took = last.saturating_sub(first) as f64 * n as f64 / (2 * per_child) as f64;
    Ok(Duration::from_secs_f64(took / 1e9))
}

/// The producer of `queue_oneway`: waits at the event, then puts n items
/// and a stop marker. Returns when it started.
fn queue_producer((q, n, go): (mp::Queue<Option<u64>>, u64, mp::Event)) -> u64 {
    go.blocking_wait();
    let t0 = wall_ns();
    for i in 0..n {
        q.blocking_put(Some(i)).expect("put");
    }
    q.blocking_put(None).expect("put");
    t0
}

/// The consumer of `queue_oneway`: takes items until the stop marker.
/// Returns when it took the last one, and how many it took.
fn queue_consumer(q: mp::Queue<Option<u64>>) -> (u64, u64) {
    let mut count = 0;
    while q.blocking_get().expect("get").is_some() {
        count += 1;
    }
    (wall_ns(), count)
}

async fn queue_oneway(n: u64) -> Result<Duration, String> {
    let q = mp::Queue::new().map_err(err)?;
    let go = mp::Event::new().map_err(err)?;
    let consumer = mp::Process::new(queue_consumer, q.clone());
    let producer = mp::Process::new(queue_producer, (q.clone(), n, go.clone()));
    consumer.start().await.map_err(err)?;
    producer.start().await.map_err(err)?;
    go.set();
    let t0 = producer.join().await.map_err(err)?;
    let (t1, count) = consumer.join().await.map_err(err)?;
    if count != n {
        return Err(format!("the consumer took {count} of {n} items"));
    }
    Ok(Duration::from_nanos(t1.saturating_sub(t0)))
}

fn queue_echo((inq, outq): (mp::Queue<Option<u64>>, mp::Queue<Option<u64>>)) {
    while let Some(i) = inq.blocking_get().expect("get") {
        outq.blocking_put(Some(i)).expect("put");
    }
}

async fn queue_rtt(n: u64) -> Result<Duration, String> {
    let (to, from) = (
        mp::Queue::new().map_err(err)?,
        mp::Queue::new().map_err(err)?,
    );
    let echo = mp::Process::new(queue_echo, (to.clone(), from.clone()));
    echo.start().await.map_err(err)?;
    to.put(Some(0)).await.map_err(err)?;
    from.get().await.map_err(err)?;
    let t0 = Instant::now();
    for i in 0..n {
        to.put(Some(i)).await.map_err(err)?;
        from.get().await.map_err(err)?;
    }
    let took = t0.elapsed();
    to.put(None).await.map_err(err)?;
    echo.join().await.map_err(err)?;
    Ok(took)
}

/// Seed 001's reader: says it is up (`None`), counts numbers until `None`
/// (Python's 'DONE'), then confirms the count.
fn pipe_reader(mut conn: mp::Connection<Option<u64>>) {
    conn.blocking_send(&None).expect("ready");
    let mut count = 0u64;
    while let Ok(Some(_)) = conn.blocking_recv() {
        count += 1;
    }
    conn.blocking_send(&Some(count)).expect("count");
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn pipe_oneway(n: u64) -> Result<Duration, String> {
    let (mut conn, theirs) = mp::Pipe::new::<Option<u64>>().map_err(err)?;
    let reader = mp::Process::builder()
        .daemon(true)
        .build(pipe_reader, theirs);
    reader.start().await.map_err(err)?;
    conn.recv().await.map_err(err)?;
    let t0 = Instant::now();
    for i in 0..n {
        conn.send(&Some(i)).await.map_err(err)?;
    }
    conn.send(&None).await.map_err(err)?;
    let count = conn.recv().await.map_err(err)?;
    let took = t0.elapsed();
    if count != Some(n) {
        return Err(format!("the reader counted {count:?} of {n}"));
    }
    reader.join().await.map_err(err)?;
    Ok(took)
}

/// Sends back every number until the parent hangs up.
fn pipe_echo(mut conn: mp::Connection<u64>) {
    while let Ok(v) = conn.blocking_recv() {
        if conn.blocking_send(&v).is_err() {
            break;
        }
    }
}

async fn pipe_rtt(n: u64) -> Result<Duration, String> {
    rtt_over(n, mp::PipeBuilder::default()).await
}

async fn pipe_rtt_spin(n: u64) -> Result<Duration, String> {
    rtt_over(
        n,
        mp::PipeBuilder::default().spin(Duration::from_micros(50)),
    )
    .await
}

/// n round trips through a pipe made by `builder`, a child echoing.
async fn rtt_over(n: u64, builder: mp::PipeBuilder) -> Result<Duration, String> {
    let (mut conn, theirs) = builder.duplex::<u64>().map_err(err)?;
    let echo = mp::Process::new(pipe_echo, theirs);
    echo.start().await.map_err(err)?;
    // Warm up: the child is running before the clock starts.
    conn.send(&u64::MAX).await.map_err(err)?;
    conn.recv().await.map_err(err)?;
    let t0 = Instant::now();
    for i in 0..n {
        conn.send(&i).await.map_err(err)?;
        let back = conn.recv().await.map_err(err)?;
        if back != i {
            return Err(format!("sent {i}, got {back} back"));
        }
    }
    let took = t0.elapsed();
    conn.close();
    echo.join().await.map_err(err)?;
    Ok(took)
}

/// The floor's child: echoes 8-byte messages on the bare socket.
#[cfg(unix)]
fn raw_echo(conn: mp::Connection<()>) {
    use std::io::{Read, Write};
    let mut sock = conn.into_std().expect("the socket");
    let mut buf = [0u8; 8];
    while sock.read_exact(&mut buf).is_ok() {
        if sock.write_all(&buf).is_err() {
            break;
        }
    }
}

#[cfg(unix)]
async fn pipe_rtt_floor(n: u64) -> Result<Duration, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ours, theirs) = mp::Pipe::new::<()>().map_err(err)?;
    let echo = mp::Process::new(raw_echo, theirs);
    echo.start().await.map_err(err)?;
    let sock = ours.into_std().map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    let mut sock = tokio::net::UnixStream::from_std(sock).map_err(err)?;
    let mut buf = [0u8; 8];
    sock.write_all(&u64::MAX.to_le_bytes()).await.map_err(err)?;
    sock.read_exact(&mut buf).await.map_err(err)?;
    let t0 = Instant::now();
    for i in 0..n {
        sock.write_all(&i.to_le_bytes()).await.map_err(err)?;
        sock.read_exact(&mut buf).await.map_err(err)?;
        if u64::from_le_bytes(buf) != i {
            return Err(format!("sent {i}, got {buf:?} back"));
        }
    }
    let took = t0.elapsed();
    drop(sock);
    echo.join().await.map_err(err)?;
    Ok(took)
}

fn median(sorted: &[f64]) -> f64 {
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

async fn run_case(case: &Case, n: Option<u64>, reps: u32) -> Result<(), String> {
    let n = n.unwrap_or(case.default_n).max(1);
    let run = match case.run {
        Run::Time(run) => run,
        #[cfg(unix)]
        Run::Memory(run) => return run_memory_case(case, run, n, reps).await,
        Run::Logs(run) => return run_log_case(case, run, n, reps).await,
    };
    // Warm up: page in the binary, start lazily created state.
    run(n.min(10)).await?;
    let mut per_op_us = Vec::new();
    for _ in 0..reps {
        let took = run(n).await?;
        per_op_us.push(took.as_secs_f64() * 1e6 / n as f64);
    }
    per_op_us.sort_by(f64::total_cmp);
    let med = median(&per_op_us);
    let line = serde_json::json!({
        "case": case.name,
        "impl": "rust",
        "n": n,
        "reps": reps,
        "per_op_us": (med * 1000.0).round() / 1000.0,
        "ops_per_s": (1e6 / med).round(),
        "min_per_op_us": (per_op_us[0] * 1000.0).round() / 1000.0,
        "max_per_op_us": (per_op_us[per_op_us.len() - 1] * 1000.0).round() / 1000.0,
    });
    println!("{line}");
    Ok(())
}

/// What one run of a memory case found: the `VmRSS` and `Pss` (KiB) of
/// each worker, and of the fork server.
#[cfg(unix)]
struct MemorySample {
    /// The workers after `IDLE_REST`.
    workers: Vec<(u64, u64)>,
    /// The same workers after `WARM_REST`, before an idle worker gives
    /// back its code's pages.
    warm: Vec<(u64, u64)>,
    fork_server: Option<(u64, u64)>,
    /// The child forked ahead of the next start.
    spare: Option<(u64, u64)>,
}

/// The median of some KiB figures, rounded to a whole KiB.
#[cfg(unix)]
fn median_kib(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let m: Vec<f64> = v.iter().map(|&x| x as f64).collect();
    // A float cast to an integer saturates.
    #[allow(clippy::cast_possible_truncation)]
    let median_ns = median(&m).round() as u64;
    Some(median_ns)
}

/// Runs a memory case `reps` times (no warm-up: each run starts afresh)
/// and prints the medians over every worker of every run.
#[cfg(unix)]
async fn run_memory_case(
    case: &Case,
    run: fn(u64) -> futures::future::BoxFuture<'static, Result<MemorySample, String>>,
    n: u64,
    reps: u32,
) -> Result<(), String> {
    let (mut rss, mut pss, mut fs_rss, mut fs_pss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut sp_rss, mut sp_pss) = (Vec::new(), Vec::new());
    let (mut warm_rss, mut warm_pss) = (Vec::new(), Vec::new());
    let mut workers = 0;
    for _ in 0..reps {
        let sample = run(n).await?;
        workers = sample.workers.len();
        for (r, p) in sample.warm {
            warm_rss.push(r);
            warm_pss.push(p);
        }
        for (r, p) in sample.workers {
            rss.push(r);
            pss.push(p);
        }
        if let Some((r, p)) = sample.fork_server {
            fs_rss.push(r);
            fs_pss.push(p);
        }
        if let Some((r, p)) = sample.spare {
            sp_rss.push(r);
            sp_pss.push(p);
        }
    }
    let line = serde_json::json!({
        "case": case.name,
        "impl": "rust",
        "n": n,
        "reps": reps,
        "workers": workers,
        "worker_rss_kib": median_kib(rss),
        "worker_pss_kib": median_kib(pss),
        "worker_warm_rss_kib": median_kib(warm_rss),
        "worker_warm_pss_kib": median_kib(warm_pss),
        "fork_server_rss_kib": median_kib(fs_rss),
        "fork_server_pss_kib": median_kib(fs_pss),
        "spare_rss_kib": median_kib(sp_rss),
        "spare_pss_kib": median_kib(sp_pss),
    });
    println!("{line}");
    Ok(())
}

/// What one run of `log_forward` measured.
struct LogSample {
    /// From the child's start to its join, with every event it sent
    /// re-emitted here.
    elapsed: Duration,
    /// Events the parent's subscriber received.
    received: u64,
    /// Events the child reported dropped.
    dropped: u64,
    /// Nanoseconds per event on the child's logging thread: forwarding,
    /// with no subscriber at all, and formatting to /dev/null itself.
    child_ns: (f64, f64, f64),
    /// CPU time this process (the parent) spent, user and system.
    parent_cpu: Duration,
}

/// The CPU time this process has used so far, user and system.
#[cfg(unix)]
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Duration::ZERO, |u| {
        let tv = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        tv(u.user_time()) + tv(u.system_time())
    })
}

/// The CPU time this process has used so far, user and system.
#[cfg(windows)]
fn cpu_time() -> Duration {
    use windows_sys::Win32::Foundation::FILETIME;
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, GetProcessTimes};
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: our own pseudo-handle; the four are valid places for the
    // answers.
    let ok = unsafe {
        GetProcessTimes(
            GetCurrentProcess(),
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    if ok == 0 {
        return Duration::ZERO;
    }
    // In units of 100 ns.
    let ticks =
        |t: FILETIME| (u64::from(t.dwHighDateTime) << 32 | u64::from(t.dwLowDateTime)) * 100;
    Duration::from_nanos(ticks(kernel) + ticks(user))
}

/// Events of target `bench_log` the parent's subscriber saw.
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Events the children reported dropped.
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Counts what the parent's subscriber receives.
struct Count;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        use std::sync::atomic::Ordering::Relaxed;
        if event.metadata().target() == "bench_log" {
            RECEIVED.fetch_add(1, Relaxed);
            return;
        }
        struct Dropped(u64);
        impl tracing::field::Visit for Dropped {
            fn record_u64(&mut self, f: &tracing::field::Field, v: u64) {
                if f.name() == "dropped" {
                    self.0 = v;
                }
            }
            fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
        }
        let mut d = Dropped(0);
        event.record(&mut d);
        DROPPED.fetch_add(d.0, Relaxed);
    }
}

/// The parent's subscriber for `log_forward`: `fmt` into a sink, and a
/// count; `INFO` and above. Installed once, for this case only.
fn log_subscriber() {
    use tracing_subscriber::prelude::*;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::sink)
                    .with_ansi(false),
            )
            .with(Count)
            .try_init();
    });
}

/// How the child's events go: forwarded, nowhere, or formatted by the
/// child itself to /dev/null.
#[derive(serde::Serialize, serde::Deserialize, Clone, Copy)]
enum LogMode {
    Forward,
    Nowhere,
    LocalFmt,
}

/// Emits n events, the way `log_forward` does, and returns the time per
/// event in nanoseconds on this thread.
fn emit_events((n, mode): (u64, LogMode)) -> f64 {
    let _local = match mode {
        LogMode::LocalFmt => {
            let devnull = std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/null")
                .expect("/dev/null");
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::sync::Mutex::new(devnull))
                .with_ansi(false)
                .finish();
            Some(tracing::subscriber::set_default(subscriber))
        }
        LogMode::Forward | LogMode::Nowhere => None,
    };
    let t0 = Instant::now();
    for i in 0..n {
        tracing::info!(target: "bench_log", i, kind = "bench", "event");
    }
    t0.elapsed().as_secs_f64() * 1e9 / n as f64
}

async fn log_forward(n: u64) -> Result<LogSample, String> {
    use std::sync::atomic::Ordering::Relaxed;
    log_subscriber();
    let child = |mode: LogMode| async move {
        mp::Process::builder()
            .forward_tracing(matches!(mode, LogMode::Forward))
            .spawn(emit_events, (n, mode))
            .await
            .map_err(err)?
            .join()
            .await
            .map_err(err)
    };
    let (received, dropped) = (RECEIVED.load(Relaxed), DROPPED.load(Relaxed));
    let (t0, cpu0) = (Instant::now(), cpu_time());
    let forward_ns = child(LogMode::Forward).await?;
    let (elapsed, parent_cpu) = (t0.elapsed(), cpu_time() - cpu0);
    let (received, dropped) = (
        RECEIVED.load(Relaxed) - received,
        DROPPED.load(Relaxed) - dropped,
    );
    let none_ns = child(LogMode::Nowhere).await?;
    let fmt_ns = child(LogMode::LocalFmt).await?;
    Ok(LogSample {
        elapsed,
        received,
        dropped,
        child_ns: (forward_ns, none_ns, fmt_ns),
        parent_cpu,
    })
}

/// Runs `log_forward` `reps` times after a warm-up and prints the medians.
async fn run_log_case(
    case: &Case,
    run: fn(u64) -> futures::future::BoxFuture<'static, Result<LogSample, String>>,
    n: u64,
    reps: u32,
) -> Result<(), String> {
    run(n.min(1000)).await?;
    let mut samples = Vec::new();
    for _ in 0..reps {
        samples.push(run(n).await?);
    }
    let med = |f: &dyn Fn(&LogSample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (median(&v) * 1000.0).round() / 1000.0
    };
    let per_op_us = med(&|s| s.elapsed.as_secs_f64() * 1e6 / s.received.max(1) as f64);
    let line = serde_json::json!({
        "case": case.name,
        "impl": "rust",
        "n": n,
        "reps": reps,
        "per_op_us": per_op_us,
        "ops_per_s": (1e6 / per_op_us).round(),
        "received": med(&|s| s.received as f64),
        "dropped": med(&|s| s.dropped as f64),
        "parent_cpu_us_per_event": med(&|s| s.parent_cpu.as_secs_f64() * 1e6 / s.received.max(1) as f64),
        "child_ns_forward": med(&|s| s.child_ns.0),
        "child_ns_no_subscriber": med(&|s| s.child_ns.1),
        "child_ns_local_fmt": med(&|s| s.child_ns.2),
    });
    println!("{line}");
    Ok(())
}

/// The value, in KiB, of the line `key:   N kB` of a /proc file.
#[cfg(unix)]
fn proc_kib(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `VmRSS` (from `status`) and `Pss` (from `smaps_rollup`) of a live
/// process, in KiB; `None` for a zombie or a process that is gone.
#[cfg(unix)]
fn rss_pss(pid: u32) -> Option<(u64, u64)> {
    let rss = proc_kib(&format!("/proc/{pid}/status"), "VmRSS")?;
    let pss = proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss")?;
    Some((rss, pss))
}

/// The pids of this process's children, found by scanning `/proc/*/stat`
/// for their parent pid.
#[cfg(unix)]
fn children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let ppid = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// How long `pool_idle_rss` lets the pool rest before it measures its
/// workers warm, and then idle: past the second since its last task after
/// which an idle worker gives back its code's pages.
#[cfg(unix)]
const WARM_REST: Duration = Duration::from_millis(200);
#[cfg(unix)]
const IDLE_REST: Duration = Duration::from_millis(1500);

/// `Pool::new(2)`, a `map` of n trivial tasks, `WARM_REST` of rest, the
/// memory of each worker, then at `IDLE_REST` again with the memory of
/// the fork server and its spare. Workers are forked by the
/// fork server with `CLONE_PARENT`, so they are this process's children.
#[cfg(unix)]
async fn pool_idle_rss(n: u64) -> Result<MemorySample, String> {
    let pool = mp::Pool::new(2).await.map_err(err)?;
    pool.map(identity, 0..n).await.map_err(err)?;
    tokio::time::sleep(WARM_REST).await;
    let server = mp::__fork_server_pid();
    // The spare (forked ahead of the next start) has the server's name
    // until a start takes it.
    let is_spare = |pid: u32| {
        Some(pid) != server
            && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == mp::__FORK_SERVER_NAME)
    };
    let live_workers = || -> Vec<(u64, u64)> {
        children()
            .into_iter()
            .filter(|&pid| Some(pid) != server && !is_spare(pid))
            .filter_map(rss_pss)
            .collect()
    };
    let mut warm = live_workers();
    // A worker of an earlier pool may still be on its way out.
    for _ in 0..10 {
        if warm.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        warm = live_workers();
    }
    tokio::time::sleep(IDLE_REST.saturating_sub(WARM_REST)).await;
    let workers = live_workers();
    let fork_server = server.and_then(rss_pss);
    let spare = children()
        .into_iter()
        .find(|&pid| is_spare(pid))
        .and_then(rss_pss);
    pool.terminate().await;
    if workers.len() != 2 {
        return Err(format!(
            "found {} live children besides the fork server and its spare, expected the pool's 2 workers",
            workers.len()
        ));
    }
    Ok(MemorySample {
        workers,
        warm,
        fork_server,
        spare,
    })
}

fn usage() -> ! {
    eprintln!("usage: bench CASE|all|list [--n N] [--reps R]");
    std::process::exit(2);
}

fn identity(x: u64) -> u64 {
    x
}

#[derive(Clone, Copy)]
enum PoolRun {
    MapC1,
    Map,
    ApplySeq,
    ApplySeqTask,
    ApplyAsync,
}

/// `pool_apply_seq` from the thread inside `block_on`, as a synchronous
/// program calls the pool, but of a current-thread runtime of its own
/// (on a thread of its own, as this driver's runtime is multi-threaded):
/// the pool's slots run on that thread too, so no task wakes another
/// thread.
async fn pool_apply_seq_current_thread(n: u64) -> Result<Duration, String> {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?
            .block_on(pool_case(n, PoolRun::ApplySeq))
    };
    tokio::task::spawn_blocking(run).await.map_err(err)?
}

/// A two-worker pool, warmed up as the Python side does (1000 tasks,
/// chunksize 1) outside the timed part.
async fn pool_case(n: u64, run: PoolRun) -> Result<Duration, String> {
    let err = |e: mp::TaskError| e.to_string();
    let pool = mp::Pool::new(
        std::env::var("BENCH_POOL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2),
    )
    .await
    .map_err(|e| e.to_string())?;
    pool.map_chunked(identity, 0..1000, 1).await.map_err(err)?;
    let t0 = Instant::now();
    match run {
        PoolRun::MapC1 => {
            pool.map_chunked(identity, 0..n, 1).await.map_err(err)?;
        }
        PoolRun::Map => {
            pool.map(identity, 0..n).await.map_err(err)?;
        }
        PoolRun::ApplySeq => {
            for i in 0..n {
                pool.apply(identity, i).await.map_err(err)?;
            }
        }
        PoolRun::ApplySeqTask => {
            // The loop in a task of its own, as a server's handler would
            // call the pool, rather than on the thread in `block_on`.
            let p = pool.clone();
            tokio::spawn(async move {
                for i in 0..n {
                    p.apply(identity, i).await?;
                }
                Ok::<(), mp::TaskError>(())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(err)?;
        }
        PoolRun::ApplyAsync => {
            let pending: Vec<_> = (0..n).map(|i| pool.apply_async(identity, i)).collect();
            for r in pending {
                r.await.map_err(err)?;
            }
        }
    }
    let elapsed = t0.elapsed();
    pool.terminate().await;
    Ok(elapsed)
}

pub(crate) fn main() {
    if std::env::var_os(FLOOR_ENV).is_some() {
        return;
    }
    let _guard = mp::init();

    let mut args = std::env::args().skip(1);
    let Some(which) = args.next() else { usage() };
    let (mut n, mut reps) = (None, 5u32);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--n" => n = Some(value.parse().unwrap_or_else(|_| usage())),
            "--reps" => reps = value.parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if which == "list" {
        for c in CASES {
            println!("{:<14} n={:<8} {}", c.name, c.default_n, c.about);
        }
        return;
    }
    let selected: Vec<&Case> = if which == "all" {
        CASES.iter().collect()
    } else {
        match CASES.iter().find(|c| c.name == which) {
            Some(c) => vec![c],
            None => {
                eprintln!("bench: unknown case {which:?}; `list` names them");
                std::process::exit(2);
            }
        }
    };
    let rt = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    for case in selected {
        if let Err(e) = rt.block_on(run_case(case, n, reps.max(1))) {
            eprintln!("bench: {}: {e}", case.name);
            std::process::exit(1);
        }
    }
}
