//! Port ownership: allow-lists, conflicts between clients, reservations across reconnects.

mod common;
#[path = "common/free_port.rs"]
mod free_port;

use common::*;
use free_port::{free_port, free_ports};
use tunnel_core::auth::{Credentials, Token};
use tunnel_core::client::ClientError;
use tunnel_core::proto::RefusalCode;
use tunnel_core::server::ClientPolicy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_cannot_take_a_held_port() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let port = free_port();
    let mut first = start_client(server.client_config("first", &[&format!("{port}:{echo}")]));
    assert_eq!(first.connected().await[0].public_addr.port(), port);

    let second = start_client(server.client_config("second", &[&format!("{port}:{echo}")]));
    match second.failure().await {
        ClientError::ForwardRefused { code: RefusalCode::PortTaken, message, .. } => {
            assert!(message.contains(&port.to_string()), "{message}")
        }
        other => panic!("expected PortTaken, got {other}"),
    }
    let public = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(round_trip(public, b"still mine").await.unwrap(), b"still mine");
    first.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_outside_the_allow_list_are_refused_per_client() {
    let [allowed, other] = free_ports();
    let server = start_server(|config| {
        config.policy.allow_ports = format!("{allowed}").parse().unwrap();
        config.credentials = Credentials::default()
            .with_shared(Token::new(TOKEN).unwrap())
            .with_client("kube", Token::new("kube-secret-0123456789").unwrap())
            .with_client("web", Token::new("web-secret-01234567890").unwrap());
        let mut policy = ClientPolicy::default();
        policy.allow_ports = Some(format!("{other}").parse().unwrap());
        config.policy.clients.insert("kube".into(), policy);
        let mut web_only = ClientPolicy::default();
        web_only.allow_ports = Some("none".parse().unwrap());
        config.policy.clients.insert("web".into(), web_only);
    })
    .await;
    let echo = echo_target().await;

    let refused = start_client(server.client_config("anyone", &[&format!("{other}:{echo}")]));
    match refused.failure().await {
        ClientError::ForwardRefused { code: RefusalCode::PortNotAllowed, message, .. } => {
            assert!(message.contains(&other.to_string()), "{message}")
        }
        err => panic!("expected PortNotAllowed, got {err}"),
    }
    // Port 0 picks from the allow-list.
    let mut picked = start_client(server.client_config("anyone", &[&format!("0:{echo}")]));
    assert_eq!(picked.connected().await[0].public_addr.port(), allowed);
    picked.stop().await;
    // A per-client list replaces the server-wide one for that client.
    let mut kube = start_client(client_config_for(
        server.addr,
        server.fingerprint,
        "kube",
        "kube-secret-0123456789",
        &[&format!("{other}:{echo}")],
    ));
    assert_eq!(kube.connected().await[0].public_addr.port(), other);
    kube.stop().await;
    // `none`: not even a port the server picks.
    let web_only = client_config_for(
        server.addr,
        server.fingerprint,
        "web",
        "web-secret-01234567890",
        &[&format!("0:{echo}")],
    );
    match start_client(web_only).failure().await {
        ClientError::ForwardRefused { code: RefusalCode::PortNotAllowed, message, .. } => {
            assert!(message.contains("allow_ports = none"), "{message}")
        }
        err => panic!("expected PortNotAllowed, got {err}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_clients_port_is_reserved_for_it_and_reassigned_on_reconnect() {
    let server = start_server(|_| {}).await;
    let echo = echo_target().await;
    let mut owner = start_client(server.client_config("owner", &[&format!("0:{echo}")]));
    let port = owner.connected().await[0].public_addr.port();
    owner.stop().await;
    eventually("the owner's session to end", || async { server.server.session_names().is_empty() }).await;

    let thief = start_client(server.client_config("thief", &[&format!("{port}:{echo}")]));
    assert!(matches!(
        thief.failure().await,
        ClientError::ForwardRefused { code: RefusalCode::PortTaken, .. }
    ));

    // The owner comes back asking for "any port" and gets its old one.
    let mut back = start_client(server.client_config("owner", &[&format!("0:{echo}")]));
    assert_eq!(back.connected().await[0].public_addr.port(), port);
    back.stop().await;
    server.stop().await;
}

/// A route refused because its port is reserved for a departed client comes into service in
/// the same session once the reservation runs out: the server tries it again, with no new
/// table and no reconnect. Before, it stayed refused until the client was restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_reserved_for_another_client_is_given_once_the_reservation_ends() {
    use tunnel_core::client::ClientStatus;

    let server = start_server(|config| config.port_grace = std::time::Duration::from_secs(2)).await;
    let echo = echo_target().await;
    let mut owner = start_client(server.client_config("owner", &[&format!("0:{echo}")]));
    let port = owner.connected().await[0].public_addr.port();
    owner.stop().await;
    eventually("the owner's session to end", || async { server.server.session_names().is_empty() }).await;

    let remotes = [format!("0:{echo}"), format!("{port}:{echo}")];
    let mut newcomer = start_client(server.client_config("newcomer", &[&remotes[0], &remotes[1]]));
    // The reservation lasts two seconds, far longer than the first answer takes.
    let ClientStatus::Connected { forwards, refused, .. } = newcomer.answered(1).await else {
        unreachable!()
    };
    assert_eq!(forwards.len(), 1);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].code, RefusalCode::PortTaken);
    assert!(
        refused[0].message.contains(&format!("port {port} is reserved for the return of another client")),
        "{}",
        refused[0].message
    );

    let both = newcomer.status.wait_for(|s| s.forwards().is_some_and(|f| f.len() == 2));
    let both = tokio::time::timeout(PATIENCE, both).await.expect("the port never came").unwrap().clone();
    let ClientStatus::Connected { refused, new_session, .. } = both else { unreachable!() };
    assert!(refused.is_empty() && !new_session, "{refused:?}, new session: {new_session}");
    let public = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(round_trip(public, b"mine now").await.unwrap(), b"mine now");
    newcomer.stop().await;
    server.stop().await;
}

/// A TCP relay to `to` whose connections can all be frozen at once: from then on nothing
/// passes either way and nothing closes, as when a peer's network goes away. It stops
/// accepting then too.
async fn freezable_relay(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let freeze = tokio_util::sync::CancellationToken::new();
    let frozen = freeze.clone();
    tokio::spawn(async move {
        loop {
            let inbound = tokio::select! {
                () = frozen.cancelled() => return,
                accepted = listener.accept() => accepted.unwrap().0,
            };
            let outbound = tokio::net::TcpStream::connect(to).await.unwrap();
            let frozen = frozen.clone();
            tokio::spawn(async move {
                let (mut a, mut b) = (inbound, outbound);
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                    () = frozen.cancelled() => std::future::pending::<()>().await,
                }
            });
        }
    });
    (addr, freeze)
}

/// A client whose old session's peer went silent reconnects and gets its fixed port back at
/// once: the replaced session releases its ports before it waits to deliver its goodbye,
/// which nobody will read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_gets_its_fixed_port_while_the_silent_old_session_is_still_saying_goodbye() {
    let server = start_server(|c| {
        c.timeouts.goodbye = std::time::Duration::from_secs(15);
        c.timeouts.let_go = std::time::Duration::from_secs(1);
    })
    .await;
    let target = echo_target().await;
    let port = free_port();
    let spec = format!("{port}:{target}");
    let (relay, freeze) = freezable_relay(server.addr).await;
    let old_config = client_config_for(relay, server.fingerprint, "mover", TOKEN, &[&spec]);
    let mut old = start_client(old_config);
    assert_eq!(old.connected().await[0].public_addr.port(), port);
    freeze.cancel();

    let mut new = start_client(server.client_config("mover", &[&spec]));
    let forwards = new.connected().await;
    assert_eq!(forwards.len(), 1, "the reconnect's forward was refused: {:?}", *new.status.borrow());
    assert_eq!(forwards[0].public_addr.port(), port, "the reconnect lost its port");
    assert_eq!(round_trip(forwards[0].public_addr, b"back").await.unwrap(), b"back");
    old.task.abort();
    new.stop().await;
    server.stop().await;
}
