//! systemd's notification protocol (`Type=notify`, docs/operations.md "systemd"): READY once
//! serving, RELOADING and READY around a configuration change, WATCHDOG at half the
//! interval, STOPPING when the drain begins; one datagram each to `NOTIFY_SOCKET`.

#[path = "support/process.rs"]
mod process;

use process::*;
use tokio::net::UnixDatagram;

const TOKEN: &str = "notify-test-token-19d0f2";

/// A socket standing in for systemd's, and its path.
fn systemd(dir: &std::path::Path, name: &str) -> (UnixDatagram, String) {
    let path = dir.join(name);
    let socket = UnixDatagram::bind(&path).unwrap();
    (socket, path.to_str().unwrap().to_owned())
}

/// Receives notifications until one starts with `prefix`; returns it and what came before.
async fn until(socket: &UnixDatagram, prefix: &str) -> (String, Vec<String>) {
    let mut before = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} notification; got {before:?}"))
            .unwrap();
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        if text.starts_with(prefix) {
            return (text, before);
        }
        before.push(text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_binaries_tell_systemd_when_they_are_ready_reloading_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (server_socket, server_path) = systemd(dir.path(), "server.sock");
    let envs = [("NOTIFY_SOCKET", server_path.as_str()), ("WATCHDOG_USEC", "200000")];
    let mut server = serve(dir.path(), &["--token", TOKEN], &envs).await;
    let (ready, before) = until(&server_socket, "READY=1").await;
    assert!(before.is_empty(), "{before:?} came before READY");
    assert!(ready.contains("\nSTATUS=serving clients on 127.0.0.1:"), "{ready}");
    // The watchdog: at half of 200 ms.
    until(&server_socket, "WATCHDOG=1").await;

    let (client_socket, client_path) = systemd(dir.path(), "client.sock");
    let mut client =
        connect(&server, &["--token", TOKEN, "--name", "notified"], &[("NOTIFY_SOCKET", &client_path)]);
    let (ready, _) = until(&client_socket, "READY=1").await;
    assert!(ready.contains("STATUS=connected to "), "{ready}");
    // A reload (SIGHUP) is bracketed.
    let pid = client.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let (reloading, _) = until(&client_socket, "RELOADING=1").await;
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    until(&client_socket, "READY=1").await;
    // The server's too.
    let pid = server.cli.child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let (reloading, _) = until(&server_socket, "RELOADING=1").await;
    assert!(reloading.contains("\nMONOTONIC_USEC="), "{reloading}");
    let (ready, _) = until(&server_socket, "READY=1").await;
    assert!(ready.contains("STATUS=configuration reloaded"), "{ready}");

    assert_eq!(client.terminate().await, 0);
    until(&client_socket, "STOPPING=1").await;
    server.cli.send_term();
    until(&server_socket, "STOPPING=1").await;
    assert_eq!(server.cli.exit_code().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_notify_socket_never_stops_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir/notify.sock");
    let envs = [("NOTIFY_SOCKET", missing.to_str().unwrap())];
    let mut server = serve(dir.path(), &["--token", TOKEN], &envs).await;
    // Sending fails (no such socket): logged at debug level, never fatal.
    assert_eq!(server.cli.terminate().await, 0);
}

/// The shipped units ask for what the binaries do: notification, reload on SIGHUP, and a stop
/// timeout that the default drain (30 s, then up to 5 s of goodbyes) fits in.
#[test]
fn the_systemd_units_expect_notification_and_leave_room_for_the_drain() {
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    for unit in ["tunnel-server.service", "tunnel-client.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        let value = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('=')).map(str::trim))
        };
        assert_eq!(value("Type"), Some("notify"), "{unit}");
        let stop: u64 =
            value("TimeoutStopSec").unwrap_or_else(|| panic!("{unit}: no TimeoutStopSec")).parse().unwrap();
        assert!(stop > 35, "{unit}: TimeoutStopSec={stop} cuts the default drain");
        assert!(value("WatchdogSec").is_some(), "{unit}");
        assert_eq!(value("ExecReload"), Some("/bin/kill -HUP $MAINPID"), "{unit}: both reload on SIGHUP");
    }
}
