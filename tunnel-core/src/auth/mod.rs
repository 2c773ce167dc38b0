//! Who may connect: secret tokens, per-client credentials, and the mutual challenge/response
//! proofs exchanged during the handshake.
//!
//! The token never crosses the wire. Each side proves it knows it with
//! `HMAC-SHA256(token, role || SHA-256(transcript || channel binding))`, where the transcript holds
//! both fresh nonces and the binding is TLS exporter keying material, so a captured proof is
//! useless on another connection and a relay in the middle cannot complete the exchange.
//! More connections join a session with a proof bound to its first one ([`LaneKey`]).

mod credentials;
mod lane;
mod proof;
mod token;

pub use credentials::{CredentialKind, Credentials};
pub use lane::LaneKey;
pub use proof::{ChannelBinding, Proof, Role, Transcript, TLS_EXPORTER_LABEL};
pub(crate) use token::hex;
pub use token::{Token, TokenError, MIN_TOKEN_CHARS};
