//! Tests of a visitor connection's activity, its parking, and how its close is told.
use super::*;

const IDLE: Duration = Duration::from_secs(30);

/// Once hyper has the whole body, the exchange is over; what is left of the answer goes
/// out as the visitor reads it, and a visitor reading it slowly is not idle.
#[tokio::test(start_paused = true)]
async fn what_the_socket_takes_counts_as_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let activity = Arc::new(Activity::default());
    let (mut visitor, io) = tokio::io::duplex(4096);
    let mut parking = Parking::new(io, activity.clone(), &LargeHeads::new(1));
    let mut buf = [0u8; 2048];
    let reading_slowly = async {
        for _ in 0..5 {
            parking.write_all(&buf).await.unwrap();
            visitor.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(IDLE * 2 / 3).await;
        }
    };
    tokio::select! {
        () = activity.quiet_for(IDLE) => panic!("a visitor reading an answer's tail was taken for idle"),
        () = reading_slowly => {}
    }
}

/// hyper may take a request it cannot answer yet (pipelined behind an answer the visitor
/// does not read) without running its future: that is no wait on the tunnel.
#[tokio::test(start_paused = true)]
async fn an_exchange_whose_future_never_ran_is_no_wait() {
    let activity = Arc::new(Activity::default());
    let taken = activity.begin(false);
    tokio::time::timeout(IDLE * 3, activity.quiet_for(IDLE)).await.expect("an unrun exchange kept it busy");
    let mut seeking = taken;
    seeking.seek();
    assert!(
        tokio::time::timeout(IDLE * 3, activity.quiet_for(IDLE)).await.is_err(),
        "a wait on the tunnel is idle"
    );
}

/// Bytes of a next head read along with a long one are not counted (they came before that
/// request was dispatched): the place goes with them to the next hyper connection, so a
/// place cannot be handed from connection to connection, each left with a long head.
#[test]
fn a_place_stays_with_a_long_head_left_over_at_parking() {
    let heads = LargeHeads::new(1);
    let mut parking = Parking::new(tokio::io::duplex(64).0, Arc::default(), &heads);
    parking.large_head = Some(heads.0.clone().try_acquire_owned().unwrap());
    parking.park();
    parking.keep_unparsed(bytes::Bytes::from(vec![b'x'; SMALL_HEAD + 1]));
    assert_eq!(heads.free(), 0, "a long head went on to the next connection without a place");
    parking.park();
    parking.keep_unparsed(bytes::Bytes::from_static(b"GET"));
    assert_eq!(heads.free(), 1, "a short rest kept the place");
}

#[test]
fn a_parked_connection_keeps_no_part_of_hypers_read_buffer() {
    let mut parking = Parking::new(tokio::io::duplex(64).0, Arc::default(), &LargeHeads::new(1));
    let buffer = bytes::Bytes::from(vec![b'x'; 8192]);
    parking.keep_unparsed(buffer.slice(8190..));
    assert!(buffer.is_unique(), "parked, the connection would hold 8 KiB for 2 bytes");
    assert_eq!(parking.prefix, "xx");
    parking.keep_unparsed(buffer.slice(0..0));
    assert!(parking.prefix.is_empty());
}

/// An answer's body cut short, dropped before its end, or under way when the connection
/// closes makes the close a reset; one taken whole (to its end, or to its length when it never
/// says it is over: hyper then drops it) does not.
#[tokio::test]
async fn only_an_answer_cut_short_or_under_way_makes_the_close_a_reset() {
    use http_body_util::BodyExt;
    use hyper::body::Body as _;
    let piece = || Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"12345")));
    let stream = |pieces: Vec<Result<Frame<Bytes>, BoxError>>| {
        http_body_util::StreamBody::new(futures::stream::iter(pieces)).boxed_unsync()
    };
    let next = |body: &mut ExchangeBody| {
        let waker = futures::task::noop_waker();
        let polled = Pin::new(body).poll_frame(&mut Context::from_waker(&waker));
        matches!(polled, Poll::Ready(Some(Ok(_))))
    };

    // Of known length, never saying it is over: whole once its length is taken.
    let activity = Arc::new(Activity::default());
    let mut body = activity.begin(false).hold(stream(vec![piece(), piece()]), false, Some(10));
    assert!(!body.is_end_stream() && next(&mut body));
    assert!(activity.cut_short(), "under way");
    assert!(next(&mut body));
    drop(body);
    assert!(!activity.cut_short(), "taken to its length, then dropped by hyper");

    // The same dropped before its length: cut.
    let activity = Arc::new(Activity::default());
    let mut body = activity.begin(false).hold(stream(vec![piece(), piece()]), false, Some(10));
    assert!(next(&mut body));
    drop(body);
    assert!(activity.cut_short(), "dropped halfway");

    // Of unknown length: whole at its end, cut by an error.
    let activity = Arc::new(Activity::default());
    let mut body = activity.begin(false).hold(stream(vec![piece()]), false, None);
    assert!(next(&mut body) && !next(&mut body));
    drop(body);
    assert!(!activity.cut_short(), "taken to its end");
    let mut body = activity.begin(false).hold(stream(vec![piece(), Err("cut".into())]), false, None);
    assert!(next(&mut body) && !next(&mut body));
    drop(body);
    assert!(activity.cut_short(), "ended in an error");

    // Ending with trailers, after which hyper polls no more: whole.
    let activity = Arc::new(Activity::default());
    let trailers = Ok(Frame::trailers(http::HeaderMap::new()));
    let mut body = activity.begin(false).hold(stream(vec![piece(), trailers]), false, None);
    assert!(next(&mut body) && next(&mut body));
    drop(body);
    assert!(!activity.cut_short(), "its trailers were its end");

    // An answer hyper sends no body for (HEAD, 204, 304) is never under way.
    let activity = Arc::new(Activity::default());
    drop(activity.begin(false).hold(stream(vec![piece()]), true, Some(5)));
    assert!(!activity.cut_short());
}
