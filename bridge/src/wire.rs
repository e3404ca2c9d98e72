//! What travels between a remote caller and a bridge, besides the message's archive itself.
//!
//! A query carries the request's archive as its payload and a fixed 40-byte header as its
//! attachment (little-endian):
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 4 | magic `SRZ1` (the version of this format) |
//! | 4 | 1 | kind: 1 request, 2 one-way, 3 ping |
//! | 5 | 3 | zero |
//! | 8 | 4 | fingerprint of the request type (`shmrpc::raw::fingerprint`) |
//! | 12 | 4 | fingerprint of the reply type the caller expects |
//! | 16 | 16 | the call's id (UUID) |
//! | 32 | 8 | the caller's time left for the call, in microseconds |
//!
//! A successful call's reply carries the reply's archive (empty for a one-way message or a
//! ping). A failed one is a Zenoh error reply whose payload is `SRZE`, a one-byte [`Code`],
//! two little-endian `u64` numbers and a UTF-8 text: what the local shmrpc call (or the bridge
//! itself) reported. Zenoh's own errors (its `Timeout`) carry no magic and are told apart.

use shmrpc::Uuid;
use std::time::Duration;

/// The query header's magic, and the version of this format.
pub(crate) const MAGIC: [u8; 4] = *b"SRZ1";
/// An error reply's magic.
pub(crate) const ERROR_MAGIC: [u8; 4] = *b"SRZE";
/// Bytes of the query header.
pub(crate) const HEADER_LEN: usize = 40;

/// What a query asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Request = 1,
    OneWay = 2,
    Ping = 3,
}

/// A query's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub kind: Kind,
    pub request_type: u32,
    pub reply_type: u32,
    pub id: Uuid,
    /// The caller's time left for the call.
    pub timeout: Duration,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.kind as u8;
        b[8..12].copy_from_slice(&self.request_type.to_le_bytes());
        b[12..16].copy_from_slice(&self.reply_type.to_le_bytes());
        b[16..32].copy_from_slice(self.id.as_bytes());
        let us = u64::try_from(self.timeout.as_micros()).unwrap_or(u64::MAX);
        b[32..40].copy_from_slice(&us.to_le_bytes());
        b
    }

    /// The header in `b`, or what is wrong with it.
    pub(crate) fn decode(b: &[u8]) -> Result<Header, String> {
        if b.len() != HEADER_LEN {
            return Err(format!(
                "a call header has {HEADER_LEN} bytes, this one {}",
                b.len()
            ));
        }
        if b[0..4] != MAGIC {
            return Err("the call header is not of this bridge's format (magic SRZ1)".into());
        }
        let kind = match b[4] {
            1 => Kind::Request,
            2 => Kind::OneWay,
            3 => Kind::Ping,
            k => return Err(format!("unknown call kind {k}")),
        };
        if b[5..8] != [0; 3] {
            return Err("the call header's reserved bytes are not zero".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let us = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes"));
        Ok(Header {
            kind,
            request_type: u32_at(8),
            reply_type: u32_at(12),
            id: Uuid::from_bytes(b[16..32].try_into().expect("16 bytes")),
            timeout: Duration::from_micros(us),
        })
    }
}

/// Why a bridge answered with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Code {
    /// No local server of the exposed name runs.
    NotFound = 1,
    /// The local call timed out (`a`: its timeout in microseconds).
    Timeout = 2,
    /// The local server stopped or died during the call.
    ServerGone = 3,
    /// A message did not validate (text: why).
    BadMessage = 4,
    /// The types differ (text: the server's types in its words).
    TypeMismatch = 5,
    /// Too large (`a`: its length, `b`: the bound).
    PayloadTooLarge = 6,
    /// The handler panicked.
    HandlerPanicked = 7,
    /// The call's slot was taken by a process breaking the protocol.
    CallLost = 8,
    /// The bridge takes no more calls now (its queue is full, or the server's client table).
    Busy = 9,
    /// The query was not a call of this format (text: why).
    BadCall = 10,
    /// Anything else the local call reported (text: its message).
    Other = 11,
}

impl Code {
    fn of(b: u8) -> Option<Code> {
        use Code::*;
        Some(match b {
            1 => NotFound,
            2 => Timeout,
            3 => ServerGone,
            4 => BadMessage,
            5 => TypeMismatch,
            6 => PayloadTooLarge,
            7 => HandlerPanicked,
            8 => CallLost,
            9 => Busy,
            10 => BadCall,
            11 => Other,
            _ => return None,
        })
    }
}

/// An error reply's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub code: Code,
    pub a: u64,
    pub b: u64,
    pub text: String,
}

impl Failure {
    pub(crate) fn new(code: Code, text: impl Into<String>) -> Failure {
        Failure {
            code,
            a: 0,
            b: 0,
            text: text.into(),
        }
    }

    /// What the bridge says when a local call fails with `e`.
    pub(crate) fn of(e: &shmrpc::Error) -> Failure {
        use shmrpc::Error as E;
        match e {
            E::NotFound { .. } => Failure::new(Code::NotFound, e.to_string()),
            E::Timeout { after, .. } => Failure {
                a: u64::try_from(after.as_micros()).unwrap_or(u64::MAX),
                ..Failure::new(Code::Timeout, e.to_string())
            },
            E::ServerGone { .. } => Failure::new(Code::ServerGone, e.to_string()),
            E::BadMessage(why) => Failure::new(Code::BadMessage, why.clone()),
            E::TypeMismatch { server, .. } => Failure::new(Code::TypeMismatch, server.clone()),
            E::PayloadTooLarge { len, max } => Failure {
                a: *len as u64,
                b: *max as u64,
                ..Failure::new(Code::PayloadTooLarge, e.to_string())
            },
            E::HandlerPanicked => Failure::new(Code::HandlerPanicked, e.to_string()),
            E::CallLost { .. } => Failure::new(Code::CallLost, e.to_string()),
            E::TooManyClients { .. } => Failure::new(Code::Busy, e.to_string()),
            e => Failure::new(Code::Other, e.to_string()),
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(21 + self.text.len());
        v.extend_from_slice(&ERROR_MAGIC);
        v.push(self.code as u8);
        v.extend_from_slice(&self.a.to_le_bytes());
        v.extend_from_slice(&self.b.to_le_bytes());
        v.extend_from_slice(self.text.as_bytes());
        v
    }

    /// The failure in `b`, or `None` if `b` is not one (a Zenoh error of its own).
    pub(crate) fn decode(b: &[u8]) -> Option<Failure> {
        if b.len() < 21 || b[0..4] != ERROR_MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Some(Failure {
            code: Code::of(b[4])?,
            a: u64_at(5),
            b: u64_at(13),
            text: String::from_utf8_lossy(&b[21..]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_decodes_to_what_was_encoded() {
        let h = Header {
            kind: Kind::OneWay,
            request_type: 0xdead_beef,
            reply_type: 7,
            id: Uuid::from_u64_pair(1, 2),
            timeout: Duration::from_micros(1_234_567),
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn a_malformed_header_is_refused_with_a_reason() {
        let good = Header {
            kind: Kind::Request,
            request_type: 1,
            reply_type: 1,
            id: Uuid::nil(),
            timeout: Duration::ZERO,
        }
        .encode();
        assert!(Header::decode(&good[..39])
            .unwrap_err()
            .contains("40 bytes"));
        let mut bad = good;
        bad[0] = b'X';
        assert!(Header::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = good;
        bad[4] = 9;
        assert!(Header::decode(&bad).unwrap_err().contains("kind 9"));
        let mut bad = good;
        bad[6] = 1;
        assert!(Header::decode(&bad).unwrap_err().contains("reserved"));
    }

    #[test]
    fn a_failure_decodes_to_what_was_encoded_and_foreign_errors_are_not_failures() {
        let f = Failure {
            code: Code::PayloadTooLarge,
            a: 5,
            b: u64::MAX,
            text: "too large ✓".into(),
        };
        assert_eq!(Failure::decode(&f.encode()), Some(f));
        assert_eq!(Failure::decode(b"Timeout"), None);
        let mut unknown = Failure::new(Code::Other, "x").encode();
        unknown[4] = 200;
        assert_eq!(Failure::decode(&unknown), None);
    }
}
