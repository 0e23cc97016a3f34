//! A handle in a queue item: refused with a typed error that says why and
//! names the ways a handle can travel.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

async fn a_handle_in_an_item_is_refused() -> Result<(), Failed> {
    let q = mp::Queue::<(u32, mp::Lock)>::new()?;
    let lock = mp::Lock::new()?;
    let err = q.put((1, lock.clone())).await.unwrap_err();
    let text = err.to_string();
    ensure(matches!(err, mp::PutError::Handle(_)), format!("{err:?}"))?;
    ensure(
        text.contains("shared memory") && text.contains("through a Pipe"),
        &text,
    )?;
    // The item comes back, and nothing was put.
    let (n, _lock) = err.into_inner();
    ensure(n == 1, n)?;
    ensure(q.is_empty(), "the queue stays empty")?;
    let pipes = mp::Queue::<mp::Connection<u8>>::new()?;
    let (a, _b) = mp::Pipe::new::<u8>()?;
    ensure(
        matches!(pipes.try_put(a), Err(mp::PutError::Handle(_))),
        "a Pipe end is refused too",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "a_handle_in_an_item_is_refused",
        Duration::from_secs(20),
        a_handle_in_an_item_is_refused,
    )]
}
