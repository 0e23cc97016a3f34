//! The codec's tests: split and merged reads, truncation, oversized
//! claims and bounded buffers, driven by scripted mock I/O.

use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serializer};
use tokio::time::timeout;
use tokio_test::io::{Builder, Mock};
use tokio_util::codec::FramedRead;

use super::*;

/// How long an async case may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(5);

/// A whole frame around `body`.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// Everything a `FramedRead` over `mock` yields until it ends.
async fn collect(mock: Mock, codec: FrameCodec) -> Vec<Result<BytesMut, ChannelError>> {
    let mut framed = FramedRead::new(mock, codec);
    let mut out = Vec::new();
    timeout(LIMIT, async {
        while let Some(item) = framed.next().await {
            out.push(item);
        }
    })
    .await
    .expect("the decoder hung");
    out
}

/// The bodies, panicking on any error.
fn bodies(items: Vec<Result<BytesMut, ChannelError>>) -> Vec<Vec<u8>> {
    items.into_iter().map(|r| r.unwrap().to_vec()).collect()
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u64,
    name: String,
    args: Vec<i32>,
    kind: Kind,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Kind {
    Unit,
    Newtype(String),
    Tuple(u8, bool),
    Struct { fds: u32, tag: Option<String> },
}

/// A value whose serialization always fails.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("this value refuses to encode"))
    }
}

#[tokio::test]
async fn header_split_one_plus_three() {
    let bytes = frame(b"hello");
    let mock = Builder::new()
        .read(&bytes[..1])
        .read(&bytes[1..4])
        .read(&bytes[4..])
        .build();
    let got = bodies(collect(mock, FrameCodec::default()).await);
    assert_eq!(got, vec![b"hello".to_vec()]);
}

#[tokio::test]
async fn body_split_into_many_pieces() {
    let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
    let bytes = frame(&body);
    let mut builder = Builder::new();
    builder.read(&bytes[..HEADER_LEN]);
    for piece in bytes[HEADER_LEN..].chunks(333) {
        builder.read(piece);
    }
    let got = bodies(collect(builder.build(), FrameCodec::default()).await);
    assert_eq!(got, vec![body]);
}

#[tokio::test]
async fn one_byte_at_a_time() {
    let mut bytes = frame(b"first");
    bytes.extend(frame(b""));
    bytes.extend(frame(b"third frame"));
    let mut builder = Builder::new();
    for b in &bytes {
        builder.read(std::slice::from_ref(b));
    }
    let got = bodies(collect(builder.build(), FrameCodec::default()).await);
    assert_eq!(
        got,
        vec![b"first".to_vec(), Vec::new(), b"third frame".to_vec()]
    );
}

#[tokio::test]
async fn several_frames_in_one_read() {
    let mut bytes = Vec::new();
    for i in 0..10u8 {
        bytes.extend(frame(&vec![i; usize::from(i)]));
    }
    let mock = Builder::new().read(&bytes).build();
    let got = bodies(collect(mock, FrameCodec::default()).await);
    let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; usize::from(i)]).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn zero_length_frame() {
    let mut bytes = frame(b"");
    bytes.extend(frame(b""));
    let mock = Builder::new().read(&bytes).build();
    let got = bodies(collect(mock, FrameCodec::default()).await);
    assert_eq!(got, vec![Vec::<u8>::new(), Vec::new()]);
}

#[tokio::test]
async fn clean_close_ends_the_stream() {
    let got = collect(Builder::new().build(), FrameCodec::default()).await;
    assert!(got.is_empty());

    let mock = Builder::new().read(&frame(b"last")).build();
    let got = bodies(collect(mock, FrameCodec::default()).await);
    assert_eq!(got, vec![b"last".to_vec()]);
}

#[tokio::test]
async fn truncated_header_at_eof() {
    let mock = Builder::new().read(&[0, 0]).build();
    let got = collect(mock, FrameCodec::default()).await;
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0],
        Err(ChannelError::Truncated {
            expected: 4,
            received: 2
        })
    ));
}

#[tokio::test]
async fn truncated_body_at_eof() {
    let bytes = frame(b"0123456789");
    let mock = Builder::new().read(&bytes[..7]).build();
    let got = collect(mock, FrameCodec::default()).await;
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0],
        Err(ChannelError::Truncated {
            expected: 14,
            received: 7
        })
    ));
}

#[tokio::test]
async fn complete_frames_come_before_the_truncation() {
    let mut bytes = frame(b"whole");
    bytes.extend(&frame(b"partial")[..6]);
    let mock = Builder::new().read(&bytes).build();
    let mut got = collect(mock, FrameCodec::default()).await.into_iter();
    assert_eq!(&got.next().unwrap().unwrap()[..], b"whole");
    assert!(matches!(
        got.next(),
        Some(Err(ChannelError::Truncated {
            expected: 11,
            received: 6
        }))
    ));
    assert!(got.next().is_none());
}

#[tokio::test]
async fn peer_closes_mid_frame() {
    let body = vec![7u8; 1000];
    let bytes = frame(&body);
    let mock = Builder::new()
        .read(&bytes[..2])
        .read(&bytes[2..300])
        .read(&bytes[300..600])
        .build();
    let got = collect(mock, FrameCodec::default()).await;
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0],
        Err(ChannelError::Truncated {
            expected: 1004,
            received: 600
        })
    ));
}

#[tokio::test]
async fn oversized_claim_fails_before_the_body() {
    // The body would only come an hour later: the error must not wait.
    let mock = Builder::new()
        .read(&1025u32.to_be_bytes())
        .wait(Duration::from_secs(3600))
        .build();
    let got = collect(mock, FrameCodec::new(1024)).await;
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0],
        Err(ChannelError::Oversized {
            len: 1025,
            max: 1024
        })
    ));
}

#[tokio::test]
async fn huge_claim_does_not_preallocate() {
    let claim = u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap();
    let mut bytes = claim.to_be_bytes().to_vec();
    bytes.extend([0xAB; 10]);
    let mock = Builder::new()
        .read(&bytes)
        .wait(Duration::from_secs(3600))
        .build();
    let mut framed = FramedRead::new(mock, FrameCodec::default());
    let pending = timeout(Duration::from_millis(200), framed.next()).await;
    assert!(pending.is_err(), "no frame can be complete yet");
    assert_eq!(framed.read_buffer().len(), 14);
    assert!(framed.read_buffer().capacity() < 1024 * 1024);
}

#[test]
fn decoder_reserves_in_bounded_steps() {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(DEFAULT_MAX_FRAME - 1).unwrap());
    buf.put_bytes(1, 10);
    for _ in 0..100 {
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
    assert_eq!(buf.len(), 14);
    assert!(buf.capacity() < 1024 * 1024);
}

#[tokio::test]
async fn garbage_with_a_small_length_is_malformed() {
    // 0xc1 is never used in MessagePack.
    let garbage = [0, 0, 0, 5, 0xc1, 0x9f, 0x13, 0x37, 0xc1];
    let mock = Builder::new().read(&garbage).build();
    let got = bodies(collect(mock, FrameCodec::default()).await);
    assert_eq!(got.len(), 1);
    let err = decode_message::<Job>(&got[0]).unwrap_err();
    assert!(matches!(err, ChannelError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn garbage_with_a_huge_length_is_oversized() {
    let garbage = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03];
    let mock = Builder::new().read(&garbage).build();
    let got = collect(mock, FrameCodec::default()).await;
    assert_eq!(got.len(), 1);
    assert!(matches!(
        got[0],
        Err(ChannelError::Oversized {
            len: 0xdead_beef,
            max: DEFAULT_MAX_FRAME
        })
    ));
}

#[tokio::test]
async fn read_error_propagates_as_io() {
    let bytes = frame(b"ok");
    let mock = Builder::new()
        .read(&bytes)
        .read(&[0, 0])
        .read_error(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
        .build();
    let mut got = collect(mock, FrameCodec::default()).await.into_iter();
    assert_eq!(&got.next().unwrap().unwrap()[..], b"ok");
    match got.next() {
        Some(Err(ChannelError::Io(e))) => {
            assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        }
        other => panic!("expected an i/o error, got {other:?}"),
    }
    assert!(got.next().is_none());
}

#[test]
fn random_input_never_panics() {
    // A small xorshift generator: deterministic, no dependency.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let mut codec = FrameCodec::new(512);
        let len = usize::try_from(next() % 64).unwrap();
        let mut input: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
        if next() % 2 == 0 && input.len() >= 4 {
            // Make a plausible small length half of the time.
            input[..2].fill(0);
        }
        let mut buf = BytesMut::new();
        let mut rest = &input[..];
        let mut failed = false;
        while !rest.is_empty() && !failed {
            let take = (usize::try_from(next() % 8).unwrap() + 1).min(rest.len());
            buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(body)) => {
                        let _ = decode_message::<Job>(&body);
                    }
                    Ok(None) => break,
                    Err(ChannelError::Oversized { len, max }) => {
                        assert!(len > max);
                        failed = true;
                        break;
                    }
                    Err(e) => panic!("unexpected error {e:?}"),
                }
            }
        }
        if !failed {
            match codec.decode_eof(&mut buf) {
                Ok(_)
                | Err(ChannelError::Truncated { .. })
                | Err(ChannelError::Oversized { .. }) => {}
                Err(e) => panic!("unexpected error {e:?}"),
            }
        }
    }
}

#[test]
fn round_trip_struct_and_enum() {
    let jobs = [
        Job {
            id: 1,
            name: "unit".into(),
            args: vec![],
            kind: Kind::Unit,
        },
        Job {
            id: u64::MAX,
            name: "newtype".into(),
            args: vec![-1, 0, 1],
            kind: Kind::Newtype("x".repeat(300)),
        },
        Job {
            id: 3,
            name: String::new(),
            args: vec![i32::MIN, i32::MAX],
            kind: Kind::Tuple(9, true),
        },
        Job {
            id: 4,
            name: "struct".into(),
            args: vec![42],
            kind: Kind::Struct {
                fds: 2,
                tag: Some("t".into()),
            },
        },
    ];
    let mut buf = BytesMut::new();
    for job in &jobs {
        encode_message(job, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    }
    let mut codec = FrameCodec::default();
    for job in &jobs {
        let body = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(&decode_message::<Job>(&body).unwrap(), job);
    }
    assert!(buf.is_empty());
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
}

#[test]
fn messages_use_the_compact_array_form() {
    let mut buf = BytesMut::new();
    let job = Job {
        id: 5,
        name: "n".into(),
        args: vec![],
        kind: Kind::Unit,
    };
    encode_message(&job, &mut buf, DEFAULT_MAX_FRAME).unwrap();
    // A fixarray of four fields, not a map with field names.
    assert_eq!(buf[HEADER_LEN], 0x94);
    let expected = rmp_serde::to_vec(&job).unwrap();
    assert_eq!(&buf[HEADER_LEN..], &expected[..]);
    assert_eq!(
        usize::try_from(u32::from_be_bytes(buf[..4].try_into().unwrap())).unwrap(),
        expected.len()
    );
}

#[test]
fn encode_error_leaves_dst_unchanged() {
    let mut buf = BytesMut::from(&b"earlier frame bytes"[..]);
    let err = encode_message(&Unencodable, &mut buf, DEFAULT_MAX_FRAME).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Encode(m) if m.contains("refuses")),
        "{err:?}"
    );
    assert_eq!(&buf[..], b"earlier frame bytes");

    // An error deep inside a value also leaves nothing behind.
    let nested = (1u32, "partly written", Unencodable);
    let err = encode_message(&nested, &mut buf, DEFAULT_MAX_FRAME).unwrap_err();
    assert!(matches!(err, ChannelError::Encode(_)));
    assert_eq!(&buf[..], b"earlier frame bytes");
}

#[test]
fn encode_oversized_leaves_dst_unchanged() {
    let mut buf = BytesMut::from(&b"xy"[..]);
    let big = vec![0u8; 2000];
    let err = encode_message(&big, &mut buf, 100).unwrap_err();
    // The exact length is measured even though only 100 bytes are kept.
    let exact = rmp_serde::to_vec(&big).unwrap().len();
    assert!(
        matches!(err, ChannelError::Oversized { len, max: 100 } if len == exact),
        "{err:?}"
    );
    assert_eq!(&buf[..], b"xy");
    assert!(buf.capacity() < 1024);

    // Exactly at the limit is fine.
    let fits = vec![0u8; 5];
    let len = rmp_serde::to_vec(&fits).unwrap().len();
    encode_message(&fits, &mut buf, len).unwrap();
    assert_eq!(buf.len(), 2 + HEADER_LEN + len);
}

#[test]
fn encoder_frames_bodies_and_refuses_oversized() {
    let mut codec = FrameCodec::new(8);
    assert_eq!(codec.max_frame, 8);
    let mut buf = BytesMut::new();
    codec.encode(&b"12345678"[..], &mut buf).unwrap();
    codec.encode(&b""[..], &mut buf).unwrap();
    assert_eq!(
        &buf[..],
        &[&frame(b"12345678")[..], &frame(b"")[..]].concat()[..]
    );
    let err = codec.encode(&b"123456789"[..], &mut buf).unwrap_err();
    assert!(matches!(err, ChannelError::Oversized { len: 9, max: 8 }));
    assert_eq!(buf.len(), 16);
    assert_eq!(
        FrameCodec::new(usize::MAX).max_frame,
        usize::try_from(u32::MAX).unwrap()
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    let mut body = rmp_serde::to_vec(&42u32).unwrap();
    assert_eq!(decode_message::<u32>(&body).unwrap(), 42);
    body.extend([0xc0, 0x01]);
    let err = decode_message::<u32>(&body).unwrap_err();
    assert!(
        matches!(&err, ChannelError::Malformed(m) if m.contains("2 trailing")),
        "{err:?}"
    );
}

#[test]
fn empty_or_mistyped_bodies_are_malformed() {
    assert!(matches!(
        decode_message::<u32>(b""),
        Err(ChannelError::Malformed(_))
    ));
    let body = rmp_serde::to_vec(&"a string").unwrap();
    assert!(matches!(
        decode_message::<Job>(&body),
        Err(ChannelError::Malformed(_))
    ));
    // A string that claims far more bytes than the body holds.
    assert!(matches!(
        decode_message::<String>(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']),
        Err(ChannelError::Malformed(_))
    ));
}
