//! `RLock` across processes and threads: re-entrance, ownership by
//! (process, thread), poisoning by a dead owner.

use std::sync::TryLockError;
use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

fn nested_sync(lock: mp::RLock) -> (u32, u32, bool, u32) {
    let a = lock.blocking_lock().expect("not poisoned");
    let b = lock.blocking_lock().expect("not poisoned");
    let c = lock
        .try_lock()
        .expect("the owner re-enters without waiting");
    let three = lock.count();
    let owned = lock.is_owned();
    drop(c);
    drop(b);
    let one = lock.count();
    drop(a);
    (three, one, owned, lock.count())
}

async fn nested_local(lock: mp::RLock) -> (u32, u32, bool, u32) {
    let a = lock.lock().await.expect("not poisoned");
    let b = lock.lock().await.expect("not poisoned");
    let c = lock
        .lock_timeout(Duration::from_millis(1))
        .await
        .expect("the owner re-enters without waiting");
    let three = lock.count();
    let owned = lock.is_owned();
    drop(c);
    drop(b);
    let one = lock.count();
    drop(a);
    (three, one, owned, lock.count())
}

/// An async target's future must be `Send`, and one that holds an
/// `RLockGuard` across an `.await` is not: run such code on a thread of its
/// own, as here, or on a `LocalSet`.
async fn nested_async(lock: mp::RLock) -> (u32, u32, bool, u32) {
    tokio::task::spawn_blocking(move || futures::executor::block_on(nested_local(lock)))
        .await
        .expect("the nested block")
}

async fn the_owner_reenters_and_must_release_each_time() -> Result<(), Failed> {
    let lock = mp::RLock::new()?;
    let p = mp::Process::new(nested_sync, lock.clone());
    p.start().await?;
    ensure(p.join().await? == (3, 1, true, 0), "sync child")?;
    let p = mp::Process::new(nested_async, lock.clone());
    p.start().await?;
    ensure(p.join().await? == (3, 1, true, 0), "async child")?;
    ensure(lock.count() == 0 && !lock.is_owned(), "free in the parent")?;
    Ok(())
}

/// What another process sees of the lock right now.
fn try_from_elsewhere(lock: mp::RLock) -> String {
    match lock.try_lock() {
        Ok(_) => "acquired".to_owned(),
        Err(TryLockError::WouldBlock) => "would block".to_owned(),
        Err(TryLockError::Poisoned(_)) => "poisoned".to_owned(),
    }
}

async fn try_in_child(lock: &mp::RLock) -> Result<String, Failed> {
    let p = mp::Process::new(try_from_elsewhere, lock.clone());
    p.start().await?;
    Ok(p.join().await?)
}

fn try_in_thread(lock: &mp::RLock) -> String {
    let lock = lock.clone();
    std::thread::spawn(move || try_from_elsewhere(lock))
        .join()
        .expect("the thread")
}

async fn no_other_process_or_thread_takes_it_while_held() -> Result<(), Failed> {
    let lock = mp::RLock::new()?;
    // Guards are !Send: hold them on a blocking thread of their own, which
    // drives the child through the runtime's handle.
    let l = lock.clone();
    let (thread, child) = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Handle::current();
        let outer = l.blocking_lock().expect("not poisoned");
        let inner = l.blocking_lock().expect("not poisoned");
        drop(inner);
        assert_eq!(l.count(), 1, "one guard left");
        let thread = try_in_thread(&l);
        let child = rt.block_on(try_in_child(&l)).map_err(|e| format!("{e:?}"));
        drop(outer);
        (thread, child)
    })
    .await?;
    ensure(thread == "would block", format!("another thread: {thread}"))?;
    ensure(child? == "would block", "another process")?;
    ensure(
        try_in_thread(&lock) == "acquired",
        "another thread, once free",
    )?;
    ensure(
        try_in_child(&lock).await? == "acquired",
        "another process, once free",
    )?;
    Ok(())
}

fn hold_and_sleep(((lock, held), ms): ((mp::RLock, mp::Event), u64)) {
    let _a = lock.blocking_lock().expect("not poisoned");
    let _b = lock.blocking_lock().expect("not poisoned");
    held.set();
    std::thread::sleep(Duration::from_millis(ms));
}

fn wait_for_it(lock: mp::RLock) -> (u128, u32) {
    let t0 = Instant::now();
    let g = lock.blocking_lock().expect("not poisoned");
    let count = lock.count();
    drop(g);
    (t0.elapsed().as_millis(), count)
}

async fn a_waiter_gets_it_after_the_last_release() -> Result<(), Failed> {
    let lock = mp::RLock::new()?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_and_sleep, ((lock.clone(), held.clone()), 300));
    holder.start().await?;
    held.wait().await;
    let t0 = Instant::now();
    let waiter = mp::Process::new(wait_for_it, lock.clone());
    waiter.start().await?;
    let (waited, count) = waiter.join().await?;
    holder.join().await?;
    ensure(
        count == 1,
        format!("a fresh owner starts at 1, got {count}"),
    )?;
    ensure(
        waited >= 150 && t0.elapsed() >= Duration::from_millis(250),
        format!("the waiter waited {waited} ms"),
    )
}

fn hold_forever((lock, held): (mp::RLock, mp::Event)) {
    let _a = lock.blocking_lock().expect("not poisoned");
    let _b = lock.blocking_lock().expect("not poisoned");
    held.set();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

async fn a_dead_owner_poisons_it() -> Result<(), Failed> {
    let lock = mp::RLock::new()?;
    let held = mp::Event::new()?;
    let holder = mp::Process::new(hold_forever, (lock.clone(), held.clone()));
    holder.start().await?;
    ensure(held.wait_timeout(Duration::from_secs(10)).await, "held")?;
    ensure(
        try_in_child(&lock).await? == "would block",
        "held by the holder",
    )?;
    holder.kill()?;
    let t0 = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(5), lock.lock()).await?;
    let recovered = t0.elapsed();
    let (poisoned, count) = match r {
        Ok(g) => {
            drop(g);
            (false, 0)
        }
        Err(p) => {
            let g = p.into_inner();
            let count = lock.count();
            drop(g);
            (true, count)
        }
    };
    ensure(poisoned, "taken over as Err(Poisoned(guard))")?;
    ensure(
        count == 1,
        format!("the new owner holds it once, not {count}"),
    )?;
    ensure(recovered < Duration::from_secs(3), format!("{recovered:?}"))?;
    ensure(lock.is_poisoned(), "poisoned")?;
    lock.clear_poison();
    ensure(lock.try_lock().is_ok(), "clean after clear_poison")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "the_owner_reenters_and_must_release_each_time",
            T,
            the_owner_reenters_and_must_release_each_time,
        ),
        case(
            "no_other_process_or_thread_takes_it_while_held",
            T,
            no_other_process_or_thread_takes_it_while_held,
        ),
        case(
            "a_waiter_gets_it_after_the_last_release",
            T,
            a_waiter_gets_it_after_the_last_release,
        ),
        case("a_dead_owner_poisons_it", T, a_dead_owner_poisons_it),
    ]
}
