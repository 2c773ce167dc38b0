use crate::proto::wire::{Reader, Writer};
use crate::proto::{frame, validate_name, DecodeError, MAX_NAME_LEN, MAX_REASON_LEN};

/// Bytes that open every hello, so a stray protocol is recognised at once.
pub const MAGIC: [u8; 4] = *b"TUNL";

/// Largest handshake frame accepted (payload bytes); real ones are under 200.
pub const MAX_HANDSHAKE_FRAME: usize = 1024;

const CLIENT_HELLO: u8 = 1;
const SERVER_CHALLENGE: u8 = 2;
const CLIENT_PROOF: u8 = 3;
const SERVER_ACCEPT: u8 = 4;
const REFUSE: u8 = 5;

/// Tag of the hello's optional `join` field.
const JOIN: u8 = 1;

/// One handshake message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeMessage {
    /// First message from the client.
    ClientHello {
        /// Oldest protocol version the client speaks.
        min_version: u16,
        /// Newest protocol version the client speaks.
        max_version: u16,
        /// Fresh client randomness.
        nonce: [u8; 32],
        /// Client name the credential is checked for.
        name: String,
        /// (Version 7.) The session this connection joins, by the id the server gave it
        /// ([`crate::proto::ControlMessage::Lanes`]); `None` for a session's first connection.
        /// A joining client's proof is wrapped under the session's lane key.
        join: Option<u64>,
    },
    /// Server's answer: the version chosen and fresh server randomness.
    ServerChallenge {
        /// Negotiated protocol version.
        version: u16,
        /// Fresh server randomness.
        nonce: [u8; 32],
    },
    /// Client's proof of the token.
    ClientProof {
        /// HMAC over the transcript.
        proof: [u8; 32],
    },
    /// Server accepted; it proves the token in turn.
    ServerAccept {
        /// HMAC over the transcript.
        proof: [u8; 32],
        /// How often each side sends a heartbeat, in milliseconds.
        heartbeat_interval_ms: u32,
    },
    /// Server refused; the connection closes after this.
    Refuse {
        /// Machine-readable reason.
        code: RefuseCode,
        /// Human-readable detail.
        message: String,
    },
}

/// Why a server refused a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefuseCode {
    /// Wrong token, or a name the token does not cover.
    AuthFailed,
    /// No protocol version in common.
    UnsupportedVersion,
    /// The server requires TLS and the client spoke plaintext.
    TlsRequired,
    /// The server is at its limit of pending connections.
    Busy,
    /// The client's messages were malformed.
    Malformed,
    /// (Version 7.) The session a connection asked to join is not on this server (anymore),
    /// or has its most connections.
    UnknownSession,
    /// A code from a newer peer.
    Other(u8),
}

impl RefuseCode {
    fn to_u8(self) -> u8 {
        match self {
            Self::AuthFailed => 1,
            Self::UnsupportedVersion => 2,
            Self::TlsRequired => 3,
            Self::Busy => 4,
            Self::Malformed => 5,
            Self::UnknownSession => 6,
            Self::Other(v) => v,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::AuthFailed,
            2 => Self::UnsupportedVersion,
            3 => Self::TlsRequired,
            4 => Self::Busy,
            5 => Self::Malformed,
            6 => Self::UnknownSession,
            other => Self::Other(other),
        }
    }

    /// True when retrying the same connection cannot succeed (a configuration problem).
    pub fn is_permanent(self) -> bool {
        !matches!(self, Self::Busy)
    }
}

impl std::fmt::Display for RefuseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AuthFailed => f.write_str("authentication failed"),
            Self::UnsupportedVersion => f.write_str("unsupported protocol version"),
            Self::TlsRequired => f.write_str("TLS required"),
            Self::Busy => f.write_str("server busy"),
            Self::Malformed => f.write_str("malformed handshake"),
            Self::UnknownSession => f.write_str("no such session to join"),
            Self::Other(v) => write!(f, "refusal code {v}"),
        }
    }
}

impl HandshakeMessage {
    /// Short name for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ClientHello { .. } => "ClientHello",
            Self::ServerChallenge { .. } => "ServerChallenge",
            Self::ClientProof { .. } => "ClientProof",
            Self::ServerAccept { .. } => "ServerAccept",
            Self::Refuse { .. } => "Refuse",
        }
    }

    /// Encodes the message body (what the transcript hashes).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Self::ClientHello { min_version, max_version, nonce, name, join } => {
                w.u8(CLIENT_HELLO)
                    .bytes(&MAGIC)
                    .u16(*min_version)
                    .u16(*max_version)
                    .bytes(nonce)
                    .string(name, MAX_NAME_LEN);
                // Appended, so a server before version 7 reads the hello it knows.
                if let Some(session) = join {
                    w.u8(JOIN).u64(*session);
                }
                &mut w
            }
            Self::ServerChallenge { version, nonce } => w.u8(SERVER_CHALLENGE).u16(*version).bytes(nonce),
            Self::ClientProof { proof } => w.u8(CLIENT_PROOF).bytes(proof),
            Self::ServerAccept { proof, heartbeat_interval_ms } => {
                w.u8(SERVER_ACCEPT).bytes(proof).u32(*heartbeat_interval_ms)
            }
            Self::Refuse { code, message } => w.u8(REFUSE).u8(code.to_u8()).string(message, MAX_REASON_LEN),
        };
        w.finish()
    }

    /// Encodes the message as a length-prefixed frame.
    pub fn encode_frame(&self) -> Vec<u8> {
        frame::encode_to_vec(&self.encode())
    }

    /// Decodes a message body from a peer.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let msg = match r.u8("type")? {
            CLIENT_HELLO => {
                if r.array::<4>("magic")? != MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                let min_version = r.u16("min_version")?;
                let max_version = r.u16("max_version")?;
                let nonce = r.array("nonce")?;
                let name = r.string(MAX_NAME_LEN, "name")?;
                validate_name(&name)?;
                // Fields a later version appends after ours are left unread.
                let join = match r.remaining() {
                    0 => None,
                    _ => match r.u8("join")? {
                        JOIN => Some(r.u64("session")?),
                        _ => None,
                    },
                };
                Self::ClientHello { min_version, max_version, nonce, name, join }
            }
            SERVER_CHALLENGE => {
                Self::ServerChallenge { version: r.u16("version")?, nonce: r.array("nonce")? }
            }
            CLIENT_PROOF => Self::ClientProof { proof: r.array("proof")? },
            SERVER_ACCEPT => Self::ServerAccept {
                proof: r.array("proof")?,
                heartbeat_interval_ms: r.u32("heartbeat_interval_ms")?,
            },
            REFUSE => Self::Refuse {
                code: RefuseCode::from_u8(r.u8("code")?),
                message: r.string(MAX_REASON_LEN, "message")?,
            },
            other => return Err(DecodeError::UnknownType { kind: "handshake message", value: other }),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_prefixes_fail() {
        let samples = [
            HandshakeMessage::ClientHello {
                min_version: 1,
                max_version: 3,
                nonce: [7; 32],
                name: "w-1".into(),
                join: None,
            },
            HandshakeMessage::ClientHello {
                min_version: 1,
                max_version: 7,
                nonce: [7; 32],
                name: "w-1".into(),
                join: Some(u64::MAX),
            },
            HandshakeMessage::ServerChallenge { version: 1, nonce: [9; 32] },
            HandshakeMessage::ClientProof { proof: [1; 32] },
            HandshakeMessage::ServerAccept { proof: [2; 32], heartbeat_interval_ms: 5000 },
            HandshakeMessage::Refuse { code: RefuseCode::TlsRequired, message: "use TLS".into() },
        ];
        for msg in samples {
            let bytes = msg.encode();
            assert_eq!(HandshakeMessage::decode(&bytes).unwrap(), msg);
            for cut in 0..bytes.len() {
                match HandshakeMessage::decode(&bytes[..cut]) {
                    // A hello cut just before its optional field is the hello without it.
                    Ok(HandshakeMessage::ClientHello { join: None, .. })
                        if matches!(msg, HandshakeMessage::ClientHello { join: Some(_), .. })
                            && cut == bytes.len() - 9 => {}
                    other => assert!(other.is_err(), "{msg:?} cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn hello_with_bad_magic_or_name_is_rejected() {
        let hello = HandshakeMessage::ClientHello {
            min_version: 1,
            max_version: 1,
            nonce: [0; 32],
            name: "ok".into(),
            join: None,
        };
        let mut bytes = hello.encode();
        bytes[1] = b'X';
        assert_eq!(HandshakeMessage::decode(&bytes), Err(DecodeError::BadMagic));
        let bad_name = HandshakeMessage::ClientHello {
            min_version: 1,
            max_version: 1,
            nonce: [0; 32],
            name: "a b".into(),
            join: None,
        };
        assert!(matches!(HandshakeMessage::decode(&bad_name.encode()), Err(DecodeError::InvalidName(_))));
    }
}
