//! `Pipe` ends travelling to children inside their targets' arguments:
//! sync and async targets, child to child, the parent's copy closing, and
//! `wait` over a connection and a sentinel together.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use serde::{Deserialize, Serialize};
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Job {
    Square(u64),
    Greet(String),
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Answer {
    Squared(u64),
    Greeted(String),
}

fn answer(job: Job) -> Option<Answer> {
    match job {
        Job::Square(x) => Some(Answer::Squared(x * x)),
        Job::Greet(name) => Some(Answer::Greeted(format!(
            "hello {name} from {}",
            std::process::id()
        ))),
        Job::Stop => None,
    }
}

/// A synchronous worker: answers jobs with the blocking forms.
fn sync_worker((mut jobs, answers): (mp::Receiver<Job>, mp::Sender<Answer>)) -> u32 {
    let mut done = 0;
    while let Some(a) = jobs.blocking_recv().ok().and_then(answer) {
        answers.blocking_send(&a).unwrap();
        done += 1;
    }
    done
}

/// An asynchronous worker on one duplex connection.
async fn async_worker(mut conn: mp::Connection<Result<Answer, Job>>) -> u32 {
    let mut done = 0;
    while let Ok(Err(job)) = conn.recv().await {
        let Some(a) = answer(job) else { break };
        conn.send(&Ok(a)).await.unwrap();
        done += 1;
    }
    done
}

async fn ends_cross_to_sync_and_async_children() -> Result<(), Failed> {
    // Sync: two one-way pipes, both ends that the child needs in a tuple.
    let (jobs_rx, jobs_tx) = mp::Pipe::oneway::<Job>()?;
    let (mut answers_rx, answers_tx) = mp::Pipe::oneway::<Answer>()?;
    let child = mp::Process::new(sync_worker, (jobs_rx, answers_tx));
    child.start().await?;
    let pid = child.pid().ok_or("pid")?;
    jobs_tx.send(&Job::Square(12)).await?;
    jobs_tx.send(&Job::Greet("bob".into())).await?;
    jobs_tx.send(&Job::Stop).await?;
    ensure(answers_rx.recv().await? == Answer::Squared(144), "squared")?;
    ensure(
        answers_rx.recv().await? == Answer::Greeted(format!("hello bob from {pid}")),
        "greeted, from the child",
    )?;
    ensure(child.join().await? == 2, "two jobs")?;
    ensure(
        matches!(answers_rx.recv().await, Err(mp::ChannelError::Closed)),
        "the child's sender is gone, and we hold no copy",
    )?;

    // Async, on one duplex connection.
    let (mut here, there) = mp::Pipe::new::<Result<Answer, Job>>()?;
    let child = mp::Process::new(async_worker, there);
    child.start().await?;
    for x in 0..100 {
        here.send(&Err(Job::Square(x))).await?;
    }
    for x in 0..100 {
        ensure(here.recv().await? == Ok(Answer::Squared(x * x)), "in order")?;
    }
    here.send(&Err(Job::Stop)).await?;
    ensure(child.join().await? == 100, "a hundred jobs")?;
    Ok(())
}

fn produce((tx, n): (mp::Sender<u64>, u64)) {
    for i in 0..n {
        tx.blocking_send(&i).unwrap();
    }
}

async fn consume(mut rx: mp::Receiver<u64>) -> (u64, u64) {
    let (mut count, mut sum) = (0, 0);
    let mut next = 0;
    while let Ok(v) = rx.recv().await {
        assert_eq!(v, next, "in order");
        next += 1;
        count += 1;
        sum += v;
    }
    (count, sum)
}

async fn a_pipe_between_two_children() -> Result<(), Failed> {
    let (rx, tx) = mp::Pipe::oneway::<u64>()?;
    let n = 20_000;
    let consumer = mp::Process::new(consume, rx);
    let producer = mp::Process::new(produce, (tx, n));
    consumer.start().await?;
    producer.start().await?;
    producer.join().await?;
    let (count, sum) = consumer.join().await?;
    ensure(count == n, format!("{count} of {n} arrived"))?;
    ensure(sum == n * (n - 1) / 2, "the right numbers")?;
    Ok(())
}

/// Many small sends from an async child: coalesced, in order, all there.
async fn burst(tx: mp::Sender<u64>) {
    for i in 0..200_000 {
        tx.send(&i).await.unwrap();
    }
}

async fn a_burst_from_an_async_child_arrives_whole() -> Result<(), Failed> {
    let (mut rx, tx) = mp::Pipe::oneway::<u64>()?;
    let child = mp::Process::new(burst, tx);
    child.start().await?;
    for i in 0..200_000 {
        let v = rx.recv().await?;
        if v != i {
            return Err(format!("message {i} was {v}").into());
        }
    }
    ensure(
        matches!(rx.recv().await, Err(mp::ChannelError::Closed)),
        "then Closed",
    )?;
    child.join().await?;
    Ok(())
}

fn report_in(conn: mp::Connection<String>) {
    std::thread::sleep(Duration::from_millis(100));
    conn.blocking_send(&format!("pid {}", std::process::id()))
        .unwrap();
}

async fn the_child_works_after_the_parent_dropped_everything() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<String>()?;
    let child = mp::Process::new(report_in, there);
    child.start().await?;
    let pid = child.pid().ok_or("pid")?;
    let sentinel = child.sentinel();
    // Nothing of the child's end, nor the handle, is left here.
    drop(child);
    ensure(
        here.recv().await? == format!("pid {pid}"),
        "the child spoke",
    )?;
    ensure(
        matches!(here.recv().await, Err(mp::ChannelError::Closed)),
        "its end closed with it",
    )?;
    ensure(sentinel.await.success(), "the child exited cleanly")?;
    Ok(())
}

fn speak_then_sleep(conn: mp::Connection<u32>) {
    std::thread::sleep(Duration::from_millis(300));
    conn.blocking_send(&5).unwrap();
    std::thread::sleep(Duration::from_millis(300));
}

async fn connections_take_part_in_wait() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<u32>()?;
    let child = mp::Process::new(speak_then_sleep, there);
    child.start().await?;
    let sentinel = child.sentinel();
    {
        let objs: [&dyn mp::Waitable; 2] = [&sentinel, &here];
        let t0 = Instant::now();
        let ready = mp::wait(&objs, Some(Duration::from_millis(100))).await;
        ensure(ready.is_empty(), format!("nothing yet: {ready:?}"))?;
        ensure(
            t0.elapsed() >= Duration::from_millis(95),
            "waited the timeout",
        )?;
        let ready = mp::wait(&objs, Some(Duration::from_secs(10))).await;
        ensure(ready == [1], format!("the message is ready: {ready:?}"))?;
        let ready = mp::wait(&objs, Some(Duration::ZERO)).await;
        ensure(ready == [1], "it stays ready until a recv")?;
    }
    ensure(here.recv().await? == 5, "the message")?;
    {
        let objs: [&dyn mp::Waitable; 2] = [&sentinel, &here];
        let ready = mp::wait(&objs, Some(Duration::from_millis(50))).await;
        ensure(ready.is_empty(), format!("taken: {ready:?}"))?;
        let ready = mp::wait(&objs, Some(Duration::from_secs(10))).await;
        ensure(!ready.is_empty(), "the exit and the close come")?;
        child.join().await?;
        let ready = mp::wait(&objs, Some(Duration::ZERO)).await;
        ensure(ready == [0, 1], format!("both ready after exit: {ready:?}"))?;
    }
    // A Receiver waits too, and several connections in one slice.
    let (mut rx1, tx1) = mp::Pipe::oneway::<u8>()?;
    let (rx2, _tx2) = mp::Pipe::oneway::<u8>()?;
    tx1.send(&1).await?;
    let ready = mp::wait(&[&rx1, &rx2], Some(Duration::from_secs(5))).await;
    ensure(ready == [0], format!("{ready:?}"))?;
    ensure(rx1.recv().await? == 1, "the message")?;
    Ok(())
}

async fn an_end_holding_unread_bytes_is_not_sent() -> Result<(), Failed> {
    let (mut a, b) = mp::Pipe::new::<u32>()?;
    b.send(&1).await?;
    ensure(a.poll(Duration::from_secs(5)).await, "bytes arrived")?;
    let child = mp::Process::new(send_three_back, a);
    match child.start().await {
        Err(mp::ProcessError::EncodeArgs(msg)) => {
            ensure(msg.contains("holds received bytes"), msg.clone())?;
        }
        other => return Err(format!("expected EncodeArgs, got {other:?}").into()),
    }
    Ok(())
}

fn send_three_back(conn: mp::Connection<u32>) {
    for i in 0..3 {
        conn.blocking_send(&i).unwrap();
    }
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "ends_cross_to_sync_and_async_children",
            T,
            ends_cross_to_sync_and_async_children,
        ),
        case(
            "a_pipe_between_two_children",
            T,
            a_pipe_between_two_children,
        ),
        case(
            "a_burst_from_an_async_child_arrives_whole",
            T,
            a_burst_from_an_async_child_arrives_whole,
        ),
        case(
            "the_child_works_after_the_parent_dropped_everything",
            T,
            the_child_works_after_the_parent_dropped_everything,
        ),
        case(
            "connections_take_part_in_wait",
            T,
            connections_take_part_in_wait,
        ),
        case(
            "an_end_holding_unread_bytes_is_not_sent",
            T,
            an_end_holding_unread_bytes_is_not_sent,
        ),
    ]
}
