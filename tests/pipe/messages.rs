//! Messages on a `Pipe` between processes: boundaries (empty messages
//! too), a 64 MiB message each way, and the size limit on the sending side.

use std::time::Duration;

use libtest_mimic::Failed;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::ByteBuf;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

const T: Duration = Duration::from_secs(60);

/// Sends back every message until the other end closes; returns how many.
fn echo<M: Serialize + DeserializeOwned>(mut conn: mp::Connection<M>) -> u64 {
    let mut n = 0;
    while let Ok(m) = conn.blocking_recv() {
        conn.blocking_send(&m).expect("echo");
        n += 1;
    }
    n
}

/// As [`echo`], in an async target.
async fn async_echo<M: Serialize + DeserializeOwned>(mut conn: mp::Connection<M>) -> u64 {
    let mut n = 0;
    while let Ok(m) = conn.recv().await {
        conn.send(&m).await.expect("echo");
        n += 1;
    }
    n
}

/// Sends `msgs` through an echoing child and checks that exactly the same
/// messages come back, one for one.
async fn round_trip<M, Tgt, Mk>(target: Tgt, msgs: Vec<M>) -> Result<(), Failed>
where
    M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug + Send + 'static,
    Tgt: mp::Target<mp::Connection<M>, u64, Mk>,
{
    let (mut here, there) = mp::Pipe::new::<M>()?;
    let child = mp::Process::new(target, there);
    child.start().await?;
    for m in &msgs {
        here.send(m).await?;
    }
    for (i, want) in msgs.iter().enumerate() {
        let got = here.recv().await?;
        ensure(&got == want, format!("message {i}: {got:?} != {want:?}"))?;
    }
    ensure(
        !here.poll(Duration::from_millis(50)).await,
        "nothing more came back",
    )?;
    here.close();
    let count = child.join().await?;
    ensure(
        count == msgs.len() as u64,
        format!("the child echoed {count}"),
    )?;
    Ok(())
}

async fn boundaries_hold_for_empty_and_mixed_messages() -> Result<(), Failed> {
    round_trip(echo::<()>, vec![(); 7]).await?;
    round_trip(
        echo::<Vec<u32>>,
        vec![
            vec![],
            vec![1],
            vec![],
            vec![],
            (0..10_000).collect(),
            vec![],
            vec![2, 3],
        ],
    )
    .await?;
    round_trip(
        async_echo::<String>,
        vec![
            String::new(),
            "a".into(),
            String::new(),
            "x".repeat(300_000),
            String::new(),
        ],
    )
    .await?;
    round_trip(
        echo::<ByteBuf>,
        vec![ByteBuf::new(), ByteBuf::from(vec![0u8; 5]), ByteBuf::new()],
    )
    .await
}

fn pattern(len: usize, seed: u8) -> ByteBuf {
    ByteBuf::from(
        (0..len)
            .map(|i| u8::try_from(i % 251).unwrap_or(0) ^ seed)
            .collect::<Vec<u8>>(),
    )
}

/// The child checks the 64 MiB it received and sends back its own 64 MiB.
fn big_exchange(mut conn: mp::Connection<ByteBuf>) -> Result<(), String> {
    let got = conn.blocking_recv().map_err(|e| e.to_string())?;
    if got != pattern(64 << 20, 1) {
        return Err(format!(
            "the child got {} bytes, not the pattern",
            got.len()
        ));
    }
    conn.blocking_send(&pattern(64 << 20, 2))
        .map_err(|e| e.to_string())
}

async fn a_64_mib_message_goes_there_and_back() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::new::<ByteBuf>()?;
    let child = mp::Process::new(big_exchange, there);
    child.start().await?;
    here.send(&pattern(64 << 20, 1)).await?;
    let back = here.recv().await?;
    ensure(
        back == pattern(64 << 20, 2),
        "the parent got the pattern back",
    )?;
    child.join().await??;
    Ok(())
}

async fn a_64_mib_message_through_an_async_child() -> Result<(), Failed> {
    round_trip(
        async_echo::<ByteBuf>,
        vec![pattern(64 << 20, 3), ByteBuf::new()],
    )
    .await
}

/// With a 1 KiB limit, the child tries a 2 KiB message (refused, nothing
/// sent), then a small one; it reports what `send` said.
fn sends_too_much(conn: mp::Connection<ByteBuf>) -> String {
    let refused = match conn.blocking_send(&ByteBuf::from(vec![9u8; 2048])) {
        Err(mp::ChannelError::Oversized { len, max }) => format!("oversized {len} > {max}"),
        other => format!("{other:?}"),
    };
    conn.blocking_send(&ByteBuf::from(vec![1u8; 10])).unwrap();
    refused
}

async fn oversized_is_refused_on_the_sending_side() -> Result<(), Failed> {
    let (mut here, there) = mp::Pipe::builder().max_message(1024).duplex::<ByteBuf>()?;
    ensure(here.max_message() == 1024, "the limit")?;
    let child = mp::Process::new(sends_too_much, there);
    child.start().await?;
    // Our own oversized send fails at once, and the end stays usable.
    match here.send(&ByteBuf::from(vec![0u8; 4096])).await {
        Err(mp::ChannelError::Oversized { max: 1024, .. }) => {}
        other => return Err(format!("expected Oversized, got {other:?}").into()),
    }
    let first = here.recv().await?;
    ensure(
        first.as_slice() == [1u8; 10],
        "the small message is the first to arrive",
    )?;
    let said = child.join().await?;
    ensure(said.starts_with("oversized 20"), said.clone())?;
    ensure(said.ends_with("> 1024"), said)?;
    // The limit travelled with the end: the child refused by it.
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        case(
            "boundaries_hold_for_empty_and_mixed_messages",
            T,
            boundaries_hold_for_empty_and_mixed_messages,
        ),
        case(
            "a_64_mib_message_goes_there_and_back",
            T,
            a_64_mib_message_goes_there_and_back,
        ),
        case(
            "a_64_mib_message_through_an_async_child",
            T,
            a_64_mib_message_through_an_async_child,
        ),
        case(
            "oversized_is_refused_on_the_sending_side",
            T,
            oversized_is_refused_on_the_sending_side,
        ),
    ]
}
