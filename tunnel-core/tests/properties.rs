//! Property tests: codec round trips and config validation over generated inputs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use proptest::prelude::*;
use tunnel_core::config::{ConfigError, ServerFile};
use tunnel_core::forward::{PortSet, RemoteForwardSpec, Target, TargetAddr, VisitTarget};
use tunnel_core::proto::handshake::{HandshakeMessage, RefuseCode};
use tunnel_core::proto::{
    frame, ControlMessage, FrameTooLarge, GoodbyeCode, RefusalCode, ReplyStatus, RouteEntry, RouteId,
    RouteKind, RouteOutcome, RouteResult, StreamHeader, StreamReply,
};

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

/// A client or service name as `validate_name` accepts it: 1-64 of `A-Za-z0-9._-`, no leading dot.
fn name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}"
}

// Codes and statuses are drawn as wire bytes and named by the decoder itself (a byte no version
// defines becomes `Other`), so every code is covered, including codes added later, and each
// value is the one a peer would see.

/// Any byte, mostly small ones, where the defined codes are.
fn code_byte() -> impl Strategy<Value = u8> {
    prop_oneof![3 => 0u8..16, 1 => any::<u8>()]
}

/// Every goodbye code: a `Goodbye` (type 0x03) with code byte `c` and an empty message.
fn goodbye_code() -> impl Strategy<Value = GoodbyeCode> {
    code_byte().prop_map(|c| match ControlMessage::decode(&[0x03, c, 0, 0]) {
        Ok(ControlMessage::Goodbye { code, .. }) => code,
        other => panic!("goodbye code {c} decoded as {other:?}"),
    })
}

/// Every refusal code: a `RemoteForwardRefused` (type 0x12, id 0) with code byte `c`.
fn refusal_code() -> impl Strategy<Value = RefusalCode> {
    code_byte().prop_map(|c| match ControlMessage::decode(&[0x12, 0, 0, 0, 0, c, 0, 0]) {
        Ok(ControlMessage::RemoteForwardRefused { code, .. }) => code,
        other => panic!("refusal code {c} decoded as {other:?}"),
    })
}

/// Every stream reply status: a reply body with status byte `s` and an empty message.
fn reply_status() -> impl Strategy<Value = ReplyStatus> {
    code_byte().prop_map(|s| StreamReply::decode(&[s, 0, 0]).unwrap().status)
}

fn control_message() -> impl Strategy<Value = ControlMessage> {
    prop_oneof![
        any::<u64>().prop_map(|nonce| ControlMessage::Ping { nonce }),
        any::<u64>().prop_map(|nonce| ControlMessage::Pong { nonce }),
        (goodbye_code(), reason()).prop_map(|(code, message)| ControlMessage::Goodbye { code, message }),
        (any::<u32>(), reason())
            .prop_map(|(deadline_ms, message)| ControlMessage::Draining { deadline_ms, message }),
        Just(ControlMessage::NoNewVisitors),
        (any::<u64>(), any::<u8>())
            .prop_map(|(session, connections)| ControlMessage::Lanes { session, connections }),
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
        (any::<u32>(), refusal_code(), reason())
            .prop_map(|(id, code, message)| ControlMessage::RemoteForwardRefused { id, code, message }),
        name().prop_map(|name| ControlMessage::ExposeRequest { name }),
        name().prop_map(|name| ControlMessage::ExposeReady { name }),
        (name(), refusal_code(), reason()).prop_map(|(name, code, message)| ControlMessage::ExposeRefused {
            name,
            code,
            message
        }),
        (any::<u64>(), proptest::collection::vec(route_entry(), 0..40))
            .prop_map(|(version, entries)| ControlMessage::RouteTable { version, entries }),
        (any::<u64>(), proptest::collection::vec(route_result(), 0..40))
            .prop_map(|(version, results)| ControlMessage::RouteTableResult { version, results }),
    ]
}

fn route_entry() -> impl Strategy<Value = RouteEntry> {
    let kind = prop_oneof![
        (proptest::option::of(ip()), any::<u16>(), any::<u16>())
            .prop_map(|(bind, port, preferred_port)| RouteKind::Tcp { bind, port, preferred_port }),
        name().prop_map(|name| RouteKind::Service { name }),
    ];
    (any::<u64>(), kind).prop_map(|(id, kind)| RouteEntry { id: RouteId(id), kind })
}

fn route_result() -> impl Strategy<Value = RouteResult> {
    let outcome = prop_oneof![
        proptest::option::of(socket_addr()).prop_map(|public_addr| RouteOutcome::Ready { public_addr }),
        (refusal_code(), reason()).prop_map(|(code, message)| RouteOutcome::Refused { code, message }),
    ];
    (any::<u64>(), outcome).prop_map(|(id, outcome)| RouteResult { id: RouteId(id), outcome })
}

/// A host a target may name: any DNS-style name `TargetAddr` accepts, or an IPv4 or IPv6 address.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{1,253}",
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        any::<[u8; 16]>().prop_map(|o| Ipv6Addr::from(o).to_string()),
    ]
}

fn visit_target() -> impl Strategy<Value = VisitTarget> {
    prop_oneof![
        (name(), name()).prop_map(|(client, service)| VisitTarget::Service { client, service }),
        (host(), 1u16..=65535).prop_map(|(host, port)| VisitTarget::Address(TargetAddr { host, port })),
    ]
}

fn stream_header() -> impl Strategy<Value = StreamHeader> {
    prop_oneof![
        (any::<u32>(), socket_addr())
            .prop_map(|(forward_id, visitor)| StreamHeader::RemoteForward { forward_id, visitor }),
        (visit_target(), socket_addr())
            .prop_map(|(target, visitor)| StreamHeader::LocalForward { target, visitor }),
        (name(), name(), socket_addr()).prop_map(|(service, from, visitor)| StreamHeader::ServiceVisit {
            service,
            from,
            visitor
        }),
        (any::<u64>(), socket_addr(), proptest::option::of(socket_addr()))
            .prop_map(|(id, visitor, local)| StreamHeader::Route { route_id: RouteId(id), visitor, local }),
        socket_addr().prop_map(|visitor| StreamHeader::Http { visitor }),
        (any::<u64>(), socket_addr())
            .prop_map(|(id, visitor)| StreamHeader::HttpRoute { route_id: RouteId(id), visitor }),
        Just(StreamHeader::Control),
    ]
}

fn stream_reply() -> impl Strategy<Value = StreamReply> {
    (reply_status(), reason()).prop_map(|(status, message)| StreamReply { status, message })
}

fn handshake_message() -> impl Strategy<Value = HandshakeMessage> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), any::<[u8; 32]>(), name(), any::<Option<u64>>()).prop_map(
            |(min_version, max_version, nonce, name, join)| HandshakeMessage::ClientHello {
                min_version,
                max_version,
                nonce,
                name,
                join,
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
    fn stream_headers_round_trip(header in stream_header()) {
        let encoded = header.encode();
        prop_assert_eq!(usize::from(u16::from_be_bytes([encoded[0], encoded[1]])), encoded.len() - 2);
        prop_assert_eq!(StreamHeader::decode(&encoded[2..]).unwrap(), header);
    }

    #[test]
    fn stream_replies_round_trip(reply in stream_reply()) {
        let encoded = reply.encode();
        prop_assert_eq!(usize::from(u16::from_be_bytes([encoded[0], encoded[1]])), encoded.len() - 2);
        prop_assert_eq!(StreamReply::decode(&encoded[2..]).unwrap(), reply);
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
        if let Some(max) = payload.len().checked_sub(1) {
            let err = frame::decode(&bytes, max).unwrap_err();
            prop_assert!(
                err == FrameTooLarge { len: payload.len() as u64, max },
                "{:?}", err
            );
        }
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
        // Where no connection can reach a TCP listener: refused, saying why.
        let deaf = bind.map(|ip| ip.to_canonical()).is_some_and(|ip| {
            ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        });
        if deaf {
            let err = text.parse::<RemoteForwardSpec>().unwrap_err().to_string();
            prop_assert!(err.contains("BIND_ADDR must not be"), "{}: {}", text, err);
            return Ok(());
        }
        let spec: RemoteForwardSpec = text.parse().unwrap();
        let Target::Addr(local) = &spec.local else { panic!("{text} parsed to a handler") };
        prop_assert_eq!((spec.bind, spec.remote_port, local.port), (bind, remote, port));
        prop_assert_eq!(spec.to_string().parse::<RemoteForwardSpec>().unwrap(), spec.clone());
        let target: TargetAddr = spec.local.to_string().parse().unwrap();
        prop_assert_eq!(&target, local);
    }

    /// Any combination of limit values either validates into exactly those values or, when one
    /// is out of range, is rejected as `ConfigError::Invalid` naming a key whose value is out of
    /// range; it never panics. The edges of each range are drawn often.
    #[test]
    fn server_limits_validate_or_name_the_key(
        streams in prop_oneof![1 => Just(0usize), 1 => Just(65_536), 1 => Just(65_537), 3 => 0usize..100_000],
        forwards in prop_oneof![1 => Just(0usize), 3 => 0usize..1000],
        message in prop_oneof![
            1 => Just(0usize),
            1 => Just(65_535),
            1 => Just(65_536),
            1 => Just(16 << 20),
            1 => Just((16 << 20) + 1),
            3 => 0usize..20_000_000,
        ],
        pending in prop_oneof![1 => Just(0usize), 3 => 0usize..5000],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "state_dir = {:?}\ntoken = \"properties-test-token\"\n[limits]\nmax_streams_per_session = {streams}\n\
             max_forwards_per_client = {forwards}\nmax_message_size = {message}\nmax_unauthenticated = {pending}\n",
            dir.path()
        );
        let mut out_of_range = Vec::new();
        if pending == 0 {
            out_of_range.push("limits.max_unauthenticated");
        }
        if streams == 0 || streams > 65_536 {
            out_of_range.push("limits.max_streams_per_session");
        }
        if forwards == 0 {
            out_of_range.push("limits.max_forwards_per_client");
        }
        if !(65_536..=16 << 20).contains(&message) {
            out_of_range.push("limits.max_message_size");
        }
        match ServerFile::parse(&text, Path::new("p.toml")).unwrap().build() {
            Ok(setup) => {
                prop_assert!(out_of_range.is_empty(), "accepted with {:?} out of range", out_of_range);
                prop_assert_eq!(setup.config.session.mux.max_streams, streams);
                prop_assert_eq!(setup.config.max_forwards_per_client, forwards);
                prop_assert_eq!(setup.config.session.max_message_size, message);
                prop_assert_eq!(setup.config.max_unauthenticated, pending);
            }
            Err(ConfigError::Invalid { key, source: why }) => {
                prop_assert!(out_of_range.contains(&key), "rejected `{}` ({}); out of range: {:?}", key, why, out_of_range);
            }
            Err(other) => prop_assert!(false, "expected an invalid-key error, got: {}", other),
        }
    }
}
