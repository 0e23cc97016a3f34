//! Entry points for `cargo fuzz` (compiled only with `--cfg fuzzing`).
//! Each panics only when an invariant of the wire breaks.

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::error::ChannelError;
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
    one::<ParentMsg>(body);
    one::<Hello>(body);
    one::<Outcome>(body);
}

/// Valid frames of every message kind, to seed a corpus.
pub fn seed_frames() -> Vec<Vec<u8>> {
    use crate::error::PanicInfo;
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
            &ParentMsg::Fork {
                id: 3,
                nonce: 4,
                detached: true,
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
    out
}
