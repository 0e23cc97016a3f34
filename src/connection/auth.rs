//! The authkey handshake of CPython's `multiprocessing.connection`, both
//! ways, in both of its versions.
//!
//! One side *delivers* a challenge and the other *answers* it; the
//! listener delivers first and then answers the client's challenge, so
//! each proves to the other that it knows the key:
//!
//! ```text
//!  deliverer                                answerer
//!  "#CHALLENGE#" + message        ------->
//!                                 <-------  response = MAC(key, message)
//!  "#WELCOME#" or "#FAILURE#"     ------->
//! ```
//!
//! - CPython 3.12 and later send `{sha256}` and 40 random bytes, and
//!   answer with `{sha256}` and the HMAC-SHA256 of the whole message,
//!   prefix included. The name in braces says which digest to use.
//! - CPython 3.11 and earlier send 20 random bytes and answer with the raw
//!   HMAC-MD5 of the message. A message of 20 bytes (or a response of 16)
//!   is this legacy form.
//!
//! This side delivers the modern challenge (an old peer answers it with
//! HMAC-MD5 over the whole message, which is accepted), and answers
//! either. Every frame before the handshake ends may hold at most
//! [`MAX_HANDSHAKE_FRAME`] bytes, as CPython's `recv_bytes(256)`.

use hmac::{Hmac, Mac};

use tokio::io::{AsyncRead, AsyncWrite};

use crate::transport::net::{recv_frame, send_frame};
use crate::wire::ChannelError;

/// The largest frame read before the peer is authenticated.
pub(crate) const MAX_HANDSHAKE_FRAME: usize = 256;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";

/// Random bytes in a modern challenge.
const MESSAGE_LENGTH: usize = 40;
/// The length of a legacy challenge, which means HMAC-MD5.
const MD5_ONLY_MESSAGE_LENGTH: usize = 20;
/// The length of an HMAC-MD5, a legacy response.
const MD5_DIGEST_LENGTH: usize = 16;

/// The peer did not prove that it knows the authkey, or refused our
/// proof. Python's `multiprocessing.AuthenticationError`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("authentication failed: {reason}")]
pub struct AuthenticationError {
    reason: String,
}

impl AuthenticationError {
    pub(crate) fn new(reason: &str) -> AuthenticationError {
        AuthenticationError {
            reason: reason.to_owned(),
        }
    }

    /// What went wrong, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A failed handshake: the peer did not prove the key, or the stream
/// broke.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    Auth(AuthenticationError),
    Channel(ChannelError),
}

impl From<ChannelError> for HandshakeError {
    fn from(e: ChannelError) -> Self {
        HandshakeError::Channel(e)
    }
}

impl From<AuthenticationError> for HandshakeError {
    fn from(e: AuthenticationError) -> Self {
        HandshakeError::Auth(e)
    }
}

/// The digests a message's `{name}` prefix may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digest {
    Md5,
    Sha256,
    Sha384,
}

impl Digest {
    fn named(name: &[u8]) -> Option<Digest> {
        match name {
            b"md5" => Some(Digest::Md5),
            b"sha256" => Some(Digest::Sha256),
            b"sha384" => Some(Digest::Sha384),
            _ => None,
        }
    }

    fn name(self) -> &'static [u8] {
        match self {
            Digest::Md5 => b"md5",
            Digest::Sha256 => b"sha256",
            Digest::Sha384 => b"sha384",
        }
    }

    /// The HMAC of `message` under `key`.
    fn mac(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
            // An HMAC takes a key of any length.
            let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
                .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
            mac.update(message);
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Digest::Md5 => run::<Hmac<md5::Md5>>(key, message),
            Digest::Sha256 => run::<Hmac<sha2::Sha256>>(key, message),
            Digest::Sha384 => run::<Hmac<sha2::Sha384>>(key, message),
        }
    }
}

/// Splits a challenge or a response into the digest its `{name}` prefix
/// names and what follows; a legacy one (20 or 16 bytes, no prefix) means
/// HMAC-MD5 over all of it.
fn digest_and_payload(bytes: &[u8]) -> Result<(Digest, &[u8], bool), AuthenticationError> {
    if bytes.len() == MD5_ONLY_MESSAGE_LENGTH || bytes.len() == MD5_DIGEST_LENGTH {
        return Ok((Digest::Md5, bytes, true));
    }
    let named = bytes
        .strip_prefix(b"{")
        .and_then(|rest| {
            // CPython looks for the closing brace within 20 bytes.
            let end = rest.iter().take(20).position(|&b| b == b'}')?;
            Some((&rest[..end], &rest[end + 1..]))
        })
        .and_then(|(name, payload)| Some((Digest::named(name)?, payload)));
    match named {
        Some((digest, payload)) => Ok((digest, payload, false)),
        None => Err(AuthenticationError::new(
            "unsupported message length, missing digest prefix, or unsupported digest",
        )),
    }
}

/// The response to challenge `message` (without `#CHALLENGE#`).
fn respond(key: &[u8], message: &[u8]) -> Result<Vec<u8>, AuthenticationError> {
    let (digest, _, legacy) = digest_and_payload(message)?;
    let mac = digest.mac(key, message);
    if legacy {
        return Ok(mac);
    }
    let mut out = Vec::with_capacity(mac.len() + 10);
    out.push(b'{');
    out.extend_from_slice(digest.name());
    out.push(b'}');
    out.extend_from_slice(&mac);
    Ok(out)
}

/// Whether `response` proves the key for challenge `message`.
fn verify(key: &[u8], message: &[u8], response: &[u8]) -> Result<(), AuthenticationError> {
    let wrong = || AuthenticationError::new("the digest received was wrong");
    let (digest, mac, _) = digest_and_payload(response).map_err(|_| wrong())?;
    // Compared in constant time.
    let ok = match digest {
        Digest::Md5 => verify_with::<Hmac<md5::Md5>>(key, message, mac),
        Digest::Sha256 => verify_with::<Hmac<sha2::Sha256>>(key, message, mac),
        Digest::Sha384 => verify_with::<Hmac<sha2::Sha384>>(key, message, mac),
    };
    if ok { Ok(()) } else { Err(wrong()) }
}

fn verify_with<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], mac: &[u8]) -> bool {
    let Ok(mut m) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
        return false;
    };
    m.update(message);
    m.verify_slice(mac).is_ok()
}

/// Sends a challenge and checks the answer; tells the peer whether it
/// passed.
pub(crate) async fn deliver_challenge<S>(s: &mut S, key: &[u8]) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut random = [0u8; MESSAGE_LENGTH];
    getrandom::fill(&mut random)
        .map_err(|e| ChannelError::Io(std::io::Error::other(e.to_string())))?;
    let mut message = b"{sha256}".to_vec();
    message.extend_from_slice(&random);
    let mut frame = CHALLENGE.to_vec();
    frame.extend_from_slice(&message);
    send_frame(s, &frame, MAX_HANDSHAKE_FRAME).await?;
    let response = recv_frame(s, MAX_HANDSHAKE_FRAME).await?;
    match verify(key, &message, &response) {
        Ok(()) => {
            send_frame(s, WELCOME, MAX_HANDSHAKE_FRAME).await?;
            Ok(())
        }
        Err(e) => {
            let _ = send_frame(s, FAILURE, MAX_HANDSHAKE_FRAME).await;
            Err(e.into())
        }
    }
}

/// Answers the peer's challenge; fails if the peer says the answer was
/// wrong.
pub(crate) async fn answer_challenge<S>(s: &mut S, key: &[u8]) -> Result<(), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = recv_frame(s, MAX_HANDSHAKE_FRAME).await?;
    let Some(message) = frame.strip_prefix(CHALLENGE) else {
        return Err(AuthenticationError::new("the peer sent no challenge").into());
    };
    let response = respond(key, message)?;
    send_frame(s, &response, MAX_HANDSHAKE_FRAME).await?;
    let verdict = recv_frame(s, MAX_HANDSHAKE_FRAME).await?;
    if verdict == WELCOME {
        Ok(())
    } else {
        Err(AuthenticationError::new("the peer rejected our digest (a different authkey?)").into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modern_response_names_its_digest_and_macs_the_whole_message() {
        let message = b"{sha256}0123456789012345678901234567890123456789";
        let r = respond(b"key", message).unwrap();
        assert!(r.starts_with(b"{sha256}"));
        assert_eq!(r.len(), 8 + 32);
        assert_eq!(&r[8..], Digest::Sha256.mac(b"key", message).as_slice());
        verify(b"key", message, &r).unwrap();
        assert!(verify(b"other", message, &r).is_err());
    }

    #[test]
    fn a_legacy_challenge_gets_a_raw_md5() {
        let message = [7u8; 20];
        let r = respond(b"key", &message).unwrap();
        assert_eq!(r.len(), 16);
        verify(b"key", &message, &r).unwrap();
        // An old peer answers a modern challenge with raw HMAC-MD5 over
        // all of it.
        let modern = b"{sha256}0123456789012345678901234567890123456789";
        let old = Digest::Md5.mac(b"key", modern);
        verify(b"key", modern, &old).unwrap();
    }

    #[test]
    fn hmac_md5_matches_rfc_2104s_example() {
        // RFC 2104, test case 2.
        let mac = Digest::Md5.mac(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "750c783e6ab0b503eaa86e310a5db738");
    }

    #[test]
    fn an_unknown_digest_or_length_is_refused() {
        assert!(respond(b"k", b"{whirlpool}abcdefghijklmnopqrstuvwxyz").is_err());
        assert!(respond(b"k", b"short").is_err());
        assert!(verify(b"k", b"{sha256}abc", b"{sha256}").is_err());
        assert!(verify(b"k", b"{sha256}abc", b"").is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_an_answer_or_an_error_never_a_panic(
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            message in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            response in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let _ = verify(&key, &message, &response);
            if let Ok(answer) = respond(&key, &message) {
                // Whatever this side answers, it would accept from a peer.
                proptest::prop_assert!(verify(&key, &message, &answer).is_ok());
            }
        }
    }
}
