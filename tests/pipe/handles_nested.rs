//! A child creates handles of its own and passes them to its own child:
//! a `Queue`, a `Pipe` end and a `Lock` each cross two generations.

use std::time::Duration;

use libtest_mimic::Failed;
use tokio_multiprocessing as mp;

use crate::common::{Case, case, ensure};

/// The grandchild: uses each handle it was given.
fn grandchild((q, conn, lock): (mp::Queue<String>, mp::Connection<String>, mp::Lock)) -> bool {
    let held = lock.try_lock().is_err(); // the child holds it
    q.blocking_put("via the queue".to_owned()).expect("put");
    conn.blocking_send(&"via the pipe".to_owned())
        .expect("send");
    held
}

/// The child: creates the handles, starts the grandchild with them, and
/// reports what came back.
async fn child(_: ()) -> (String, String, bool) {
    let q = mp::Queue::new().expect("queue");
    let (mut ours, theirs) = mp::Pipe::new::<String>().expect("pipe");
    let lock = mp::Lock::new().expect("lock");
    let guard = lock.lock().await.expect("lock");
    let g = mp::Process::new(grandchild, (q.clone(), theirs, lock.clone()));
    g.start().await.expect("start");
    let from_queue = q.get_timeout(Duration::from_secs(10)).await.expect("get");
    let from_pipe = ours.recv().await.expect("recv");
    let saw_lock_held = g.join().await.expect("join");
    drop(guard);
    (from_queue, from_pipe, saw_lock_held)
}

async fn handles_cross_two_generations() -> Result<(), Failed> {
    let p = mp::Process::new(child, ());
    p.start().await?;
    let (q, pipe, held) = p.join().await?;
    ensure(q == "via the queue", q)?;
    ensure(pipe == "via the pipe", pipe)?;
    ensure(held, "the grandchild saw the child's lock held")?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "handles_cross_two_generations",
        Duration::from_secs(30),
        handles_cross_two_generations,
    )]
}
