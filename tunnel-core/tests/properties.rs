//! Property tests: codec round trips and config validation over generated inputs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use proptest::prelude::*;
use tunnel_core::config::ServerFile;
use tunnel_core::forward::{PortSet, RemoteForwardSpec, TargetAddr};
use tunnel_core::proto::handshake::{HandshakeMessage, RefuseCode};
use tunnel_core::proto::{frame, ControlMessage, GoodbyeCode, RefusalCode, StreamHeader};

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn reason() -> impl Strategy<Value = String> {
    "\\PC{0,40}"
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| ControlMessage::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ControlMessage::Pong { nonce }),
        (any::<u8>(), reason()).prop_map(|(c, message)| {
            let code = match c % 4 {
                0 => GoodbyeCode::Shutdown,
                1 => GoodbyeCode::Replaced,
                2 => GoodbyeCode::ProtocolError,
                _ => GoodbyeCode::Other(c.max(4)),
            };
            ControlMessage::Goodbye { code, message }
        }),
        (any::<u32>(), proptest::option::of(ip()), any::<u16>(), any::<u16>()).prop_map(
            |(id, bind, port, preferred_port)| ControlMessage::RemoteForwardRequest {
                id,
                bind,
                port,
                preferred_port
            }
        ),
        (any::<u32>(), socket_addr())
            .prop_map(|(id, public_addr)| ControlMessage::RemoteForwardReady { id, public_addr }),
        (any::<u32>(), 1u8..=4, reason()).prop_map(|(id, c, message)| {
            let code = [
                RefusalCode::PortNotAllowed,
                RefusalCode::PortTaken,
                RefusalCode::TooManyForwards,
                RefusalCode::Invalid,
            ][usize::from(c - 1)];
            ControlMessage::RemoteForwardRefused { id, code, message }
        }),
    ]
}

fn handshake_message() -> impl Strategy<Value = HandshakeMessage> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<[u8; 32]>(), "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}").prop_map(
            |(min_version, max_version, nonce, name)| HandshakeMessage::ClientHello {
                min_version,
                max_version,
                nonce,
                name
            }
        ),
        (any::<u16>(), any::<[u8; 32]>())
            .prop_map(|(version, nonce)| HandshakeMessage::ServerChallenge { version, nonce }),
        any::<[u8; 32]>().prop_map(|proof| HandshakeMessage::ClientProof { proof }),
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(proof, heartbeat_interval_ms)| {
            HandshakeMessage::ServerAccept { proof, heartbeat_interval_ms }
        }),
        (1u8..=5, reason()).prop_map(|(c, message)| {
            let code = [
                RefuseCode::AuthFailed,
                RefuseCode::UnsupportedVersion,
                RefuseCode::TlsRequired,
                RefuseCode::Busy,
                RefuseCode::Malformed,
            ][usize::from(c - 1)];
            HandshakeMessage::Refuse { code, message }
        }),
    ]
}

proptest! {
    #[test]
    fn control_messages_round_trip(message in control_message()) {
        prop_assert_eq!(ControlMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn handshake_messages_round_trip(message in handshake_message()) {
        prop_assert_eq!(HandshakeMessage::decode(&message.encode()).unwrap(), message);
    }

    #[test]
    fn stream_headers_round_trip(forward_id in any::<u32>(), visitor in socket_addr()) {
        let header = StreamHeader::RemoteForward { forward_id, visitor };
        let encoded = header.encode();
        prop_assert_eq!(usize::from(u16::from_be_bytes([encoded[0], encoded[1]])), encoded.len() - 2);
        prop_assert_eq!(StreamHeader::decode(&encoded[2..]).unwrap(), header);
    }

    #[test]
    fn frames_decode_only_when_complete(payload in proptest::collection::vec(any::<u8>(), 0..600), extra in proptest::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = frame::encode_to_vec(&payload);
        let whole = bytes.len();
        for cut in 0..whole {
            prop_assert!(frame::decode(&bytes[..cut], 1024).unwrap().is_none());
        }
        bytes.extend_from_slice(&extra);
        let (decoded, used) = frame::decode(&bytes, 1024).unwrap().unwrap();
        prop_assert_eq!(decoded, &payload[..]);
        prop_assert_eq!(used, whole);
        prop_assert!(frame::decode(&bytes, payload.len().saturating_sub(1)).is_err() || payload.is_empty());
    }

    #[test]
    fn port_sets_contain_exactly_their_ranges(ranges in proptest::collection::vec((1u16..=65535, 0u16..200), 1..6), probe in 1u16..=65535) {
        let ranges: Vec<(u16, u16)> = ranges.into_iter().map(|(lo, len)| (lo, lo.saturating_add(len))).collect();
        let text = ranges.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect::<Vec<_>>().join(",");
        let set: PortSet = text.parse().unwrap();
        let expected = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&probe));
        prop_assert_eq!(set.contains(probe), expected);
        prop_assert_eq!(set.to_string().parse::<PortSet>().unwrap(), set.clone());
        for i in 0..set.len().min(50) {
            prop_assert!(set.contains(set.nth(i).unwrap()));
        }
    }

    #[test]
    fn forward_specs_round_trip(bind in proptest::option::of(ip()), remote in any::<u16>(), host in "[a-z][a-z0-9.-]{0,20}|\\[::1\\]|127\\.0\\.0\\.1", port in 1u16..=65535) {
        let mut text = String::new();
        match bind {
            Some(IpAddr::V6(v6)) => text.push_str(&format!("[{v6}]:")),
            Some(v4) => text.push_str(&format!("{v4}:")),
            None => {}
        }
        text.push_str(&format!("{remote}:{host}:{port}"));
        let spec: RemoteForwardSpec = text.parse().unwrap();
        prop_assert_eq!((spec.bind, spec.remote_port, spec.local.port), (bind, remote, port));
        prop_assert_eq!(spec.to_string().parse::<RemoteForwardSpec>().unwrap(), spec.clone());
        let target: TargetAddr = spec.local.to_string().parse().unwrap();
        prop_assert_eq!(target, spec.local);
    }

    /// Any combination of limit values either validates into exactly those values or is
    /// rejected with an error naming a `limits.` key; it never panics.
    #[test]
    fn server_limits_validate_or_name_the_key(
        streams in 0usize..100_000,
        forwards in 0usize..1000,
        message in 0usize..20_000_000,
        pending in 0usize..5000,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = {:?}\ntoken = \"t\"\n[limits]\nmax_streams_per_session = {streams}\n\
             max_forwards_per_client = {forwards}\nmax_message_size = {message}\nmax_unauthenticated = {pending}\n",
            dir.path()
        );
        match ServerFile::parse(&text, Path::new("p.toml")).unwrap().build() {
            Ok(setup) => {
                prop_assert_eq!(setup.config.session.mux.max_streams, streams);
                prop_assert_eq!(setup.config.max_forwards_per_client, forwards);
                prop_assert_eq!(setup.config.session.max_message_size, message);
                prop_assert_eq!(setup.config.max_unauthenticated, pending);
            }
            Err(err) => prop_assert!(err.to_string().contains("limits."), "{}", err),
        }
    }
}
