//! Entry points for `cargo fuzz` (compiled only with `--cfg fuzzing`).
//! Each panics only when an invariant of the wire, or of a reader of
//! shared memory, breaks.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::shm::fuzz_input::Input;
use crate::wire::ChannelError;
use crate::wire::frame::{FrameCodec, RESERVE_STEP, decode_message, encode_message};
use crate::wire::message::{ChildMsg, Hello, Outcome, ParentMsg};

/// Feeds `data` to the frame decoder in chunks whose sizes come from the
/// data itself, decodes every frame as each message type, and checks that
/// nothing panics, errors are typed, and the buffer never grows with a
/// length that was only claimed.
pub fn frames(data: &[u8]) {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 61) + 1;
    for max in [64usize, 1 << 20, 128 << 20] {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut broken = false;
        for piece in data.chunks(chunk) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(body)) => {
                        assert!(body.len() <= max);
                        messages(&body);
                    }
                    Ok(None) => break,
                    Err(ChannelError::Oversized { len, max: m }) => {
                        assert!(len > m);
                        broken = true;
                        break;
                    }
                    Err(e) => panic!("untyped decoder error {e:?}"),
                }
            }
            assert!(
                buf.capacity() <= 2 * (fed + RESERVE_STEP) + 64,
                "grew with a claimed length"
            );
            if broken {
                break;
            }
        }
        if !broken {
            match codec.decode_eof(&mut buf) {
                Ok(_) | Err(ChannelError::Oversized { .. }) => {}
                Err(ChannelError::Truncated { expected, received }) => assert!(received < expected),
                Err(e) => panic!("untyped end-of-stream error {e:?}"),
            }
        }
    }
}

/// Decodes `body` as every message type: a message or `Malformed`, never
/// a panic; a message that decodes re-encodes.
pub fn messages(body: &[u8]) {
    fn one<T: serde::Serialize + serde::de::DeserializeOwned>(body: &[u8]) {
        match decode_message::<T>(body) {
            Ok(msg) => {
                let mut out = BytesMut::new();
                encode_message(&msg, &mut out, usize::MAX >> 1)
                    .expect("a decoded message re-encodes");
            }
            Err(ChannelError::Malformed(_)) => {}
            Err(e) => panic!("untyped message error {e:?}"),
        }
    }
    one::<ChildMsg>(body);
    if let Ok(ChildMsg::Log(batch)) = decode_message::<ChildMsg>(body) {
        log_batch(&batch);
    }
    log_batch(body);
    one::<ParentMsg>(body);
    one::<Hello>(body);
    one::<Outcome>(body);
    crate::pool::fuzz_records(body);
}

/// Decodes `bytes` as a child's log batch and re-emits it, as a parent
/// does: a warning or events, never a panic.
fn log_batch(bytes: &[u8]) {
    crate::runtime::logs::Replayer::new("fuzz", 1).replay(bytes);
}

/// Valid frames of every message kind, to seed a corpus.
pub fn seed_frames() -> Vec<Vec<u8>> {
    use crate::wire::PanicInfo;
    use crate::wire::message::{Identity, TargetKind, TargetRef};
    let mut out = Vec::new();
    let mut push = |f: &dyn Fn(&mut BytesMut)| {
        let mut b = BytesMut::new();
        f(&mut b);
        out.push(b.to_vec());
    };
    push(&|b| {
        let hello = Hello {
            magic: crate::wire::message::MAGIC,
            version: 1,
            fingerprint: 7,
            nonce: 9,
            max_frame: 1 << 20,
        };
        encode_message(&hello, b, 1 << 20).unwrap();
    });
    push(&|b| {
        let run = ParentMsg::Run {
            id: 1,
            identity: Identity {
                name: "Process-1".into(),
                path: vec![1],
                authkey: vec![0; 32].into(),
                daemon: false,
                detached: false,
                parent_pid: 1,
                supervised: false,
                log_level: 3,
                capture_output: false,
                env: vec![("A".into(), Some("b".into())), ("C".into(), None)],
                current_dir: Some("/tmp".into()),
            },
            target: TargetRef {
                kind: TargetKind::Sync,
                offset: -4096,
            },
            args: vec![0x92, 1, 2].into(),
            fds: 0,
        };
        encode_message(&run, b, 1 << 20).unwrap();
    });
    push(&|b| encode_message(&ParentMsg::Serve, b, 1 << 20).unwrap());
    push(&|b| {
        encode_message(
            &ParentMsg::Handles {
                values: vec![0x1a4, 0x1b0],
            },
            b,
            1 << 20,
        )
        .unwrap()
    });
    push(&|b| {
        encode_message(
            &ParentMsg::Fork {
                id: 3,
                nonce: 4,
                group: crate::wire::message::Group::Own,
            },
            b,
            1 << 20,
        )
        .unwrap()
    });
    push(&|b| {
        let msg = ChildMsg::Outcome {
            id: 1,
            outcome: Outcome::Returned(vec![0x2a].into()),
        };
        encode_message(&msg, b, 1 << 20).unwrap();
    });
    push(&|b| {
        let info = PanicInfo {
            message: "boom".into(),
            location: Some("a.rs:1:1".into()),
            backtrace: Some("0: main".into()),
        };
        encode_message(
            &ChildMsg::Outcome {
                id: 1,
                outcome: Outcome::Panicked(info),
            },
            b,
            1 << 20,
        )
        .unwrap();
    });
    push(&|b| {
        encode_message(
            &ChildMsg::Refused {
                reason: "no".into(),
            },
            b,
            1 << 20,
        )
        .unwrap()
    });
    push(&|b| encode_message(&ChildMsg::Forked { id: 3, pid: 42 }, b, 1 << 20).unwrap());
    push(&|b| encode_message(&ChildMsg::Ready, b, 1 << 20).unwrap());
    push(&|b| {
        use crate::wire::log::{LogBatch, LogCallsite, LogEntry, LogRecord, LogValue};
        let batch = LogBatch {
            callsites: vec![LogCallsite {
                id: 0,
                span: false,
                level: 3,
                name: "event".into(),
                target: "fuzz".into(),
                module_path: None,
                file: Some("a.rs".into()),
                line: Some(1),
                fields: vec!["message".into(), "n".into()],
            }],
            records: vec![LogRecord {
                event: LogEntry {
                    callsite: 0,
                    values: vec![(0, LogValue::Fmt("hi".into())), (1, LogValue::U64(7))],
                },
                spans: vec![],
            }],
            dropped: 2,
        };
        let bytes = rmp_serde::to_vec(&batch).unwrap();
        encode_message(&ChildMsg::Log(bytes.into()), b, 1 << 20).unwrap();
    });
    out
}

/// Lays `data` into shared memory as if a peer process had written it, and
/// runs the readers of that memory over it: the queue ring (over plain
/// memory and inside a real queue segment), the pool page's reply ring and
/// gate word, and the synchronization primitives. The first byte picks
/// which. Checks that nothing panics, that errors are the typed ones, and
/// that nothing read claims more than its memory holds.
pub fn shm(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 8 {
        0 => crate::queue::fuzz_ring(input),
        1 => crate::queue::fuzz_segment(input),
        2 => crate::pool::fuzz_page(input),
        which => crate::sync::fuzz(which, input),
    }
}

/// Inputs for [`shm`] that reach past the first checks: a queue ring, a
/// queue segment and a pool page each holding a few valid records, and
/// every primitive in a plain state.
pub fn seed_shm() -> Vec<Vec<u8>> {
    let le = |v: u64| v.to_le_bytes().to_vec();
    let record = |payload: &[u8]| {
        let mut r = u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes()
            .to_vec();
        r.extend_from_slice(&[0; 4]);
        r.extend_from_slice(payload);
        r.resize(8 + payload.len().div_ceil(8) * 8, 0);
        r
    };
    let page_record = |payload: &[u8]| {
        let mut r = (payload.len() as u64).to_le_bytes().to_vec();
        r.extend_from_slice(payload);
        r.resize(8 + payload.len().div_ceil(8) * 8, 0);
        r
    };
    let mut out = Vec::new();
    // 0: a ring of 256 bytes (31 + 2 times 8) with two records.
    let mut ring = vec![0u8, 30];
    let records = [record(b"hello"), record(&[7; 12])].concat();
    ring.extend(le(0)); // head
    ring.extend(le(records.len() as u64)); // tail, relative to head
    ring.extend(le(2)); // count
    ring.push(0b1010_0110); // operations
    ring.extend(&records);
    out.push(ring);
    // 1: a queue segment holding two encoded items.
    let mut queue = vec![1u8];
    let items = [record(&[0x93, 1, 2, 3]), record(&[0xc4, 2, 9, 9])].concat();
    queue.extend(le(0)); // head
    queue.extend(le(items.len() as u64)); // tail
    queue.extend(le(2)); // count
    queue.extend(le(0)); // maxsize
    queue.extend(le(256)); // capacity
    queue.extend(le(2)); // unfinished
    queue.push(0b0101_1011);
    queue.extend(&items);
    out.push(queue);
    // 2: a pool page with a reply, then a wrap marker.
    let mut page = vec![2u8];
    let replies = page_record(&[0x92, 1, 0x90]);
    page.extend(le(3)); // started
    page.extend(le(0)); // head
    page.extend(le(replies.len() as u64)); // tail
    page.extend(&0u32.to_le_bytes()); // sleeping
    page.push(0b0011_0101);
    page.extend(&replies);
    out.push(page);
    // 3 to 7: each primitive with its words zero.
    for which in 3u8..8 {
        let mut sync = vec![which];
        sync.extend([0u8; 24]);
        sync.push(0b1111_0000);
        out.push(sync);
    }
    out
}
