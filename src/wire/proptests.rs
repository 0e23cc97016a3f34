//! Property tests of the wire: every message survives a round trip, and
//! any byte stream, cut anywhere, gives frames or a typed error — never a
//! panic, and never an allocation sized by a length the peer only claims.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_bytes::ByteBuf;
use tokio_util::codec::Decoder;

use crate::wire::frame::{FrameCodec, RESERVE_STEP, decode_message, encode_message};
use crate::wire::log::{LogBatch, LogCallsite, LogEntry, LogRecord, LogValue};
use crate::wire::message::{
    ChildMsg, Group, Hello, Identity, Outcome, ParentMsg, TargetKind, TargetRef,
};
use crate::wire::{ChannelError, PanicInfo};

fn bytes() -> impl Strategy<Value = ByteBuf> {
    proptest::collection::vec(any::<u8>(), 0..256).prop_map(ByteBuf::from)
}

fn target() -> impl Strategy<Value = TargetRef> {
    (any::<bool>(), any::<i64>()).prop_map(|(sync, offset)| TargetRef {
        kind: if sync {
            TargetKind::Sync
        } else {
            TargetKind::Async
        },
        offset,
    })
}

fn identity() -> impl Strategy<Value = Identity> {
    (
        ".{0,20}",
        proptest::collection::vec(any::<u32>(), 0..4),
        bytes(),
        any::<bool>(),
        any::<bool>(),
        any::<u32>(),
        any::<bool>(),
        (0u8..6, any::<bool>()),
        (
            proptest::collection::vec((".{0,8}", proptest::option::of(".{0,8}")), 0..3),
            proptest::option::of(".{0,20}"),
        ),
    )
        .prop_map(
            |(
                name,
                path,
                authkey,
                daemon,
                detached,
                parent_pid,
                supervised,
                (log_level, capture_output),
                (env, current_dir),
            )| Identity {
                name,
                path,
                authkey,
                daemon,
                detached,
                parent_pid,
                supervised,
                log_level,
                capture_output,
                env: env
                    .into_iter()
                    .map(|(k, v): (String, Option<String>)| (k.into(), v.map(Into::into)))
                    .collect(),
                current_dir: current_dir.map(Into::into),
            },
        )
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        bytes().prop_map(Outcome::Returned),
        (
            ".{0,40}",
            proptest::option::of(".{0,40}"),
            proptest::option::of(".{0,80}")
        )
            .prop_map(
                |(message, location, backtrace)| Outcome::Panicked(PanicInfo {
                    message,
                    location,
                    backtrace
                })
            ),
        ".{0,40}".prop_map(Outcome::DecodeArgs),
        ".{0,40}".prop_map(Outcome::EncodeResult),
    ]
}

fn parent_msg() -> impl Strategy<Value = ParentMsg> {
    prop_oneof![
        (any::<u64>(), identity(), target(), bytes(), any::<u32>()).prop_map(
            |(id, identity, target, args, fds)| ParentMsg::Run {
                id,
                identity,
                target,
                args,
                fds
            }
        ),
        Just(ParentMsg::Serve),
        (
            any::<u64>(),
            any::<u64>(),
            prop_oneof![Just(Group::Inherit), Just(Group::Own), Just(Group::Session)]
        )
            .prop_map(|(id, nonce, group)| ParentMsg::Fork { id, nonce, group }),
    ]
}

fn child_msg() -> impl Strategy<Value = ChildMsg> {
    prop_oneof![
        (any::<u64>(), outcome()).prop_map(|(id, outcome)| ChildMsg::Outcome { id, outcome }),
        ".{0,40}".prop_map(|reason| ChildMsg::Refused { reason }),
        Just(ChildMsg::Serving),
        (any::<u64>(), any::<u32>()).prop_map(|(id, pid)| ChildMsg::Forked { id, pid }),
        Just(ChildMsg::Ready),
        Just(ChildMsg::Heartbeat),
        (any::<u64>(), ".{0,40}").prop_map(|(id, error)| ChildMsg::ForkFailed { id, error }),
        bytes().prop_map(ChildMsg::Log),
    ]
}

fn log_value() -> impl Strategy<Value = LogValue<'static>> {
    prop_oneof![
        ".{0,20}".prop_map(|s| LogValue::Str(s.into())),
        ".{0,20}".prop_map(|s| LogValue::Fmt(s.into())),
        any::<i64>().prop_map(LogValue::I64),
        any::<u64>().prop_map(LogValue::U64),
        (-1e12f64..1e12).prop_map(LogValue::F64),
        any::<bool>().prop_map(LogValue::Bool),
    ]
}

fn log_entry() -> impl Strategy<Value = LogEntry<'static>> {
    (
        any::<u32>(),
        proptest::collection::vec((any::<u16>(), log_value()), 0..4),
    )
        .prop_map(|(callsite, values)| LogEntry { callsite, values })
}

fn log_batch() -> impl Strategy<Value = LogBatch<'static>> {
    let callsite = (
        any::<u32>(),
        any::<bool>(),
        0u8..7,
        ".{0,10}",
        ".{0,10}",
        proptest::option::of(".{0,10}"),
        proptest::option::of(any::<u32>()),
        proptest::collection::vec(".{0,8}", 0..4),
    )
        .prop_map(
            |(id, span, level, name, target, file, line, fields)| LogCallsite {
                id,
                span,
                level,
                name,
                target,
                module_path: None,
                file,
                line,
                fields,
            },
        );
    let record = (log_entry(), proptest::collection::vec(log_entry(), 0..3))
        .prop_map(|(event, spans)| LogRecord { event, spans });
    (
        proptest::collection::vec(callsite, 0..3),
        proptest::collection::vec(record, 0..4),
        any::<u64>(),
    )
        .prop_map(|(callsites, records, dropped)| LogBatch {
            callsites,
            records,
            dropped,
        })
}

fn hello() -> impl Strategy<Value = Hello> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(magic, version, fingerprint, nonce, max_frame)| Hello {
            magic,
            version,
            fingerprint,
            nonce,
            max_frame,
        })
}

/// Encodes `msg` as one frame, decodes it back through the codec, and
/// checks that the result encodes to the very same bytes.
fn round_trip<T>(msg: &T) -> Result<(), TestCaseError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut wire = BytesMut::new();
    encode_message(msg, &mut wire, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let first = wire.clone();
    let mut codec = FrameCodec::new(1 << 20);
    let body = codec
        .decode(&mut wire)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let body = body.ok_or_else(|| TestCaseError::fail("no frame"))?;
    prop_assert!(wire.is_empty(), "one frame, nothing left");
    let back: T = decode_message(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut again = BytesMut::new();
    encode_message(&back, &mut again, 1 << 20).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(first, again);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parent_messages_round_trip(msg in parent_msg()) {
        round_trip(&msg)?;
    }

    #[test]
    fn log_batches_round_trip(batch in log_batch()) {
        let bytes = rmp_serde::to_vec(&batch).unwrap();
        let back: LogBatch<'_> = rmp_serde::from_slice(&bytes).unwrap();
        // MessagePack keeps no sign for an integer that has none: a
        // non-negative i64 comes back as a u64 of the same value.
        let mut want = batch;
        for record in &mut want.records {
            for entry in std::iter::once(&mut record.event).chain(&mut record.spans) {
                for (_, v) in &mut entry.values {
                    if let LogValue::I64(i) = *v && i >= 0 {
                        *v = LogValue::U64(i.unsigned_abs());
                    }
                }
            }
        }
        prop_assert_eq!(back, want);
    }

    #[test]
    fn child_messages_round_trip(msg in child_msg()) {
        round_trip(&msg)?;
    }

    #[test]
    fn hellos_round_trip(msg in hello()) {
        round_trip(&msg)?;
    }

    /// Any bytes, delivered in any chunks: frames or a typed error, no
    /// panic, and the buffer stays within a small multiple of what arrived
    /// plus one reserve step (the buffer's own growth may double it),
    /// whatever length a header claims: random headers under a 128 MiB
    /// limit mostly claim tens of megabytes.
    #[test]
    fn any_byte_stream_in_any_chunks(
        input in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(1usize..64, 1..64),
        max in prop_oneof![Just(16usize), Just(1 << 20), Just(128 << 20)],
    ) {
        let mut codec = FrameCodec::new(max);
        let mut buf = BytesMut::new();
        let mut fed = 0usize;
        let mut cut = cuts.iter().cycle();
        let mut failed = false;
        while fed < input.len() && !failed {
            let n = (*cut.next().unwrap()).min(input.len() - fed);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(body)) => {
                        prop_assert!(body.len() <= max);
                        // Whatever the body is, decoding it as a message
                        // gives a message or a typed error.
                        let _ = decode_message::<ChildMsg>(&body);
                        let _ = decode_message::<ParentMsg>(&body);
                    }
                    Ok(None) => break,
                    Err(ChannelError::Oversized { len, max: m }) => {
                        prop_assert!(len > m);
                        failed = true;
                        break;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
                }
            }
            prop_assert!(
                buf.capacity() <= 2 * (fed + RESERVE_STEP) + 64,
                "capacity {} after {fed} bytes",
                buf.capacity()
            );
        }
        if !failed {
            match codec.decode_eof(&mut buf) {
                Ok(_) => {}
                Err(ChannelError::Truncated { expected, received }) => prop_assert!(received < expected),
                Err(ChannelError::Oversized { .. }) => {}
                Err(e) => return Err(TestCaseError::fail(format!("unexpected error at the end {e:?}"))),
            }
        }
    }
}
