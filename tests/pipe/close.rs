//! What a `Pipe` end does when the other end closes, in another process:
//! `recv` drains then says `Closed` every time, `send` fails without
//! `SIGPIPE`, and `poll` waits for about its timeout.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

/// Sends three numbers and returns, dropping its end.
fn send_three(conn: mp::Connection<u32>) {
    for i in 1..=3 {
        conn.blocking_send(&i).unwrap();
    }
}

/// Sends three numbers from async code and returns without flushing: the
/// drop writes them out.
async fn async_send_three(tx: mp::Sender<u32>) {
    for i in 1..=3 {
        tx.send(&i).await.unwrap();
    }
}

/// Sends three numbers, closes its end, and lingers so that the process
/// outlives the end.
fn send_three_close_and_linger(mut conn: mp::Connection<u32>) {
    for i in 1..=3 {
        conn.blocking_send(&i).unwrap();
    }
    conn.close();
    conn.close();
    std::thread::sleep(Duration::from_millis(600));
}

/// Receives `$want` messages with `$recv`, then expects `Closed` three
/// times.
macro_rules! drain_then_closed {
    ($recv:expr, $want:expr) => {
        for i in 0..$want {
            $recv
                .await
                .map_err(|e| format!("message {i} did not arrive: {e}"))?;
        }
        for _ in 0..3 {
            match $recv.await {
                Err(mp::ChannelError::Closed) => {}
                other => return Err(format!("expected Closed, got {other:?}").into()),
            }
        }
    };
}

async fn recv_is_closed_every_time_after_the_buffered_messages() -> Result<(), Failed> {
    // The child is gone before we read: all three wait in the socket.
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(send_three, there);
    child.start().await?;
    child.join().await?;
    drain_then_closed!(here.recv(), 3);

    // An async child, on a one-way pipe, read while it runs.
    let (mut rx, tx) = mp::Pipe::oneway::<u32>()?;
    let child = mp::Process::new(async_send_three, tx);
    child.start().await?;
    drain_then_closed!(rx.recv(), 3);
    child.join().await?;

    // The child closes its end and lives on: close() alone ends the stream.
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(send_three_close_and_linger, there);
    child.start().await?;
    drain_then_closed!(here.recv(), 3);
    ensure(child.is_alive(), "the child still runs")?;
    child.join().await?;

    // The blocking form says the same.
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(send_three, there);
    child.start().await?;
    child.join().await?;
    tokio::task::spawn_blocking(move || {
        for _ in 0..3 {
            here.blocking_recv()?;
        }
        for _ in 0..3 {
            match here.blocking_recv() {
                Err(mp::ChannelError::Closed) => {}
                other => return Err(format!("expected Closed, got {other:?}").into()),
            }
        }
        Ok::<(), Failed>(())
    })
    .await?
}

fn drop_at_once(_conn: mp::Connection<u32>) {}

async fn send_to_a_closed_peer_is_an_error() -> Result<(), Failed> {
    let (here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(drop_at_once, there);
    child.start().await?;
    child.join().await?;
    // The OS may take one send to report it; within a few it must.
    let mut failed_at = None;
    for i in 0..5 {
        match here.send(&i).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(mp::ChannelError::Closed) => {
                failed_at = Some(i);
                break;
            }
            Err(e) => return Err(format!("expected Closed, got {e:?}").into()),
        }
    }
    ensure(
        failed_at.is_some_and(|i| i <= 2),
        format!("send failed at attempt {failed_at:?}"),
    )?;
    // Every later send, flush or blocking send fails the same way.
    ensure(
        matches!(here.send(&9).await, Err(mp::ChannelError::Closed)),
        "send stays failed",
    )?;
    ensure(
        matches!(here.flush().await, Err(mp::ChannelError::Closed)),
        "flush fails",
    )?;
    ensure(
        matches!(here.blocking_send(&9), Err(mp::ChannelError::Closed)),
        "blocking_send fails",
    )?;
    Ok(())
}

/// Waits until the parent has closed its end, then sends: every send must
/// fail with `Closed` and none may raise `SIGPIPE` (a child starts with the
/// default disposition, which would kill it).
fn send_after_the_parent_left(mut conn: mp::Connection<u32>) -> Vec<String> {
    assert!(
        conn.blocking_poll(Duration::from_secs(10)),
        "the close arrives"
    );
    assert!(matches!(
        conn.blocking_recv(),
        Err(mp::ChannelError::Closed)
    ));
    (0..5)
        .map(|i| match conn.blocking_send(&i) {
            Ok(()) => "ok".to_owned(),
            Err(mp::ChannelError::Closed) => "closed".to_owned(),
            Err(e) => format!("{e:?}"),
        })
        .collect()
}

async fn a_child_sending_to_a_closed_parent_gets_closed_not_sigpipe() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(send_after_the_parent_left, there);
    child.start().await?;
    here.close();
    let results = child.join().await?;
    ensure(
        results.iter().all(|r| r == "closed"),
        format!("the child's sends: {results:?}"),
    )?;
    Ok(())
}

/// Sleeps, sends one message, sleeps again, and leaves.
fn slow_sender(conn: mp::Connection<u32>) {
    std::thread::sleep(Duration::from_millis(300));
    conn.blocking_send(&7).unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

async fn poll_waits_for_its_timeout_then_sees_a_message_and_the_close() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(slow_sender, there);
    child.start().await?;

    let t0 = Instant::now();
    ensure(!here.poll(Duration::from_millis(100)).await, "nothing yet")?;
    let waited = t0.elapsed();
    ensure(
        waited >= Duration::from_millis(95) && waited < Duration::from_millis(1000),
        format!("poll(100ms) took {waited:?}"),
    )?;
    ensure(!here.poll(Duration::ZERO).await, "a zero poll only checks")?;

    let t0 = Instant::now();
    ensure(here.poll(Duration::from_secs(10)).await, "the message")?;
    ensure(
        t0.elapsed() < Duration::from_secs(2),
        "poll returned when the message came",
    )?;
    ensure(here.poll(Duration::ZERO).await, "ready stays ready")?;
    ensure(here.poll(Duration::from_secs(1)).await, "until a recv")?;
    ensure(here.recv().await? == 7, "the message")?;
    ensure(!here.poll(Duration::from_millis(50)).await, "taken")?;

    let t0 = Instant::now();
    ensure(
        here.poll(Duration::from_secs(10)).await,
        "the close is ready",
    )?;
    ensure(t0.elapsed() < Duration::from_secs(2), "promptly")?;
    ensure(here.poll(Duration::ZERO).await, "and stays ready")?;
    ensure(
        matches!(here.recv().await, Err(mp::ChannelError::Closed)),
        "recv says Closed",
    )?;
    child.join().await?;
    Ok(())
}

/// The child's side of polling: a timeout with nothing, then a message.
fn polls_in_the_child(mut conn: mp::Connection<u32>) -> (bool, u128, bool, u32) {
    let t0 = Instant::now();
    let early = conn.blocking_poll(Duration::from_millis(100));
    let waited = t0.elapsed().as_millis();
    conn.blocking_send(&0).unwrap();
    let later = conn.blocking_poll(Duration::from_secs(10));
    let value = conn.blocking_recv().unwrap();
    (early, waited, later, value)
}

async fn blocking_poll_in_a_child() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(polls_in_the_child, there);
    child.start().await?;
    ensure(here.recv().await? == 0, "the child polled once")?;
    here.send(&42).await?;
    let (early, waited, later, value) = child.join().await?;
    ensure(!early, "nothing came in the first 100 ms")?;
    ensure(
        (95..1000).contains(&waited),
        format!("blocking_poll(100ms) took {waited} ms"),
    )?;
    ensure(later && value == 42, "then the message")?;
    Ok(())
}

async fn close_twice_is_fine_and_use_after_close_errors() -> Result<(), Failed> {
    let (mut a, mut b) = mp::Pipe::new::<u32>()?;
    a.send(&1).await?;
    a.close();
    a.close();
    ensure(a.is_closed(), "closed")?;
    let kind = |r: Result<(), mp::ChannelError>| match r {
        Err(mp::ChannelError::Io(e)) => Some(e.kind()),
        _ => None,
    };
    ensure(
        kind(a.send(&2).await) == Some(std::io::ErrorKind::NotConnected),
        "send after close",
    )?;
    ensure(
        kind(a.recv().await.map(drop)) == Some(std::io::ErrorKind::NotConnected),
        "recv after close",
    )?;
    ensure(a.poll(Duration::ZERO).await, "a closed end polls ready")?;
    // What was queued before the close arrived.
    ensure(b.recv().await? == 1, "queued before close")?;
    ensure(
        matches!(b.recv().await, Err(mp::ChannelError::Closed)),
        "then the end",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "recv_is_closed_every_time_after_the_buffered_messages",
            T,
            recv_is_closed_every_time_after_the_buffered_messages,
        ),
        case(
            "send_to_a_closed_peer_is_an_error",
            T,
            send_to_a_closed_peer_is_an_error,
        ),
        case(
            "a_child_sending_to_a_closed_parent_gets_closed_not_sigpipe",
            T,
            a_child_sending_to_a_closed_parent_gets_closed_not_sigpipe,
        ),
        case(
            "poll_waits_for_its_timeout_then_sees_a_message_and_the_close",
            T,
            poll_waits_for_its_timeout_then_sees_a_message_and_the_close,
        ),
        case("blocking_poll_in_a_child", T, blocking_poll_in_a_child),
        case(
            "close_twice_is_fine_and_use_after_close_errors",
            T,
            close_twice_is_fine_and_use_after_close_errors,
        ),
    ]
}
