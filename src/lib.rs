//! Python's `multiprocessing`, rebuilt for async Rust on Tokio.
//!
//! A program starts child processes that are re-executed copies of its own
//! binary. Each child talks to its parent over a private Unix socket
//! carrying length-prefixed MessagePack frames. A [`Process`] runs one
//! function in a child, and its [`join`](Process::join) is a future that
//! returns the function's value; its [`Sentinel`] can sit in
//! `tokio::select!`, and [`wait`] waits for many at once.
//!
//! # Quick start
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! #[mp::main]
//! async fn main() -> mp::Result<()> {
//!     let p = mp::Process::new(square, 12);
//!     p.start().await?;
//!     assert_eq!(p.join().await?, 144);
//!     assert_eq!(p.exitcode(), Some(0));
//!     Ok(())
//! }
//! ```
//!
//! [`#[mp::main]`](main) is `#[tokio::main]` with [`init`] first: in a
//! child, `init()` runs the child's work and exits; in the parent it comes
//! before any thread exists, so the fork server can serve the program, and
//! when `main` ends the children still running are joined (daemons
//! terminated), as Python does.
//!
//! **Everything `main` does before [`init`] runs again in every child**, since
//! a child is the same program started afresh. Without the attribute, call
//! it first thing in a plain `fn main`, before the runtime is built.
//!
//! # From Python
//!
//! | Python `multiprocessing` | `tokio_multiprocessing` |
//! |---|---|
//! | `if __name__ == '__main__':` | [`#[mp::main]`](main) on `async fn main`, or `let _guard = mp::init();` first in a plain `fn main` |
//! | `Process(target=f, args=(x,))` | [`Process::new(f, x)`](Process::new) |
//! | `Process(target=f, name=n, daemon=True)` | [`Process::builder()`](Process::builder)`.name(n).daemon(true).build(f, x)` |
//! | `os.environ[k] = v`, `os.chdir(d)` before `start()` (they reach the child as `os.environ` does) | [`Process::builder()`](Process::builder)`.env(k, v).env_remove(k).current_dir(d)`, for that child only; also on [`PoolBuilder`] |
//! | `p.start()` | [`p.start().await?`](Process::start) |
//! | `p.join()` | [`p.join().await`](Process::join) (returns `f`'s value) |
//! | `p.join(timeout)` | [`p.join_timeout(d).await`](Process::join_timeout) |
//! | `p.pid`, `p.name`, `p.daemon`, `p.authkey` | [`pid()`](Process::pid), [`name()`](Process::name), [`daemon()`](Process::daemon), [`authkey()`](Process::authkey) |
//! | `p.exitcode` (`-N` for signal N) | [`p.exitcode()`](Process::exitcode) |
//! | `p.is_alive()` | [`p.is_alive()`](Process::is_alive) |
//! | `p.terminate()`, `p.kill()` | [`p.terminate()`](Process::terminate), [`p.kill()`](Process::kill) |
//! | `p.sentinel` | [`p.sentinel()`](Process::sentinel), a future |
//! | `multiprocessing.connection.wait(objs, timeout)` | [`mp::wait(&objs, timeout).await`](wait) |
//! | a list of processes, `wait([p.sentinel for p in procs])` in a loop | [`ProcessSet`]: [`set.spawn(p).await?`](ProcessSet::spawn), [`set.join_next().await`](ProcessSet::join_next), [`terminate_all()`](ProcessSet::terminate_all), [`kill_all()`](ProcessSet::kill_all) |
//! | `current_process()`, `parent_process().pid` | [`current_process()`], [`parent_pid()`] |
//! | `active_children()` | [`active_children()`] (a [`ProcessInfo`] per live child; reaps the ended ones) |
//! | `cpu_count()` | [`cpu_count()`] (the CPUs this process may use, as `os.process_cpu_count()`) |
//! | `repr(p)` | `format!("{p}")` |
//! | `Pipe()`, `Pipe(duplex=False)` | [`Pipe::new()`](Pipe::new), [`Pipe::oneway()`](Pipe::oneway) (a [`Receiver`] and a [`Sender`]) |
//! | `conn.send(x)`, `conn.recv()` | [`conn.send(&x).await`](Connection::send), [`conn.recv().await`](Connection::recv), or `blocking_send`/`blocking_recv` in sync code |
//! | `conn.poll(timeout)`, `conn.close()` | [`conn.poll(d).await`](Connection::poll), [`conn.close()`](Connection::close) |
//! | `Pool(n)`, `Pool(n, initializer, initargs, maxtasksperchild)` | [`Pool::new(n).await?`](Pool::new), [`Pool::builder()`](Pool::builder)`.processes(n).initializer(f, a).max_tasks_per_child(k).build().await?` |
//! | `pool.apply(f, (x,))`, `pool.apply_async(f, (x,)).get()` | [`pool.apply(f, x).await`](Pool::apply), [`pool.apply_async(f, x).await`](Pool::apply_async) (an [`AsyncResult`]) |
//! | `pool.map(f, xs)`, `pool.map(f, xs, chunksize)` | [`pool.map(f, xs).await`](Pool::map), [`pool.map_chunked(f, xs, n).await`](Pool::map_chunked) |
//! | `pool.starmap(f, pairs)` | [`pool.starmap(f, pairs).await`](Pool::starmap) (`f` takes 1 to 6 arguments: [`StarTarget`]) |
//! | `pool.imap(f, xs)`, `pool.imap_unordered(f, xs)` | [`pool.imap(f, xs)`](Pool::imap), [`pool.imap_unordered(f, xs)`](Pool::imap_unordered): a [`Stream`](futures::Stream) ([`Imap`], [`ImapUnordered`]); also from a `Stream` ([`Pool::imap_stream`]) |
//! | `pool.close()`, `pool.join()`, `pool.terminate()` | [`close()`](Pool::close), [`join().await`](Pool::join), [`terminate().await`](Pool::terminate) |
//! | `Value('Q', 0)`, `v.value`, `v.get_lock()` | [`Value::<u64>::new(0)?`](Value::new), [`v.get().await`](Value::get) / [`v.set(x).await`](Value::set), [`v.lock().await`](Value::lock) (a guard that derefs to the value) |
//! | `Array('d', n)`, `Array('i', [1, 2])`, `arr.get_lock()`, `arr[:]` | [`Array::<f64>::new(n)?`](Array::new), [`Array::from_slice(&[1, 2])?`](Array::from_slice), [`arr.lock().await`](Array::lock) (derefs to `[T]`), [`arr.to_vec().await`](Array::to_vec) |
//! | `shared_memory.SharedMemory(name, create=True, size=n)`, `SharedMemory(name)` | [`SharedMemory::create(name, n)?`](SharedMemory::create), [`SharedMemory::open(name)?`](SharedMemory::open): the same POSIX blocks, shareable with Python by name |
//! | `SharedMemory(create=True, size=n)`, `shm.name`, `shm.size`, `shm.buf`, `shm.unlink()` | [`SharedMemory::create_unique(n)?`](SharedMemory::create_unique), [`name()`](SharedMemory::name), [`size()`](SharedMemory::size), [`read_at`](SharedMemory::read_at)/[`write_at`](SharedMemory::write_at) (or `unsafe` [`buf()`](SharedMemory::buf)), [`unlink()`](SharedMemory::unlink); [`SharedMemory::anonymous(n)?`](SharedMemory::anonymous) for a block with no name |
//! | supervisord's `[program:x]`, `autorestart`, `startsecs`, `stopsignal`, `stopwaitsecs` | [`Supervisor::builder()`](Supervisor::builder)`.child(`[`ChildSpec::command`](supervisor::ChildSpec::command)`("x", cmd).restart(..).ready_timeout(..).stop_signal(..).shutdown(..))`; see [`supervisor`] |
//!
//! # Supervision
//!
//! A [`Supervisor`] keeps children running by policy, as Erlang/OTP's
//! `supervisor` does, for OS processes: targets, programs, pools and other
//! supervisors, with restart strategies, an intensity limit, readiness,
//! watchdogs and ordered shutdown. See the [`supervisor`] module.
//!
//! # Logs from children
//!
//! A child's `tracing` events come to its parent by default, and the
//! parent's subscriber prints or ships them with its own, each inside a
//! span `child{process="<name>", pid=<pid>}` whose target and level are the
//! event's (so filters treat the label as the event), with the child's own
//! spans re-created inside it, in the order the child emitted them:
//!
//! ```text
//!  INFO child{process="worker-1" pid=4242}:job{n=1}: my_app: step one step=1
//! ```
//!
//! Call [`init`] first, then install the subscriber: a child forwards up
//! to the level the parent's subscribers want when it starts
//! (`LevelFilter::current()`), through a bounded queue of 16,384 events
//! that never blocks it (what it drops is counted and told as one WARN
//! event with a `dropped` field). A subscriber installed before `init()`
//! works too: the child then forwards from its main thread and its
//! runtime's threads. `forward_tracing(false)` on [`ProcessBuilder`],
//! [`PoolBuilder`] or [`ChildSpec`](supervisor::ChildSpec) turns it off;
//! `capture_output(true)` turns the lines a child writes to stdout and
//! stderr into INFO events (target `tokio_multiprocessing::child`, field
//! `stream`); a child's panic is one ERROR event in the parent.
//!
//! The crate's own events name a child by the fields `process` and `pid`:
//! a child's start and exit are DEBUG (with `exitcode`), a pool task lost
//! in its worker is WARN, a replaced pool worker and a supervisor's
//! restart are INFO, a supervisor's meltdown is ERROR, and the fork
//! server declining to serve is WARN, once. `docs/logging.md` in the
//! repository has the whole table, the subscriber orders and the costs.
//!
//! # Targets
//!
//! A target is a plain function or a closure that captures nothing,
//! synchronous or `async`, taking one argument (use a tuple for several)
//! that is `Serialize + DeserializeOwned`, and returning such a value. See
//! [`Target`]. Synchronous targets run on a plain thread of the child
//! (the main thread, or a dedicated one when `init()` was called inside a
//! runtime); asynchronous ones on a current-thread Tokio runtime built in
//! the child.
//!
//! # Start methods
//!
//! By default children are forked by a *fork server*: on first use the
//! program re-executes itself once as a single-threaded server that forks
//! a child for every start, several times faster than re-executing the
//! program per child. The server keeps one child forked ahead of the next
//! start (a *spare*, named `mp-forkserver` in `ps` until a start takes
//! it), so a start is one message to a running process. Forked children
//! are still direct children of the program, and die with it. The server only runs when it is single-threaded, which
//! [`#[mp::main]`](main) sees to (as does calling [`init`] in a plain
//! `fn main` before building a runtime); otherwise (`init()` inside
//! `#[tokio::main]`), and on [`StartMethod::Spawn`], every child is a fresh
//! re-execution, and [`get_start_method`] says `Spawn`. See
//! [`set_start_method`].
//!
//! # Platform support
//!
//! Linux is the tested platform. Exit is watched through pidfds (Linux
//! 5.3+), falling back to `SIGCHLD` on older kernels or when
//! `TOKIO_MULTIPROCESSING_NO_PIDFD=1` is set. Other Unix systems need
//! `/proc/self/exe` and are not tested. Windows is not supported yet.
//!
//! # Testing
//!
//! A test binary that starts children re-executes itself, so a child must
//! be recognised before the test harness runs. [`enable_test_support!`]
//! once in the test crate does that, and plain `#[test]` and
//! `#[tokio::test]` functions can then start children. The explicit form
//! gives such tests their own `main`:
//! in `Cargo.toml`, `[[test]] name = "..." harness = false`, and in the
//! file, call `mp::init()` first and then run the cases with
//! [`libtest-mimic`](https://docs.rs/libtest-mimic), which keeps
//! `cargo test` filters, `--list` and the summary line:
//!
//! ```no_run
//! use tokio_multiprocessing as mp;
//!
//! fn double(x: u32) -> u32 { x * 2 }
//!
//! fn main() {
//!     let _guard = mp::init();
//!     let args = libtest_mimic::Arguments::from_args();
//!     let tests = vec![libtest_mimic::Trial::test("doubles_in_a_child", || {
//!         let rt = tokio::runtime::Runtime::new()?;
//!         rt.block_on(async {
//!             let p = mp::Process::new(double, 21);
//!             p.start().await?;
//!             assert_eq!(p.join().await?, 42);
//!             Ok(())
//!         })
//!     })];
//!     libtest_mimic::run(&args, tests).exit();
//! }
//! ```

pub mod connection;
mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
#[allow(missing_docs)]
pub mod fuzz;
mod lifecycle;
mod pool;
mod process;
pub mod queue;
mod runtime;
mod sentinel;
mod shared_memory;
mod shm;
pub mod supervisor;
pub mod sync;
mod sys;
mod target;
mod transport;
#[cfg(unix)]
pub mod unix;
mod wire;

pub use connection::{Connection, Pipe, PipeBuilder, Receiver, Sender};
pub use error::{Error, Result};
pub use pool::{
    AsyncResult, BuildError, Imap, ImapUnordered, LauncherCommand, Pool, PoolBuilder, PoolStats,
    StillRunning, TaskError, WorkerError, worker_main, worker_main_with,
};
pub use process::{
    Process, ProcessBuilder, ProcessError, ProcessInfo, ProcessSet, active_children, cpu_count,
    current_process, parent_pid,
};
pub use queue::{GetError, JoinableQueue, PutError, Queue, TaskDoneError};
#[cfg(feature = "test-support")]
pub use runtime::bootstrap::__control_fd;
#[cfg(feature = "test-support")]
pub use runtime::forkserver::__FORK_SERVER_NAME;
#[cfg(feature = "test-support")]
pub use runtime::forkserver::client::{__fork_server_pid, __set_fork_server_faults};
pub use runtime::forkserver::{StartMethod, get_start_method, set_start_method};
pub use sentinel::{Sentinel, Waitable, wait};
pub use shared_memory::SharedMemory;
pub use supervisor::{
    Supervisor, SupervisorBuilder, SupervisorError, heartbeat, notify_ready, shutdown_requested,
};
pub use sync::{
    Array, ArrayGuard, Barrier, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphorePermit, Value, ValueGuard,
};
pub use target::{CapturesNothing, StarTarget, Target, TargetRefHidden, marker};
pub use wire::{ChannelError, PanicInfo};

/// Marks `async fn main` of a program that starts child processes: the
/// program's `main` calls [`init`] first, before any thread exists (so
/// the fork server serves it), then builds the Tokio runtime and runs the
/// body on it, then applies the exit rule to the children left.
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[mp::main]
/// async fn main() -> mp::Result<()> {
///     let p = mp::Process::new(square, 7);
///     p.start().await?;
///     assert_eq!(p.join().await?, 49);
///     Ok(())
/// }
/// ```
///
/// It takes `#[tokio::main]`'s arguments: `flavor = "current_thread"` (the
/// default is `"multi_thread"`) and `worker_threads = N`; and
/// `crate = "path"` when this crate is renamed in `Cargo.toml`.
///
/// `#[tokio::main]` builds its runtime before `main`'s body runs, so an
/// [`init`] called there comes after the runtime's threads: the fork
/// server cannot serve such a program, and every child is re-executed
/// ([`get_start_method`] then says [`StartMethod::Spawn`]).
pub use tokio_multiprocessing_macros::main;

/// Lets plain `#[test]` and `#[tokio::test]` functions of a test crate
/// start children: put it once in the crate, at the top level.
///
/// A test binary that starts children re-executes itself for each one (or
/// for its fork server); with this, such a copy is recognised before
/// `main` runs, before the test harness, and runs the child's work (a
/// function that runs before `main`, placed by the `ctor` crate). In the
/// test binary itself it does what [`init`] does, also before `main`, so
/// the fork server serves it; no test needs to call `init()`.
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// mp::enable_test_support!();
///
/// fn double(x: u32) -> u32 {
///     x * 2
/// }
///
/// #[tokio::test]
/// async fn doubles_in_a_child() {
///     let p = mp::Process::new(double, 21);
///     p.start().await.unwrap();
///     assert_eq!(p.join().await.unwrap(), 42);
/// }
/// ```
///
/// The exit rule does not run at the end of such a binary (the harness
/// owns `main`): join what a test starts; a child left running exits when
/// the test binary does.
///
/// A program that keeps `#[tokio::main]` (and calls [`init`] inside it)
/// gets the fast start the same way, under the name
/// [`init_before_main!`], which is this macro.
#[macro_export]
macro_rules! enable_test_support {
    () => {
        $crate::__private::ctor::declarative::ctor! {
            #[ctor(unsafe)]
            fn __tokio_multiprocessing_test_support() {
                $crate::__private::init_before_main();
            }
        }
    };
}

/// [`init`] before `main`, for a program that keeps `#[tokio::main]`: put it
/// once at the top level of the program's `main.rs`. A child and the fork
/// server are recognised before `main` (and before the runtime that
/// `#[tokio::main]` builds), so the fork server serves the program; the
/// [`init`] that `main` still calls (for its guard, the exit rule) finds
/// the work done. The same as [`enable_test_support!`].
///
/// ```no_run
/// use tokio_multiprocessing as mp;
///
/// mp::init_before_main!();
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// #[tokio::main]
/// async fn main() -> mp::Result<()> {
///     let _guard = mp::init();
///     let p = mp::Process::new(square, 3);
///     p.start().await?;
///     assert_eq!(p.join().await?, 9);
///     Ok(())
/// }
/// ```
#[macro_export]
macro_rules! init_before_main {
    () => {
        $crate::enable_test_support!();
    };
}

/// What `#[main]` and `enable_test_support!` expand to use; not for use
/// elsewhere.
#[doc(hidden)]
pub mod __private {
    pub use ctor;

    /// [`init`](crate::init) before `main`, without its guard: in a child,
    /// runs the child's work and exits.
    pub fn init_before_main() {
        crate::runtime::init(crate::lifecycle::exit_rule);
    }

    /// The runtime `#[main]` runs the body on.
    ///
    /// # Panics
    ///
    /// If the runtime cannot be built, as `#[tokio::main]` does.
    #[must_use]
    pub fn build_runtime(
        multi_thread: bool,
        worker_threads: Option<usize>,
    ) -> tokio::runtime::Runtime {
        let mut builder = if multi_thread {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        if let Some(n) = worker_threads {
            builder.worker_threads(n);
        }
        builder
            .enable_all()
            .build()
            .expect("failed to build the Tokio runtime")
    }
}

/// Marks the program as a multiprocessing program and, in a child, runs the
/// child's work.
///
/// Call it first thing in `main`, before or inside a Tokio runtime (both
/// work). In the parent it returns an [`InitGuard`] at once. In a child
/// started by this library it never returns: it connects to the parent,
/// runs the target it is given, reports the result and exits the process.
///
/// Code that runs before `init()` runs again in every child. A process
/// whose environment carries the child marker but that was not started by
/// this library (a stale or forged variable, a missing descriptor) is not
/// taken over: `init()` logs a warning and returns as in a parent.
#[must_use = "dropping the guard at once joins the children at once; bind it: `let _guard = mp::init();`"]
pub fn init() -> InitGuard {
    runtime::init(lifecycle::exit_rule);
    // A copy of the program started to join a pool as a remote worker
    // (`LauncherCommand`) serves it and exits here.
    pool::join_if_asked();
    InitGuard { _private: () }
}

/// Returned by [`init`]; when dropped at the end of `main`, applies
/// Python's exit rule to the children still running.
///
/// Daemonic children are terminated (`SIGTERM`); then every child not
/// started detached is joined. Dropping the guard blocks the thread until
/// they have exited.
#[derive(Debug)]
pub struct InitGuard {
    _private: (),
}

impl Drop for InitGuard {
    fn drop(&mut self) {
        lifecycle::exit_rule();
    }
}
