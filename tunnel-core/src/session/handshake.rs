//! Runs the sans-IO handshake state machines over a byte stream, one frame at a time.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::framed::{read_frame, write_frame};
use super::SessionError;
use crate::auth::{ChannelBinding, Credentials, LaneKey, Token};
use crate::proto::handshake::{
    AuthenticatedClient, ClientHandshake, ClientStep, Established, HandshakeMessage, LaneKeys, RefuseCode,
    ServerHandshake, ServerStep, MAX_HANDSHAKE_FRAME,
};

/// Authenticates to a server as `name`, for a new session or, with `join`, to join the
/// session of that id and key. Never reads past the server's last handshake frame.
pub async fn client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &ChannelBinding,
    name: &str,
    token: Token,
    join: Option<(u64, LaneKey)>,
) -> Result<Established, SessionError> {
    let (machine, hello) = match join {
        None => ClientHandshake::new(name, token, binding, rand::random()),
        Some((session, key)) => ClientHandshake::join(name, token, binding, rand::random(), session, key),
    };
    finish_client_handshake(io, machine, &hello).await
}

/// As [`client_handshake`] for a new session, offering protocol versions up to `max_version`
/// only (see [`ClientHandshake::offering`]).
pub async fn client_handshake_offering<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &ChannelBinding,
    name: &str,
    token: Token,
    max_version: u16,
) -> Result<Established, SessionError> {
    let (machine, hello) = ClientHandshake::offering(name, token, binding, rand::random(), max_version);
    finish_client_handshake(io, machine, &hello).await
}

/// Sends `hello`, then answers the server until `machine` is done.
async fn finish_client_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    mut machine: ClientHandshake,
    hello: &[u8],
) -> Result<Established, SessionError> {
    write_frame(io, hello).await?;
    loop {
        let payload = read_frame(io, MAX_HANDSHAKE_FRAME).await?;
        match machine.handle(&payload)? {
            ClientStep::Send(reply) => write_frame(io, &reply).await?,
            ClientStep::Done(established) => return Ok(established),
        }
    }
}

/// Verifies a client; with `sessions`, one that may join a session it finds there. On refusal
/// the reason is sent to the client before the error returns.
pub async fn server_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    binding: &ChannelBinding,
    credentials: &Credentials,
    heartbeat_interval: Duration,
    sessions: Option<&LaneKeys<'_>>,
) -> Result<AuthenticatedClient, SessionError> {
    let mut machine = ServerHandshake::new(credentials, binding, rand::random(), heartbeat_interval);
    if let Some(sessions) = sessions {
        machine = machine.with_sessions(sessions);
    }
    loop {
        let payload = read_frame(io, MAX_HANDSHAKE_FRAME).await?;
        match machine.handle(&payload)? {
            ServerStep::Reply(reply) => write_frame(io, &reply).await?,
            ServerStep::Accept { reply, client } => {
                write_frame(io, &reply).await?;
                return Ok(client);
            }
            ServerStep::Refuse { reply, error } => {
                // Best effort: the peer may already be gone.
                let _ = write_frame(io, &reply).await;
                let _ = io.shutdown().await;
                return Err(error.into());
            }
        }
    }
}

/// Reads the peer's first frame (so closing does not reset the connection under our reply)
/// and answers it with a refusal, for connections refused before authentication starts.
pub async fn read_and_refuse<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, code: RefuseCode, message: &str) {
    let _ = read_frame(io, MAX_HANDSHAKE_FRAME).await;
    let refusal = HandshakeMessage::Refuse { code, message: message.to_owned() }.encode_frame();
    let _ = write_frame(io, &refusal).await;
    let _ = io.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::handshake::HandshakeError;

    async fn exchange(
        client_token: &str,
        server_token: &str,
    ) -> (Result<Established, SessionError>, Result<AuthenticatedClient, SessionError>) {
        // A tiny duplex buffer forces every frame through many partial reads and writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let creds = Credentials::default().with_shared(Token::new(server_token).unwrap());
        let client = client_handshake(
            &mut a,
            &ChannelBinding::Plaintext,
            "c1",
            Token::new(client_token).unwrap(),
            None,
        );
        let server =
            server_handshake(&mut b, &ChannelBinding::Plaintext, &creds, Duration::from_secs(1), None);
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn handshake_succeeds_over_a_tiny_pipe() {
        let (client, server) = exchange("session-test-token", "session-test-token").await;
        assert_eq!(client.unwrap().heartbeat_interval, Duration::from_secs(1));
        assert_eq!(server.unwrap().name, "c1");
    }

    #[tokio::test]
    async fn wrong_token_is_reported_to_the_client_as_auth_failed() {
        let (client, server) = exchange("wrong-session-token", "session-test-token").await;
        assert!(matches!(
            client,
            Err(SessionError::Handshake(HandshakeError::Refused { code: RefuseCode::AuthFailed, .. }))
        ));
        assert!(matches!(server, Err(SessionError::Handshake(HandshakeError::ClientProofInvalid))));
    }
}
