//! `Queue` semantics, in one process and with one child at a time.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(30);

async fn put_hello(q: mp::Queue<(i32, Option<i32>, String)>) {
    q.put((42, None, "hello".to_owned())).await.expect("put");
}

fn put_many_then_return((q, n): (mp::Queue<u32>, u32)) {
    for i in 0..n {
        q.blocking_put(i).expect("put");
    }
    // Returns at once: the items must still arrive.
}

fn blocking_echo((inq, outq): (mp::Queue<String>, mp::Queue<String>)) {
    loop {
        match inq.blocking_get() {
            Ok(s) if s == "stop" => return,
            Ok(s) => outq.blocking_put(s.to_uppercase()).expect("put"),
            Err(e) => panic!("{e}"),
        }
    }
}

struct Refuses;

impl serde::Serialize for Refuses {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this item refuses to be encoded"))
    }
}

impl<'de> serde::Deserialize<'de> for Refuses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Refuses)
    }
}

async fn a_child_puts_and_the_parent_gets() -> Result<(), Failed> {
    let q = mp::Queue::new()?;
    let p = mp::Process::new(put_hello, q.clone());
    p.start().await?;
    let got = q.get_timeout(Duration::from_secs(10)).await?;
    ensure(got == (42, None, "hello".to_owned()), format!("{got:?}"))?;
    p.join().await?;
    Ok(())
}

async fn get_timeout_on_an_empty_queue_is_empty_after_about_t() -> Result<(), Failed> {
    let q: mp::Queue<u8> = mp::Queue::new()?;
    ensure(
        matches!(q.try_get(), Err(mp::GetError::Empty)),
        "try_get on empty",
    )?;
    let t0 = Instant::now();
    let r = q.get_timeout(Duration::from_millis(200)).await;
    let took = t0.elapsed();
    ensure(matches!(r, Err(mp::GetError::Empty)), format!("{r:?}"))?;
    ensure(
        took >= Duration::from_millis(190) && took < Duration::from_secs(2),
        format!("{took:?}"),
    )?;
    let t0 = Instant::now();
    let r = q.blocking_get_timeout(Duration::from_millis(100));
    ensure(
        matches!(r, Err(mp::GetError::Empty)) && t0.elapsed() >= Duration::from_millis(95),
        "blocking",
    )?;
    Ok(())
}

async fn a_full_bounded_queue_refuses_at_once() -> Result<(), Failed> {
    let q = mp::Queue::bounded(3)?;
    for i in 0..3 {
        q.try_put(i)?;
    }
    ensure(q.is_full() && q.len() == 3, format!("len {}", q.len()))?;
    let t0 = Instant::now();
    let r = q.try_put(9);
    ensure(matches!(r, Err(mp::PutError::Full(9))), format!("{r:?}"))?;
    ensure(t0.elapsed() < Duration::from_millis(50), "at once")?;
    let t0 = Instant::now();
    let r = q.put_timeout(9, Duration::from_millis(150)).await;
    ensure(
        matches!(r, Err(mp::PutError::Full(9))) && t0.elapsed() >= Duration::from_millis(140),
        "put_timeout",
    )?;
    ensure(q.get().await? == 0, "fifo")?;
    q.try_put(3)?;
    for want in 1..=3 {
        ensure(q.get().await? == want, "order")?;
    }
    ensure(q.is_empty(), "empty")?;
    Ok(())
}

async fn items_put_just_before_a_child_returns_arrive() -> Result<(), Failed> {
    let q = mp::Queue::new()?;
    let p = mp::Process::new(put_many_then_return, (q.clone(), 5000));
    p.start().await?;
    p.join().await?;
    for want in 0..5000u32 {
        let got = q.get_timeout(Duration::from_secs(5)).await?;
        ensure(got == want, format!("got {got}, wanted {want}"))?;
    }
    ensure(q.is_empty(), "nothing more")?;
    Ok(())
}

async fn an_unencodable_item_is_an_error_and_the_queue_stays_healthy() -> Result<(), Failed> {
    let q: mp::Queue<Option<Refuses>> = mp::Queue::new()?;
    match q.put(Some(Refuses)).await {
        Err(mp::PutError::Encode(item, msg)) => {
            ensure(item.is_some() && msg.contains("refuses"), msg)?;
        }
        other => return Err(format!("{other:?}").into()),
    }
    q.put(None).await?;
    ensure(q.get().await?.is_none(), "the queue still works")?;
    let big: mp::Queue<Vec<u8>> = mp::Queue::with_buffer(0, 4096)?;
    let r = big.put(vec![7; 10_000]).await;
    ensure(
        matches!(r, Err(mp::PutError::Encode(ref v, _)) if v.len() == 10_000),
        "too large for the buffer",
    )?;
    big.put(vec![7; 1000]).await?;
    ensure(big.get().await?.len() == 1000, "then a fitting one")?;
    Ok(())
}

async fn close_fails_puts_and_drains_gets() -> Result<(), Failed> {
    let q = mp::Queue::new()?;
    q.put(1).await?;
    q.put(2).await?;
    let other = q.clone();
    q.close();
    ensure(
        matches!(other.put(3).await, Err(mp::PutError::Closed(3))),
        "clones share the close",
    )?;
    ensure(q.get().await? == 1 && q.get().await? == 2, "drains")?;
    ensure(
        matches!(q.get().await, Err(mp::GetError::Closed)),
        "then closed",
    )?;
    ensure(
        matches!(q.get().await, Err(mp::GetError::Closed)),
        "every time",
    )?;
    Ok(())
}

async fn a_synchronous_child_uses_the_blocking_forms() -> Result<(), Failed> {
    let (inq, outq) = (mp::Queue::new()?, mp::Queue::new()?);
    let p = mp::Process::new(blocking_echo, (inq.clone(), outq.clone()));
    p.start().await?;
    for w in ["a", "bc", ""] {
        inq.put(w.to_owned()).await?;
        ensure(
            outq.get_timeout(Duration::from_secs(10)).await? == w.to_uppercase(),
            w,
        )?;
    }
    inq.put("stop".to_owned()).await?;
    p.join().await?;
    Ok(())
}

async fn queues_take_part_in_wait() -> Result<(), Failed> {
    let q: mp::Queue<u8> = mp::Queue::new()?;
    let t0 = Instant::now();
    let ready = mp::wait(std::slice::from_ref(&q), Some(Duration::from_millis(100))).await;
    ensure(
        ready.is_empty() && t0.elapsed() >= Duration::from_millis(95),
        "nothing yet",
    )?;
    let p = mp::Process::new(
        |q: mp::Queue<u8>| q.blocking_put(1).expect("put"),
        q.clone(),
    );
    p.start().await?;
    let s = p.sentinel();
    let objs: [&dyn mp::Waitable; 2] = [&q, &s];
    // The child's exit may be noticed before its item: wait until the
    // queue itself is reported.
    let mut ready = Vec::new();
    while !ready.contains(&0) {
        ready = mp::wait(&objs, Some(Duration::from_secs(10))).await;
        ensure(!ready.is_empty(), "something becomes ready")?;
    }
    ensure(q.get().await? == 1, "the item")?;
    p.join().await?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "a_child_puts_and_the_parent_gets",
            T,
            a_child_puts_and_the_parent_gets,
        ),
        case(
            "get_timeout_on_an_empty_queue_is_empty_after_about_t",
            T,
            get_timeout_on_an_empty_queue_is_empty_after_about_t,
        ),
        case(
            "a_full_bounded_queue_refuses_at_once",
            T,
            a_full_bounded_queue_refuses_at_once,
        ),
        case(
            "items_put_just_before_a_child_returns_arrive",
            T,
            items_put_just_before_a_child_returns_arrive,
        ),
        case(
            "an_unencodable_item_is_an_error_and_the_queue_stays_healthy",
            T,
            an_unencodable_item_is_an_error_and_the_queue_stays_healthy,
        ),
        case(
            "close_fails_puts_and_drains_gets",
            T,
            close_fails_puts_and_drains_gets,
        ),
        case(
            "a_synchronous_child_uses_the_blocking_forms",
            T,
            a_synchronous_child_uses_the_blocking_forms,
        ),
        case("queues_take_part_in_wait", T, queues_take_part_in_wait),
    ]
}
