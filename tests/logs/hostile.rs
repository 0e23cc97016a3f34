//! A child that sends log batches no forwarder would make: each is one
//! warning in the parent, labelled with the child, and nothing else; the
//! child's result and later children are not disturbed.

use std::time::Duration;

use libtest_mimic::Failed;
use serde::Serialize;
use serde_bytes::ByteBuf;
use tokio_multiprocessing as mp;

use crate::common::{Case, case};
use crate::record::from_child;

fn ensure(ok: bool, what: impl Into<String>) -> Result<(), Failed> {
    if ok { Ok(()) } else { Err(what.into().into()) }
}

/// The child's messages as the library encodes them (same names, same
/// order); only `Log` is sent.
#[allow(dead_code)]
#[derive(Serialize)]
enum ChildMsg {
    Outcome,
    Refused,
    Serving,
    Forked,
    ForkFailed,
    Ready,
    Heartbeat,
    Log(ByteBuf),
}

/// A batch as the library lays it out, with whatever is in it.
#[derive(Serialize)]
struct Batch {
    callsites: Vec<Callsite>,
    records: Vec<Record>,
    dropped: u64,
}

#[derive(Serialize)]
struct Callsite {
    id: u32,
    span: bool,
    level: u8,
    name: String,
    target: String,
    module_path: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    fields: Vec<String>,
}

#[derive(Serialize)]
struct Entry {
    callsite: u32,
    values: Vec<(u16, ByteBuf)>,
}

#[derive(Serialize)]
struct Record {
    event: Entry,
    spans: Vec<Entry>,
}

/// Writes `body` as one frame straight onto this child's control channel.
fn send(body: &[u8]) {
    let fd = mp::__control_fd().expect("running in a child");
    let mut bytes = u32::try_from(body.len())
        .expect("a small body")
        .to_be_bytes()
        .to_vec();
    bytes.extend_from_slice(body);
    let mut done = 0;
    while done < bytes.len() {
        // SAFETY: `fd` is this child's open control socket and `bytes` a
        // valid buffer of the length given.
        let n = unsafe { libc::write(fd, bytes[done..].as_ptr().cast(), bytes.len() - done) };
        assert!(n > 0, "write failed");
        done += n as usize;
    }
}

fn log(batch: &[u8]) {
    let msg = ChildMsg::Log(ByteBuf::from(batch.to_vec()));
    send(&rmp_serde::to_vec(&msg).expect("encodes"));
}

/// Sends bad batches, then returns normally.
fn rogue(_: ()) -> u32 {
    // Not a batch at all.
    log(&[0xc1, 0xc1, 0xff, 0x00]);
    // A callsite of level 9, and one with a thousand fields; a record of a
    // callsite never named; a value at a field that does not exist; text
    // that is not UTF-8.
    let batch = Batch {
        callsites: vec![
            Callsite {
                id: 0,
                span: false,
                level: 9,
                name: "bad".into(),
                target: "rogue".into(),
                module_path: None,
                file: None,
                line: None,
                fields: vec!["message".into()],
            },
            Callsite {
                id: 1,
                span: false,
                level: 3,
                name: "wide".into(),
                target: "rogue".into(),
                module_path: None,
                file: None,
                line: None,
                fields: (0..1000).map(|i| format!("f{i}")).collect(),
            },
        ],
        records: vec![
            Record {
                event: Entry {
                    callsite: 0,
                    values: vec![(0, ByteBuf::from(b"level nine".to_vec()))],
                },
                spans: vec![],
            },
            Record {
                event: Entry {
                    callsite: 7,
                    values: vec![],
                },
                spans: vec![Entry {
                    callsite: 1234,
                    values: vec![],
                }],
            },
            Record {
                event: Entry {
                    callsite: 1,
                    values: vec![
                        (1500, ByteBuf::from(b"past the end".to_vec())),
                        (3, ByteBuf::from(b"fine".to_vec())),
                    ],
                },
                spans: vec![],
            },
        ],
        dropped: 0,
    };
    log(&rmp_serde::to_vec(&batch).expect("encodes"));
    let mut bad_text = rmp_serde::to_vec(&batch).expect("encodes");
    // Make "fine" (in a bin) invalid UTF-8.
    if let Some(at) = bad_text.windows(4).position(|w| w == b"fine") {
        bad_text[at] = 0xff;
    }
    log(&bad_text);
    42
}

async fn bad_batches_are_warnings_and_nothing_else() -> Result<(), Failed> {
    let p = mp::Process::new(rogue, ());
    p.start().await?;
    let pid = p.pid().ok_or("a pid")?;
    let value = p.join().await?;
    ensure(value == 42, "the child's result is untouched")?;
    let got = from_child(pid);
    let warnings = got
        .iter()
        .filter(|s| {
            s.level == tracing::Level::WARN
                && s.field("message")
                    .is_some_and(|m| m.contains("did not decode"))
        })
        .count();
    ensure(
        warnings == 2,
        format!("the garbage and the bad text are one warning each: {got:?}"),
    )?;
    let wide: Vec<_> = got.iter().filter(|s| s.target == "rogue").collect();
    ensure(
        wide.len() == 1 && wide[0].field("f3") == Some("fine") && wide[0].fields.len() == 1,
        format!("the one sound record is re-emitted, the value past its fields left out: {wide:?}"),
    )?;
    let later = mp::Process::new(rogue_free, ());
    later.start().await?;
    ensure(later.join().await? == 7, "later children are served")?;
    Ok(())
}

fn rogue_free(_: ()) -> u32 {
    7
}

pub(crate) fn cases() -> Vec<Case> {
    vec![case(
        "bad_batches_are_warnings_and_nothing_else",
        Duration::from_secs(60),
        bad_batches_are_warnings_and_nothing_else,
    )]
}
