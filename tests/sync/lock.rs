//! `Lock` across processes: exclusion, try/timeout, no system call on the
//! fast paths, async waits off the worker threads, cancel safety, and
//! poisoning by a holder that dies or panics.

use std::sync::TryLockError;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

#[cfg(unix)]
use crate::common::exhaust_descriptors;
use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

/// "After about `t`": at least 0.9 t and well under 10 t.
fn about(took: Duration, t: Duration) -> bool {
    took >= t.mul_f64(0.9) && took < t * 10
}

/// Reads a number from `path`, waits a moment, writes it back plus one:
/// without mutual exclusion, concurrent increments are lost.
fn bump_file(path: &str) {
    let n: u64 = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    std::thread::yield_now();
    std::fs::write(path, (n + 1).to_string()).expect("write the counter");
}

fn bump_sync((lock, path, times): (mp::Lock, String, u32)) {
    for _ in 0..times {
        let _g = lock.blocking_lock().expect("not poisoned");
        bump_file(&path);
    }
}

async fn bump_async((lock, path, times): (mp::Lock, String, u32)) {
    for _ in 0..times {
        let _g = lock.lock().await.expect("not poisoned");
        bump_file(&path);
    }
}

async fn four_processes_exclude_each_other() -> Result<(), Failed> {
    let dir = std::env::temp_dir().join(format!("tokio-mp-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("counter").to_string_lossy().into_owned();
    std::fs::write(&path, "0")?;
    let lock = mp::Lock::new()?;
    let mut ps = Vec::new();
    for i in 0..4 {
        let args = (lock.clone(), path.clone(), 150u32);
        let p = if i % 2 == 0 {
            mp::Process::new(bump_sync, args)
        } else {
            mp::Process::new(bump_async, args)
        };
        p.start().await?;
        ps.push(p);
    }
    for p in ps {
        p.join().await?;
    }
    let total: u64 = std::fs::read_to_string(&path)?.trim().parse()?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure(total == 600, format!("600 increments, got {total}"))
}

/// What a child sees of a lock the parent holds.
fn try_then_timeout((lock, timeout_ms): (mp::Lock, u64)) -> (String, String, u128) {
    let tried = match lock.try_lock() {
        Ok(_) => "acquired".to_owned(),
        Err(TryLockError::WouldBlock) => "would block".to_owned(),
        Err(TryLockError::Poisoned(_)) => "poisoned".to_owned(),
    };
    let t0 = Instant::now();
    let timed = match lock.blocking_lock_timeout(Duration::from_millis(timeout_ms)) {
        Ok(_) => "acquired".to_owned(),
        Err(TryLockError::WouldBlock) => "would block".to_owned(),
        Err(TryLockError::Poisoned(_)) => "poisoned".to_owned(),
    };
    (tried, timed, t0.elapsed().as_millis())
}

async fn async_lock_timeout((lock, timeout_ms): (mp::Lock, u64)) -> (bool, u128) {
    let t0 = Instant::now();
    let r = lock.lock_timeout(Duration::from_millis(timeout_ms)).await;
    (
        matches!(r, Err(TryLockError::WouldBlock)),
        t0.elapsed().as_millis(),
    )
}

async fn try_lock_and_timeouts_while_held_elsewhere() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let guard = lock.lock().await?;
    ensure(lock.is_locked(), "held")?;
    ensure(
        matches!(lock.try_lock(), Err(TryLockError::WouldBlock)),
        "try_lock in the holder's own process would block too",
    )?;
    let p = mp::Process::new(try_then_timeout, (lock.clone(), 300));
    p.start().await?;
    let (tried, timed, ms) = p.join().await?;
    ensure(tried == "would block", format!("try_lock: {tried}"))?;
    ensure(timed == "would block", format!("lock_timeout: {timed}"))?;
    ensure(
        about(
            Duration::from_millis(u64::try_from(ms)?),
            Duration::from_millis(300),
        ),
        format!("sync timeout after {ms} ms"),
    )?;
    let p = mp::Process::new(async_lock_timeout, (lock.clone(), 300));
    p.start().await?;
    let (would_block, ms) = p.join().await?;
    ensure(would_block, "async lock_timeout would block")?;
    ensure(
        about(
            Duration::from_millis(u64::try_from(ms)?),
            Duration::from_millis(300),
        ),
        format!("async timeout after {ms} ms"),
    )?;
    let t0 = Instant::now();
    let r = lock.lock_timeout(Duration::from_millis(200)).await;
    ensure(
        matches!(r, Err(TryLockError::WouldBlock)),
        "lock_timeout in the parent",
    )?;
    ensure(
        about(t0.elapsed(), Duration::from_millis(200)),
        format!("{:?}", t0.elapsed()),
    )?;
    drop(guard);
    ensure(!lock.is_locked(), "released")?;
    let p = mp::Process::new(try_then_timeout, (lock.clone(), 300));
    p.start().await?;
    let (tried, timed, _) = p.join().await?;
    ensure(
        tried == "acquired" && timed == "acquired",
        format!("free: {tried}, {timed}"),
    )?;
    Ok(())
}

/// Waits for the lock on a current-thread runtime while a ticker task on
/// the same runtime keeps running: the wait must not block the thread.
async fn wait_while_ticking(lock: mp::Lock) -> (u32, u128) {
    let ticks = std::sync::Arc::new(AtomicU32::new(0));
    let t = ticks.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            t.fetch_add(1, Ordering::Relaxed);
        }
    });
    let t0 = Instant::now();
    let _g = lock.lock().await.expect("not poisoned");
    let waited = t0.elapsed().as_millis();
    ticker.abort();
    (ticks.load(Ordering::Relaxed), waited)
}

async fn async_waits_leave_the_runtime_free() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let guard = lock.lock().await?;
    let p = mp::Process::new(wait_while_ticking, lock.clone());
    p.start().await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(guard);
    let (ticks, waited) = p.join().await?;
    ensure(waited >= 400, format!("the child waited {waited} ms"))?;
    ensure(
        ticks >= 15,
        format!("the child's only runtime thread ticked {ticks} times while it waited {waited} ms"),
    )
}

fn hold_for(((lock, held), ms): ((mp::Lock, mp::Event), u64)) {
    let _g = lock.blocking_lock().expect("not poisoned");
    held.set();
    std::thread::sleep(Duration::from_millis(ms));
}

async fn a_dropped_lock_future_takes_nothing() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let held = mp::Event::new()?;
    let p = mp::Process::new(hold_for, ((lock.clone(), held.clone()), 300));
    p.start().await?;
    held.wait().await;
    for _ in 0..3 {
        ensure(
            tokio::time::timeout(Duration::from_millis(30), lock.lock())
                .await
                .is_err(),
            "the lock is still held",
        )?;
    }
    let r = tokio::select! {
        g = lock.lock() => g.is_ok(),
        _ = tokio::time::sleep(Duration::from_millis(50)) => false,
    };
    ensure(!r, "still held at the select")?;
    p.join().await?;
    // The dropped futures left the lock free, for this process and others.
    ensure(!lock.is_locked(), "free after the holder left")?;
    let g = lock.try_lock();
    ensure(g.is_ok(), "try_lock succeeds")?;
    drop(g);
    let p = mp::Process::new(try_then_timeout, (lock.clone(), 10));
    p.start().await?;
    let (tried, ..) = p.join().await?;
    ensure(tried == "acquired", tried)
}

fn hold_forever((lock, held): (mp::Lock, mp::Event)) {
    let _g = lock.blocking_lock().expect("not poisoned");
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Takes the lock on this thread; tells whether it came poisoned, and how
/// long the wait took.
fn lock_and_report(lock: mp::Lock) -> (bool, bool, u128) {
    let t0 = Instant::now();
    let r = lock.blocking_lock();
    let poisoned = r.is_err();
    drop(r);
    (poisoned, lock.is_poisoned(), t0.elapsed().as_millis())
}

async fn a_holder_killed_with_sigkill_poisons_the_lock() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_forever, (lock.clone(), held.clone()));
    holder.start().await?;
    ensure(
        held.wait_timeout(Duration::from_secs(10)).await,
        "the holder took the lock",
    )?;
    let waiter = mp::Process::new(lock_and_report, lock.clone());
    waiter.start().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure(waiter.is_alive(), "the waiter waits while the holder lives")?;
    let killed_at = Instant::now();
    holder.kill()?;
    let (got_poisoned, saw_flag, _) = waiter.join().await?;
    let recovered = killed_at.elapsed();
    ensure(got_poisoned, "the waiter got Err(Poisoned(guard))")?;
    ensure(saw_flag, "is_poisoned in the waiter")?;
    ensure(
        recovered < Duration::from_secs(3),
        format!("taken over {recovered:?} after the kill"),
    )?;
    ensure(holder.join().await.is_err(), "the holder died")?;
    ensure(lock.is_poisoned(), "is_poisoned in the parent")?;
    ensure(!lock.is_locked(), "the waiter released it")?;
    // Like std's Mutex: every locker sees the poison until it is cleared.
    let g = lock.lock().await;
    ensure(g.is_err(), "still poisoned for the next locker")?;
    drop(g);
    lock.clear_poison();
    ensure(!lock.is_poisoned(), "cleared")?;
    ensure(lock.lock().await.is_ok(), "clean after clear_poison")?;
    Ok(())
}

async fn an_async_waiter_takes_over_from_a_dead_holder() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_forever, (lock.clone(), held.clone()));
    holder.start().await?;
    held.wait().await;
    let l2 = lock.clone();
    let waiting = tokio::spawn(async move {
        let r = l2.lock().await;
        r.is_err()
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    ensure(!waiting.is_finished(), "waits while the holder lives")?;
    holder.kill()?;
    let poisoned = tokio::time::timeout(Duration::from_secs(5), waiting).await??;
    ensure(poisoned, "the async waiter got Err(Poisoned(guard))")?;
    ensure(lock.is_poisoned(), "poisoned")
}

#[cfg(unix)]
/// What one attempt to lock gave: "acquired", "poisoned" or "timed out".
fn describe<G>(r: Result<G, TryLockError<G>>) -> String {
    match r {
        Ok(_) => "acquired".to_owned(),
        Err(TryLockError::Poisoned(_)) => "poisoned".to_owned(),
        Err(TryLockError::WouldBlock) => "timed out".to_owned(),
    }
}

// Unix only: it runs a child out of descriptors (setrlimit).
#[cfg(unix)]
/// With no descriptor left (so `/proc` cannot be read), tries the lock
/// for 1.5 s, blocking and then async; returns what each got and when.
fn lock_without_descriptors(lock: mp::Lock) -> Vec<(String, u128)> {
    let taken = exhaust_descriptors();
    let mut out = Vec::new();
    let t0 = Instant::now();
    let got = describe(lock.blocking_lock_timeout(Duration::from_millis(1500)));
    out.push((got, t0.elapsed().as_millis()));
    // The runtime is built before the descriptors run out; its sleeps need
    // a thread, not a descriptor.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build();
    drop(taken);
    let rt = rt.expect("a runtime");
    let taken = exhaust_descriptors();
    let t0 = Instant::now();
    let got = rt.block_on(async { describe(lock.lock_timeout(Duration::from_millis(1500)).await) });
    out.push((got, t0.elapsed().as_millis()));
    drop(taken);
    out
}

// Unix only: see `lock_without_descriptors`.
#[cfg(unix)]
/// A holder that is alive is never declared dead because a waiter cannot
/// read `/proc` (it used to be: every failure to read `/proc/PID/stat`
/// counted as a death, and the waiter took the lock, poisoned, from a
/// holder that still held it).
async fn a_live_holder_keeps_its_lock_from_a_waiter_out_of_descriptors() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_forever, (lock.clone(), held.clone()));
    holder.start().await?;
    ensure(
        held.wait_timeout(Duration::from_secs(10)).await,
        "the holder took the lock",
    )?;
    let waiter = mp::Process::new(lock_without_descriptors, lock.clone());
    waiter.start().await?;
    let got = waiter.join().await?;
    ensure(holder.is_alive(), "the holder still lives")?;
    for (what, ms) in &got {
        ensure(
            what == "timed out",
            format!("the waiter got the lock of a live holder: {got:?}"),
        )?;
        ensure(
            *ms >= 1300,
            format!("gave up after {ms} ms, before its 1.5 s: {got:?}"),
        )?;
    }
    ensure(got.len() == 2, format!("{got:?}"))?;
    ensure(!lock.is_poisoned(), "a live holder's lock is not poisoned")?;
    holder.kill()?;
    let _ = holder.join().await;
    Ok(())
}

fn lock_then_panic(lock: mp::Lock) {
    let _g = lock.blocking_lock().expect("not poisoned");
    panic!("while holding the lock");
}

async fn a_holder_that_panics_poisons_the_lock() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let p = mp::Process::new(lock_then_panic, lock.clone());
    p.start().await?;
    ensure(
        p.join().await.is_err_and(|e| e.is_panic()),
        "the child panicked",
    )?;
    ensure(lock.is_poisoned(), "poisoned by the panic")?;
    ensure(!lock.is_locked(), "the guard released it while unwinding")?;
    ensure(
        matches!(lock.try_lock(), Err(TryLockError::Poisoned(_))),
        "try_lock reports the poison",
    )?;
    Ok(())
}

// Unix only: seccomp strict mode is Linux's.
#[cfg(unix)]
static FAST_PATHS_DONE: AtomicU32 = AtomicU32::new(0);

// Unix only: seccomp strict mode is Linux's.
#[cfg(unix)]
/// Runs the fast paths on a thread in seccomp strict mode, where any
/// system call other than read, write, exit and sigreturn kills it.
/// Returns 1 if every operation completed.
fn fast_paths_under_seccomp(
    (lock, rlock, sem, event): (mp::Lock, mp::RLock, mp::Semaphore, mp::Event),
) -> u32 {
    // The first use of a lock reads this process's start time from /proc:
    // do it before the thread locks itself down.
    drop(lock.blocking_lock());
    drop(rlock.blocking_lock());
    std::thread::spawn(move || {
        // SAFETY: prctl with these arguments only changes this thread's
        // seccomp mode; it touches no memory of ours.
        let rc = unsafe {
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_STRICT as libc::c_ulong,
            )
        };
        if rc != 0 {
            FAST_PATHS_DONE.store(2, Ordering::SeqCst);
            return;
        }
        for _ in 0..10_000 {
            drop(lock.blocking_lock());
            drop(lock.try_lock());
            let outer = rlock.blocking_lock();
            let inner = rlock.try_lock();
            drop(inner);
            drop(outer);
            drop(sem.try_acquire());
            drop(sem.blocking_acquire());
            event.set();
            assert!(event.is_set());
            event.clear();
        }
        FAST_PATHS_DONE.store(1, Ordering::SeqCst);
        // SAFETY: ends this thread with `exit`, which strict mode allows,
        // without returning into the standard library's thread exit (which
        // would make calls strict mode forbids). The thread's handles are
        // leaked, which is fine in a child that is about to exit.
        unsafe { libc::syscall(libc::SYS_exit, 0) };
    });
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let done = FAST_PATHS_DONE.load(Ordering::SeqCst);
        if done != 0 {
            return done;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}

// Unix only: seccomp strict mode is Linux's.
#[cfg(unix)]
async fn uncontended_fast_paths_make_no_system_call() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let rlock = mp::RLock::new()?;
    let sem = mp::Semaphore::new(1)?;
    let event = mp::Event::new()?;
    let p = mp::Process::new(fast_paths_under_seccomp, (lock, rlock, sem, event));
    p.start().await?;
    match p.join().await {
        Ok(1) => Ok(()),
        Ok(2) => Err("seccomp strict mode is not available here".into()),
        Ok(0) => Err("a fast path made a system call: its thread was killed by seccomp".into()),
        other => Err(format!("the child ended with {other:?}").into()),
    }
}

fn assert_send_sync<T: Send + Sync>(_: &T) {}
fn assert_send<T: Send>(_: &T) {}

/// Every handle is `Send + Sync`, and so are the futures and guards.
async fn handles_futures_and_guards_are_send() -> Result<(), Failed> {
    let lock = mp::Lock::new()?;
    let rlock = mp::RLock::new()?;
    let sem = mp::Semaphore::new(1)?;
    let bsem = mp::BoundedSemaphore::new(1)?;
    let event = mp::Event::new()?;
    let cond = mp::Condition::new()?;
    let barrier = mp::Barrier::new(1)?;
    assert_send_sync(&lock);
    assert_send_sync(&rlock);
    assert_send_sync(&sem);
    assert_send_sync(&bsem);
    assert_send_sync(&event);
    assert_send_sync(&cond);
    assert_send_sync(&barrier);
    assert_send(&lock.lock());
    assert_send(&lock.lock_timeout(Duration::ZERO));
    assert_send(&rlock.lock());
    assert_send(&sem.acquire());
    assert_send(&bsem.acquire_timeout(Duration::ZERO));
    assert_send(&event.wait());
    assert_send(&event.wait_timeout(Duration::ZERO));
    assert_send(&cond.lock());
    assert_send(&barrier.wait());
    let g = lock.lock().await?;
    assert_send_sync(&g);
    drop(g);
    let g = cond.lock().await?;
    let fut = cond.wait_timeout(g, Duration::from_millis(1));
    assert_send(&fut);
    drop(fut.await);
    let permit = sem.acquire().await;
    assert_send_sync(&permit);
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        case(
            "four_processes_exclude_each_other",
            T,
            four_processes_exclude_each_other,
        ),
        case(
            "try_lock_and_timeouts_while_held_elsewhere",
            T,
            try_lock_and_timeouts_while_held_elsewhere,
        ),
        case(
            "async_waits_leave_the_runtime_free",
            T,
            async_waits_leave_the_runtime_free,
        ),
        case(
            "a_dropped_lock_future_takes_nothing",
            T,
            a_dropped_lock_future_takes_nothing,
        ),
        case(
            "a_holder_killed_with_sigkill_poisons_the_lock",
            T,
            a_holder_killed_with_sigkill_poisons_the_lock,
        ),
        case(
            "an_async_waiter_takes_over_from_a_dead_holder",
            T,
            an_async_waiter_takes_over_from_a_dead_holder,
        ),
        case(
            "a_holder_that_panics_poisons_the_lock",
            T,
            a_holder_that_panics_poisons_the_lock,
        ),
        case(
            "handles_futures_and_guards_are_send",
            T,
            handles_futures_and_guards_are_send,
        ),
    ];
    // Unix only: descriptors run out by setrlimit, seccomp strict mode.
    #[cfg(unix)]
    cases.extend([
        case(
            "a_live_holder_keeps_its_lock_from_a_waiter_out_of_descriptors",
            T,
            a_live_holder_keeps_its_lock_from_a_waiter_out_of_descriptors,
        ),
        case(
            "uncontended_fast_paths_make_no_system_call",
            T,
            uncontended_fast_paths_make_no_system_call,
        ),
    ]);
    cases
}
