//! `Process` cases: state, values, exit codes, misuse, names and keys.
//! Shared by the `lifecycle` (fork server) and `spawn_method` (re-exec per
//! child) modules of the `process` test binary. On Windows, where Windows
//! has no signals, `terminate()` and `kill()` both end a child with
//! `TerminateProcess`, reported as -15 (`-SIGTERM`), as Python does there.

use std::time::{Duration, Instant};

use crate::common::{Case, case, ensure, test};
use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

const T: Duration = Duration::from_secs(30);

fn square(x: u64) -> u64 {
    x * x
}

async fn shout(s: String) -> String {
    tokio::task::yield_now().await;
    s.to_uppercase()
}

fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

fn boom(msg: String) -> u32 {
    panic!("{msg}");
}

async fn async_boom(_: ()) -> u32 {
    tokio::task::yield_now().await;
    panic!("async boom");
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn abort(_: ()) {
    std::process::abort();
}

fn garbage_then_value(_: ()) -> String {
    use std::io::Write;
    let junk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    let mut out = std::io::stdout();
    let _ = out.write_all(&junk);
    let _ = out.flush();
    // SAFETY: closing our own stdout; nothing else in this child uses it
    // afterwards (Rust's stdout ignores EBADF). (On Windows the control
    // channel is a named pipe that shares nothing with stdout.)
    #[cfg(unix)]
    unsafe {
        libc::close(1)
    };
    "still framed".to_owned()
}

fn who_am_i(_: ()) -> (String, u32, Option<u32>, Vec<u8>, bool) {
    let me = mp::current_process();
    (
        me.name().to_owned(),
        me.pid(),
        mp::parent_pid(),
        me.authkey().to_vec(),
        me.is_child(),
    )
}

/// Starts a grandchild and reports its name and what the grandchild says
/// its own name is.
async fn spawn_grandchild(_: ()) -> (String, String, String) {
    let me = mp::current_process().name().to_owned();
    let p = mp::Process::new(who_am_i, ());
    p.start().await.expect("grandchild starts");
    let (inner_name, ..) = p.join().await.expect("grandchild joins");
    (me, p.name().to_owned(), inner_name)
}

/// A daemonic child tries to have a child of its own.
async fn daemon_tries_to_spawn(_: ()) -> String {
    let p = mp::Process::new(square, 2);
    match p.start().await {
        Ok(()) => "started".to_owned(),
        Err(e) => e.to_string(),
    }
}

fn takes_unencodable(_: Unencodable) {}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Unencodable(#[serde(serialize_with = "refuse")] u8);

fn refuse<S: serde::Serializer>(_: &u8, _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom(
        "this value refuses to be encoded",
    ))
}

fn returns_unencodable(_: ()) -> Unencodable {
    Unencodable(1)
}

async fn state_before_and_after_start() -> Result<(), Failed> {
    let p = mp::Process::new(sleep_ms, 300);
    ensure(p.pid().is_none(), "no pid before start")?;
    ensure(!p.is_alive(), "not alive before start")?;
    ensure(p.exitcode().is_none(), "no exit code before start")?;
    ensure(p.to_string().ends_with(", initial)>"), p.to_string())?;
    p.start().await?;
    ensure(p.pid().is_some(), "a pid after start")?;
    ensure(p.is_alive(), "alive after start")?;
    ensure(p.exitcode().is_none(), "no exit code while running")?;
    ensure(p.to_string().ends_with(", started)>"), p.to_string())?;
    p.join().await?;
    ensure(!p.is_alive(), "not alive after join")?;
    ensure(
        p.exitcode() == Some(0),
        format!("exit code 0, got {:?}", p.exitcode()),
    )?;
    ensure(p.to_string().ends_with(", stopped)>"), p.to_string())?;
    Ok(())
}

async fn join_returns_the_value() -> Result<(), Failed> {
    let p = mp::Process::new(square, 12);
    p.start().await?;
    ensure(p.join().await? == 144, "sync fn value")?;

    let p = mp::Process::new(shout, "hello".to_owned());
    p.start().await?;
    ensure(p.join().await? == "HELLO", "async fn value")?;

    let p = mp::Process::new(|(a, b): (i32, i32)| a * 10 + b, (4, 2));
    p.start().await?;
    ensure(p.join().await? == 42, "closure value")?;

    let p = mp::Process::new(|v: Vec<u8>| async move { v.len() }, vec![0u8; 1 << 20]);
    p.start().await?;
    ensure(
        p.join().await? == 1 << 20,
        "async closure with a 1 MiB argument",
    )?;
    Ok(())
}

async fn panics_come_back_with_their_message() -> Result<(), Failed> {
    let p = mp::Process::new(boom, "the sky fell".to_owned());
    p.start().await?;
    let err = p.join().await.expect_err("a panic is an error");
    ensure(err.is_panic(), format!("is_panic: {err:?}"))?;
    ensure(
        err.panic_message() == Some("the sky fell"),
        format!("{err}"),
    )?;
    let mp::ProcessError::Panicked(info) = &err else {
        unreachable!()
    };
    ensure(
        info.location
            .as_deref()
            .is_some_and(|l| l.contains("lifecycle_cases.rs")),
        format!("location {:?}", info.location),
    )?;
    ensure(
        p.exitcode() == Some(1),
        format!("exit code 1 after a panic, got {:?}", p.exitcode()),
    )?;

    let p = mp::Process::new(async_boom, ());
    p.start().await?;
    let err = p.join().await.expect_err("a panic is an error");
    ensure(err.panic_message() == Some("async boom"), format!("{err}"))?;
    Ok(())
}

async fn terminate_and_kill_give_negative_signals() -> Result<(), Failed> {
    let p = mp::Process::new(sleep_ms, 60_000);
    p.start().await?;
    p.terminate()?;
    let err = p.join().await.expect_err("terminated");
    ensure(err.signal() == Some(15), format!("{err:?}"))?;
    ensure(p.exitcode() == Some(-15), format!("{:?}", p.exitcode()))?;
    ensure(
        p.to_string().ends_with(", stopped[SIGTERM])>"),
        p.to_string(),
    )?;
    p.terminate()?; // a no-op once it has exited
    p.kill()?;

    let p = mp::Process::new(sleep_ms, 60_000);
    p.start().await?;
    p.kill()?;
    let status = p.sentinel().await;
    #[cfg(unix)]
    {
        ensure(
            std::os::unix::process::ExitStatusExt::signal(&status) == Some(9),
            format!("{status:?}"),
        )?;
        ensure(p.exitcode() == Some(-9), format!("{:?}", p.exitcode()))?;
        ensure(
            p.to_string().ends_with(", stopped[SIGKILL])>"),
            p.to_string(),
        )?;
    }
    // Windows: `kill()` is `terminate()`.
    #[cfg(windows)]
    {
        ensure(!status.success(), format!("{status:?}"))?;
        ensure(p.exitcode() == Some(-15), format!("{:?}", p.exitcode()))?;
        ensure(
            p.to_string().ends_with(", stopped[SIGTERM])>"),
            p.to_string(),
        )?;
    }
    Ok(())
}

async fn exit_codes_follow_python() -> Result<(), Failed> {
    let p = mp::Process::new(exit_with, 3);
    p.start().await?;
    let err = p.join().await.expect_err("exit before report");
    ensure(err.exit_code() == Some(3), format!("{err:?}"))?;
    ensure(
        err.to_string().contains("code 3"),
        format!("names the code: {err}"),
    )?;
    ensure(p.exitcode() == Some(3), format!("{:?}", p.exitcode()))?;
    ensure(
        p.to_string().ends_with(", stopped[exitcode=3])>"),
        p.to_string(),
    )?;

    let p = mp::Process::new(exit_with, 0);
    p.start().await?;
    let err = p
        .join()
        .await
        .expect_err("exit(0) before reporting is still no value");
    ensure(err.exit_code() == Some(0), format!("{err:?}"))?;

    let p = mp::Process::new(abort, ());
    p.start().await?;
    let err = p.join().await.expect_err("abort");
    // On Windows Rust's abort is a fast fail (status 0xC0000409), which
    // the library reports as SIGABRT too.
    ensure(err.signal() == Some(6), format!("{err:?}"))?;
    ensure(p.exitcode() == Some(-6), format!("{:?}", p.exitcode()))?;
    Ok(())
}

async fn join_timeout_leaves_a_running_child_alive() -> Result<(), Failed> {
    let p = mp::Process::new(sleep_ms, 60_000);
    p.start().await?;
    let t0 = Instant::now();
    let r = p.join_timeout(Duration::from_millis(200)).await;
    ensure(r.is_none(), "None while running")?;
    ensure(
        t0.elapsed() >= Duration::from_millis(190),
        format!("waited {:?}", t0.elapsed()),
    )?;
    ensure(p.is_alive(), "still alive after join_timeout")?;
    p.kill()?;
    let r = p.join_timeout(Duration::from_secs(10)).await;
    // Windows: `kill()` is `terminate()`, reported as SIGTERM.
    let killed_by = if cfg!(windows) { 15 } else { 9 };
    ensure(
        matches!(r, Some(Err(ref e)) if e.signal() == Some(killed_by)),
        format!("{r:?}"),
    )?;
    Ok(())
}

async fn a_hundred_children_at_once() -> Result<(), Failed> {
    let mut procs = Vec::new();
    for i in 0..100u64 {
        let p = mp::Process::new(square, i);
        p.start().await?;
        procs.push(p);
    }
    for (i, p) in procs.iter().enumerate() {
        let v = p.join().await?;
        ensure(
            v == (i as u64) * (i as u64),
            format!("child {i} returned {v}"),
        )?;
        ensure(
            p.exitcode() == Some(0),
            format!("child {i}: {:?}", p.exitcode()),
        )?;
    }
    Ok(())
}

async fn stdout_garbage_does_not_touch_the_protocol() -> Result<(), Failed> {
    let p = mp::Process::new(garbage_then_value, ());
    p.start().await?;
    ensure(
        p.join().await? == "still framed",
        "value after garbage on stdout",
    )?;
    ensure(p.exitcode() == Some(0), format!("{:?}", p.exitcode()))?;
    Ok(())
}

async fn misuse_is_a_typed_error() -> Result<(), Failed> {
    let p = mp::Process::new(square, 3);
    ensure(
        matches!(p.join().await, Err(mp::ProcessError::NotStarted)),
        "join before start",
    )?;
    ensure(
        matches!(p.terminate(), Err(mp::ProcessError::NotStarted)),
        "terminate before start",
    )?;
    ensure(
        matches!(p.kill(), Err(mp::ProcessError::NotStarted)),
        "kill before start",
    )?;
    ensure(
        p.join_timeout(Duration::from_millis(1)).await.is_some(),
        "join_timeout before start errs",
    )?;
    p.start().await?;
    ensure(
        matches!(p.start().await, Err(mp::ProcessError::AlreadyStarted)),
        "start twice",
    )?;
    ensure(p.join().await? == 9, "value")?;
    let again = p.join().await;
    ensure(
        matches!(again, Err(mp::ProcessError::AlreadyJoined)),
        format!("join twice: {again:?}"),
    )?;
    Ok(())
}

async fn unencodable_arguments_spawn_nothing() -> Result<(), Failed> {
    let p = mp::Process::new(takes_unencodable, Unencodable(1));
    let err = p.start().await.expect_err("arguments fail to encode");
    ensure(
        matches!(err, mp::ProcessError::EncodeArgs(ref m) if m.contains("refuses")),
        format!("{err:?}"),
    )?;
    ensure(p.pid().is_none(), "nothing spawned")?;
    ensure(!p.is_alive(), "not alive")?;

    let p = mp::Process::new(returns_unencodable, ());
    p.start().await?;
    let err = p
        .join()
        .await
        .expect_err("the result fails to encode in the child");
    ensure(
        matches!(err, mp::ProcessError::EncodeResult(ref m) if m.contains("refuses")),
        format!("{err:?}"),
    )?;
    Ok(())
}

async fn names_keys_and_grandchildren() -> Result<(), Failed> {
    let me = mp::current_process();
    ensure(me.name() == "MainProcess", me.name())?;
    ensure(me.authkey().len() == 32, "32-byte authkey")?;
    ensure(!me.is_child(), "the test binary is not a child")?;

    let a = mp::Process::new(who_am_i, ());
    let b = mp::Process::new(who_am_i, ());
    let na: u32 = a
        .name()
        .strip_prefix("Process-")
        .and_then(|n| n.parse().ok())
        .ok_or("Process-N")?;
    let nb: u32 = b
        .name()
        .strip_prefix("Process-")
        .and_then(|n| n.parse().ok())
        .ok_or("Process-N")?;
    ensure(nb == na + 1, format!("{} then {}", a.name(), b.name()))?;
    ensure(a.authkey() == me.authkey(), "a child inherits the authkey")?;
    a.start().await?;
    let (name, pid, ppid, key, is_child) = a.join().await?;
    ensure(name == a.name(), format!("child sees its name: {name}"))?;
    ensure(Some(pid) == a.pid(), "child sees its pid")?;
    ensure(
        ppid == Some(std::process::id()),
        format!("parent pid {ppid:?}"),
    )?;
    ensure(key == me.authkey(), "child has the parent's authkey")?;
    ensure(is_child, "child knows it is a child")?;
    drop(b);

    let named = mp::Process::builder().name("custom").build(who_am_i, ());
    ensure(named.name() == "custom", named.name())?;

    let g = mp::Process::new(spawn_grandchild, ());
    g.start().await?;
    let (child_name, grandchild_name, inner) = g.join().await?;
    ensure(child_name == g.name(), &child_name)?;
    ensure(
        grandchild_name == format!("{}:1", g.name()),
        format!("grandchild named {grandchild_name}"),
    )?;
    ensure(inner == grandchild_name, "the grandchild knows its name")?;
    Ok(())
}

async fn daemons_cannot_have_children() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .daemon(true)
        .build(daemon_tries_to_spawn, ());
    ensure(p.daemon(), "daemon flag")?;
    ensure(p.to_string().ends_with(", initial daemon)>"), p.to_string())?;
    p.start().await?;
    let msg = p.join().await?;
    ensure(
        msg.contains("daemonic processes are not allowed to have children"),
        msg,
    )?;
    Ok(())
}

/// `is_alive` reaps an exited child itself: on a current-thread runtime
/// that is kept busy, the watcher task cannot run, so only `is_alive` can
/// have reaped the zombie.
fn is_alive_reaps() -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let p = mp::Process::new(square, 2);
        p.start().await?;
        let pid = p.pid().ok_or("pid")?;
        // Block the runtime's only thread while the child exits: only
        // `is_alive` can reap it meanwhile. (A zombie shows in /proc a
        // moment before it can be reaped, while its other threads exit,
        // so poll `is_alive` itself.)
        let t0 = Instant::now();
        while p.is_alive() {
            ensure(
                t0.elapsed() < Duration::from_secs(10),
                "the child never exited",
            )?;
            std::thread::sleep(Duration::from_millis(2));
        }
        // Windows has no zombies: the process handle the library keeps
        // is all there is to close.
        #[cfg(unix)]
        ensure(
            !crate::common::zombie_children().contains(&pid),
            "is_alive reaped it",
        )?;
        #[cfg(unix)]
        ensure(!crate::common::children().contains(&pid), "and it is gone")?;
        #[cfg(windows)]
        ensure(!crate::common::is_running(pid), "it has exited")?;
        ensure(p.exitcode() == Some(0), format!("{:?}", p.exitcode()))?;
        ensure(
            tokio::time::timeout(Duration::from_secs(10), p.join()).await?? == 4,
            "value",
        )?;
        Ok(())
    })
}

fn sleep_then_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(300));
    x * x
}

/// A child started on a runtime that then shuts down is still joined, with
/// its value, from another runtime.
fn joined_from_another_runtime() -> Result<(), Failed> {
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let p = first.block_on(async {
        let p = mp::Process::new(sleep_then_square, 6);
        p.start().await.map(|()| p)
    })?;
    drop(first); // the watcher task goes with it
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    second.block_on(async {
        let value = tokio::time::timeout(Duration::from_secs(10), p.join()).await??;
        ensure(value == 36, format!("value {value}"))?;
        ensure(p.exitcode() == Some(0), format!("{:?}", p.exitcode()))?;
        ensure(
            p.sentinel().is_ready(),
            "the sentinel is ready after the join",
        )?;
        Ok(())
    })
}

/// Every case.
pub(crate) fn all() -> Vec<Case> {
    vec![
        test("joined_from_another_runtime", joined_from_another_runtime),
        test("is_alive_reaps", is_alive_reaps),
        case(
            "state_before_and_after_start",
            T,
            state_before_and_after_start,
        ),
        case("join_returns_the_value", T, join_returns_the_value),
        case(
            "panics_come_back_with_their_message",
            T,
            panics_come_back_with_their_message,
        ),
        case(
            "terminate_and_kill_give_negative_signals",
            T,
            terminate_and_kill_give_negative_signals,
        ),
        case("exit_codes_follow_python", T, exit_codes_follow_python),
        case(
            "join_timeout_leaves_a_running_child_alive",
            T,
            join_timeout_leaves_a_running_child_alive,
        ),
        case(
            "a_hundred_children_at_once",
            Duration::from_secs(60),
            a_hundred_children_at_once,
        ),
        case(
            "stdout_garbage_does_not_touch_the_protocol",
            T,
            stdout_garbage_does_not_touch_the_protocol,
        ),
        case("misuse_is_a_typed_error", T, misuse_is_a_typed_error),
        case(
            "unencodable_arguments_spawn_nothing",
            T,
            unencodable_arguments_spawn_nothing,
        ),
        case(
            "names_keys_and_grandchildren",
            T,
            names_keys_and_grandchildren,
        ),
        case(
            "daemons_cannot_have_children",
            T,
            daemons_cannot_have_children,
        ),
    ]
}
