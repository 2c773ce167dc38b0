//! The edge's places toward client sessions: caps, evictions of lasting visitors, and cuts of
//! connections whose visitors keep their requests waiting.

use super::*;

const STALL: Duration = Duration::from_secs(5);
const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

#[test]
fn a_session_has_its_caps_and_a_body_holds_its_place_until_dropped() {
    let inflight = InFlight::new(3, 2, STALL);
    let (a1, _a2) =
        (inflight.admit(1, A, Kind::Lasting).unwrap(), inflight.admit(1, A, Kind::Lasting).unwrap());
    assert_eq!(inflight.admit(1, A, Kind::Lasting).unwrap_err(), Full::Source);
    let _b1 = inflight.admit(1, B, Kind::Lasting).unwrap();
    assert_eq!(inflight.admit(1, B, Kind::Lasting).unwrap_err(), Full::Total);
    // Another session has places of its own.
    let _other = inflight.admit(2, A, Kind::Lasting).unwrap();

    let body = hold(super::super::text_response(http::StatusCode::OK, "x").into_body(), a1);
    assert_eq!(inflight.admit(1, A, Kind::Lasting).unwrap_err(), Full::Source, "the body holds the place");
    drop(body);
    let again = inflight.admit(1, A, Kind::Lasting).expect("a dropped body gives its place back");
    // HTTP requests are held to the session's cap only.
    drop(again);
    let (_a3, _a4) = (inflight.request(3, A).unwrap(), inflight.request(3, A).unwrap());
    let _a5 = inflight.request(3, A).unwrap();
    assert_eq!(inflight.request(3, A).unwrap_err(), Full::Total);
    // Nor do they use up the room of a source under the per-source cap.
    let (_h1, _h2) = (inflight.request(4, A).unwrap(), inflight.request(4, A).unwrap());
    assert!(inflight.admit(4, A, Kind::Lasting).is_ok());
}

const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 3));
const D: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 4));

/// Resolved already (a place taken by a newcomer), without waiting.
fn was_evicted(ticket: &Ticket) -> bool {
    futures::FutureExt::now_or_never(ticket.evicted()).is_some()
}

#[tokio::test]
async fn a_newcomer_to_a_full_session_takes_a_lasting_place_of_the_largest_source_never_a_request_kept_up_with(
) {
    let inflight = InFlight::new(4, 2, STALL);
    let a = [inflight.admit(1, A, Kind::Lasting).unwrap(), inflight.admit(1, A, Kind::Lasting).unwrap()];
    let b = inflight.admit(1, B, Kind::Lasting).unwrap();
    let request = inflight.request(1, C).unwrap();

    // A request from a source holding no lasting place: A's oldest gives way.
    let from_c = inflight.request(1, C).expect("a request into a full session");
    assert!(was_evicted(&a[0]) && !was_evicted(&a[1]) && !was_evicted(&b));
    // Now A and B hold one lasting place each, C none: nobody holds more than a newcomer
    // would, and requests are never cut.
    assert_eq!(inflight.request(1, C).unwrap_err(), Full::Total);
    assert_eq!(inflight.admit(1, C, Kind::Lasting).unwrap_err(), Full::Total);
    assert!(!was_evicted(&a[1]) && !was_evicted(&b) && !was_evicted(&request));
    drop((request, from_c));

    // A lasting newcomer from a source holding none takes the place of one holding two;
    // one from a source holding one, or from that source itself, never does.
    let b2 = inflight.admit(1, B, Kind::Lasting).unwrap();
    let c = inflight.admit(1, C, Kind::Lasting).unwrap();
    assert_eq!(
        inflight.admit(1, B, Kind::Lasting).unwrap_err(),
        Full::Source,
        "B's own takes nothing of B's"
    );
    assert_eq!(inflight.admit(1, C, Kind::Lasting).unwrap_err(), Full::Total, "C would then hold two");
    let _d = inflight.admit(1, D, Kind::Lasting).expect("D holds none, B two");
    assert!(was_evicted(&b) && !was_evicted(&b2) && !was_evicted(&c) && !was_evicted(&a[1]));
    // Each evicted place was given back at once, not when its holder noticed: the counts
    // stay within the caps, and the evicted tickets drop without giving back twice.
    assert_eq!(inflight.counts(1), (4, 4));
    assert_eq!(inflight.request(1, A).unwrap_err(), Full::Total);
    drop((a, b));
    assert_eq!(inflight.counts(1), (3, 3), "A's other place given back, and nothing twice");
    let _request = inflight.request(1, A).expect("A's other place given back");
    assert_eq!(inflight.counts(1), (4, 3));
}

#[test]
fn requests_filling_a_session_cut_no_lasting_visitor_until_those_hold_most_of_it() {
    let inflight = InFlight::new(4, 4, STALL);
    let upgrades =
        [inflight.admit(1, A, Kind::Lasting).unwrap(), inflight.admit(1, A, Kind::Lasting).unwrap()];
    let _requests = [inflight.request(1, B).unwrap(), inflight.request(1, B).unwrap()];
    assert_eq!(inflight.request(1, C).unwrap_err(), Full::Total, "A holds half, no more");
    assert!(upgrades.iter().all(|u| !was_evicted(u)));
    // A lasting newcomer still takes the place of the site holding the most.
    let _c = inflight.admit(1, C, Kind::Lasting).expect("C holds none, A two");
    assert!(was_evicted(&upgrades[0]) && !was_evicted(&upgrades[1]));
}

#[test]
fn a_newcomer_at_its_sources_cap_evicts_no_one() {
    // Two /64s of one /48, each at its cap: one site holding four, more than B's two + 1.
    let (a1, a2): (IpAddr, IpAddr) = ("2001:db8:0:1::1".parse().unwrap(), "2001:db8:0:2::1".parse().unwrap());
    let inflight = InFlight::new(6, 2, STALL);
    let held: Vec<_> =
        [a1, a1, a2, a2, B, B].into_iter().map(|ip| inflight.admit(1, ip, Kind::Lasting).unwrap()).collect();
    assert_eq!(inflight.admit(1, B, Kind::Lasting).unwrap_err(), Full::Source);
    assert!(held.iter().all(|h| !was_evicted(h)), "evicted for a newcomer then refused");
}

#[tokio::test]
async fn an_answer_holding_a_lasting_place_ends_when_a_newcomer_takes_it() {
    let inflight = InFlight::new(2, 2, STALL);
    let (held, _kept) =
        (inflight.admit(1, A, Kind::Lasting).unwrap(), inflight.admit(1, A, Kind::Lasting).unwrap());
    let body = http_body_util::StreamBody::new(futures::stream::pending::<Result<Frame<Bytes>, BoxError>>());
    let mut body = hold(body, held);
    assert!(futures::FutureExt::now_or_never(body.frame()).is_none(), "the answer is still under way");
    let _newcomer = inflight.request(1, B).expect("a request takes the place");
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame()).await.unwrap();
    assert!(matches!(frame, Some(Err(_))), "the answer goes on without its place");
}

/// Whether the connection was cut already, without waiting.
fn was_cut(connection: &VisitorConnection) -> bool {
    futures::FutureExt::now_or_never(connection.cut()).is_some()
}

type Piece = Result<Frame<Bytes>, BoxError>;

/// A body whose pieces come when the test sends them.
fn piecemeal() -> (
    futures::channel::mpsc::Sender<Piece>,
    http_body_util::StreamBody<futures::channel::mpsc::Receiver<Piece>>,
) {
    let (more, pieces) = futures::channel::mpsc::channel(8);
    (more, http_body_util::StreamBody::new(pieces))
}

/// A piece of `len` bytes.
fn piece(len: usize) -> Piece {
    Ok(Frame::data(Bytes::from(vec![b'x'; len])))
}

/// As much as keeps a visitor up with its request.
const ENOUGH: usize = requests::PROGRESS as usize;

#[tokio::test(start_paused = true)]
async fn a_newcomer_to_a_full_session_cuts_the_connection_keeping_the_most_requests_waiting() {
    let inflight = InFlight::new(4, 4, STALL);
    let (crowd, lone, patient) =
        (Arc::<VisitorConnection>::default(), Arc::<VisitorConnection>::default(), Arc::default());
    let admit = |on: &Arc<VisitorConnection>| inflight.admit(1, A, Kind::Request(on)).unwrap();
    // Answers handed on and never asked for again: two on one connection, one on another.
    let _crowds = [hold(piecemeal().1, admit(&crowd)), hold(piecemeal().1, admit(&crowd))];
    let _lones = hold(piecemeal().1, admit(&lone));
    // An answer waiting on the tunnel, for an hour (a long poll): no visitor's doing.
    let (_more, body) = piecemeal();
    let mut long_poll = hold(body, admit(&patient));
    assert!(futures::FutureExt::now_or_never(long_poll.frame()).is_none());

    tokio::time::advance(STALL - Duration::from_millis(1)).await;
    assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total, "kept waiting under the stall time");
    assert!(!was_cut(&crowd) && !was_cut(&lone));
    tokio::time::advance(Duration::from_millis(1)).await;
    let _first = inflight.request(1, B).expect("the connection keeping two requests waiting is cut");
    assert!(was_cut(&crowd) && !was_cut(&lone) && !was_cut(&patient));
    assert_eq!(inflight.counts(1), (3, 0), "both of its places given back at once, one taken");
    let _second = inflight.request(1, B).expect("its other place");
    let _third = inflight.request(1, C).expect("the lone request's place, kept waiting as long");
    assert!(was_cut(&lone) && !was_cut(&patient));

    // Requests whose answers have yet to come, and the long poll, wait on the tunnel.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(inflight.request(1, D).unwrap_err(), Full::Total);
    assert!(!was_cut(&patient));
    drop(_crowds);
    assert_eq!(inflight.counts(1), (4, 0), "places taken by newcomers are not given back twice");
}

#[tokio::test(start_paused = true)]
async fn a_visitor_taking_its_answer_as_it_comes_keeps_its_place_and_one_that_stops_does_not() {
    let inflight = InFlight::new(1, 1, STALL);
    let reader = Arc::<VisitorConnection>::default();
    let (mut more, body) = piecemeal();
    let mut answer = hold(body, inflight.admit(1, A, Kind::Request(&reader)).unwrap());
    for _ in 0..4 {
        // A piece handed on, the one before taken (asked for again) within the stall time.
        more.try_send(piece(ENOUGH)).unwrap();
        assert!(answer.frame().await.is_some());
        tokio::time::advance(STALL - Duration::from_millis(1)).await;
        assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total);
    }
    // Then the visitor stops asking: the last piece was handed on a stall time ago.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(!was_cut(&reader));
    let _newcomer = inflight.request(1, B).expect("the visitor that stopped taking is cut");
    assert!(was_cut(&reader));
}

/// Taking a small piece now and then, to look busy, is not keeping up.
#[tokio::test(start_paused = true)]
async fn a_visitor_taking_small_pieces_of_a_waiting_answer_now_and_then_is_behind() {
    let inflight = InFlight::new(1, 1, STALL);
    let trickler = Arc::<VisitorConnection>::default();
    let (mut more, body) = piecemeal();
    let mut answer = hold(body, inflight.admit(1, A, Kind::Request(&trickler)).unwrap());
    for _ in 0..4 {
        more.try_send(piece(ENOUGH / 8)).unwrap();
        assert!(answer.frame().await.is_some());
        tokio::time::advance(STALL / 4).await;
    }
    let _newcomer = inflight.request(1, B).expect("a stall time with half of enough taken");
    assert!(was_cut(&trickler));
}

/// A visitor whose connection was cut opening another of requests it keeps waiting: its site
/// is on notice, its requests cut as soon as their visitor is behind, while another site's
/// get the stall time; the notice ends.
#[tokio::test(start_paused = true)]
async fn a_site_whose_connection_was_cut_is_on_notice_a_while() {
    let inflight = InFlight::new(2, 2, STALL);
    let (first, other) = (Arc::<VisitorConnection>::default(), Arc::<VisitorConnection>::default());
    let _first = hold(piecemeal().1, inflight.admit(1, A, Kind::Request(&first)).unwrap());
    tokio::time::advance(STALL / 2).await;
    let _other = hold(piecemeal().1, inflight.admit(1, C, Kind::Request(&other)).unwrap());
    tokio::time::advance(STALL / 2).await;
    drop(inflight.request(1, B).expect("the first connection is cut"));
    assert!(was_cut(&first) && !was_cut(&other));

    let again = Arc::<VisitorConnection>::default();
    let _again = hold(piecemeal().1, inflight.admit(1, A, Kind::Request(&again)).unwrap());
    tokio::time::advance(Duration::from_millis(1)).await;
    let _newcomer = inflight.request(1, D).expect("a request of a site on notice, behind");
    assert!(was_cut(&again) && !was_cut(&other), "the other site's request has its stall time");
    drop((_other, _newcomer));

    tokio::time::advance(requests::NOTICE).await;
    let (later, fourth) = (Arc::<VisitorConnection>::default(), Arc::<VisitorConnection>::default());
    let _later = hold(piecemeal().1, inflight.admit(1, A, Kind::Request(&later)).unwrap());
    let _fourth = hold(piecemeal().1, inflight.admit(1, D, Kind::Request(&fourth)).unwrap());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total, "the notice is over");
    assert!(!was_cut(&later));
}

#[tokio::test(start_paused = true)]
async fn a_visitor_sending_its_body_as_it_is_read_keeps_its_place_and_one_that_stops_does_not() {
    let inflight = InFlight::new(1, 1, STALL);
    let uploader = Arc::<VisitorConnection>::default();
    let ticket = inflight.admit(1, A, Kind::Request(&uploader)).unwrap();
    let (mut more, body) = piecemeal();
    let mut upload = ticket.watch(body);
    for _ in 0..4 {
        // Read and not there yet: the request waits on its visitor until enough comes.
        assert!(futures::FutureExt::now_or_never(upload.frame()).is_none());
        tokio::time::advance(STALL - Duration::from_millis(1)).await;
        assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total);
        more.try_send(piece(ENOUGH)).unwrap();
        assert!(upload.frame().await.is_some());
    }
    // Read, and little comes for the stall time.
    assert!(futures::FutureExt::now_or_never(upload.frame()).is_none());
    more.try_send(piece(ENOUGH - 1)).unwrap();
    assert!(upload.frame().await.is_some());
    tokio::time::advance(STALL).await;
    let _newcomer = inflight.request(1, B).expect("the visitor that stopped sending is cut");
    assert!(was_cut(&uploader));
    drop(ticket);
    assert_eq!(inflight.counts(1), (1, 0));
}

#[test]
fn sessions_holding_nothing_are_forgotten_once_there_are_many() {
    let inflight = InFlight::new(4, 4, STALL);
    const KEPT: usize = usize::MAX;
    let held = inflight.admit(KEPT, A, Kind::Lasting).unwrap();
    for gone in 0..1000 {
        drop(inflight.admit(gone, A, Kind::Lasting).unwrap());
    }
    assert!(inflight.sessions() <= FIRST_PRUNE + 1, "{} sessions kept", inflight.sessions());
    drop(held);
    assert!(inflight.admit(KEPT, A, Kind::Lasting).is_ok());
}

#[test]
fn sites_on_notice_are_held_to_a_bound_the_latest_kept() {
    let mut notice = requests::OnNotice::default();
    let now = Instant::now();
    let site = |n: u32| Source::from(IpAddr::V4(std::net::Ipv4Addr::from(n))).site();
    let sites = u32::try_from(requests::MAX_ON_NOTICE).unwrap() * 2;
    for n in 0..sites {
        notice.give(site(n), now + Duration::from_millis(u64::from(n)));
    }
    let later = now + Duration::from_millis(u64::from(sites));
    let kept = (0..sites).filter(|n| notice.on(site(*n), later)).count();
    assert_eq!(kept, requests::MAX_ON_NOTICE);
    assert!(notice.on(site(sites - 1), later) && !notice.on(site(0), later));
}

/// A piece larger than a visitor keeping up takes in the stall time goes on in pieces of that
/// size, so that taking each counts; the length and the end stay the body's.
#[tokio::test]
async fn a_large_piece_is_handed_on_in_pieces_a_visitor_keeping_up_takes() {
    let inflight = InFlight::new(1, 1, STALL);
    let body = http_body_util::Full::new(Bytes::from(vec![b'x'; 4 * ENOUGH + 1]));
    let mut answer = hold(body, inflight.admit(1, A, Kind::Request(&Arc::default())).unwrap());
    let mut lens = Vec::new();
    while let Some(frame) = answer.frame().await {
        lens.push(frame.unwrap().into_data().unwrap().len());
        let left = 4 * ENOUGH + 1 - lens.iter().sum::<usize>();
        assert_eq!(hyper::body::Body::size_hint(&answer).exact(), Some(left as u64));
        assert_eq!(hyper::body::Body::is_end_stream(&answer), left == 0);
    }
    assert_eq!(lens, [ENOUGH, ENOUGH, ENOUGH, ENOUGH, 1]);
}

/// On a site on notice, a request whose visitor has kept up keeps its stall time; one that
/// never has is cut as soon as its visitor is behind.
#[tokio::test(start_paused = true)]
async fn on_notice_a_request_that_kept_up_keeps_its_stall_time() {
    let inflight = InFlight::new(2, 2, STALL);
    let first = Arc::<VisitorConnection>::default();
    let _first = hold(piecemeal().1, inflight.admit(1, A, Kind::Request(&first)).unwrap());
    tokio::time::advance(STALL).await;
    drop(inflight.request(1, B).expect("the first connection is cut"));

    let keeping_up = Arc::<VisitorConnection>::default();
    let (mut more, body) = piecemeal();
    let mut answer = hold(body, inflight.admit(1, A, Kind::Request(&keeping_up)).unwrap());
    for _ in 0..2 {
        more.try_send(piece(ENOUGH)).unwrap();
        assert!(answer.frame().await.is_some());
    }
    let fresh = Arc::<VisitorConnection>::default();
    let _fresh = hold(piecemeal().1, inflight.admit(1, A, Kind::Request(&fresh)).unwrap());
    tokio::time::advance(Duration::from_millis(1)).await;
    let _newcomer = inflight.request(1, C).expect("the request that never kept up");
    assert!(was_cut(&fresh) && !was_cut(&keeping_up));
    assert_eq!(inflight.request(1, D).unwrap_err(), Full::Total, "the one that kept up has its stall time");
}

/// A request that asked to switch protocols and was answered without a switch holds a
/// request's place: off the per-source cap of lasting visitors, and cut when kept waiting.
#[tokio::test(start_paused = true)]
async fn an_upgrade_answered_without_a_switch_holds_a_requests_place() {
    let inflight = InFlight::new(2, 1, STALL);
    let asked = inflight.admit(1, A, Kind::Lasting).unwrap();
    assert_eq!(inflight.admit(1, A, Kind::Lasting).unwrap_err(), Full::Source);
    let connection = Arc::<VisitorConnection>::default();
    let settled = inflight.settle(1, A, asked, &connection).unwrap();
    assert!(matches!(settled, Ticket::Request(_)));
    assert_eq!(inflight.counts(1), (1, 0));
    let _answer = hold(piecemeal().1, settled);
    let _upgrade = inflight.admit(1, A, Kind::Lasting).expect("the source's lasting place is free");
    tokio::time::advance(STALL).await;
    let _newcomer = inflight.request(1, B).expect("the plain answer kept waiting is cut");
    assert!(was_cut(&connection));
}

/// hyper asks no more of a body that says it is over: a body whose last piece came after a
/// wait leaves its request waiting on nothing, and so does one dropped.
#[tokio::test(start_paused = true)]
async fn a_body_sent_whole_or_dropped_leaves_its_request_waiting_on_nothing() {
    let inflight = InFlight::new(1, 1, STALL);
    let uploader = Arc::<VisitorConnection>::default();
    let ticket = inflight.admit(1, A, Kind::Request(&uploader)).unwrap();
    // A body of 10 bytes whose last (and only) piece comes after a wait.
    let (mut more, pieces) = futures::channel::mpsc::channel::<Piece>(1);
    let mut upload = ticket.watch(Sized { pieces, left: 10 });
    assert!(futures::FutureExt::now_or_never(upload.frame()).is_none());
    more.try_send(piece(10)).unwrap();
    assert!(upload.frame().await.is_some());
    assert!(hyper::body::Body::is_end_stream(&upload));
    tokio::time::advance(STALL * 2).await;
    assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total, "an upload sent whole is no stall");

    let ticket = {
        drop((upload, ticket));
        inflight.admit(1, A, Kind::Request(&uploader)).unwrap()
    };
    let (_more, body) = piecemeal();
    let mut upload = ticket.watch(body);
    assert!(futures::FutureExt::now_or_never(upload.frame()).is_none());
    drop(upload);
    tokio::time::advance(STALL * 2).await;
    assert_eq!(inflight.request(1, B).unwrap_err(), Full::Total, "a body dropped is no stall");
    assert!(!was_cut(&uploader));
}

/// A body of a known length, whose pieces come when the test sends them.
struct Sized {
    pieces: futures::channel::mpsc::Receiver<Piece>,
    left: usize,
}

impl hyper::body::Body for Sized {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        let polled = futures::Stream::poll_next(Pin::new(&mut self.pieces), cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            self.left -= frame.data_ref().map_or(0, Bytes::len);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }
}
