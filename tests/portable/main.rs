//! What works the same on every platform the crate builds for: children
//! started, joined, ended and awaited; pipes, locks, events, barriers,
//! queues, pools and supervisors across processes; checked on Linux and, under Wine,
//! on Windows (see `docs/windows.md`). Each case runs under a per-case
//! timeout, and the binary under a deadline of its own.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use tokio_multiprocessing as mp;

/// The deadline for the whole binary.
const BINARY_DEADLINE: Duration = Duration::from_secs(300);

/// The limit for one case. Wine starts a process in tens of milliseconds.
const CASE_LIMIT: Duration = Duration::from_secs(60);

fn ensure(cond: bool, msg: impl std::fmt::Display) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(msg.to_string().into())
    }
}

/// A case run on a fresh runtime, failed if it takes over [`CASE_LIMIT`].
fn case<F, Fut>(name: &str, body: F) -> Trial
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Failed>> + Send + 'static,
{
    Trial::test(name, move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Failed::from(e.to_string()))?;
        rt.block_on(async move {
            match tokio::time::timeout(CASE_LIMIT, body()).await {
                Ok(r) => r,
                Err(_) => Err(format!("did not finish within {CASE_LIMIT:?}").into()),
            }
        })
    })
}

// ---- Targets. ----

fn double(x: u64) -> u64 {
    x * 2
}

fn exit_with(code: i32) {
    std::process::exit(code);
}

fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn panics(what: String) {
    panic!("{what}");
}

fn identity_of_child(_: ()) -> (u32, String) {
    let me = mp::current_process();
    (me.pid(), me.name().to_owned())
}

fn read_env(name: String) -> Option<String> {
    std::env::var(&name).ok()
}

/// Counts up in `file` every 20 ms, for ever.
fn heartbeat(file: PathBuf) {
    for n in 0u64.. {
        let _ = std::fs::write(&file, n.to_string());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts [`heartbeat`] as a child of its own and waits for ever.
async fn start_heartbeat_and_wait(file: PathBuf) {
    let beat = mp::Process::new(heartbeat, file);
    beat.start().await.expect("the grandchild starts");
    std::future::pending::<()>().await;
}

/// Answers each number on `conn` with its square until it reads 0.
fn squares(mut conn: mp::Connection<u64>) -> u64 {
    let mut answered = 0;
    loop {
        let n = conn.blocking_recv().expect("a number");
        if n == 0 {
            return answered;
        }
        conn.blocking_send(&(n * n)).expect("an answer");
        answered += 1;
    }
}

/// Sends back the one message it receives.
fn echo_bytes(mut conn: mp::Connection<Vec<u8>>) {
    let msg = conn.blocking_recv().expect("a message");
    conn.blocking_send(&msg).expect("the echo");
}

/// Receives a pipe end inside a message on `conn`, and says hello on it.
fn hello_on_a_received_end(mut conn: mp::Connection<mp::Connection<String>>) {
    let end = conn.blocking_recv().expect("a pipe end");
    end.blocking_send(&"hello through a sent end".to_owned())
        .expect("a message on the received end");
}

/// Adds 1 to the shared counter `n` times, each under the lock.
fn add_under_lock((lock, value, n): (mp::Lock, mp::Value<u64>, u64)) {
    for _ in 0..n {
        let _held = lock.blocking_lock().expect("not poisoned");
        value.blocking_set(value.blocking_get() + 1);
    }
}

/// Takes `lock` and dies holding it.
fn die_holding(lock: mp::Lock) {
    let held = lock.blocking_lock().expect("not poisoned");
    std::mem::forget(held);
    std::process::exit(3);
}

/// Waits for `go`, then sets `done`.
fn wait_then_set((go, done): (mp::Event, mp::Event)) -> bool {
    let went = go.blocking_wait_timeout(Duration::from_secs(30));
    done.set();
    went
}

/// Waits at `barrier`; returns its index there.
fn at_the_barrier(barrier: mp::Barrier) -> usize {
    barrier
        .blocking_wait_timeout(Duration::from_secs(30))
        .expect("the barrier holds")
}

/// Puts `0..n` on `queue`, then `None`.
fn produce((queue, n): (mp::Queue<Option<u64>>, u64)) {
    for i in 0..n {
        queue.blocking_put(Some(i)).expect("put");
    }
    queue.blocking_put(None).expect("put");
}

/// Takes items off `queue` until `None`, marking each done; returns their sum.
fn consume(queue: mp::JoinableQueue<Option<u64>>) -> u64 {
    let mut sum = 0;
    loop {
        let item = queue.blocking_get().expect("get");
        queue.task_done().expect("task_done");
        match item {
            Some(i) => sum += i,
            None => return sum,
        }
    }
}

fn square(x: u64) -> u64 {
    x * x
}

/// A task that kills its worker.
fn kill_my_worker(_: ()) -> u64 {
    std::process::exit(9)
}

/// A supervised child that crashes soon after it starts.
fn crash_soon(_: ()) {
    std::thread::sleep(Duration::from_millis(50));
    std::process::exit(5);
}

/// A supervised child that says who it is on the pipe end in its
/// arguments, then crashes.
fn report_then_crash(conn: mp::Connection<u32>) {
    conn.blocking_send(&std::process::id()).expect("report");
    std::process::exit(5);
}

/// A supervised child that says it is ready and runs until stopped.
fn serve_forever(_: ()) {
    mp::notify_ready();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A supervised child that writes `n` numbered lines to each of its
/// standard streams, says it is ready, and runs until stopped.
fn talk(n: u32) {
    use std::io::Write;
    for i in 0..n {
        println!("out {i}");
        eprintln!("err {i}");
    }
    let _ = std::io::stdout().flush();
    mp::notify_ready();
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A supervised child that starts a heartbeat grandchild, says it is
/// ready, and runs until stopped.
async fn serve_with_a_grandchild(file: PathBuf) {
    let beat = mp::Process::new(heartbeat, file);
    beat.start().await.expect("the grandchild starts");
    mp::notify_ready();
    std::future::pending::<()>().await;
}

/// The count the heartbeat grandchild (see [`heartbeat`]) last wrote to
/// `file`, if any.
fn beats(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
}

/// Waits until the heartbeat in `file` has beaten three times; fails
/// after 30 s.
async fn heartbeat_running(file: &Path) -> Result<(), Failed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while beats(file).is_none_or(|n| n < 3) {
        ensure(
            Instant::now() < deadline,
            "the grandchild's heartbeat within 30 s",
        )?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The local address a listener takes: a Unix socket path, or a named
/// pipe on Windows.
fn local_address(tag: &str) -> PathBuf {
    let name = format!("mp-portable-{tag}-{}", std::process::id());
    if cfg!(windows) {
        PathBuf::from(format!(r"\\.\pipe\{name}"))
    } else {
        std::env::temp_dir().join(format!("{name}.sock"))
    }
}

/// Connects to `address` with `key`, sends `hello`, returns the answer.
async fn client_says_hello((address, key): (PathBuf, Vec<u8>)) -> Result<String, String> {
    let mut conn = mp::connection::Client::connect::<String>(address, Some(&key))
        .await
        .map_err(|e| e.to_string())?;
    conn.send(&"hello".to_owned())
        .await
        .map_err(|e| e.to_string())?;
    conn.recv().await.map_err(|e| e.to_string())
}

// ---- Cases. ----

async fn a_child_returns_its_value() -> Result<(), Failed> {
    let p = mp::Process::new(double, 21u64);
    p.start().await?;
    let pid = p.pid();
    ensure(
        pid.is_some_and(|pid| pid != std::process::id()),
        "a pid of its own",
    )?;
    ensure(p.join().await? == 42, "21 doubled")?;
    ensure(
        p.exitcode() == Some(0),
        format!("exit code {:?}", p.exitcode()),
    )
}

async fn a_child_knows_its_name_and_pid() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .name("portable-child")
        .build(identity_of_child, ());
    p.start().await?;
    let (pid, name) = p.join().await?;
    ensure(
        Some(pid) == p.pid(),
        format!("pid {pid} against {:?}", p.pid()),
    )?;
    ensure(name == "portable-child", format!("name {name:?}"))
}

async fn a_child_gets_the_environment_it_was_given() -> Result<(), Failed> {
    let p = mp::Process::builder()
        .env("MP_PORTABLE_VALUE", "forty two")
        .build(read_env, "MP_PORTABLE_VALUE".to_owned());
    p.start().await?;
    let got = p.join().await?;
    ensure(
        got.as_deref() == Some("forty two"),
        format!("the child saw {got:?}"),
    )
}

async fn an_exit_code_is_reported() -> Result<(), Failed> {
    let p = mp::Process::new(exit_with, 7);
    p.start().await?;
    match p.join().await {
        Err(mp::ProcessError::Exited { code: 7 }) => {}
        other => return Err(format!("expected exit code 7, got {other:?}").into()),
    }
    ensure(
        p.exitcode() == Some(7),
        format!("exit code {:?}", p.exitcode()),
    )
}

async fn a_panic_is_reported_with_its_message() -> Result<(), Failed> {
    let p = mp::Process::new(panics, "on purpose".to_owned());
    p.start().await?;
    match p.join().await {
        Err(mp::ProcessError::Panicked(info)) => ensure(
            info.message.contains("on purpose"),
            format!("the panic's message: {info:?}"),
        )?,
        other => return Err(format!("expected a panic, got {other:?}").into()),
    }
    ensure(
        p.exitcode() == Some(1),
        format!("exit code {:?}", p.exitcode()),
    )
}

async fn terminate_ends_a_child_as_python_reports_it() -> Result<(), Failed> {
    let p = mp::Process::new(sleep_ms, 60_000);
    p.start().await?;
    ensure(p.is_alive(), "alive before terminate")?;
    let t0 = Instant::now();
    p.terminate()?;
    let r = p.join().await;
    ensure(
        t0.elapsed() < Duration::from_secs(20),
        "ended well before its sleep",
    )?;
    ensure(
        r.is_err(),
        format!("no value from a terminated child: {r:?}"),
    )?;
    ensure(
        p.exitcode() == Some(-15),
        format!("exitcode -15 (-SIGTERM), got {:?}", p.exitcode()),
    )?;
    ensure(!p.is_alive(), "not alive after join")
}

async fn wait_returns_the_sentinels_that_are_ready() -> Result<(), Failed> {
    let quick = mp::Process::new(sleep_ms, 50);
    let slow = mp::Process::new(sleep_ms, 60_000);
    quick.start().await?;
    slow.start().await?;
    let sentinels = [quick.sentinel(), slow.sentinel()];
    let ready = mp::wait(&sentinels, Some(Duration::from_secs(30))).await;
    ensure(
        ready == vec![0],
        format!("only the quick one is ready: {ready:?}"),
    )?;
    let none = mp::wait(&sentinels[1..], Some(Duration::from_millis(200))).await;
    ensure(none.is_empty(), format!("the slow one times out: {none:?}"))?;
    slow.kill()?;
    let ready = mp::wait(&sentinels[1..], Some(Duration::from_secs(30))).await;
    ensure(
        ready == vec![0],
        format!("the killed one is ready: {ready:?}"),
    )?;
    ensure(quick.join().await? == 50, "the quick one's value")?;
    ensure(slow.join().await.is_err(), "no value from the killed one")
}

/// Waits for `go` (30 s at most), then returns `tag`.
fn tag_when_told((go, tag): (mp::Event, u64)) -> u64 {
    go.blocking_wait_timeout(Duration::from_secs(30));
    tag
}

/// Children end in an order the test sets (each when its event is set),
/// not the order they started in; `join_next` gives each as it ends.
async fn a_process_set_joins_in_the_order_children_end() -> Result<(), Failed> {
    let mut set = mp::ProcessSet::new();
    let mut goes = Vec::new();
    for tag in 0..3u64 {
        let go = mp::Event::new()?;
        set.spawn(mp::Process::new(tag_when_told, (go.clone(), tag)))
            .await?;
        goes.push(go);
    }
    ensure(set.len() == 3, "three in the set")?;
    let mut order = Vec::new();
    for tag in [1usize, 2, 0] {
        goes[tag].set();
        let (_name, r) = set.join_next().await.ok_or("the set ran dry")?;
        order.push(r?);
    }
    ensure(set.join_next().await.is_none(), "nothing left")?;
    ensure(
        order == [1, 2, 0],
        format!("joined in order of ending: {order:?}"),
    )
}

async fn many_children_at_once() -> Result<(), Failed> {
    let mut procs = Vec::new();
    for i in 0..8u64 {
        let p = mp::Process::new(double, i);
        p.start().await?;
        procs.push((i, p));
    }
    for (i, p) in procs {
        let got = p.join().await?;
        ensure(got == i * 2, format!("child {i} returned {got}"))?;
    }
    Ok(())
}

async fn a_pipe_end_passed_to_a_child_carries_messages_both_ways() -> Result<(), Failed> {
    let (mut ours, theirs) = mp::Pipe::new::<u64>()?;
    let p = mp::Process::new(squares, theirs);
    p.start().await?;
    for n in 1..=200u64 {
        ours.send(&n).await?;
        let got = ours.recv().await?;
        ensure(got == n * n, format!("{n} squared came back as {got}"))?;
    }
    // A large burst, then the answers.
    for n in 1..=2_000u64 {
        ours.send(&n).await?;
    }
    for n in 1..=2_000u64 {
        let got = ours.recv().await?;
        ensure(got == n * n, format!("{n} squared came back as {got}"))?;
    }
    ours.send(&0).await?;
    ensure(p.join().await? == 2_200, "the child answered every number")
}

async fn a_pipe_end_travels_inside_a_message() -> Result<(), Failed> {
    let (carrier, theirs) = mp::Pipe::new::<mp::Connection<String>>()?;
    let p = mp::Process::new(hello_on_a_received_end, theirs);
    p.start().await?;
    let (mut mine, sent) = mp::Pipe::new::<String>()?;
    carrier.send(&sent).await?;
    let got = mine.recv().await?;
    ensure(got == "hello through a sent end", format!("got {got:?}"))?;
    p.join().await?;
    Ok(())
}

async fn a_large_message_crosses_whole() -> Result<(), Failed> {
    let (mut ours, theirs) = mp::Pipe::new::<Vec<u8>>()?;
    let p = mp::Process::new(echo_bytes, theirs);
    p.start().await?;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    ours.send(&big).await?;
    let back = ours.recv().await?;
    ensure(back == big, "3 MB came back intact")?;
    p.join().await?;
    Ok(())
}

async fn a_lock_serializes_children_across_processes() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let value = mp::Value::new(0u64)?;
    let mut procs = Vec::new();
    for _ in 0..4 {
        let p = mp::Process::new(add_under_lock, (lock.clone(), value.clone(), 250));
        p.start().await?;
        procs.push(p);
    }
    for p in procs {
        p.join().await?;
    }
    let total = value.get().await;
    ensure(total == 1_000, format!("1000 increments, got {total}"))
}

async fn a_dead_holders_lock_is_handed_on_as_poisoned() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let p = mp::Process::new(die_holding, lock.clone());
    p.start().await?;
    ensure(p.join().await.is_err(), "the holder died")?;
    match lock.lock_timeout(Duration::from_secs(20)).await {
        Err(std::sync::TryLockError::Poisoned(_)) => {}
        Ok(_) => return Err("the dead holder's lock came back clean".into()),
        Err(std::sync::TryLockError::WouldBlock) => {
            return Err("the dead holder's lock was never handed on".into());
        }
    }
    ensure(lock.is_poisoned(), "poisoned")?;
    lock.clear_poison();
    let again = lock.lock().await;
    ensure(again.is_ok(), "clean after clear_poison")
}

async fn events_cross_processes_both_ways() -> Result<(), Failed> {
    let (go, done) = (mp::Event::new()?, mp::Event::new()?);
    let p = mp::Process::new(wait_then_set, (go.clone(), done.clone()));
    p.start().await?;
    ensure(
        !done.wait_timeout(Duration::from_millis(200)).await,
        "not done before go",
    )?;
    go.set();
    ensure(
        done.wait_timeout(Duration::from_secs(30)).await,
        "done after go",
    )?;
    ensure(p.join().await?, "the child saw go")
}

async fn a_barrier_lets_every_party_through_once_all_arrive() -> Result<(), Failed> {
    let barrier = mp::Barrier::new(3)?;
    let mut procs = Vec::new();
    for _ in 0..2 {
        let p = mp::Process::new(at_the_barrier, barrier.clone());
        p.start().await?;
        procs.push(p);
    }
    let mine = barrier
        .wait_timeout(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let mut indexes = vec![mine];
    for p in procs {
        indexes.push(p.join().await?);
    }
    indexes.sort_unstable();
    ensure(indexes == [0, 1, 2], format!("one index each: {indexes:?}"))
}

async fn a_queue_carries_items_in_order_between_processes() -> Result<(), Failed> {
    let queue = mp::Queue::<Option<u64>>::new()?;
    let p = mp::Process::new(produce, (queue.clone(), 5_000));
    p.start().await?;
    for i in 0..5_000u64 {
        let got = queue.get().await?;
        ensure(got == Some(i), format!("item {i} came as {got:?}"))?;
    }
    ensure(queue.get().await?.is_none(), "the end")?;
    p.join().await?;
    Ok(())
}

async fn a_joinable_queue_is_joined_once_every_item_is_done() -> Result<(), Failed> {
    let queue = mp::JoinableQueue::<Option<u64>>::new()?;
    let p = mp::Process::new(consume, queue.clone());
    p.start().await?;
    for i in 1..=100u64 {
        queue.put(Some(i)).await?;
    }
    queue.put(None).await?;
    tokio::time::timeout(Duration::from_secs(30), queue.join())
        .await
        .map_err(|_| "join did not return within 30 s")?;
    ensure(p.join().await? == 5_050, "the child summed 1..=100")
}

async fn a_pool_maps_and_survives_a_dying_worker() -> Result<(), Failed> {
    let pool = mp::Pool::builder().processes(2).build().await?;
    let squares = pool.map(square, 0..200u64).await?;
    let expected: Vec<u64> = (0..200u64).map(|x| x * x).collect();
    ensure(squares == expected, "200 squares in order")?;
    match pool.apply(kill_my_worker, ()).await {
        Err(mp::TaskError::WorkerDied { .. }) => {}
        other => return Err(format!("a worker's death is its task's error: {other:?}").into()),
    }
    ensure(pool.apply(square, 12).await? == 144, "the pool goes on")?;
    pool.close();
    pool.join().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn a_pool_task_over_its_time_is_ended() -> Result<(), Failed> {
    let pool = mp::Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(500))
        .build()
        .await?;
    match pool.apply(sleep_ms, 60_000).await {
        Err(mp::TaskError::TimedOut) => {}
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    ensure(
        pool.apply(square, 3).await? == 9,
        "a fresh worker takes the next task",
    )?;
    pool.terminate().await;
    Ok(())
}

async fn terminate_ends_a_busy_pool() -> Result<(), Failed> {
    let pool = mp::Pool::builder().processes(2).build().await?;
    let pending = pool.apply_async(sleep_ms, 60_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    pool.terminate().await;
    ensure(
        t0.elapsed() < Duration::from_secs(20),
        "terminate did not wait for the task",
    )?;
    ensure(pending.await.is_err(), "the running task failed")
}

/// The next event that `pick` takes, within 30 s.
async fn next_event<T>(
    events: &mut mp::supervisor::EventStream,
    mut pick: impl FnMut(&mp::supervisor::Event) -> Option<T>,
) -> Result<T, Failed> {
    use futures::StreamExt;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| "no such event within 30 s")?
            .ok_or("the event stream ended")?;
        if let Some(t) = pick(&event) {
            return Ok(t);
        }
    }
}

async fn a_supervisor_restarts_a_crashing_child() -> Result<(), Failed> {
    use mp::supervisor::{Backoff, ChildSpec, Event, ExitKind, Supervisor};
    let sup = Supervisor::builder()
        .name("portable")
        .intensity(20, Duration::from_secs(60))
        .backoff(Backoff::none())
        .child(ChildSpec::new("crasher", crash_soon, ()))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let first = next_event(&mut events, |e| match e {
        Event::Exited { exit, .. } => Some(exit.clone()),
        _ => None,
    })
    .await?;
    ensure(
        first == ExitKind::Code(5),
        format!("the crash's exit: {first:?}"),
    )?;
    next_event(&mut events, |e| match e {
        Event::Started { generation, .. } if *generation >= 3 => Some(()),
        _ => None,
    })
    .await?;
    sup.shutdown().await?;
    Ok(())
}

async fn a_supervised_childs_output_is_captured_line_by_line() -> Result<(), Failed> {
    use mp::supervisor::{ChildSpec, Event, OutputStream, Supervisor};
    let sup = Supervisor::builder()
        .name("portable")
        .child(ChildSpec::new("talker", talk, 3).capture_output(true))
        .build();
    let mut events = sup.events();
    sup.start().await?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while out.len() < 3 || err.len() < 3 {
        let (stream, line) = next_event(&mut events, |e| match e {
            Event::Log {
                child,
                stream,
                line,
                ..
            } if child == "portable/talker" => Some((*stream, line.clone())),
            _ => None,
        })
        .await?;
        match stream {
            OutputStream::Stdout => out.push(line),
            OutputStream::Stderr => err.push(line),
            _ => return Err(format!("a line from an unknown stream: {line}").into()),
        }
    }
    sup.shutdown().await?;
    ensure(
        out == ["out 0", "out 1", "out 2"],
        format!("stdout, in order: {out:?}"),
    )?;
    ensure(
        err == ["err 0", "err 1", "err 2"],
        format!("stderr, in order: {err:?}"),
    )
}

/// A pipe end in a supervised child's arguments reaches every start, each
/// with a copy of its own (on Windows each start's copy is put in that
/// child's own table).
async fn every_restart_gets_the_pipe_end_in_its_arguments() -> Result<(), Failed> {
    use mp::supervisor::{Backoff, ChildSpec, Supervisor};
    let (mut rx, tx) = mp::Pipe::new::<u32>()?;
    let sup = Supervisor::builder()
        .name("portable")
        .intensity(20, Duration::from_secs(60))
        .backoff(Backoff::none())
        .child(ChildSpec::new("reporter", report_then_crash, tx))
        .build();
    sup.start().await?;
    let mut pids = Vec::new();
    for _ in 0..3 {
        let pid = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .map_err(|_| format!("no report within 30 s after {pids:?}"))??;
        pids.push(pid);
    }
    sup.shutdown().await?;
    let mut distinct = pids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    ensure(
        distinct.len() == 3,
        format!("three starts reported: {pids:?}"),
    )
}

async fn a_supervisor_stops_its_children_in_reverse_order() -> Result<(), Failed> {
    use mp::supervisor::{ChildSpec, Event, Supervisor};
    let mut builder = Supervisor::builder().name("portable");
    for name in ["a", "b", "c"] {
        builder = builder
            .child(ChildSpec::new(name, serve_forever, ()).ready_timeout(Duration::from_secs(30)));
    }
    let sup = builder.build();
    let mut events = sup.events();
    sup.start().await?;
    let pids: Vec<u32> = sup.which_children().iter().filter_map(|c| c.pid).collect();
    ensure(pids.len() == 3, format!("three running: {pids:?}"))?;
    sup.shutdown().await?;
    let mut stopped = Vec::new();
    while stopped.len() < 3 {
        let name = next_event(&mut events, |e| match e {
            Event::Stopping { child, .. } => Some(child.clone()),
            _ => None,
        })
        .await?;
        stopped.push(name);
    }
    let order: Vec<&str> = stopped
        .iter()
        .map(|c| c.rsplit('/').next().unwrap_or(c))
        .collect();
    ensure(
        order == ["c", "b", "a"],
        format!("stopped in reverse order: {order:?}"),
    )
}

/// Stopping a supervised child ends what it started too: its process
/// group on Unix, its Job Object on Windows.
async fn stopping_a_supervised_child_ends_its_grandchildren() -> Result<(), Failed> {
    use mp::supervisor::{ChildSpec, Shutdown, Supervisor};
    let file = std::env::temp_dir().join(format!("mp-portable-sup-beat-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let sup = Supervisor::builder()
        .name("portable")
        .child(
            ChildSpec::new("parent", serve_with_a_grandchild, file.clone())
                .ready_timeout(Duration::from_secs(30))
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        )
        .build();
    sup.start().await?;
    heartbeat_running(&file).await?;
    let beat = || beats(&file);
    sup.shutdown().await?;
    let before = beat();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure(
        beat() == before,
        "the grandchild stopped with the supervised child",
    )?;
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// `Listener` and `Client` on the local address (a named pipe on
/// Windows), with the authkey handshake: a client with the key talks, one
/// without it is refused and the listener goes on.
async fn a_listener_and_a_client_talk_on_the_local_address() -> Result<(), Failed> {
    let address = local_address("listener");
    let key = b"portable secret".to_vec();
    let mut listener = mp::connection::Listener::bind(address.clone(), Some(&key)).await?;
    // A second listener cannot take the same address. (Windows refuses a
    // second first instance of a pipe, but Wine 8 does not enforce it, so
    // this is checked on Unix only.)
    if cfg!(unix) {
        ensure(
            mp::connection::Listener::bind(address.clone(), Some(&key))
                .await
                .is_err(),
            "the address is taken",
        )?;
    }
    let wrong = mp::Process::new(client_says_hello, (address.clone(), b"wrong".to_vec()));
    wrong.start().await?;
    let refused = listener.accept::<String>().await;
    ensure(refused.is_err(), "a client with the wrong key is refused")?;
    ensure(wrong.join().await?.is_err(), "the wrong client hears of it")?;
    let right = mp::Process::new(client_says_hello, (address.clone(), key.clone()));
    right.start().await?;
    let mut conn = listener.accept::<String>().await?;
    let said = conn.recv().await?;
    ensure(said == "hello", format!("the client said {said:?}"))?;
    conn.send(&"hello yourself".to_owned()).await?;
    let heard = right.join().await?;
    ensure(
        heard.as_deref() == Ok("hello yourself"),
        format!("the client heard {heard:?}"),
    )?;
    listener.close();
    Ok(())
}

/// A grandchild ends with its parent, however the parent ends: by the
/// Job Object on Windows, by the watch on the control channel everywhere.
async fn a_grandchild_ends_with_its_parent() -> Result<(), Failed> {
    let file = std::env::temp_dir().join(format!("mp-portable-beat-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let parent = mp::Process::new(start_heartbeat_and_wait, file.clone());
    parent.start().await?;
    heartbeat_running(&file).await?;
    let beat = || beats(&file);
    parent.kill()?;
    let _ = parent.join().await;
    // Give the grandchild time to notice, then check that it stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = beat();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if beat() == before {
            break;
        }
        ensure(
            Instant::now() < deadline,
            "the grandchild still beats 20 s after its parent was killed",
        )?;
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Windows has no fork: asking for the fork server is an error that says
/// what to use instead.
#[cfg(windows)]
async fn the_fork_server_is_refused_with_a_clear_error() -> Result<(), Failed> {
    ensure(
        mp::get_start_method() == mp::StartMethod::Spawn,
        "spawn is the default",
    )?;
    let p = mp::Process::builder()
        .start_method(mp::StartMethod::ForkServer)
        .build(double, 1u64);
    match p.start().await {
        Err(e) => ensure(
            e.to_string().contains("Spawn"),
            format!("the error names the method to use: {e}"),
        ),
        Ok(()) => Err("a fork-server start succeeded on Windows".into()),
    }
}

/// Set in the environment of this binary run as a supervised program.
const PROGRAM_ENV: &str = "MP_PORTABLE_PROGRAM";

/// Sends one notification to the supervisor that started this program:
/// a datagram to the `NOTIFY_SOCKET` path (`sd_notify`) on Unix, one
/// write to the named pipe it names on Windows.
fn notify(message: &str) -> std::io::Result<()> {
    let to = std::env::var_os("NOTIFY_SOCKET")
        .ok_or_else(|| std::io::Error::other("no NOTIFY_SOCKET"))?;
    #[cfg(unix)]
    {
        let socket = std::os::unix::net::UnixDatagram::unbound()?;
        socket.send_to(message.as_bytes(), to)?;
    }
    #[cfg(windows)]
    {
        use std::io::Write;
        let mut pipe = std::fs::OpenOptions::new().write(true).open(to)?;
        pipe.write_all(message.as_bytes())?;
    }
    Ok(())
}

/// This binary as a supervised program: says a line, says it is ready,
/// then beats its watchdog every 100 ms until it is ended.
fn program() -> std::io::Result<()> {
    println!("program up");
    notify("READY=1")?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        notify("WATCHDOG=1")?;
    }
}

async fn a_supervised_program_says_it_is_ready_and_beats_its_watchdog() -> Result<(), Failed> {
    use mp::supervisor::{ChildSpec, Event, Supervisor};
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.env(PROGRAM_ENV, "1");
    let sup = Supervisor::builder()
        .name("portable")
        .child(
            ChildSpec::command("program", command)
                .ready_timeout(Duration::from_secs(20))
                .watchdog(Duration::from_secs(2))
                .capture_output(true),
        )
        .build();
    let mut events = sup.events();
    // Ready before `start` returns: it waits for readiness.
    sup.start().await?;
    // Its start, its readiness and its line, in whatever order they come.
    let (mut started, mut ready, mut line) = (None, None, None);
    while started.is_none() || ready.is_none() || line.is_none() {
        next_event(&mut events, |e| {
            match e {
                Event::Started { pid, .. } => started = Some(*pid),
                Event::Ready { pid, .. } => ready = Some(*pid),
                Event::Log { line: l, .. } => line = Some(l.clone()),
                _ => return None,
            }
            Some(())
        })
        .await?;
    }
    let (started, ready, line) = (
        started.unwrap_or(0),
        ready.unwrap_or(1),
        line.unwrap_or_default(),
    );
    ensure(
        ready == started,
        format!("ready from {ready}, started {started}"),
    )?;
    ensure(line == "program up", format!("its line: {line:?}"))?;
    // Four watchdog periods: beats keep it running, in its first start.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let children = sup.which_children();
    ensure(
        children.len() == 1 && children[0].pid == Some(started) && children[0].restarts == 0,
        format!("still its first start: {children:?}"),
    )?;
    sup.shutdown().await?;
    // Ended by the shutdown, and seen to end.
    next_event(&mut events, |e| match e {
        Event::Exited { pid, .. } if *pid == started => Some(()),
        _ => None,
    })
    .await
}

fn main() {
    if std::env::var_os(PROGRAM_ENV).is_some() {
        if let Err(e) = program() {
            eprintln!("program: {e}");
        }
        std::process::exit(3);
    }
    let guard = mp::init();
    // The crate's own events, when a run is to be read closely.
    if std::env::var_os("MP_PORTABLE_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::io::stderr)
            .init();
    }
    let mut trials = vec![
        case("a_child_returns_its_value", a_child_returns_its_value),
        case(
            "a_child_knows_its_name_and_pid",
            a_child_knows_its_name_and_pid,
        ),
        case(
            "a_child_gets_the_environment_it_was_given",
            a_child_gets_the_environment_it_was_given,
        ),
        case("an_exit_code_is_reported", an_exit_code_is_reported),
        case(
            "a_panic_is_reported_with_its_message",
            a_panic_is_reported_with_its_message,
        ),
        case(
            "terminate_ends_a_child_as_python_reports_it",
            terminate_ends_a_child_as_python_reports_it,
        ),
        case(
            "wait_returns_the_sentinels_that_are_ready",
            wait_returns_the_sentinels_that_are_ready,
        ),
        case(
            "a_process_set_joins_in_the_order_children_end",
            a_process_set_joins_in_the_order_children_end,
        ),
        case("many_children_at_once", many_children_at_once),
        case(
            "a_pipe_end_passed_to_a_child_carries_messages_both_ways",
            a_pipe_end_passed_to_a_child_carries_messages_both_ways,
        ),
        case(
            "a_pipe_end_travels_inside_a_message",
            a_pipe_end_travels_inside_a_message,
        ),
        case(
            "a_large_message_crosses_whole",
            a_large_message_crosses_whole,
        ),
        case(
            "a_lock_serializes_children_across_processes",
            a_lock_serializes_children_across_processes,
        ),
        case(
            "a_dead_holders_lock_is_handed_on_as_poisoned",
            a_dead_holders_lock_is_handed_on_as_poisoned,
        ),
        case(
            "events_cross_processes_both_ways",
            events_cross_processes_both_ways,
        ),
        case(
            "a_barrier_lets_every_party_through_once_all_arrive",
            a_barrier_lets_every_party_through_once_all_arrive,
        ),
        case(
            "a_queue_carries_items_in_order_between_processes",
            a_queue_carries_items_in_order_between_processes,
        ),
        case(
            "a_joinable_queue_is_joined_once_every_item_is_done",
            a_joinable_queue_is_joined_once_every_item_is_done,
        ),
        case(
            "a_pool_maps_and_survives_a_dying_worker",
            a_pool_maps_and_survives_a_dying_worker,
        ),
        case(
            "a_pool_task_over_its_time_is_ended",
            a_pool_task_over_its_time_is_ended,
        ),
        case("terminate_ends_a_busy_pool", terminate_ends_a_busy_pool),
        case(
            "a_listener_and_a_client_talk_on_the_local_address",
            a_listener_and_a_client_talk_on_the_local_address,
        ),
        case(
            "a_supervisor_restarts_a_crashing_child",
            a_supervisor_restarts_a_crashing_child,
        ),
        case(
            "a_supervised_childs_output_is_captured_line_by_line",
            a_supervised_childs_output_is_captured_line_by_line,
        ),
        case(
            "a_supervised_program_says_it_is_ready_and_beats_its_watchdog",
            a_supervised_program_says_it_is_ready_and_beats_its_watchdog,
        ),
        case(
            "every_restart_gets_the_pipe_end_in_its_arguments",
            every_restart_gets_the_pipe_end_in_its_arguments,
        ),
        case(
            "a_supervisor_stops_its_children_in_reverse_order",
            a_supervisor_stops_its_children_in_reverse_order,
        ),
        case(
            "stopping_a_supervised_child_ends_its_grandchildren",
            stopping_a_supervised_child_ends_its_grandchildren,
        ),
        case(
            "a_grandchild_ends_with_its_parent",
            a_grandchild_ends_with_its_parent,
        ),
    ];
    #[cfg(windows)]
    trials.push(case(
        "the_fork_server_is_refused_with_a_clear_error",
        the_fork_server_is_refused_with_a_clear_error,
    ));
    std::thread::spawn(|| {
        std::thread::sleep(BINARY_DEADLINE);
        eprintln!("watchdog: the test binary did not finish within {BINARY_DEADLINE:?}");
        std::process::exit(101);
    });
    let conclusion = libtest_mimic::run(&Arguments::from_args(), std::mem::take(&mut trials));
    drop(guard);
    conclusion.exit()
}
