//! A rogue child writes bad frames onto its control channel. For each kind
//! of bad frame the parent reports a typed error for that child alone, and
//! goes on serving every other child: no panic, no hang, no leak.

use std::time::Duration;

use libtest_mimic::Failed;
use serde::Serialize;
use serde_bytes::ByteBuf;
use tokio_multiprocessing as mp;

use crate::common::{self, Case, case_alone, ensure};

const T: Duration = Duration::from_secs(30);

/// Writes `bytes` straight onto this child's control channel.
fn write_raw(bytes: &[u8]) {
    let fd = mp::__control_fd().expect("running in a child");
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: `fd` is this child's open control socket and `bytes` a
        // valid buffer of the length given.
        let n = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        assert!(n > 0, "write failed");
        done += n as usize;
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len())
        .expect("a small body")
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(body);
    f
}

/// The child's reply as the library encodes it (same names, same shape).
#[derive(Serialize)]
enum ChildMsg {
    Outcome { id: u64, outcome: Outcome },
}

#[derive(Serialize)]
enum Outcome {
    Returned(ByteBuf),
}

#[derive(Serialize)]
enum Bogus {
    NoSuchKind(u32),
}

fn rogue(kind: u8) -> u32 {
    match kind {
        // A frame with a valid length but garbage bytes.
        0 => write_raw(&frame(&[0xc1, 0xc1, 0xc1, 0xff, 0x00, 0x13, 0x37, 0x42])),
        // A truncated frame, then exit.
        1 => {
            let mut f = frame(&[0u8; 100]);
            f.truncate(4 + 10);
            write_raw(&f);
            std::process::exit(0);
        }
        // A length of 2^31 - 1.
        2 => write_raw(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]),
        // A well-formed message of a kind that does not exist.
        3 => write_raw(&frame(&rmp_serde::to_vec(&Bogus::NoSuchKind(7)).unwrap())),
        // A reply to a request id that was never sent.
        4 => {
            let value = rmp_serde::to_vec(&666u32).unwrap();
            let msg = ChildMsg::Outcome {
                id: 999,
                outcome: Outcome::Returned(ByteBuf::from(value)),
            };
            write_raw(&frame(&rmp_serde::to_vec(&msg).unwrap()));
        }
        _ => unreachable!(),
    }
    42
}

fn honest(x: u32) -> u32 {
    std::thread::sleep(Duration::from_millis(50));
    x + 1
}

async fn one_rogue(kind: u8, check: fn(&mp::ProcessError) -> bool) -> Result<(), Failed> {
    let bystanders: Vec<_> = (0..3).map(|i| mp::Process::new(honest, i)).collect();
    for b in &bystanders {
        b.start().await?;
    }
    let r = mp::Process::new(rogue, kind);
    r.start().await?;
    let err = r
        .join()
        .await
        .expect_err("a rogue child gives an error, not a value");
    ensure(check(&err), format!("kind {kind}: {err:?}"))?;
    for (i, b) in bystanders.iter().enumerate() {
        ensure(
            b.join().await? == u32::try_from(i)? + 1,
            "a bystander is served",
        )?;
    }
    let after = mp::Process::new(honest, 10);
    after.start().await?;
    ensure(after.join().await? == 11, "later children are served")?;
    Ok(())
}

fn channel(err: &mp::ProcessError, want: fn(&mp::ChannelError) -> bool) -> bool {
    matches!(err, mp::ProcessError::Channel(e) if want(e))
}

/// Every kind of bad frame in turn (one case, so that the descriptor count
/// is not disturbed by other cases running alongside).
async fn every_kind_of_bad_frame() -> Result<(), Failed> {
    // Warm up: the fork server and the runtime's own descriptors.
    let w = mp::Process::new(honest, 0);
    w.start().await?;
    w.join().await?;
    let fds_before = common::open_fds();
    let zombies_before = common::zombie_children().len();
    // A frame with a valid length but garbage bytes.
    one_rogue(0, |e| {
        channel(e, |c| matches!(c, mp::ChannelError::Malformed(_)))
    })
    .await?;
    // A truncated frame followed by exit.
    one_rogue(1, |e| {
        channel(e, |c| {
            matches!(
                c,
                mp::ChannelError::Truncated {
                    expected: 104,
                    received: 14
                }
            )
        })
    })
    .await?;
    // A length of 2^31 - 1: refused before any body, nothing allocated.
    one_rogue(2, |e| {
        channel(e, |c| {
            matches!(
                c,
                mp::ChannelError::Oversized {
                    len: 0x7fff_ffff,
                    ..
                }
            )
        })
    })
    .await?;
    // An unknown message kind.
    one_rogue(3, |e| {
        channel(e, |c| matches!(c, mp::ChannelError::Malformed(_)))
    })
    .await?;
    // A reply to a request id that was never sent.
    one_rogue(4, |e| {
        channel(
            e,
            |c| matches!(c, mp::ChannelError::Malformed(m) if m.contains("999")),
        )
    })
    .await?;
    let fds_after = common::open_fds_settled(fds_before).await;
    ensure(
        fds_after <= fds_before,
        format!("descriptors {fds_before} -> {fds_after}"),
    )?;
    ensure(
        common::zombie_children().len() <= zombies_before,
        "no zombie left",
    )?;
    Ok(())
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case_alone(
        "every_kind_of_bad_frame",
        T,
        every_kind_of_bad_frame,
    )]
}
