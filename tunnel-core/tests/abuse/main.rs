//! Abuse suite: hostile clients and strangers against a server, each attack run while an
//! established session is measured (throughput and latency, before and during): attacks on
//! the handshake in `handshake.rs`, by authenticated sessions in `session.rs`, the scene and
//! the measures they share here.

#[path = "../common/mod.rs"]
mod common;
mod handshake;
mod session;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::client::ClientError;
use tunnel_core::mux::{self, Mode, MuxConfig};
use tunnel_core::proto::handshake::{HandshakeMessage, RefuseCode};
use tunnel_core::proto::{
    frame, ControlMessage, GoodbyeCode, StreamHeader, VisitTarget, DRAINING_VERSION, PROTOCOL_VERSION,
    UDP_VERSION,
};
use tunnel_core::session::framed::read_frame;
use tunnel_core::session::{client_handshake, client_handshake_offering, Session, SessionConfig};
use tunnel_core::tls::{client_config, server_config, ServerIdentity, ServerTrust};
use tunnel_core::transport::{BoxedIo, ClientTransport};

/// Records the largest single allocation, to show oversized length prefixes are never allocated.
/// The only `unsafe` in the project: a global allocator must be an `unsafe impl`; it forwards
/// every call to the system allocator unchanged.
struct Tracking;

static LARGEST_ALLOCATION: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST_ALLOCATION.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// Measurements compare before and during an attack: tests of this file run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1024 * 1024;

/// A server with a victim client publishing a sink and an echo service.
struct Scene {
    server: TestServer,
    victim: TestClient,
    sink: SocketAddr,
    echo: SocketAddr,
}

async fn scene(configure: impl FnOnce(&mut tunnel_core::server::ServerConfig)) -> Scene {
    let server = start_server(configure).await;
    let (sink, echo) = (sink_target().await, echo_target().await);
    let mut victim =
        start_client(server.client_config("victim", &[&format!("0:{sink}"), &format!("0:{echo}")]));
    let forwards = victim.connected().await;
    Scene { server, victim, sink: forwards[0].public_addr, echo: forwards[1].public_addr }
}

impl Scene {
    async fn health(&self) -> Health {
        health(self.sink, self.echo).await
    }

    async fn finish(self) {
        self.victim.stop().await;
        self.server.stop().await;
    }
}

/// The victim's services kept working during the attack: 32 MiB went through and 200 echoes
/// came back, and neither was starved (a tenth of the throughput, fifty times the latency).
/// How much an attack costs is for a benchmark to measure; the margins here only tell a
/// starved service from a loaded machine.
fn assert_undisturbed(attack: &str, before: Health, during: Health) {
    eprintln!(
        "{attack}: before {:.0} MB/s p50 {:?}; during {:.0} MB/s p50 {:?}",
        before.bytes_per_sec / 1e6,
        before.p50,
        during.bytes_per_sec / 1e6,
        during.p50
    );
    assert!(
        during.bytes_per_sec >= 0.1 * before.bytes_per_sec,
        "{attack}: throughput fell from {:.0} to {:.0} MB/s",
        before.bytes_per_sec / 1e6,
        during.bytes_per_sec / 1e6
    );
    assert!(
        during.p50 <= before.p50 * 50 + Duration::from_millis(50),
        "{attack}: latency rose from {:?} to {:?}",
        before.p50,
        during.p50
    );
}

/// Where an attacker connects.
struct TestTarget {
    addr: SocketAddr,
    fingerprint: tunnel_core::tls::Fingerprint,
}

/// Spawns a session driver that is aborted when the returned handle is dropped.
fn tunnel_core_driver(driver: tunnel_core::session::SessionDriver) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        driver.await;
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An authenticated session of our own making, to misbehave with.
async fn attacker_session(server: &TestServer, name: &str, max_streams: usize) -> Session {
    attacker_session_to(&TestTarget { addr: server.addr, fingerprint: server.fingerprint }, name, max_streams)
        .await
}

/// A TLS connection to the server, verified like a real client's, before any handshake.
async fn tls_connection(server: &TestTarget) -> (BoxedIo, ChannelBinding) {
    let tls = client_config(&ServerTrust::Pinned(server.fingerprint)).unwrap();
    let server_addr = server.addr.to_string();
    let connection = ClientTransport::tls(tls, &server_addr).unwrap().connect(&server_addr).await.unwrap();
    (connection.io, connection.binding)
}

async fn attacker_session_to(server: &TestTarget, name: &str, max_streams: usize) -> Session {
    let (io, binding) = tls_connection(server).await;
    let mut config = SessionConfig::default();
    config.mux.max_streams = max_streams;
    let (session, _) =
        Session::connect(io, &binding, name, Token::new(TOKEN).unwrap(), &config).await.unwrap();
    common::ignoring_lanes(session)
}

/// Reads until the peer closes; returns when, or panics after [`PATIENCE`]. EOF and a reset
/// both count: the docs promise only that these unauthenticated connections are closed, and the
/// kernel turns a close into a reset when the attacker's bytes are still unread.
async fn closed(tcp: &mut TcpStream) -> Instant {
    let mut buf = vec![0u8; 4096];
    let outcome = tokio::time::timeout(PATIENCE, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(_) => {}
            }
        }
    });
    outcome.await.expect("the server kept the connection open")
}
