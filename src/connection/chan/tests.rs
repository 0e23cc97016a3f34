//! Unit tests of the pipe machinery: coalescing, backpressure, close
//! and cancellation, within one process.

use std::time::Duration;

use serde::Deserialize;
use serde_bytes::ByteBuf;

use super::*;

const LIMIT: Duration = Duration::from_secs(20);

fn pair() -> (Chan, Chan) {
    Chan::pair(crate::wire::frame::DEFAULT_MAX_FRAME).unwrap()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Msg {
    Num(u64),
    Text(String),
    Unit,
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(LIMIT, f).await.expect("hung")
}

#[tokio::test]
async fn a_burst_of_sends_is_one_write() {
    let (a, mut b) = pair();
    for i in 0..1000u64 {
        a.send(&i).await.unwrap();
    }
    assert_eq!(a.writes(), 1, "the first send went out, the others wait");
    for i in 0..1000u64 {
        assert_eq!(within(b.recv::<u64>()).await.unwrap(), i);
    }
    assert_eq!(a.writes(), 2, "the flush task wrote the rest at once");
}

/// Sends `n` numbers from `sender_on_worker` (a task) or from the
/// runtime's `block_on` thread, with a reader task; returns the writes.
fn writes_for(n: u64, rt: &tokio::runtime::Runtime, sender_on_worker: bool) -> usize {
    let (a, mut b) = pair();
    let a = Arc::new(a);
    let reader = rt.spawn(async move {
        for i in 0..n {
            assert_eq!(b.recv::<u64>().await.unwrap(), i);
        }
    });
    let sender = {
        let a = a.clone();
        async move {
            for i in 0..n {
                a.send(&i).await.unwrap();
            }
            a.flush().await.unwrap();
        }
    };
    rt.block_on(async {
        if sender_on_worker {
            within(tokio::spawn(sender)).await.unwrap();
        } else {
            within(sender).await;
        }
        within(reader).await.unwrap();
    });
    a.writes()
}

/// On one thread the flush task runs only when the sender yields, at
/// the 256 KiB mark: a handful of writes for 10^5 messages.
#[test]
fn a_hundred_thousand_sends_on_one_thread_take_a_few_writes() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writes = writes_for(100_000, &rt, false);
    assert!(writes < 50, "{writes} writes for 10^5 sends");
}

/// With a sender on a worker, the flush task waits in the worker's
/// LIFO slot until the sender yields. With a sender outside the
/// workers (`block_on`, as in `#[tokio::main]`'s body), the flush
/// task runs in parallel and each of its writes takes what was queued
/// during the previous one: still far fewer writes than messages.
#[test]
fn a_hundred_thousand_sends_beside_worker_threads_take_few_writes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for on_worker in [true, false] {
        let writes = writes_for(100_000, &rt, on_worker);
        assert!(
            writes * 10 < 100_000,
            "{writes} writes for 10^5 sends (sender on a worker: {on_worker})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_keep_frames_whole() {
    let (a, mut b) = pair();
    let a = Arc::new(a);
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..5000u64 {
                    let msg = if i % 3 == 0 {
                        Msg::Text("x".repeat(usize::try_from(i % 300).unwrap()))
                    } else {
                        Msg::Num(t * 1_000_000 + i)
                    };
                    a.send(&msg).await.unwrap();
                }
            })
        })
        .collect();
    let mut last = [None::<u64>; 4];
    let mut count = 0;
    while count < 20_000 {
        match within(b.recv::<Msg>()).await.unwrap() {
            Msg::Num(v) => {
                let (t, i) = (usize::try_from(v / 1_000_000).unwrap(), v % 1_000_000);
                assert!(last[t].is_none_or(|l| l < i), "order within a sender");
                last[t] = Some(i);
            }
            Msg::Text(_) => {}
            Msg::Unit => panic!("never sent"),
        }
        count += 1;
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn request_and_reply_flush_without_the_task() {
    let (mut a, mut b) = pair();
    let echo = tokio::spawn(async move {
        while let Ok(m) = b.recv::<Msg>().await {
            b.send(&m).await.unwrap();
        }
    });
    for i in 0..100 {
        a.send(&Msg::Num(i)).await.unwrap();
        assert_eq!(within(a.recv::<Msg>()).await.unwrap(), Msg::Num(i));
    }
    drop(a);
    within(echo).await.unwrap();
}

#[tokio::test]
async fn dropping_an_end_delivers_what_it_queued_then_closes() {
    let (a, mut b) = pair();
    let big = ByteBuf::from(vec![7u8; 3 * HIGH_WATER]);
    let writer = tokio::spawn(async move {
        a.send(&Msg::Unit).await.unwrap();
        a.send(&big).await.unwrap();
        a.send(&Msg::Text("last".into())).await.unwrap();
        // Dropped with the last message still queued.
    });
    assert_eq!(within(b.recv::<Msg>()).await.unwrap(), Msg::Unit);
    assert_eq!(
        within(b.recv::<ByteBuf>()).await.unwrap().len(),
        3 * HIGH_WATER
    );
    assert_eq!(
        within(b.recv::<Msg>()).await.unwrap(),
        Msg::Text("last".into())
    );
    for _ in 0..3 {
        assert!(matches!(
            within(b.recv::<Msg>()).await,
            Err(ChannelError::Closed)
        ));
    }
    within(writer).await.unwrap();
}

/// Bytes a dead runtime's flush task never wrote are written as the task
/// goes, while the handle stays open and idle; the handle's close then
/// ends the stream, dropped in another runtime or without one.
#[test]
fn a_runtime_ending_before_its_flush_task_writes_its_bytes() {
    for drop_in_runtime in [false, true] {
        let (a, mut b) = pair();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            for _ in 0..1000 {
                got.push(b.blocking_recv::<u32>().unwrap());
            }
            let _ = tx.send(got);
            b.blocking_recv::<u32>()
        });
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let rt = runtime();
        rt.block_on(async {
            for i in 0..1000u32 {
                a.send(&i).await.unwrap();
            }
        });
        drop(rt);
        assert!(!lock(&a.shared.write).task, "the guard cleared the flag");
        let got = rx
            .recv_timeout(LIMIT)
            .expect("the bytes of the lost task were not written");
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(lock(&a.shared.write).backlog(), 0);
        if drop_in_runtime {
            runtime().block_on(async move { drop(a) });
        } else {
            drop(a);
        }
        assert!(matches!(reader.join().unwrap(), Err(ChannelError::Closed)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recv_cancelled_in_select_loses_nothing() {
    let (a, mut b) = pair();
    let writer = tokio::spawn(async move {
        for i in 0..200u32 {
            // Large enough to arrive in pieces, so that cancellations
            // land in the middle of messages.
            a.send(&(i, ByteBuf::from(vec![i.to_le_bytes()[0]; 100_000])))
                .await
                .unwrap();
            if i % 3 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let mut next = 0u32;
    let mut cancelled = 0;
    while next < 200 {
        tokio::select! {
            got = b.recv::<(u32, ByteBuf)>() => {
                let (i, body) = got.unwrap();
                assert_eq!(i, next);
                assert!(body.len() == 100_000 && body.iter().all(|&x| x == i.to_le_bytes()[0]));
                next += 1;
            }
            () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
        }
    }
    assert!(matches!(
        within(b.recv::<(u32, ByteBuf)>()).await,
        Err(ChannelError::Closed)
    ));
    within(writer).await.unwrap();
    assert!(cancelled > 0, "some receives were cancelled");
}

#[tokio::test]
async fn a_send_cancelled_while_waiting_for_room_still_sends() {
    let (a, mut b) = pair();
    let big = ByteBuf::from(vec![3u8; 4 * HIGH_WATER]);
    // Nobody reads yet: the send waits for room, and is given up.
    let r = tokio::time::timeout(Duration::from_millis(50), a.send(&big)).await;
    assert!(r.is_err(), "the send had to wait");
    let reader = tokio::spawn(async move {
        let first = b.recv::<ByteBuf>().await.unwrap();
        let second = b.recv::<ByteBuf>().await.unwrap();
        (first, second)
    });
    within(a.send(&ByteBuf::from(vec![4u8; 10]))).await.unwrap();
    let (first, second) = within(reader).await.unwrap();
    assert!(first == big, "the cancelled send's message arrived whole");
    assert_eq!(second.as_slice(), [4u8; 10]);
}

#[test]
fn a_runtime_shutting_down_does_not_lose_queued_bytes() {
    let (a, mut b) = pair();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        loop {
            match b.blocking_recv::<u64>() {
                Ok(v) => got.push(v),
                Err(ChannelError::Closed) => return got,
                Err(e) => panic!("{e}"),
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        for i in 0..100_000u64 {
            a.send(&i).await.unwrap();
        }
        // `a` is dropped with a backlog, inside the runtime: a task
        // takes over, and the runtime ends before it runs.
    });
    drop(rt);
    let got = reader.join().unwrap();
    assert_eq!(got, (0..100_000).collect::<Vec<_>>());
}

#[test]
fn a_runtime_shutting_down_gives_up_bytes_a_peer_never_reads() {
    let (a, b) = pair();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Far more than the socket holds, and nobody reads.
        let big = ByteBuf::from(vec![7u8; 4 * 1024 * 1024]);
        a.feed(&big).unwrap();
        a.flush_soon();
    });
    let start = std::time::Instant::now();
    drop(rt);
    let took = start.elapsed();
    assert!(
        took < STALL_LIMIT + Duration::from_secs(3),
        "the runtime took {took:?} to shut down"
    );
    assert!(took >= STALL_LIMIT / 2, "gave up after only {took:?}");
    drop(b);
}

/// Messages a live end queued for its flush task go out when the task's
/// runtime shuts down, without waiting for the end's next call: small
/// ones at once, and ones the socket cannot take now from a thread of
/// their own, as the peer reads.
#[test]
fn messages_queued_on_a_runtime_that_shuts_down_still_go_out() {
    for big in [false, true] {
        let (a, mut b) = pair();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Under the high-water mark (a send would wait for the peer), over
        // what the socket takes at once.
        let payload = ByteBuf::from(vec![1u8; if big { 250 * 1024 } else { 8 }]);
        rt.block_on(async {
            // The first send goes out at once; the second waits for the
            // flush task, which never runs.
            a.send(&Msg::Num(1)).await.unwrap();
            a.send(&payload).await.unwrap();
        });
        drop(rt);
        // `a` stays open and idle: nothing else would write its bytes.
        assert!(
            b.blocking_poll(Duration::from_secs(5)),
            "big {big}: nothing arrived"
        );
        assert_eq!(b.blocking_recv::<Msg>().unwrap(), Msg::Num(1));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let got = b.blocking_recv::<ByteBuf>().map(|v| v.len());
            let _ = tx.send(got);
        });
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("big {big}: the second message sat in the queue"));
        assert_eq!(got.unwrap(), payload.len(), "big {big}");
        drop(a);
    }
}

#[test]
fn blocking_forms_need_no_runtime() {
    let (a, mut b) = pair();
    a.blocking_send(&Msg::Num(1)).unwrap();
    a.blocking_send(&()).unwrap();
    assert!(b.blocking_poll(Duration::ZERO));
    assert_eq!(b.blocking_recv::<Msg>().unwrap(), Msg::Num(1));
    b.blocking_recv::<()>().unwrap();
    let t0 = Instant::now();
    assert!(!b.blocking_poll(Duration::from_millis(50)));
    assert!(t0.elapsed() >= Duration::from_millis(45));
    assert!(b.try_recv::<Msg>().unwrap().is_none());
    drop(a);
    assert!(b.blocking_poll(Duration::from_secs(5)), "a close is ready");
    for _ in 0..3 {
        assert!(matches!(
            b.blocking_recv::<Msg>(),
            Err(ChannelError::Closed)
        ));
    }
}

#[test]
fn an_async_send_without_a_runtime_writes_at_once() {
    let (a, mut b) = pair();
    futures::executor::block_on(a.send(&5u8)).unwrap();
    assert_eq!(b.try_recv::<u8>().unwrap(), Some(5));
}

#[tokio::test]
async fn oversized_is_refused_whole_and_the_end_stays_usable() {
    let (a, mut b) = Chan::pair(100).unwrap();
    a.send(&1u8).await.unwrap();
    let err = a.send(&ByteBuf::from(vec![0u8; 200])).await.unwrap_err();
    assert!(
        matches!(err, ChannelError::Oversized { max: 100, .. }),
        "{err:?}"
    );
    a.send(&2u8).await.unwrap();
    assert_eq!(within(b.recv::<u8>()).await.unwrap(), 1);
    assert_eq!(within(b.recv::<u8>()).await.unwrap(), 2);
}

#[tokio::test]
async fn an_oversized_header_is_an_error_on_the_receiver() {
    let (small_a, mut small_b) = {
        let (x, y) = sys::socketpair().unwrap();
        (Chan::from_fd(x, 1000), Chan::from_fd(y, 10))
    };
    small_a.send(&"more than ten bytes").await.unwrap();
    for _ in 0..2 {
        let err = within(small_b.recv::<String>()).await.unwrap_err();
        assert!(
            matches!(err, ChannelError::Oversized { max: 10, .. }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn a_malformed_message_is_skipped() {
    let (a, mut b) = pair();
    a.send(&"not a number").await.unwrap();
    a.send(&7u32).await.unwrap();
    let err = within(b.recv::<u32>()).await.unwrap_err();
    assert!(matches!(err, ChannelError::Malformed(_)), "{err:?}");
    assert_eq!(within(b.recv::<u32>()).await.unwrap(), 7);
}

#[tokio::test]
async fn sending_to_a_closed_peer_fails_and_keeps_failing() {
    let (a, b) = pair();
    drop(b);
    let mut failed = 0;
    for _ in 0..5 {
        if let Err(e) = a.send(&1u8).await {
            assert!(matches!(e, ChannelError::Closed), "{e:?}");
            failed += 1;
        }
        tokio::task::yield_now().await;
    }
    assert!(failed >= 4, "{failed} of 5 sends failed");
    assert!(matches!(a.flush().await, Err(ChannelError::Closed)));
    assert!(matches!(a.blocking_send(&1u8), Err(ChannelError::Closed)));
}

#[tokio::test]
async fn readiness_stays_until_a_recv_takes_it() {
    let (a, mut b) = pair();
    assert!(!b.poll(Duration::from_millis(20)).await);
    a.send(&1u8).await.unwrap();
    assert!(b.poll(Duration::from_secs(5)).await);
    assert!(b.poll(Duration::ZERO).await, "still ready");
    within(b.readable()).await;
    assert_eq!(b.recv::<u8>().await.unwrap(), 1);
    assert!(!b.poll(Duration::from_millis(20)).await);
    drop(a);
    assert!(b.poll(Duration::from_secs(5)).await, "a close is ready");
    assert!(b.poll(Duration::ZERO).await);
}

#[test]
fn an_end_moves_between_runtimes() {
    let (a, mut b) = pair();
    for round in 0..3u32 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            a.send(&round).await.unwrap();
            assert_eq!(within(b.recv::<u32>()).await.unwrap(), round);
            assert!(!b.poll(Duration::from_millis(5)).await);
        });
    }
}

#[tokio::test]
async fn a_large_message_arrives_whole_and_the_buffer_shrinks() {
    let (a, mut b) = pair();
    let big = ByteBuf::from(
        (0..8 * 1024 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let sent = big.clone();
    let writer = tokio::spawn(async move {
        a.send(&sent).await.unwrap();
        a.send(&Msg::Unit).await.unwrap();
        a
    });
    let got: ByteBuf = within(b.recv()).await.unwrap();
    assert!(got == big);
    assert_eq!(within(b.recv::<Msg>()).await.unwrap(), Msg::Unit);
    assert!(b.read.get_mut().unwrap().buf.capacity() <= KEEP_BUF);
    drop(within(writer).await.unwrap());
}
