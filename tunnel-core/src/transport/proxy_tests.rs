//! Tests of the HTTP proxy's URL, `NO_PROXY` and reply reading.
use super::*;

#[test]
fn urls_give_the_address_and_credentials_and_bad_ones_say_why() {
    let proxy: HttpProxy = "http://proxy.internal:3128".parse().unwrap();
    assert_eq!((proxy.addr(), proxy.credentials.as_deref()), ("proxy.internal:3128", None));
    assert_eq!("http://proxy.internal/".parse::<HttpProxy>().unwrap().addr(), "proxy.internal:80");
    assert_eq!("http://[::1]:8080".parse::<HttpProxy>().unwrap().addr(), "[::1]:8080");
    assert_eq!("http://[::1]".parse::<HttpProxy>().unwrap().addr(), "[::1]:80");
    let with_user: HttpProxy = "http://alice:p%40ss:word@10.0.0.1:3128".parse().unwrap();
    use base64::Engine;
    let decoded = base64::prelude::BASE64_STANDARD.decode(with_user.credentials.clone().unwrap()).unwrap();
    assert_eq!(decoded, b"alice:p@ss:word");
    assert!(with_user.request("t.example:7700").contains("Proxy-Authorization: Basic "));
    assert!(!format!("{with_user:?}").contains("p%40ss") && !format!("{with_user:?}").contains("YWxp"));
    let user_only: HttpProxy = "http://alice@proxy".parse().unwrap();
    assert_eq!(base64::prelude::BASE64_STANDARD.decode(user_only.credentials.unwrap()).unwrap(), b"alice:");
    assert!("http://@proxy".parse::<HttpProxy>().unwrap().credentials.is_none());
    // Without a scheme, as curl reads it (the environment's values are often written so).
    let bare: HttpProxy = "alice:pw@proxy:3128".parse().unwrap();
    assert_eq!(bare.addr(), "proxy:3128");
    assert_eq!(base64::prelude::BASE64_STANDARD.decode(bare.credentials.unwrap()).unwrap(), b"alice:pw");
    assert_eq!("proxy".parse::<HttpProxy>().unwrap().addr(), "proxy:80");
    assert_eq!(percent_decoded("%+4%4"), b"%+4%4", "only two hex digits make an escape");
    let host = "a DNS name or an IP address";
    for (url, why) in [
        ("https://proxy:443", "only http://"),
        ("socks5://proxy:1080", "only http://"),
        ("ftp://alice:secret@proxy:21", "only http://"),
        ("http://", host),
        ("http://proxy:port", host),
        ("http://proxy:0", host),
        ("http://proxy:70000", host),
        ("http://:3128", host),
        ("http://proxy:3128/path", "expected http://"),
        ("http://pro<xy:3128", host),
        ("http://[::1<]:3128", host),
        ("http://[1.2.3.4]:3128", host),
    ] {
        let err = url.parse::<HttpProxy>().unwrap_err();
        assert!(err.to_string().contains(why), "{url}: {err}");
    }
    let err = "https://alice:secret@proxy".parse::<HttpProxy>().unwrap_err();
    assert!(!err.to_string().contains("secret"), "{err}");
    // An `@` past the host is not where user information ends: taking it for that would send
    // the credentials to whatever host follows it.
    for url in [
        "http://alice:secret@127.0.0.1:1/?next=@127.0.0.1:9",
        "http://alice:secret@proxy:3128#@evil:1",
        "http://alice:sec/ret@proxy:3128",
        // Without a scheme, or with another one, likewise.
        "alice:sec/ret@proxy:3128",
        "alice:se://cret@proxy:3128",
        "ftp://alice:secret@proxy:21",
    ] {
        let err = url.parse::<HttpProxy>().unwrap_err();
        let shown = err.to_string();
        assert!(
            !shown.contains("secret") && !shown.contains("sec/") && !shown.contains("cret"),
            "{url}: {err}"
        );
    }
}

#[test]
fn no_proxy_lists_match_hosts_their_subdomains_and_addresses() {
    let list = "localhost, .internal.example,example.org:443, 10.1.2.3,[::1]";
    for host in [
        "localhost",
        "a.internal.example",
        "internal.example",
        "example.org",
        "x.example.org",
        "10.1.2.3",
        "::1",
        "[::1]",
        "LOCALHOST",
    ] {
        assert!(no_proxy_matches(list, host), "{host}");
    }
    for host in ["notexample.org", "example.com", "10.1.2.30", "internal.example.net"] {
        assert!(!no_proxy_matches(list, host), "{host}");
    }
    assert!(no_proxy_matches("*", "anything.example"));
    assert!(!no_proxy_matches("", "anything.example"));
}

#[test]
fn replies_grant_on_2xx_only_and_say_what_the_proxy_answered() {
    assert!(check_reply(b"HTTP/1.1 200 Connection established\r\n").is_ok());
    assert!(check_reply(b"HTTP/1.0 200\r\n").is_ok());
    let refused = check_reply(b"HTTP/1.1 407 Proxy Authentication Required\r\n").unwrap_err();
    assert!(
        refused.is_final() && refused.to_string().contains("407 Proxy Authentication Required"),
        "{refused}"
    );
    let gateway = check_reply(b"HTTP/1.1 502 Bad Gateway\r\n").unwrap_err();
    assert!(!gateway.is_final());
    for garbage in [
        &b"SSH-2.0-OpenSSH_9.2\r\n"[..],
        b"HTTP/1.1 20 OK\r\n",
        b"HTTP/1.1 2000 OK\r\n",
        b"HTTP/1.P/1.1 200 OK\r\n",
        b"HTTP/2 200\r\n",
        b"\x16\x03\x01",
        b"",
    ] {
        assert!(matches!(check_reply(garbage), Err(ProxyReplyError::Malformed(_))), "{garbage:?}");
    }
    let escaped = check_reply(b"HTTP/1.1 403 \x1b[31mred\r\n").unwrap_err().to_string();
    assert!(!escaped.contains('\x1b'), "{escaped}");
}

#[tokio::test]
async fn a_reply_head_is_read_to_its_blank_line_leaving_what_follows() {
    let mut reply = &b"HTTP/1.1 200 OK\r\nVia: test\r\n\r\nSERVER BYTES"[..];
    read_reply(&mut reply).await.unwrap();
    assert_eq!(reply, b"SERVER BYTES", "the server's first bytes stay for the session");
    let mut refused = &b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"[..];
    let err = read_reply(&mut refused).await.unwrap_err();
    assert!(err.to_string().contains("403 Forbidden"), "{err}");
    let mut cut = &b"HTTP/1.1 200 OK\r\nVia: te"[..];
    assert_eq!(read_reply(&mut cut).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    // A refusal or a non-HTTP first line ends the read at once: no wait for a blank line
    // that may never come.
    let mut banner = &b"SSH-2.0-OpenSSH_9.2\r\nmore that never ends"[..];
    assert!(read_reply(&mut banner).await.unwrap_err().to_string().contains("not an HTTP reply"));
    assert_eq!(banner, b"more that never ends");
    let endless = [b"HTTP/1.1 200 OK\r\n".to_vec(), vec![b'x'; 2 * MAX_REPLY_HEAD]].concat();
    let err = read_reply(&mut &endless[..]).await.unwrap_err();
    assert!(err.to_string().contains("over 8192 bytes"), "{err}");
    let many_lines =
        [b"HTTP/1.1 200 OK\r\n".to_vec(), b"a: b\r\n".repeat(MAX_REPLY_HEAD), b"\r\n".to_vec()].concat();
    let err = read_reply(&mut &many_lines[..]).await.unwrap_err();
    assert!(err.to_string().contains("over 8192 bytes"), "a head of many short lines is bounded too: {err}");
}

/// A proxy may send interim replies before its answer (RFC 9110 15.2): they are read past.
/// Before, `100 Continue` was taken for the answer, a refusal, and the client retried forever.
#[tokio::test]
async fn interim_replies_before_the_answer_are_read_past() {
    let mut reply = &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nSERVER"[..];
    read_reply(&mut reply).await.unwrap();
    assert_eq!(reply, b"SERVER");
    let mut refused = &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..];
    assert!(read_reply(&mut refused).await.unwrap_err().to_string().contains("407"));
    // 101 switches to another protocol: no answer to a CONNECT.
    let mut switched = &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..];
    assert!(read_reply(&mut switched).await.unwrap_err().to_string().contains("101"));
    // Endless interim replies are bounded with the rest.
    let endless = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_REPLY_HEAD);
    let err = read_reply(&mut &endless[..]).await.unwrap_err();
    assert!(err.to_string().contains("over 8192 bytes"), "{err}");
}

#[tokio::test]
async fn the_connector_asks_for_the_target_and_hands_over_what_follows_the_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy: HttpProxy = format!("http://bob:pw@{}", listener.local_addr().unwrap()).parse().unwrap();
    let answered = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 1024];
        let n = tcp.read(&mut request).await.unwrap();
        // The reply and the server's first bytes in one write, as a fast proxy may send them.
        tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\nSERVER FIRST").await.unwrap();
        String::from_utf8(request[..n].to_vec()).unwrap()
    });
    let mut connection = ProxyConnector::new(proxy, "tunnel.example:7700").connect().await.unwrap();
    let mut first = [0u8; 12];
    connection.io.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"SERVER FIRST");
    let request = answered.await.unwrap();
    assert!(
        request.starts_with("CONNECT tunnel.example:7700 HTTP/1.1\r\nHost: tunnel.example:7700\r\n"),
        "{request}"
    );
    assert!(
        request.contains("Proxy-Authorization: Basic Ym9iOnB3\r\n") && request.ends_with("\r\n\r\n"),
        "{request}"
    );
    // A target that would break the request line is never sent.
    let bad = ProxyConnector::new("http://127.0.0.1:9".parse().unwrap(), "evil:1\r\nX: y");
    assert!(matches!(bad.connect().await, Err(ConnectError::Unreachable { .. })));
}
