//! Compile-time checks of which public types and futures are `Send`,
//! `Sync` and `Unpin`. Nothing here runs: if this file compiles, the
//! assertions hold. A change that adds or loses one of these traits fails
//! the build, so that it is made on purpose.
//!
//! `!Trait` asserts that the trait is *not* implemented, through an
//! ambiguity: `NotX::check(&v)` has one candidate impl when `v` lacks `X`
//! and two (an error) when it has it.

#![allow(dead_code)]

use std::rc::Rc;
use std::time::Duration;

use tokio_multiprocessing as mp;

fn is_send<T: Send>(_: &T) {}
fn is_sync<T: Sync>(_: &T) {}
fn is_unpin<T: Unpin>(_: &T) {}

trait NotSend<M> {
    fn check(&self) {}
}
impl<T: ?Sized> NotSend<()> for T {}
impl<T: ?Sized + Send> NotSend<u8> for T {}

trait NotSync<M> {
    fn check(&self) {}
}
impl<T: ?Sized> NotSync<()> for T {}
impl<T: ?Sized + Sync> NotSync<u8> for T {}

trait NotUnpin<M> {
    fn check(&self) {}
}
impl<T: ?Sized> NotUnpin<()> for T {}
impl<T: ?Sized + Unpin> NotUnpin<u8> for T {}

/// `assert_traits!(value: Send & !Sync & Unpin)`.
macro_rules! assert_traits {
    ($v:expr => $($t:tt)+) => {{
        let v = $v;
        assert_traits!(@ v, $($t)+);
    }};
    (@ $v:ident, Send $(& $($rest:tt)+)?) => {
        is_send(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
    (@ $v:ident, Sync $(& $($rest:tt)+)?) => {
        is_sync(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
    (@ $v:ident, Unpin $(& $($rest:tt)+)?) => {
        is_unpin(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
    (@ $v:ident, !Send $(& $($rest:tt)+)?) => {
        NotSend::check(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
    (@ $v:ident, !Sync $(& $($rest:tt)+)?) => {
        NotSync::check(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
    (@ $v:ident, !Unpin $(& $($rest:tt)+)?) => {
        NotUnpin::check(&$v); $(assert_traits!(@ $v, $($rest)+);)?
    };
}

fn square(x: u64) -> u64 {
    x * x
}

async fn async_square(x: u64) -> u64 {
    x * x
}

/// A message type that is neither `Send` nor `Sync`: a pipe end never
/// holds one, so the end's traits do not depend on it.
type Local = Rc<u8>;

fn types(
    process: mp::Process<u64>,
    local_process: mp::Process<Local>,
    builder: mp::ProcessBuilder,
    info: mp::ProcessInfo,
    sentinel: mp::Sentinel,
    guard: mp::InitGuard,
    pipe_builder: mp::PipeBuilder,
) {
    assert_traits!(process => Send & Sync & Unpin);
    assert_traits!(local_process => Send & Sync & Unpin);
    assert_traits!(builder => Send & Sync & Unpin);
    assert_traits!(info => Send & Sync & Unpin);
    assert_traits!(sentinel => Send & Sync & Unpin);
    assert_traits!(guard => Send & Sync & Unpin);
    assert_traits!(pipe_builder => Send & Sync & Unpin);
    assert_traits!(mp::StartMethod::Spawn => Send & Sync & Unpin);
    assert_traits!(mp::ChannelError::Closed => Send & Sync & Unpin);
    assert_traits!(mp::ProcessError::NotStarted => Send & Sync & Unpin);
    assert_traits!(mp::Error::from(mp::ChannelError::Closed) => Send & Sync & Unpin);
}

fn pipe_ends(
    conn: mp::Connection<u64>,
    tx: mp::Sender<u64>,
    rx: mp::Receiver<u64>,
    local_conn: mp::Connection<Local>,
    local_tx: mp::Sender<Local>,
    local_rx: mp::Receiver<Local>,
) {
    assert_traits!(conn => Send & Sync & Unpin);
    assert_traits!(tx => Send & Sync & Unpin);
    assert_traits!(rx => Send & Sync & Unpin);
    assert_traits!(local_conn => Send & Sync & Unpin);
    assert_traits!(local_tx => Send & Sync & Unpin);
    assert_traits!(local_rx => Send & Sync & Unpin);
}

fn process_futures(process: &mp::Process<u64>, builder: mp::ProcessBuilder) {
    assert_traits!(process.start() => Send & Sync & !Unpin);
    assert_traits!(process.join() => Send & Sync & !Unpin);
    assert_traits!(process.join_timeout(Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(builder.clone().spawn(square, 3) => Send & Sync & !Unpin);
    assert_traits!(builder.spawn(async_square, 3) => Send & Sync & !Unpin);
    assert_traits!(process.sentinel() => Send & Sync & Unpin);
}

fn process_set_futures(
    mut set: mp::ProcessSet<u64>,
    process: mp::Process<u64>,
    builder: mp::ProcessBuilder,
) {
    assert_traits!(set.spawn(process) => Send & Sync & !Unpin);
    assert_traits!(set.spawn_with(builder, square, 3) => Send & Sync & !Unpin);
    assert_traits!(set.join_next() => Send & Sync & !Unpin);
    assert_traits!(set.shutdown() => Send & Sync & !Unpin);
    assert_traits!(set => Send & Sync & Unpin);
}

fn wait_futures(sentinels: &[mp::Sentinel], mixed: &[&dyn mp::Waitable]) {
    assert_traits!(mp::wait(sentinels, None) => Send & !Sync & !Unpin);
    assert_traits!(mp::wait(mixed, Some(Duration::ZERO)) => Send & !Sync & !Unpin);
}

fn connection_send_futures(conn: &mp::Connection<u64>, tx: &mp::Sender<u64>, msg: &u64) {
    assert_traits!(conn.send(msg) => Send & Sync & !Unpin);
    assert_traits!(conn.flush() => Send & Sync & !Unpin);
    assert_traits!(tx.send(msg) => Send & Sync & !Unpin);
    assert_traits!(tx.flush() => Send & Sync & !Unpin);
}

fn connection_recv_futures(conn: &mut mp::Connection<u64>) {
    assert_traits!(conn.recv() => Send & Sync & !Unpin);
}

fn connection_poll_futures(conn: &mut mp::Connection<u64>) {
    assert_traits!(conn.poll(Duration::ZERO) => Send & Sync & !Unpin);
}

fn receiver_futures(rx: &mut mp::Receiver<u64>) {
    assert_traits!(rx.recv() => Send & Sync & !Unpin);
}

fn receiver_poll_futures(rx: &mut mp::Receiver<u64>) {
    assert_traits!(rx.poll(Duration::ZERO) => Send & Sync & !Unpin);
}

/// A message that is `Send` but not `Sync`: the future of a `send` borrows
/// the message, so it is `Send` only when the message is `Sync`.
fn send_future_follows_the_message(conn: &mp::Connection<std::cell::Cell<u8>>) {
    let msg = std::cell::Cell::new(1u8);
    assert_traits!(conn.send(&msg) => !Send & !Sync & !Unpin);
}

fn queues(q: mp::Queue<u64>, jq: mp::JoinableQueue<u64>, local: mp::Queue<Local>) {
    assert_traits!(q.clone() => Send & Sync & Unpin);
    assert_traits!(jq.clone() => Send & Sync & Unpin);
    assert_traits!(local => Send & Sync & Unpin);
    assert_traits!(q.put(1) => Send & Sync & !Unpin);
    assert_traits!(q.put_timeout(1, Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(q.get() => Send & Sync & !Unpin);
    assert_traits!(q.get_timeout(Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(jq.put(1) => Send & Sync & !Unpin);
    assert_traits!(jq.get() => Send & Sync & !Unpin);
    assert_traits!(jq.join() => Send & Sync & !Unpin);
    assert_traits!(mp::PutError::Full(1u64) => Send & Sync & Unpin);
    assert_traits!(mp::GetError::Empty => Send & Sync & Unpin);
}

fn locks(lock: &mp::Lock, rlock: &mp::RLock, cond: &mp::Condition) {
    assert_traits!(lock.clone() => Send & Sync & Unpin);
    assert_traits!(rlock.clone() => Send & Sync & Unpin);
    assert_traits!(cond.clone() => Send & Sync & Unpin);
    assert_traits!(lock.lock() => Send & Sync & !Unpin);
    assert_traits!(lock.lock_timeout(Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(lock.blocking_lock() => Send & Sync & Unpin);
    assert_traits!(rlock.lock() => Send & Sync & !Unpin);
    // Owned by (process, thread), as in Python: the guard stays on its thread.
    assert_traits!(rlock.blocking_lock() => !Send & Unpin);
    assert_traits!(cond.lock() => Send & Sync & !Unpin);
}

fn shared_values(v: &mp::Value<u64>, a: &mp::Array<f64>, shm: &mp::SharedMemory) {
    assert_traits!(v.clone() => Send & Sync & Unpin);
    assert_traits!(a.clone() => Send & Sync & Unpin);
    assert_traits!(shm.clone() => Send & Sync & Unpin);
    assert_traits!(v.lock() => Send & Sync & !Unpin);
    assert_traits!(v.get() => Send & Sync & !Unpin);
    assert_traits!(v.set(1) => Send & Sync & !Unpin);
    assert_traits!(v.blocking_lock() => Send & Sync & Unpin);
    assert_traits!(a.lock() => Send & Sync & !Unpin);
    assert_traits!(a.to_vec() => Send & Sync & !Unpin);
    assert_traits!(a.blocking_lock() => Send & Sync & Unpin);
}

async fn condition_wait(cond: &mp::Condition) {
    let guard = cond.blocking_lock().unwrap();
    assert_traits!(cond.wait(guard) => Send & !Unpin);
}

fn semaphores_events_barriers(
    sem: &mp::Semaphore,
    bsem: &mp::BoundedSemaphore,
    ev: &mp::Event,
    b: &mp::Barrier,
) {
    assert_traits!(sem.clone() => Send & Sync & Unpin);
    assert_traits!(bsem.clone() => Send & Sync & Unpin);
    assert_traits!(ev.clone() => Send & Sync & Unpin);
    assert_traits!(b.clone() => Send & Sync & Unpin);
    assert_traits!(sem.acquire() => Send & Sync & !Unpin);
    assert_traits!(sem.blocking_acquire() => Send & Sync & Unpin);
    assert_traits!(sem.acquire_timeout(Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(bsem.acquire() => Send & Sync & !Unpin);
    assert_traits!(ev.wait() => Send & Sync & !Unpin);
    assert_traits!(ev.wait_timeout(Duration::ZERO) => Send & Sync & !Unpin);
    assert_traits!(b.wait() => Send & Sync & !Unpin);
    assert_traits!(b.wait_timeout(Duration::ZERO) => Send & Sync & !Unpin);
}

#[test]
fn the_assertions_compile() {}

fn pool_types(
    pool: mp::Pool,
    builder: mp::PoolBuilder,
    stats: mp::PoolStats,
    result: mp::AsyncResult<u64>,
) {
    assert_traits!(result => Send & Sync & Unpin);
    assert_traits!(pool => Send & Sync & Unpin);
    assert_traits!(builder => Send & Sync & Unpin);
    assert_traits!(stats => Send & Sync & Unpin);
    let err = mp::TaskError::Cancelled;
    assert_traits!(err => Send & Sync & Unpin);
}

fn add(a: u64, b: u64) -> u64 {
    a + b
}

fn pool_futures(pool: &mp::Pool) {
    assert_traits!(mp::Pool::new(2) => Send & Sync & !Unpin);
    assert_traits!(mp::Pool::builder().build() => Send & Sync & !Unpin);
    assert_traits!(pool.apply(square, 3) => Send & Sync & !Unpin);
    assert_traits!(pool.apply(async_square, 3) => Send & Sync & !Unpin);
    assert_traits!(pool.map(square, vec![1, 2]) => Send & Sync & !Unpin);
    assert_traits!(pool.map_chunked(square, 0..10, 2) => Send & Sync & !Unpin);
    assert_traits!(pool.starmap(add, vec![(1, 2)]) => Send & Sync & !Unpin);
    assert_traits!(pool.imap(square, 0..10) => Send & !Sync & Unpin);
    assert_traits!(pool.imap_unordered(square, 0..10) => Send & !Sync & Unpin);
    assert_traits!(pool.imap_stream(square, futures::stream::iter(0..10)) => Send & !Sync & Unpin);
    assert_traits!(pool.join() => Send & Sync & !Unpin);
    assert_traits!(pool.terminate() => Send & Sync & !Unpin);
}
