//! Handles inside Pipe messages: a `Lock` and a `Queue` sent to a running
//! child that uses them, a Pipe end sent through a Pipe, the blocking
//! forms, and no descriptor left behind however many travel.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, case_alone, ensure, open_fds, open_fds_settled};

type Tools = (mp::Lock, mp::Queue<u32>);

/// Receives a lock and a queue (async), says whether the lock was held
/// (the parent holds it), and puts into the queue.
async fn use_tools(mut conn: mp::Connection<Tools>) -> bool {
    let (lock, q) = conn.recv().await.expect("recv");
    let held = lock.try_lock().is_err();
    q.put(7).await.expect("put");
    held
}

/// The same with the blocking forms.
fn use_tools_blocking(mut conn: mp::Connection<Tools>) -> bool {
    let (lock, q) = conn.blocking_recv().expect("recv");
    let held = lock.try_lock().is_err();
    q.blocking_put(8).expect("put");
    held
}

async fn lock_and_queue_to_a_running_child(blocking: bool) -> Result<(), Failed> {
    let (ours, theirs) = mp::Pipe::new::<Tools>()?;
    let p = if blocking {
        mp::Process::new(use_tools_blocking, theirs)
    } else {
        mp::Process::new(use_tools, theirs)
    };
    p.start().await?;
    let lock = mp::Lock::new()?;
    let q = mp::Queue::<u32>::new()?;
    let guard = lock.lock().await.expect("lock");
    if blocking {
        let (l, q) = (lock.clone(), q.clone());
        tokio::task::spawn_blocking(move || ours.blocking_send(&(l, q))).await??;
    } else {
        ours.send(&(lock.clone(), q.clone())).await?;
    }
    let got = q.get_timeout(Duration::from_secs(10)).await?;
    ensure(got == if blocking { 8 } else { 7 }, got)?;
    let held = p.join().await?;
    drop(guard);
    ensure(held, "the child saw the parent's lock held")?;
    Ok(())
}

/// Receives a Pipe end, talks on it, then answers on the first pipe.
fn talk_on_a_received_end(mut conn: mp::Connection<mp::Connection<String>>) {
    let mut end = conn.blocking_recv().expect("recv the end");
    end.blocking_send(&"hello through a sent end".to_owned())
        .expect("send");
    let back = end.blocking_recv().expect("recv on the end");
    end.blocking_send(&back.to_uppercase()).expect("echo");
}

async fn a_pipe_end_through_a_pipe() -> Result<(), Failed> {
    let (ours, theirs) = mp::Pipe::new::<mp::Connection<String>>()?;
    let p = mp::Process::new(talk_on_a_received_end, theirs);
    p.start().await?;
    let (mut near, far) = mp::Pipe::new::<String>()?;
    ours.send(&far).await?;
    drop(far);
    let first = near.recv().await?;
    ensure(first == "hello through a sent end", &first)?;
    near.send(&"ping".to_owned()).await?;
    let echo = near.recv().await?;
    ensure(echo == "PING", &echo)?;
    p.join().await?;
    // The child's copy was the last one of `far`: the stream ends.
    ensure(
        matches!(near.recv().await, Err(mp::ChannelError::Closed)),
        "the end closed with the child",
    )?;
    Ok(())
}

// Unix only (see `cases`).
#[cfg_attr(windows, allow(dead_code))]
/// Many handles through a pipe within this process, received, dropped or
/// never read: the descriptor count comes back to where it was.
async fn no_descriptor_leaks() -> Result<(), Failed> {
    let before = open_fds();
    {
        let (mut rx, tx) = mp::Pipe::oneway::<(u32, mp::Lock, mp::Event)>()?;
        let lock = mp::Lock::new()?;
        let event = mp::Event::new()?;
        for round in 0..20u32 {
            for i in 0..50u32 {
                tx.send(&(round * 50 + i, lock.clone(), event.clone()))
                    .await?;
            }
            for i in 0..50u32 {
                let (n, l, _e) = rx.recv().await?;
                ensure(n == round * 50 + i, n)?;
                drop(l);
            }
        }
        // Messages sent and never read: closed with the ends.
        for i in 0..100u32 {
            tx.send(&(i, lock.clone(), event.clone())).await?;
        }
        tx.flush().await?;
        // Some read into the receiver's buffer, not taken.
        let _ = rx.poll(Duration::from_millis(100)).await;
    }
    let after = open_fds_settled(before).await;
    ensure(
        after <= before,
        format!("{before} descriptors before, {after} after"),
    )?;
    Ok(())
}

/// A message with handles sent to a child that drops it unread, many
/// times: no descriptor stays in either process.
fn drop_what_comes(mut conn: mp::Receiver<Vec<mp::Lock>>) -> usize {
    let mut n = 0;
    while let Ok(locks) = conn.blocking_recv() {
        n += locks.len();
    }
    n
}

async fn many_sends_to_a_child() -> Result<(), Failed> {
    let before = open_fds();
    let (rx, tx) = mp::Pipe::oneway::<Vec<mp::Lock>>()?;
    let p = mp::Process::new(drop_what_comes, rx);
    p.start().await?;
    let lock = mp::Lock::new()?;
    for _ in 0..300 {
        tx.send(&vec![lock.clone(), lock.clone(), lock.clone()])
            .await?;
    }
    drop(tx);
    let n = p.join().await?;
    ensure(n == 900, n)?;
    drop(lock);
    let after = open_fds_settled(before).await;
    ensure(
        after <= before,
        format!("{before} descriptors before, {after} after"),
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        // Unix only: it counts descriptors in /proc, which under Wine are
        // Wine's own, not the process's handles.
        #[cfg(unix)]
        case_alone(
            "no_descriptor_leaks",
            Duration::from_secs(60),
            no_descriptor_leaks,
        ),
        case_alone(
            "many_sends_to_a_child",
            Duration::from_secs(60),
            many_sends_to_a_child,
        ),
        case(
            "lock_and_queue_to_a_running_child",
            Duration::from_secs(30),
            || lock_and_queue_to_a_running_child(false),
        ),
        case(
            "lock_and_queue_to_a_running_child_blocking",
            Duration::from_secs(30),
            || lock_and_queue_to_a_running_child(true),
        ),
        case(
            "a_pipe_end_through_a_pipe",
            Duration::from_secs(30),
            a_pipe_end_through_a_pipe,
        ),
    ]
}
