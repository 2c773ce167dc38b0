use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::*;

/// A UDP target echoing every datagram back to its sender.
async fn echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

/// A flow of a table with one key, carried over `stream`; what comes back goes to the receiver.
fn listening_end<S>(
    stream: S,
    idle: Duration,
) -> (Flows<u8>, mpsc::UnboundedSender<FlowInbox<u8>>, mpsc::UnboundedReceiver<Bytes>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (back_tx, back_rx) = mpsc::unbounded_channel();
    let (inbox_tx, mut inbox_rx) = mpsc::unbounded_channel::<FlowInbox<u8>>();
    tokio::spawn(async move {
        let inbox = inbox_rx.recv().await.unwrap();
        let deliver = |datagram: Bytes| {
            let sent = back_tx.send(datagram).is_ok();
            async move { sent }
        };
        carry_flow(inbox, async { Ok(stream) }, |_| (), deliver, idle).await
    });
    (Flows::new(4), inbox_tx, back_rx)
}

#[tokio::test]
async fn datagrams_cross_a_flow_whole_and_in_order_both_ways() {
    let target = echo().await;
    let (near, far) = tokio::io::duplex(256 * 1024);
    let socket = connect(target).await.unwrap();
    let relay = tokio::spawn(async move { relay(far, &socket, Duration::from_secs(60), None).await });
    let (mut flows, inbox_tx, mut back) = listening_end(near, Duration::from_secs(60));
    let payloads: Vec<Vec<u8>> =
        vec![b"first".to_vec(), Vec::new(), vec![7; 1200], vec![9; 60_000], b"z".to_vec()];
    for (n, payload) in payloads.iter().enumerate() {
        let offer = flows.offer(0, Bytes::from(payload.clone()), |inbox| inbox_tx.send(inbox).is_ok());
        assert_eq!(offer, if n == 0 { Offer::Started } else { Offer::Queued });
    }
    for payload in &payloads {
        let echoed = tokio::time::timeout(Duration::from_secs(10), back.recv()).await.unwrap().unwrap();
        assert_eq!(&echoed[..], &payload[..], "a datagram came back changed, merged or split");
    }
    // The table dropped: the flow ends, its stream closes, and the relay ends with it.
    drop(flows);
    let stats = tokio::time::timeout(Duration::from_secs(10), relay).await.unwrap().unwrap().unwrap();
    assert_eq!((stats.sent, stats.received, stats.dropped), (5, 5, 0));
    assert_eq!(stats.sent_bytes, payloads.iter().map(|p| p.len() as u64).sum::<u64>());
}

#[tokio::test(start_paused = true)]
async fn a_flow_ends_after_its_idle_time_and_the_next_datagram_starts_another() {
    let idle = Duration::from_secs(30);
    let (near, mut far) = tokio::io::duplex(64 * 1024);
    let (mut flows, inbox_tx, _back) = listening_end(near, idle);
    let start = tokio::time::Instant::now();
    assert_eq!(
        flows.offer(0, Bytes::from_static(b"one"), |inbox| inbox_tx.send(inbox).is_ok()),
        Offer::Started
    );
    let mut frame = [0u8; 5];
    far.read_exact(&mut frame).await.unwrap();
    assert_eq!(&frame, b"\0\x03one");
    // An answer at 20 s keeps the flow alive past 30 s from its start.
    tokio::time::sleep(Duration::from_secs(20)).await;
    far.write_all(b"\0\x02ok").await.unwrap();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(flows.len(), 1);
    // Then nothing either way: the flow ends 30 s after that answer, its stream shut down.
    flows.reap().await;
    assert_eq!(flows.len(), 0);
    assert!(start.elapsed() >= Duration::from_secs(50), "{:?}", start.elapsed());
    assert_eq!(far.read(&mut frame).await.unwrap(), 0);
    assert_eq!(flows.offer(0, Bytes::from_static(b"two"), |_| true), Offer::Started);
}

#[tokio::test]
async fn a_stream_nobody_reads_holds_up_the_answers_but_never_the_datagrams_to_the_target() {
    // A target answering each datagram with 1000 bytes, counting what it got.
    let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let (count_tx, mut count_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((_, from)) = target.recv_from(&mut buf).await {
            let _ = count_tx.send(());
            let _ = target.send_to(&[1u8; 1000], from).await;
        }
    });
    // A pipe holding two answers: the relay's writes back block at once.
    let (mut near, far) = tokio::io::duplex(2048);
    let socket = connect(target_addr).await.unwrap();
    tokio::spawn(async move { relay(far, &socket, Duration::from_secs(60), None).await });
    for n in 0..20u8 {
        near.write_all(&[0, 1, n]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), count_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("datagram {n} never reached the target"));
    }
}

#[tokio::test(start_paused = true)]
async fn the_relay_ends_after_its_idle_time_without_a_datagram() {
    let target = echo().await;
    let socket = connect(target).await.unwrap();
    let (near, far) = tokio::io::duplex(1024);
    let start = tokio::time::Instant::now();
    let stats = relay(far, &socket, Duration::from_secs(45), None).await.unwrap();
    assert_eq!(stats, FlowStats::default());
    assert!(start.elapsed() >= Duration::from_secs(45));
    drop(near);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_or_table_drops_datagrams_and_a_dead_flow_is_replaced() {
    let mut flows: Flows<u8> = Flows::new(2);
    let mut inboxes = Vec::new();
    assert_eq!(
        flows.offer(1, Bytes::new(), |inbox| {
            inboxes.push(inbox);
            true
        }),
        Offer::Started
    );
    for _ in 1..QUEUE_FOR_TESTS.0 {
        assert_eq!(flows.offer(1, Bytes::new(), |_| unreachable!()), Offer::Queued);
    }
    assert_eq!(flows.offer(1, Bytes::new(), |_| unreachable!()), Offer::QueueFull);
    assert_eq!(
        flows.offer(2, Bytes::new(), |inbox| {
            inboxes.push(inbox);
            true
        }),
        Offer::Started
    );
    assert_eq!(flows.offer(3, Bytes::new(), |_| unreachable!("over the cap")), Offer::Refused);
    // A flow the caller refuses to start takes no place.
    inboxes.remove(1);
    flows.reap().await;
    assert_eq!(flows.offer(3, Bytes::new(), |_| false), Offer::Refused);
    assert_eq!(flows.len(), 1);
    // Flow 1 ended: its next datagram starts a new one (before or after the table hears of it).
    inboxes.clear();
    assert_eq!(
        flows.offer(1, Bytes::from_static(b"again"), |inbox| {
            inboxes.push(inbox);
            true
        }),
        Offer::Started
    );
    flows.reap().await;
    assert_eq!(flows.len(), 1, "the old flow's end must not remove the new one");
}

#[tokio::test(start_paused = true)]
async fn a_full_table_that_may_make_room_ends_a_flow_done_with_and_never_one_in_use() {
    let after = Duration::from_millis(250);
    let ms = Duration::from_millis;
    let mut flows: Flows<u8> = Flows::evicting(2, after);
    let mut inboxes = HashMap::new();
    // Offers a datagram of a new flow; the flow's inbox goes into `inboxes`.
    fn start(flows: &mut Flows<u8>, inboxes: &mut HashMap<u8, FlowInbox<u8>>, key: u8) -> Offer {
        flows.offer(key, Bytes::from(vec![key]), |inbox| inboxes.insert(key, inbox).is_none())
    }
    assert_eq!(start(&mut flows, &mut inboxes, 1), Offer::Started);
    assert_eq!(start(&mut flows, &mut inboxes, 2), Offer::Started);
    // Flows still opening are never ended for room, however long that takes.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(start(&mut flows, &mut inboxes, 3), Offer::Refused);
    tokio::time::sleep(ms(300)).await;
    // Flow 1 has its answer; flow 2 asked and waits for one.
    inboxes[&1].activity().set(Phase::Answered);
    inboxes[&2].activity().set(Phase::Asked);
    tokio::time::sleep(ms(249)).await;
    assert_eq!(
        start(&mut flows, &mut inboxes, 3),
        Offer::Refused,
        "flow 1 was answered 249 ms ago, under 250"
    );
    tokio::time::sleep(ms(1)).await;
    // A new flow that does not start ends nothing...
    let mut asked = false;
    let offer = flows.offer(3, Bytes::new(), |_| {
        asked = true;
        false
    });
    assert!(asked && offer == Offer::Refused, "room was found, and kept: {offer:?}");
    // ...and one that starts ends flow 1, answered 250 ms ago; flow 2, unanswered, stays.
    assert_eq!(start(&mut flows, &mut inboxes, 3), Offer::Started);
    assert_eq!(flows.len(), 2);
    let mut ended = inboxes.remove(&1).unwrap();
    assert_eq!(&ended.next().await.unwrap()[..], [1], "what the ended flow held still goes");
    assert!(ended.next().await.is_none(), "the ended flow's queue closes");
    drop(ended);
    flows.reap().await;
    assert_eq!(flows.len(), 2, "the ended flow's end takes nothing else out");

    // An answered flow that asks again awaits that answer: flow 3, answered, then asked
    // 250 ms later, is not free in 250 ms but in 5 s.
    inboxes[&3].activity().set(Phase::Answered);
    tokio::time::sleep(after).await;
    assert_eq!(flows.offer(3, Bytes::from_static(b"again"), |_| unreachable!()), Offer::Queued);
    // Flow 2 is asked again and again and never answered: its 5 s run from the first time.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flows.offer(2, Bytes::from_static(b"more"), |_| unreachable!()), Offer::Queued);
        assert_eq!(start(&mut flows, &mut inboxes, 4), Offer::Refused);
    }
    // Flow 2 was asked at 10.3 s, flow 3 at 10.8 s.
    tokio::time::sleep(ms(499)).await;
    assert_eq!(start(&mut flows, &mut inboxes, 4), Offer::Refused, "flow 2 is unanswered for 4,999 ms");
    tokio::time::sleep(ms(1)).await;
    assert_eq!(start(&mut flows, &mut inboxes, 4), Offer::Started);
    let flow_2 = inboxes.get_mut(&2).unwrap();
    while flow_2.next().await.is_some() {}
    assert_eq!(flows.offer(3, Bytes::from_static(b"on"), |_| unreachable!()), Offer::Queued, "flow 3 stays");

    // A table that may not make room refuses for as long as its flows live, busy or not.
    let mut refusing: Flows<u8> = Flows::new(1);
    assert_eq!(refusing.offer(1, Bytes::new(), |inbox| inboxes.insert(1, inbox).is_none()), Offer::Started);
    inboxes[&1].activity().set(Phase::Over);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(refusing.offer(2, Bytes::new(), |_| unreachable!("over the cap")), Offer::Refused);
}

#[tokio::test(start_paused = true)]
async fn a_source_at_its_cap_makes_room_only_from_its_own_flows_and_each_end_gives_its_place_back() {
    let after = Duration::from_millis(250);
    // Keys 10 to 19 come from one source, 20 to 29 from another, and so on.
    fn by_tens(key: &u8) -> crate::source::Source {
        std::net::IpAddr::from([10, 0, 0, key / 10]).into()
    }
    let mut flows: Flows<u8> = Flows::evicting(5, after).per_source(2, by_tens);
    let mut inboxes = HashMap::new();
    fn start(flows: &mut Flows<u8>, inboxes: &mut HashMap<u8, FlowInbox<u8>>, key: u8) -> Offer {
        flows.offer(key, Bytes::from(vec![key]), |inbox| inboxes.insert(key, inbox).is_none())
    }
    async fn ended(inboxes: &mut HashMap<u8, FlowInbox<u8>>, key: u8) -> bool {
        let inbox = inboxes.get_mut(&key).unwrap();
        inbox.next().await.is_some_and(|held| held[..] == [key]) && inbox.next().await.is_none()
    }
    for key in [10, 11, 20, 21] {
        assert_eq!(start(&mut flows, &mut inboxes, key), Offer::Started, "flow {key}");
    }
    assert_eq!(start(&mut flows, &mut inboxes, 12), Offer::Refused, "source 1 holds its 2, both opening");
    inboxes[&10].activity().set(Phase::Answered);
    tokio::time::sleep(after).await;
    // Flow 10 is done with, yet source 2, at its cap, may not end it.
    assert_eq!(start(&mut flows, &mut inboxes, 22), Offer::Refused, "flow 10 is not source 2's");
    assert_eq!(start(&mut flows, &mut inboxes, 30), Offer::Started, "the table had room");
    // The table is full, and that search of source 2's held back no search over all flows:
    // source 4, under its cap, ends flow 10 at once.
    assert_eq!(start(&mut flows, &mut inboxes, 40), Offer::Started);
    assert!(ended(&mut inboxes, 10).await, "flow 10 sends what it held, then its queue closes");

    // Source 2 at its cap ends its own flow done with (21), not flow 30, free for longer.
    inboxes[&30].activity().set(Phase::Answered);
    tokio::time::sleep(Duration::from_millis(10)).await;
    inboxes[&21].activity().set(Phase::Answered);
    tokio::time::sleep(after).await;
    assert_eq!(start(&mut flows, &mut inboxes, 22), Offer::Started);
    assert!(ended(&mut inboxes, 21).await, "source 2's own flow made room");
    assert_eq!(
        flows.offer(30, Bytes::from_static(b"on"), |_| unreachable!()),
        Offer::Queued,
        "flow 30 stays"
    );

    // Each flow that ends gives its source's place back, whether ended for room (21), on its
    // own and reaped (20), or on its own and found ended by its next datagram (23).
    drop(inboxes.remove(&40));
    flows.reap().await;
    drop(inboxes.remove(&20));
    flows.reap().await;
    assert_eq!(start(&mut flows, &mut inboxes, 23), Offer::Started, "source 2 holds 22 alone");
    drop(inboxes.remove(&23));
    assert_eq!(start(&mut flows, &mut inboxes, 23), Offer::Started, "source 2 holds 22 alone again");
    assert_eq!(flows.len(), 4, "flows 11, 22, 23 and 30");
}

#[tokio::test(start_paused = true)]
async fn a_flow_awaiting_its_answer_keeps_its_place_and_gets_it() {
    let after = Duration::from_millis(250);
    let mut flows: Flows<u8> = Flows::evicting(1, after);
    let (near, mut far) = tokio::io::duplex(4096);
    let (inbox_tx, mut inbox_rx) = mpsc::unbounded_channel();
    assert_eq!(
        flows.offer(1, Bytes::from_static(b"ask"), |inbox| inbox_tx.send(inbox).is_ok()),
        Offer::Started
    );
    let inbox = inbox_rx.recv().await.unwrap();
    let (back_tx, mut back) = mpsc::unbounded_channel();
    let deliver = move |datagram: Bytes| {
        let sent = back_tx.send(datagram).is_ok();
        async move { sent }
    };
    let flow = tokio::spawn(carry_flow(inbox, async { Ok(near) }, |_| (), deliver, Duration::from_secs(60)));
    // The question crosses; its answer takes 3 s, and new visitors come meanwhile.
    let mut question = [0u8; 5];
    far.read_exact(&mut question).await.unwrap();
    assert_eq!(&question, b"\0\x03ask");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(flows.offer(2, Bytes::new(), |_| unreachable!("flow 1 awaits its answer")), Offer::Refused);
    far.write_all(b"\0\x06answer").await.unwrap();
    assert_eq!(&back.recv().await.unwrap()[..], b"answer");
    // Answered and quiet for 250 ms, it makes room, and ends in order with what it carried.
    tokio::time::sleep(after).await;
    assert_eq!(flows.offer(2, Bytes::new(), |_| true), Offer::Started);
    let stats = flow.await.unwrap().unwrap();
    assert_eq!((stats.sent, stats.received), (1, 1));
    let mut rest = Vec::new();
    far.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "the stream closes once the flow ends");
}

#[tokio::test]
async fn a_flows_queue_holds_a_bounded_number_of_bytes_and_takes_back_what_it_sends() {
    let (_, max_bytes) = QUEUE_FOR_TESTS;
    let mut flows: Flows<u8> = Flows::new(1);
    let mut inboxes = Vec::new();
    let big = Bytes::from(vec![0u8; 60_000]);
    // One datagram larger than the rest of the budget still goes into an empty queue.
    assert_eq!(
        flows.offer(1, Bytes::from(vec![0u8; max_bytes + 1]), |inbox| {
            inboxes.push(inbox);
            true
        }),
        Offer::Started
    );
    assert_eq!(flows.offer(1, big.clone(), |_| unreachable!()), Offer::QueueFull);
    let first = inboxes[0].next().await.unwrap();
    assert_eq!(first.len(), max_bytes + 1);
    assert_eq!(flows.offer(1, big.clone(), |_| unreachable!()), Offer::Queued);
    assert_eq!(flows.offer(1, big, |_| unreachable!()), Offer::QueueFull, "60 KB + 60 KB is over the budget");
    assert_eq!(flows.offer(1, Bytes::from(vec![0u8; max_bytes - 60_000]), |_| unreachable!()), Offer::Queued);
}

#[tokio::test(start_paused = true)]
async fn a_flow_that_cannot_open_drops_its_datagrams_for_a_fixed_time_then_ends() {
    let mut flows: Flows<u8> = Flows::new(1);
    let (inbox_tx, mut inbox_rx) = mpsc::unbounded_channel();
    assert_eq!(
        flows.offer(1, Bytes::from_static(b"q"), |inbox| inbox_tx.send(inbox).is_ok()),
        Offer::Started
    );
    let inbox = inbox_rx.recv().await.unwrap();
    let start = tokio::time::Instant::now();
    let flow = tokio::spawn(async move {
        let refused = async { Err::<tokio::io::DuplexStream, _>(io::Error::other("refused")) };
        carry_flow(inbox, refused, |_| (), |_| async { true }, Duration::from_secs(60)).await
    });
    // Retries every second keep coming; the flow holds them off for 5 s from the failure,
    // not 5 s from the last retry.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(flows.offer(1, Bytes::from_static(b"q"), |_| unreachable!()), Offer::Queued);
    }
    assert!(flow.await.unwrap().is_err());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    flows.reap().await;
    assert_eq!(flows.offer(1, Bytes::from_static(b"q"), |_| true), Offer::Started);
}

#[tokio::test(start_paused = true)]
async fn a_stream_closed_before_any_answer_holds_the_flow_like_a_refusal() {
    let mut flows: Flows<u8> = Flows::new(1);
    let (inbox_tx, mut inbox_rx) = mpsc::unbounded_channel();
    assert_eq!(
        flows.offer(1, Bytes::from_static(b"q"), |inbox| inbox_tx.send(inbox).is_ok()),
        Offer::Started
    );
    let inbox = inbox_rx.recv().await.unwrap();
    // The far end could not reach the target: it closes the stream without a word.
    let (near, far) = tokio::io::duplex(1024);
    drop(far);
    let start = tokio::time::Instant::now();
    let _ = carry_flow(inbox, async { Ok(near) }, |_| (), |_| async { true }, Duration::from_secs(60)).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[test]
fn both_ends_agree_on_a_routes_idle_time_in_whole_seconds() {
    assert_eq!(flow_idle_secs(None), 60);
    assert_eq!(flow_idle_secs(Some(Duration::from_millis(500))), 1);
    assert_eq!(flow_idle_secs(Some(Duration::from_millis(1500))), 2);
    assert_eq!(flow_idle_secs(Some(Duration::from_secs(u64::MAX))), 3600);
}

#[tokio::test]
async fn a_stream_ending_inside_a_datagram_is_an_error_and_between_two_is_the_end() {
    let mut whole = FrameReader::new(&b"\0\x02hi\0\0"[..]);
    assert_eq!(&whole.next().await.unwrap().unwrap()[..], b"hi");
    assert_eq!(&whole.next().await.unwrap().unwrap()[..], b"");
    assert!(whole.next().await.unwrap().is_none());
    let mut cut = FrameReader::new(&b"\0\x05hi"[..]);
    assert_eq!(cut.next().await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
}

#[tokio::test]
async fn a_socks_flows_task_holds_its_carry_once() {
    let mut flows = Flows::new(4);
    let destination = |port| crate::socks::Destination::Ip(SocketAddr::from(([127, 0, 0, 1], port)));
    let stream = || Box::pin(async { Ok(tokio::io::duplex(64).0) });
    let (mut carry, mut task) = (0, 0);
    flows.offer(destination(1), Bytes::from_static(b"x"), |inbox| {
        carry = std::mem::size_of_val(&carry_flow(
            inbox,
            stream(),
            |_| (),
            |_| async { true },
            DEFAULT_FLOW_IDLE,
        ));
        false
    });
    let target = destination(2).to_target().unwrap();
    flows.offer(destination(2), Bytes::from_static(b"x"), |inbox| {
        let flow = associate::flow(inbox, stream(), |_| async { true }, target, Default::default());
        task = std::mem::size_of_val(&flow);
        false
    });
    // 1.2 KB against a carry of 0.96 KB in the test build today (over a duplex stream). The carry
    // made beforehand and captured by the task was kept twice: 2.2 KB.
    assert!(carry > 0 && task < carry + 512, "a flow's task is {task} bytes, its carry {carry}");
}
