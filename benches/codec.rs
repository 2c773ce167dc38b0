//! Codec benchmarks: the per-message and per-stream costs outside the data path.
//! Run: `cargo bench -p tunnel-core --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tunnel_core::auth::{ChannelBinding, Credentials, Token};
use tunnel_core::forward::VisitTarget;
use tunnel_core::proto::handshake::{ClientHandshake, ClientStep, ServerHandshake, ServerStep};
use tunnel_core::proto::{frame, ControlMessage, StreamHeader};

fn control_messages(c: &mut Criterion) {
    let message = ControlMessage::RemoteForwardRequest {
        id: 7,
        bind: Some("0.0.0.0".parse().unwrap()),
        port: 6443,
        preferred_port: 0,
    };
    let encoded = message.encode();
    let mut group = c.benchmark_group("control_message");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode", |b| b.iter(|| black_box(&message).encode()));
    group.bench_function("decode", |b| b.iter(|| ControlMessage::decode(black_box(&encoded)).unwrap()));
    group.finish();
}

fn stream_headers(c: &mut Criterion) {
    let visitor = "203.0.113.9:51234".parse().unwrap();
    let remote = StreamHeader::RemoteForward { forward_id: 3, visitor };
    let local = StreamHeader::LocalForward {
        target: VisitTarget::Service { client: "worker-1".into(), service: "kubelet".into() },
        visitor,
    };
    let mut group = c.benchmark_group("stream_header");
    group.throughput(Throughput::Elements(1));
    for (name, header) in [("remote_forward", remote), ("local_forward", local)] {
        let encoded = header.encode();
        group.bench_function(format!("{name}/encode"), |b| b.iter(|| black_box(&header).encode()));
        group.bench_function(format!("{name}/decode"), |b| {
            b.iter(|| StreamHeader::decode(black_box(&encoded[2..])).unwrap())
        });
    }
    group.finish();
}

fn frames(c: &mut Criterion) {
    let payload = vec![0x42u8; 1024];
    let encoded = frame::encode_to_vec(&payload);
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("encode_1k", |b| b.iter(|| frame::encode_to_vec(black_box(&payload))));
    group.bench_function("decode_1k", |b| b.iter(|| frame::decode(black_box(&encoded), 65536).unwrap()));
    group.finish();
}

/// The CPU cost of authenticating one session (both sides, no I/O): two HMACs and hashes.
fn handshake(c: &mut Criterion) {
    let token = Token::new("benchmark-token-0123").unwrap();
    let credentials = Credentials::default().with_shared(token.clone());
    let binding = ChannelBinding::Tls([5; 32]);
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_exchange", |b| {
        b.iter(|| {
            let (mut client, hello) = ClientHandshake::new("bench", token.clone(), &binding, [1; 32]);
            let mut server = ServerHandshake::new(&credentials, &binding, [2; 32], Duration::from_secs(10));
            let ServerStep::Reply(challenge) = server.handle(&hello[4..]).unwrap() else { unreachable!() };
            let ClientStep::Send(proof) = client.handle(&challenge[4..]).unwrap() else { unreachable!() };
            let ServerStep::Accept { reply, .. } = server.handle(&proof[4..]).unwrap() else {
                unreachable!()
            };
            black_box(client.handle(&reply[4..]).unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, control_messages, stream_headers, frames, handshake);
criterion_main!(benches);
