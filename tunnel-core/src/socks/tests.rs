use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// Runs `accept` on one end of a 7-byte pipe (partial reads everywhere) with `client` written
/// on the other; returns the outcome and every byte the client received.
async fn exchange(client: Vec<u8>, auth: Auth<'_>) -> (Result<Accepted, AcceptError>, Vec<u8>) {
    exchange_through(7, client, auth).await
}

async fn exchange_through(
    pipe: usize,
    client: Vec<u8>,
    auth: Auth<'_>,
) -> (Result<Accepted, AcceptError>, Vec<u8>) {
    let (mut ours, mut theirs): (DuplexStream, DuplexStream) = tokio::io::duplex(pipe);
    let talk = async move {
        // The server may stop reading (and leave) before everything is written.
        if theirs.write_all(&client).await.is_ok() {
            let _ = theirs.shutdown().await;
        }
        let mut received = Vec::new();
        theirs.read_to_end(&mut received).await.unwrap();
        received
    };
    let serve = async move {
        let accepted = accept(&mut ours, auth).await;
        drop(ours);
        accepted
    };
    tokio::join!(serve, talk)
}

fn connect_to(target: &str) -> Vec<u8> {
    let destination = match target.parse() {
        Ok(addr) => Destination::Ip(addr),
        Err(_) => {
            let (host, port) = target.rsplit_once(':').unwrap();
            Destination::Domain(host.into(), port.parse().unwrap())
        }
    };
    codec::encode_request(&Request { command: Command::Connect, destination })
}

#[tokio::test]
async fn a_client_without_password_gets_its_request_and_early_data_is_kept() {
    let mut client = vec![5, 1, codec::METHOD_NONE];
    client.extend(connect_to("10.96.0.10:443"));
    client.extend_from_slice(b"\x16\x03\x01 hello");
    // Sent in one go, everything after the request arrives with it.
    let (accepted, received) = exchange_through(1024, client.clone(), Auth::None).await;
    let accepted = accepted.unwrap();
    assert_eq!(accepted.request.destination, Destination::Ip("10.96.0.10:443".parse().unwrap()));
    assert_eq!((accepted.user, accepted.early.as_slice()), (None, &b"\x16\x03\x01 hello"[..]));
    assert_eq!(received, [5, 0], "only the method: the reply is the caller's");
    // In pieces, what came with the request's last piece, and no more.
    let (accepted, _) = exchange(client, Auth::None).await;
    let early = accepted.unwrap().early;
    assert!(!early.is_empty() && b"\x16\x03\x01 hello".starts_with(&early), "{early:?}");
}

#[tokio::test]
async fn passwords_are_checked_and_a_wrong_one_is_answered_and_refused() {
    let check = |user: &[u8], password: &[u8]| user == b"site-a" && password == b"s3cret";
    let login = |password: &[u8]| {
        let mut client = vec![5, 2, codec::METHOD_NONE, codec::METHOD_USERPASS, 1, 6];
        client.extend_from_slice(b"site-a");
        client.push(u8::try_from(password.len()).unwrap());
        client.extend_from_slice(password);
        client.extend(connect_to("db.internal:5432"));
        client
    };
    let (accepted, received) = exchange(login(b"s3cret"), Auth::Password(&check)).await;
    let accepted = accepted.unwrap();
    assert_eq!((accepted.user.as_deref(), received.as_slice()), (Some("site-a"), &[5, 2, 1, 0][..]));
    assert_eq!(accepted.request.destination, Destination::Domain("db.internal".into(), 5432));
    let (refused, received) = exchange(login(b"guess"), Auth::Password(&check)).await;
    assert!(
        matches!(refused, Err(AcceptError::BadCredentials { ref user }) if user == "site-a"),
        "{refused:?}"
    );
    assert!(!refused.unwrap_err().to_string().contains("site-a"), "the message leaves the username out");
    assert_eq!(received, [5, 2, 1, 1], "told the password failed, then closed");
}

#[tokio::test]
async fn a_client_offering_no_acceptable_method_is_told_so() {
    let (refused, received) = exchange(vec![5, 1, codec::METHOD_USERPASS], Auth::None).await;
    assert!(matches!(refused, Err(AcceptError::NoAcceptableMethod { ref offered }) if offered == &[2]));
    assert_eq!(received, [5, 0xff]);
    let check = |_: &[u8], _: &[u8]| true;
    let (refused, received) = exchange(vec![5, 1, codec::METHOD_NONE], Auth::Password(&check)).await;
    assert!(
        matches!(refused, Err(AcceptError::NoAcceptableMethod { .. })),
        "no auth when a password is required"
    );
    assert_eq!(received, [5, 0xff]);
}

#[tokio::test]
async fn protocol_breaks_are_answered_where_socks_has_an_answer() {
    let (refused, received) = exchange(vec![5, 1, 0, 5, 1, 0, 9, 0, 0], Auth::None).await;
    assert!(matches!(refused, Err(AcceptError::Protocol(SocksError::AddressType(9)))));
    assert_eq!(received[..4], [5, 0, 5, Reply::AddressTypeNotSupported as u8]);
    let (refused, received) =
        exchange(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n".to_vec(), Auth::None).await;
    assert!(matches!(refused, Err(AcceptError::Protocol(SocksError::Version(b'C')))));
    assert!(received.is_empty(), "nothing is said to something that is not SOCKS5");
    let (cut, _) = exchange(vec![5, 1, 0, 5, 1, 0, 1, 10], Auth::None).await;
    assert!(matches!(cut, Err(AcceptError::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof));
}

#[test]
fn every_stream_reply_has_its_socks_code() {
    let codes = [
        (ReplyStatus::Ok, 0),
        (ReplyStatus::Denied, 2),
        (ReplyStatus::Unavailable, 3),
        (ReplyStatus::Unreachable, 4),
        (ReplyStatus::Refused, 5),
        (ReplyStatus::TimedOut, 6),
        (ReplyStatus::Other(77), 1),
    ];
    for (status, code) in codes {
        assert_eq!(reply_for(status) as u8, code, "{status:?}");
    }
}

#[tokio::test]
async fn a_login_checks_both_parts_and_never_shows_the_password() {
    assert_eq!(Login::new("me", "short").unwrap_err(), LoginError::ShortPassword);
    assert_eq!(Login::new("me", "x".repeat(256)).unwrap_err(), LoginError::LongPassword);
    assert_eq!(Login::new("u".repeat(256), "a-long-enough-password").unwrap_err(), LoginError::LongUser);
    let login = Login::new("me", "a-long-enough-password").unwrap();
    assert!(login.matches(b"me", b"a-long-enough-password"));
    assert!(
        !login.matches(b"me", b"a-long-enough-passwore") && !login.matches(b"you", b"a-long-enough-password")
    );
    assert!(!format!("{login:?}").contains("long-enough"));
    let check = |user: &[u8], password: &[u8]| login.matches(user, password);
    let mut client = vec![5, 1, codec::METHOD_USERPASS, 1, 2];
    client.extend_from_slice(b"me");
    client.push(22);
    client.extend_from_slice(b"a-long-enough-password");
    client.extend(connect_to("10.0.0.1:22"));
    let (accepted, received) = exchange(client, Auth::Password(&check)).await;
    assert_eq!((accepted.unwrap().user.as_deref(), received.as_slice()), (Some("me"), &[5, 2, 1, 0][..]));
}
