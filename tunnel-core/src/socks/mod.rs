//! A SOCKS5 server side (RFC 1928, RFC 1929): the greeting, the optional username/password
//! exchange and the request, read from any byte stream; what to do with the request (and the
//! reply) is the caller's. [`codec`] is the sans-IO wire format under it.
//!
//! `tunnel-cli connect -D` serves it on the client (each connection goes through the server to
//! the client routing the destination address's network, or to a target the server dials), and
//! `tunnel-cli serve --socks-listen` on the server (each connection logs in as a client and
//! visits as that client would).

pub mod codec;

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::ReplyStatus;

pub use codec::{Command, Destination, Reply, Request, SocksError};

/// Longest exchange a client can send in one step (a username/password: 3 + 255 + 255 bytes);
/// the buffer holds at most this plus one read.
const MAX_MESSAGE: usize = 513;

/// How the server authenticates its clients.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    /// No authentication: for a proxy only its own host (or network) can reach.
    None,
    /// A username and password, checked by the function.
    Password(&'a (dyn Fn(&[u8], &[u8]) -> bool + Send + Sync)),
}

impl std::fmt::Debug for Auth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "Auth::None",
            Self::Password(_) => "Auth::Password",
        })
    }
}

/// A username and password a SOCKS proxy requires: the password is never shown (`Debug`
/// masks it) and is compared by digest in constant time.
#[derive(Clone)]
pub struct Login {
    user: String,
    password: String,
}

/// Why a [`Login`] cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// A password too short to stand up to guessing.
    #[error("the SOCKS password must be at least {MIN_PASSWORD} characters long")]
    ShortPassword,
    /// A password longer than SOCKS carries.
    #[error("the SOCKS password must be at most 255 bytes long")]
    LongPassword,
    /// A user name longer than SOCKS carries.
    #[error("the SOCKS user name must be at most 255 bytes long")]
    LongUser,
}

/// Shortest password accepted, as for tokens.
pub const MIN_PASSWORD: usize = 16;

impl Login {
    /// `user` with `password` (at least [`MIN_PASSWORD`] characters; both at most 255 bytes,
    /// as SOCKS carries them).
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Result<Self, LoginError> {
        let (user, password) = (user.into(), password.into());
        if user.len() > 255 {
            return Err(LoginError::LongUser);
        }
        if password.len() > 255 {
            return Err(LoginError::LongPassword);
        }
        if password.chars().count() < MIN_PASSWORD {
            return Err(LoginError::ShortPassword);
        }
        Ok(Self { user, password })
    }

    /// Whether a client's `user` and `password` are these.
    pub fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq as _;
        let same_password = Sha256::digest(password).ct_eq(&Sha256::digest(self.password.as_bytes()));
        let same_user = Sha256::digest(user).ct_eq(&Sha256::digest(self.user.as_bytes()));
        (same_password & same_user).into()
    }
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login").field("user", &self.user).field("password", &"***").finish()
    }
}

/// A request read, with who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Accepted {
    /// The request; answer it with [`reply`].
    pub request: Request,
    /// The username the client authenticated with, if any (checked by [`Auth::Password`]).
    pub user: Option<String>,
    /// Bytes the client sent after its request without waiting for the reply: the start of
    /// its data.
    pub early: Vec<u8>,
}

/// Why a SOCKS client was not served. Where the protocol has an answer for it (no acceptable
/// method, a failed password, an unknown address type) the client was sent that answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// Reading or writing failed, or the client left mid-exchange.
    #[error("SOCKS exchange failed")]
    Io(#[source] std::io::Error),
    /// The client broke the protocol.
    #[error("SOCKS client broke the protocol")]
    Protocol(#[source] SocksError),
    /// None of the methods the client offered is one this server accepts.
    #[error("the client offered no method this proxy accepts (it offered {offered:?})")]
    NoAcceptableMethod {
        /// The method bytes offered.
        offered: Vec<u8>,
    },
    /// The username and password were refused. The message leaves the username out: a
    /// token typed there by mistake would reach the log.
    #[error("wrong SOCKS username or password")]
    BadCredentials {
        /// The username given.
        user: String,
    },
}

/// Reads the greeting, authenticates, and reads the request.
pub async fn accept<S>(io: &mut S, auth: Auth<'_>) -> Result<Accepted, AcceptError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    let methods = read_message(io, &mut buf, codec::parse_greeting).await?;
    let wanted = match auth {
        Auth::None => codec::METHOD_NONE,
        Auth::Password(_) => codec::METHOD_USERPASS,
    };
    if !methods.contains(&wanted) {
        let _ = io.write_all(&codec::encode_method(codec::METHOD_UNACCEPTABLE)).await;
        return Err(AcceptError::NoAcceptableMethod { offered: methods });
    }
    io.write_all(&codec::encode_method(wanted)).await.map_err(AcceptError::Io)?;
    let user = match auth {
        Auth::None => None,
        Auth::Password(check) => {
            let login = read_message(io, &mut buf, codec::parse_userpass).await?;
            let accepted = check(&login.user, &login.password);
            let user = String::from_utf8_lossy(&login.user).into_owned();
            io.write_all(&codec::encode_userpass_status(accepted)).await.map_err(AcceptError::Io)?;
            if !accepted {
                return Err(AcceptError::BadCredentials { user });
            }
            Some(user)
        }
    };
    let request = match read_message(io, &mut buf, codec::parse_request).await {
        Ok(request) => request,
        Err(AcceptError::Protocol(err)) => {
            let answer = match err {
                SocksError::AddressType(_) => Some(Reply::AddressTypeNotSupported),
                SocksError::Domain(_) => Some(Reply::HostUnreachable),
                _ => None,
            };
            if let Some(answer) = answer {
                let _ = reply(io, answer, None).await;
            }
            return Err(AcceptError::Protocol(err));
        }
        Err(other) => return Err(other),
    };
    Ok(Accepted { request, user, early: buf })
}

/// Answers the request; `bound` is the address the connection left from, when known.
pub async fn reply<S>(io: &mut S, reply: Reply, bound: Option<SocketAddr>) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    let bound = bound.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    io.write_all(&codec::encode_reply(reply, bound)).await?;
    io.flush().await
}

/// The SOCKS reply for a tunnel stream reply: the server's (or a routing client's) answer to a
/// connection it was asked to make.
pub fn reply_for(status: ReplyStatus) -> Reply {
    match status {
        ReplyStatus::Ok => Reply::Succeeded,
        ReplyStatus::Denied => Reply::NotAllowed,
        ReplyStatus::Unavailable => Reply::NetworkUnreachable,
        ReplyStatus::Unreachable => Reply::HostUnreachable,
        ReplyStatus::Refused => Reply::ConnectionRefused,
        ReplyStatus::TimedOut => Reply::TtlExpired,
        ReplyStatus::Other(_) => Reply::GeneralFailure,
    }
}

/// Reads until `parse` finds a whole message at the start of `buf`, and removes it from `buf`
/// (what follows stays: a client may send its next message, or its data, early).
async fn read_message<S, T>(
    io: &mut S,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> codec::Parsed<T>,
) -> Result<T, AcceptError>
where
    S: AsyncRead + Unpin,
{
    loop {
        if let Some((message, used)) = parse(buf).map_err(AcceptError::Protocol)? {
            buf.drain(..used);
            return Ok(message);
        }
        if buf.len() >= MAX_MESSAGE {
            // Every message is whole by then; the parsers say so first. Kept as a bound.
            return Err(AcceptError::Io(std::io::Error::other("SOCKS message too long")));
        }
        let mut chunk = [0u8; 512];
        let n = io.read(&mut chunk).await.map_err(AcceptError::Io)?;
        if n == 0 {
            return Err(AcceptError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests;
