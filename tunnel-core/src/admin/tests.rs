//! The admin handle and API: decoding, the file's authority over its names, the store on disk;
//! and, over a socket, the TCP listener's admission.

use http::{Method, StatusCode};

use super::api::answer;
use super::*;
use crate::auth::{CredentialKind, Credentials};

fn admin_with_config_client(store: ClientStore) -> Admin {
    let credentials = Credentials::default()
        .with_shared(Token::new("shared-token-0123456789").unwrap())
        .with_client("from-file", Token::new("file-token-0123456789").unwrap());
    let base = ServerConfig::new(credentials, None);
    let mut config = base.clone();
    store.apply(&mut config);
    Admin::new(Server::new(config), base, store)
}

#[test]
fn requests_decode_to_what_the_document_lists_and_nothing_else() {
    let decode =
        |method: Method, path: &str, body: &str| AdminRequest::decode(&method, path, body.as_bytes());
    assert_eq!(decode(Method::GET, "/v1/status", ""), Ok(AdminRequest::Status));
    assert_eq!(decode(Method::DELETE, "/v1/clients/w1", ""), Ok(AdminRequest::RevokeClient("w1".into())));
    assert_eq!(
        decode(Method::POST, "/v1/clients/w1/rotate", ""),
        Ok(AdminRequest::RotateClient("w1".into()))
    );
    let created = decode(
        Method::POST,
        "/v1/clients",
        r#"{"name":"w1","allow_ports":"10000-10010","allow_visit":["cp/api"]}"#,
    );
    let Ok(AdminRequest::CreateClient { name, grant }) = created else { panic!("{created:?}") };
    assert_eq!((name.as_str(), grant.allow_ports.unwrap().to_string()), ("w1", "10000-10010".to_owned()));
    let status = |r: Result<AdminRequest, Undecodable>| r.unwrap_err().status;
    assert_eq!(status(decode(Method::PUT, "/v1/clients", "")), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(status(decode(Method::GET, "/v1/clients/w1/rotate", "")), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(status(decode(Method::GET, "/v2/status", "")), StatusCode::NOT_FOUND);
    assert_eq!(status(decode(Method::GET, "/v1/status/", "")), StatusCode::NOT_FOUND);
    for body in ["", "[]", "{}", r#"{"name":"w1","token":"x"}"#, r#"{"name":"w1","allow_ports":"0-99999"}"#] {
        assert_eq!(status(decode(Method::POST, "/v1/clients", body)), StatusCode::BAD_REQUEST, "{body}");
    }
    // A key given twice is refused, naming it: serde_json alone would keep the last.
    for (method, path, body) in [
        (Method::POST, "/v1/clients", r#"{"name":"w1","name":"w2"}"#),
        (Method::POST, "/v1/clients", r#"{"name":"w1","replicas":1,"replicas":2}"#),
        (Method::PUT, "/v1/clients/w1", r#"{"allow_hosts":["a.test"],"allow_hosts":["b.test"]}"#),
    ] {
        let refused = decode(method, path, body).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(refused.message.contains("is given twice"), "{body}: {}", refused.message);
    }
}

#[tokio::test]
async fn created_clients_authenticate_until_revoked_and_the_file_keeps_its_names() {
    let admin = admin_with_config_client(ClientStore::in_memory());
    let token = admin.create("w1", Grant::default()).await.unwrap();
    let config = admin.server().config();
    let (found, kind) = config.credentials.lookup("w1").unwrap();
    assert!(found.same_secret(&token) && kind == CredentialKind::PerClient);
    assert!(matches!(admin.create("w1", Grant::default()).await, Err(AdminError::Exists(_))));
    assert!(matches!(admin.create("from-file", Grant::default()).await, Err(AdminError::FromConfig(_))));
    assert!(matches!(admin.revoke("from-file").await, Err(AdminError::FromConfig(_))));
    assert!(matches!(admin.rotate("nobody").await, Err(AdminError::NotFound(_))));
    assert!(matches!(admin.create("no/slash", Grant::default()).await, Err(AdminError::InvalidName { .. })));

    let rotated = admin.rotate("w1").await.unwrap();
    let config = admin.server().config();
    assert!(config.credentials.lookup("w1").unwrap().0.same_secret(&rotated) && !rotated.same_secret(&token));
    assert_eq!(admin.revoke("w1").await.unwrap(), Vec::<String>::new());
    let config = admin.server().config();
    assert_eq!(
        config.credentials.lookup("w1").unwrap().1,
        CredentialKind::Shared,
        "back on the shared token"
    );
    // The file's client and the shared token were never touched.
    assert!(config.credentials.lookup("from-file").is_some());
    let names: Vec<String> = admin.clients().into_iter().map(|c| c.name).collect();
    assert_eq!(names, ["from-file"]);
}

#[tokio::test]
async fn a_name_the_file_comes_to_list_leaves_the_store_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CLIENTS_FILE);
    let admin = admin_with_config_client(ClientStore::open(&path).unwrap());
    let old = admin.create("w3", Grant::default()).await.unwrap();
    // The file now lists w3 with a token of its own: that one is in force, the old one gone.
    let mut base = admin.server().config().as_ref().clone();
    base.credentials = Credentials::default()
        .with_shared(Token::new("shared-token-0123456789").unwrap())
        .with_client("from-file", Token::new("file-token-0123456789").unwrap())
        .with_client("w3", Token::new("w3-file-token-012345").unwrap());
    admin.reload(base.clone()).await;
    let config = admin.server().config();
    assert!(!config.credentials.lookup("w3").unwrap().0.same_secret(&old));
    assert!(admin.clients().iter().any(|c| c.name == "w3" && c.source == ClientSource::Config));
    // Taken out of the file again, w3 does not come back with its old token.
    base.credentials = Credentials::default().with_shared(Token::new("shared-token-0123456789").unwrap());
    admin.reload(base).await;
    assert_eq!(admin.server().config().credentials.lookup("w3").unwrap().1, CredentialKind::Shared);
    assert!(ClientStore::open(&path).unwrap().grants().next().is_none(), "still on disk");
}

#[tokio::test]
async fn the_api_answers_each_refusal_with_its_status() {
    let admin = admin_with_config_client(ClientStore::in_memory());
    let call = |method: Method, path: &'static str, body: &'static str| {
        let admin = &admin;
        async move { answer(admin, &method, path, body.as_bytes()).await }
    };
    let created = call(Method::POST, "/v1/clients", r#"{"name":"w2","allow_hosts":["*.a.test"]}"#).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert!(created.body["token"].as_str().is_some_and(|t| t.len() == 64), "{}", created.body);
    assert_eq!(call(Method::POST, "/v1/clients", r#"{"name":"w2"}"#).await.status, StatusCode::CONFLICT);
    assert_eq!(call(Method::DELETE, "/v1/clients/from-file", "").await.status, StatusCode::CONFLICT);
    assert_eq!(call(Method::DELETE, "/v1/clients/nobody", "").await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(Method::GET, "/v1/clients/nobody", "").await.status, StatusCode::NOT_FOUND);
    let listed = call(Method::GET, "/v1/clients/w2", "").await;
    assert_eq!(listed.body["allow_hosts"], serde_json::json!(["*.a.test"]));
    assert_eq!(listed.body["source"], "admin");
    let refused = call(Method::PATCH, "/v1/clients", "").await;
    assert_eq!((refused.status, refused.allow), (StatusCode::METHOD_NOT_ALLOWED, Some("GET, POST")));
    let status = call(Method::GET, "/v1/status", "").await;
    assert_eq!(status.body["clients"], serde_json::json!({ "config": 1, "admin": 1 }));
}

#[tokio::test]
async fn the_store_keeps_created_clients_across_restarts_readable_by_its_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join(CLIENTS_FILE);
    let admin = admin_with_config_client(ClientStore::open(&path).unwrap());
    let token = admin.create("kept", Grant::default()).await.unwrap();
    admin.create("gone", Grant::default()).await.unwrap();
    admin.revoke("gone").await.unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let again = admin_with_config_client(ClientStore::open(&path).unwrap());
    let config = again.server().config();
    assert!(config.credentials.lookup("kept").unwrap().0.same_secret(&token));
    assert_eq!(config.credentials.lookup("gone").unwrap().1, CredentialKind::Shared);
    // A store that cannot be read is an error naming the file, not an empty store.
    std::fs::write(&path, "[[clients]]\nname = 7\n").unwrap();
    let err = ClientStore::open(&path).unwrap_err();
    assert!(err.to_string().contains(CLIENTS_FILE), "{err}");
    // A grant edited past the API's bounds is refused as the API refuses it, by its client and
    // field (before, `replicas` was taken as written, 2^64 - 1 included).
    for replicas in ["0", "65", "18446744073709551615"] {
        let text = format!(
            "[[clients]]\nname = \"big\"\ntoken = \"big-client-token-0123\"\nreplicas = {replicas}\n"
        );
        std::fs::write(&path, text).unwrap();
        let err = crate::log::Chain(&ClientStore::open(&path).unwrap_err()).to_string();
        assert!(err.contains("client \"big\": replicas") && err.contains("from 1 to 64"), "{err}");
    }
}

/// Before, the store grew without bound, and a file past what a start reads back kept the
/// server from starting again.
#[tokio::test]
async fn a_client_that_would_make_the_store_too_long_to_read_back_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CLIENTS_FILE);
    let admin = admin_with_config_client(ClientStore::open(&path).unwrap().with_max_bytes(1024));
    let mut created = 0;
    let refused = loop {
        match admin.create(&format!("client-{created}"), Grant::default()).await {
            Ok(_) => created += 1,
            Err(err) => break err,
        }
        assert!(created < 100, "never refused");
    };
    assert!(created > 0, "the first client was refused");
    let why = crate::log::Chain(&refused).to_string();
    assert!(why.contains("the file would be longer than 1024 bytes"), "{why}");
    // What was refused is not kept, on disk or in force; what came before is.
    assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
    let reopened = ClientStore::open(&path).unwrap();
    assert_eq!(reopened.grants().count(), created);
    let lookup =
        admin.server().config().credentials.lookup(&format!("client-{created}")).map(|found| found.1);
    assert_ne!(lookup, Some(CredentialKind::PerClient), "the refused client authenticates");
    // A regrant that would pass the bound is refused too, as a full store (507), and the old
    // grant stays.
    let hosts = vec!["*.a-rather-long-name.example.test"; 40];
    let body = serde_json::json!({ "allow_hosts": hosts }).to_string();
    let regrant = answer(&admin, &Method::PUT, "/v1/clients/client-0", body.as_bytes()).await;
    assert_eq!(regrant.status, StatusCode::INSUFFICIENT_STORAGE, "{}", regrant.body);
    assert!(
        regrant.body["error"].as_str().is_some_and(|e| e.contains("longer than 1024 bytes")),
        "{}",
        regrant.body
    );
    assert_eq!(
        ClientStore::open(&path).unwrap().grants().find(|(n, _)| *n == "client-0").unwrap().1,
        &Grant::default()
    );
}

#[tokio::test]
async fn a_regrant_changes_what_a_created_client_may_do_and_keeps_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(CLIENTS_FILE);
    let admin = admin_with_config_client(ClientStore::open(&path).unwrap());
    let token = admin
        .create("w4", Grant { allow_hosts: vec!["a.test".parse().unwrap()], ..Grant::default() })
        .await
        .unwrap();
    let decoded =
        AdminRequest::decode(&Method::PUT, "/v1/clients/w4", br#"{"allow_hosts":["b.test"],"replicas":3}"#);
    let Ok(AdminRequest::RegrantClient { name, grant }) = decoded else { panic!("{decoded:?}") };
    assert_eq!(admin.regrant(&name, grant).await.unwrap(), Vec::<String>::new());
    let config = admin.server().config();
    assert!(config.credentials.lookup("w4").unwrap().0.same_secret(&token), "the token stays");
    let policy = &config.policy.clients["w4"];
    assert_eq!((policy.allow_hosts[0].to_string(), policy.replicas), ("b.test".to_owned(), Some(3)));
    let reopened = ClientStore::open(&path).unwrap();
    assert_eq!(reopened.grants().next().unwrap().1.allow_hosts[0].to_string(), "b.test", "kept on disk");
    assert!(matches!(admin.regrant("from-file", Grant::default()).await, Err(AdminError::FromConfig(_))));
    assert!(matches!(admin.regrant("nobody", Grant::default()).await, Err(AdminError::NotFound(_))));
    let status = |body: &str| {
        AdminRequest::decode(&Method::PUT, "/v1/clients/w4", body.as_bytes()).unwrap_err().status
    };
    for body in ["", "[]", r#"{"name":"w4"}"#, r#"{"replicas":0}"#, r#"{"allow_hosts":["a b"]}"#] {
        assert_eq!(status(body), StatusCode::BAD_REQUEST, "{body}");
    }
    let refused = AdminRequest::decode(&Method::PATCH, "/v1/clients/w4", b"").unwrap_err();
    assert_eq!(refused.allow, Some("GET, PUT, DELETE"));
}

/// Silent connections from 8 sources, 8 each, fill the admin API's 64 places; an operator from a
/// ninth address still gets its TLS handshake, as it takes the place of the oldest connection
/// of a source holding the most. Before, it was closed at accept for as long as they stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_a_few_sources_do_not_keep_the_operator_out() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    let identity = crate::tls::ServerIdentity::generate(&["admin.test".to_owned()]).unwrap();
    let trust = crate::tls::ServerTrust::Pinned(identity.fingerprint());
    let tls = crate::tls::server_config(identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = Arc::new(admin_with_config_client(ClientStore::in_memory()));
    let token = Token::new("admin-token-0123456789").unwrap();
    tokio::spawn(serve(admin, AdminListener::Tls { listener, tls, token }, std::future::pending()));
    let from = |n: u8| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0)).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let mut silent = Vec::new();
    for n in 1..=8 {
        for _ in 0..8 {
            silent.push(from(n).await);
        }
    }
    // Accepted in the order they connected: all 64 have their places before the operator.
    let operator = from(9).await;
    let name = rustls::pki_types::ServerName::try_from("admin.test").unwrap();
    let mut client = (*crate::tls::client_config(&trust).unwrap()).clone();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    tokio::time::timeout(Duration::from_secs(10), connector.connect(name, operator))
        .await
        .expect("no TLS handshake within 10 s")
        .expect("the operator was kept out by silent connections");
    // The place was the first silent connection's (of a source holding 8, the oldest).
    let mut byte = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_secs(10), silent[0].read(&mut byte)).await;
    assert!(matches!(first, Ok(Ok(0) | Err(_))), "the oldest silent connection is still open");
}

/// A server that is not the API and answers without end (a tenant's own, named in the Secret
/// an operator follows) is read up to `MAX_ANSWER` and no further; before, the whole answer
/// was collected into memory, gigabytes if the server sent them.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_past_its_bound_is_refused_not_read_to_its_end() {
    use super::client::MAX_ANSWER;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = sent.clone();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 1024];
        let _ = stream.read(&mut head).await;
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000000\r\n\r\n").await;
        let chunk = vec![b'x'; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {
            counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let client = AdminClient::new(AdminTarget::Unix(path)).unwrap();
    let err = client.status().await.unwrap_err();
    assert!(
        matches!(&err, AdminClientError::Unexpected(why) if why.contains("an answer larger than")),
        "{err:?}"
    );
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < MAX_ANSWER + 8 * 1024 * 1024, "{sent} bytes taken");
}
