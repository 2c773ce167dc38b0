use super::*;
use crate::mux::idle_opener as opener;

const GRACE: Duration = Duration::from_secs(60);
const HANDOVER: Duration = Duration::from_secs(1);
const CAPS: Caps = Caps { sessions: 100, shared_sessions: 100, services: 100, reserved: 100 };

/// `name` on a token of its own.
fn who(name: &str) -> Owner {
    Owner { name: name.into(), credential: CredentialKind::PerClient }
}

async fn register(registry: &Registry, name: &str) -> Registration {
    registry.register(name, CredentialKind::Shared, opener().0, 1, HANDOVER).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn ports_are_reserved_for_the_owner_during_the_grace_period() {
    let registry = Registry::new(GRACE, CAPS);
    registry.claim(&who("a"), RouteId(1), 7000).unwrap();
    assert_eq!(registry.claim(&who("b"), RouteId(1), 7000), Err(OtherClient));

    registry.vacate(&who("a"), 7000, || true);
    assert_eq!(registry.claim(&who("b"), RouteId(1), 7000), Err(OtherClient), "reserved for a");
    assert_eq!(registry.reserved_for(&who("a"), RouteId(1)), Some(7000));
    assert_eq!(registry.reserved_for(&who("a"), RouteId(2)), None);
    registry.claim(&who("a"), RouteId(1), 7000).unwrap();
    registry.vacate(&who("a"), 7000, || true);

    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    registry.sweep();
    registry.claim(&who("b"), RouteId(1), 7000).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_name_on_the_other_kind_of_credential_is_another_client() {
    let registry = Registry::new(GRACE, CAPS);
    let impostor = Owner { name: "a".into(), credential: CredentialKind::Shared };
    registry.claim(&who("a"), RouteId(1), 7000).unwrap();
    assert_eq!(registry.claim(&impostor, RouteId(1), 7000), Err(OtherClient), "held");
    registry.vacate(&impostor, 7000, || true);
    assert!(registry.is_taken_for(&impostor, 7000), "it gave back what it does not hold");
    registry.vacate(&who("a"), 7000, || true);
    assert_eq!(registry.claim(&impostor, RouteId(1), 7000), Err(OtherClient), "reserved");
    assert_eq!(registry.reserved_for(&impostor, RouteId(1)), None);
    assert_eq!(registry.reserved_for(&who("a"), RouteId(1)), Some(7000));
}

#[tokio::test(start_paused = true)]
async fn a_port_is_the_names_until_its_last_listener_gives_it_back() {
    let registry = Registry::new(GRACE, CAPS);
    // A TCP and a UDP route of one name on one port: two claims.
    registry.claim(&who("a"), RouteId(1), 7000).unwrap();
    registry.claim(&who("a"), RouteId(2), 7000).unwrap();
    registry.release(&who("a"), 7000);
    assert!(registry.is_taken_for(&who("b"), 7000), "freed while a listener still uses it");
    // Another name cannot give it back for its owner.
    registry.release(&who("b"), 7000);
    registry.vacate(&who("b"), 7000, || true);
    assert!(registry.is_taken_for(&who("b"), 7000));
    registry.release(&who("a"), 7000);
    assert!(!registry.is_taken_for(&who("b"), 7000), "a released port stays taken");
    assert_eq!(registry.reserved_for(&who("a"), RouteId(2)), None, "a released port is not reserved");

    registry.claim(&who("a"), RouteId(1), 7001).unwrap();
    registry.claim(&who("a"), RouteId(2), 7001).unwrap();
    registry.vacate(&who("a"), 7001, || true);
    assert_eq!(registry.reserved_for(&who("a"), RouteId(2)), None, "reserved while still held");
    registry.vacate(&who("a"), 7001, || true);
    assert_eq!(registry.reserved_for(&who("a"), RouteId(2)), Some(7001));
    // Giving back more than was claimed leaves the reservation alone.
    registry.release(&who("a"), 7001);
    assert_eq!(registry.reserved_for(&who("a"), RouteId(2)), Some(7001));
}

#[tokio::test(start_paused = true)]
async fn a_new_session_kicks_the_old_one_and_waits_for_its_release() {
    let registry = std::sync::Arc::new(Registry::new(GRACE, CAPS));
    let old = register(&registry, "a").await;
    let r = registry.clone();
    let old_task = tokio::spawn(async move {
        old.kicked.cancelled().await;
        r.unregister("a", &old);
    });
    let _new = register(&registry, "a").await;
    // Registered only once the old one let go.
    assert!(old_task.is_finished(), "the new session did not wait for the old one");
    old_task.await.unwrap();
    assert_eq!(registry.session_names(), vec!["a".to_owned()]);
    assert_eq!(registry.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn replicas_join_until_their_number_then_the_silent_then_the_oldest_go_and_the_draining_stay() {
    let registry = std::sync::Arc::new(Registry::new(GRACE, CAPS));
    let (openers, _keep): (Vec<_>, Vec<_>) = (0..6).map(|_| opener()).unzip();
    let join = |i: usize| {
        let registry = registry.clone();
        let opener = openers[i].clone();
        async move {
            let joined = registry.register("a", CredentialKind::Shared, opener, 3, HANDOVER).await.unwrap();
            let r = registry.clone();
            let kicked = joined.kicked.clone();
            let id = joined.id;
            tokio::spawn(async move {
                joined.kicked.cancelled().await;
                r.unregister("a", &joined);
            });
            (id, kicked)
        }
    };
    let (first, second, third) = (join(0).await, join(1).await, join(2).await);
    assert_eq!(registry.session_count(), 3);
    assert!(![&first, &second, &third].iter().any(|(_, kicked)| kicked.is_cancelled()));

    // A draining replica is on its way out: a new one joins beside it, kicking nobody.
    registry.draining("a", second.0);
    let _fourth = join(3).await;
    assert!(![&first, &second, &third].iter().any(|(_, kicked)| kicked.is_cancelled()));
    assert_eq!(registry.session_count(), 4);

    openers[2].set_silent(true);
    let _fifth = join(4).await;
    assert!(third.1.is_cancelled() && !first.1.is_cancelled(), "a silent one goes first");

    let _sixth = join(5).await;
    assert!(first.1.is_cancelled(), "then the oldest");
    assert!(!second.1.is_cancelled(), "the draining one was kicked");
    assert_eq!(registry.session_count(), 4);

    // Draining sessions included, a name holds twice its replicas at most: past that, a
    // new one cuts the oldest draining one.
    let (more, _keep_more): (Vec<_>, Vec<_>) = (0..4).map(|_| opener()).unzip();
    let mut draining = vec![second];
    for opener in more {
        let joined = registry.register("a", CredentialKind::Shared, opener, 3, HANDOVER).await.unwrap();
        registry.draining("a", joined.id);
        draining.push((joined.id, joined.kicked.clone()));
        let r = registry.clone();
        tokio::spawn(async move {
            joined.kicked.cancelled().await;
            r.unregister("a", &joined);
        });
        assert!(registry.session_count() <= 6, "{} sessions", registry.session_count());
    }
    assert!(draining[0].1.is_cancelled(), "the oldest draining session stayed past twice the replicas");
    assert_eq!(registry.session_count(), 6);
}

#[tokio::test(start_paused = true)]
async fn replicas_lowered_by_a_reload_close_the_excess_silent_first_then_oldest_sparing_the_draining() {
    let registry = Registry::new(GRACE, CAPS);
    let (openers, _keep): (Vec<_>, Vec<_>) = (0..5).map(|_| opener()).unzip();
    let mut joined = Vec::new();
    for opener in &openers[..4] {
        joined
            .push(registry.register("a", CredentialKind::Shared, opener.clone(), 4, HANDOVER).await.unwrap());
    }
    let other =
        registry.register("b", CredentialKind::PerClient, openers[4].clone(), 1, HANDOVER).await.unwrap();
    registry.draining("a", joined[3].id);
    openers[2].set_silent(true);
    // Nothing above its number: nobody goes.
    assert!(registry.trim(|_, _| 3).is_empty());
    assert!(!joined.iter().any(|j| j.kicked.is_cancelled()));

    // "a" now allowed 1 of its 3 accepting sessions: the silent one and the oldest go, each
    // told why; the draining one stays (on its way out already), and so does "b".
    let trimmed = registry.trim(|name, kind| match (name, kind) {
        ("a", CredentialKind::Shared) => 1,
        _ => 5,
    });
    assert_eq!(trimmed, [("a".to_owned(), joined[0].id), ("a".to_owned(), joined[2].id)]);
    let kicked: Vec<bool> = joined.iter().map(|j| j.kicked.is_cancelled()).collect();
    assert_eq!(kicked, [true, false, true, false]);
    assert!(joined[0].trimmed() && joined[2].trimmed() && !other.kicked.is_cancelled());
    assert_eq!(registry.session_count(), 3, "a's newest, a's draining one, and b");
    // A newcomer now replaces by the new number, as at a registration.
    let newcomer = registry.register("a", CredentialKind::Shared, opener().0, 1, HANDOVER);
    let newcomer = tokio::time::timeout(HANDOVER * 2, newcomer).await.unwrap().unwrap();
    assert!(joined[1].kicked.is_cancelled() && !joined[1].trimmed(), "replaced, not trimmed");
    drop(newcomer);
}

#[tokio::test(start_paused = true)]
async fn a_service_visit_goes_to_a_replica_exposing_it_and_not_draining() {
    let registry = Registry::new(GRACE, CAPS);
    let (openers, _keep): (Vec<_>, Vec<_>) = (0..3).map(|_| opener()).unzip();
    let mut ids = Vec::new();
    for opener in &openers {
        let joined = registry.register("a", CredentialKind::Shared, opener.clone(), 3, HANDOVER);
        ids.push(joined.await.unwrap().id);
    }
    assert_eq!(registry.service("b", "db").unwrap_err(), ServiceLookup::ClientOffline);
    assert_eq!(registry.service("a", "db").unwrap_err(), ServiceLookup::NoSuchService);
    registry.expose("a", ids[0], "db").unwrap();
    registry.expose("a", ids[1], "db").unwrap();
    for _ in 0..20 {
        let picked = registry.service("a", "db").unwrap().connection_id();
        assert_ne!(picked, openers[2].connection_id(), "a replica not exposing it was picked");
    }
    registry.draining("a", ids[0]);
    let picked = registry.service("a", "db").unwrap();
    assert_eq!(picked.connection_id(), openers[1].connection_id(), "the draining one was picked");
    registry.draining("a", ids[1]);
    assert_eq!(
        registry.service("a", "db").unwrap_err(),
        ServiceLookup::ClientOffline,
        "a visit went to a draining replica"
    );
}

/// A client that reconnects and claims other ports each time keeps at most its cap of them
/// reserved: the ones reserved first go first, and another client may claim them.
#[tokio::test(start_paused = true)]
async fn a_client_keeps_at_most_its_cap_of_ports_reserved_the_first_reserved_going_first() {
    let registry = Registry::new(GRACE, Caps { reserved: 4, ..CAPS });
    let (a, b) = (who("a"), who("b"));
    // Seven sessions of a, each claiming a port and leaving it reserved (a second apart, so
    // the reservations end in that order).
    for port in 1000..1007 {
        registry.claim(&a, RouteId(u64::from(port)), port).unwrap();
        registry.vacate(&a, port, || true);
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let reserved: Vec<u16> = (1000..1007).filter(|p| registry.claim(&b, RouteId(1), *p).is_err()).collect();
    assert_eq!(reserved, [1003, 1004, 1005, 1006], "the last four stay a's");
    // Its own come back to it, whatever their number.
    assert_eq!(registry.reserved_for(&a, RouteId(1006)), Some(1006));
    // Another owner's reservations are its own count: b's do not push a's out.
    for port in 2000..2004 {
        registry.claim(&b, RouteId(u64::from(port)), port).unwrap();
        registry.vacate(&b, port, || true);
    }
    assert_eq!(registry.reserved_for(&a, RouteId(1003)), Some(1003));
}

#[tokio::test(start_paused = true)]
async fn stored_leases_are_reserved_again_after_a_restart() {
    let before = Registry::new(GRACE, CAPS);
    before.claim(&who("a"), RouteId(0), 7000).unwrap();
    before.claim(&who("a"), RouteId(1), 7001).unwrap();
    before.vacate(&who("a"), 7000, || true);
    before.vacate(&who("a"), 7001, || true);
    before.claim(&who("b"), RouteId(0), 7002).unwrap();
    let stored = before.stored_leases();
    assert_eq!(stored.iter().map(|l| l.port).collect::<Vec<_>>(), [7000, 7001, 7002]);
    assert_eq!(stored[2].reserved_until_ms, 0, "held");

    let after = Registry::new(GRACE, CAPS);
    after.restore(&stored);
    for port in [7000, 7001, 7002] {
        assert_eq!(after.claim(&who("c"), RouteId(0), port), Err(OtherClient), "{port}");
    }
    assert_eq!(after.reserved_for(&who("a"), RouteId(1)), Some(7001));
    assert_eq!(
        after.reserved_for(&who("b"), RouteId(0)),
        Some(7002),
        "a held lease is reserved after a restart"
    );
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    after.claim(&who("c"), RouteId(0), 7002).unwrap();
}

#[tokio::test(start_paused = true)]
async fn session_and_service_caps_hold_and_a_replacement_is_not_a_new_session() {
    let caps = Caps { sessions: 3, shared_sessions: 2, services: 2, reserved: 100 };
    let registry = Registry::new(GRACE, caps);
    let join = |name: &'static str, kind| registry.register(name, kind, opener().0, 1, HANDOVER);
    let a = join("a", CredentialKind::Shared).await.unwrap();
    let b = join("b", CredentialKind::Shared).await.unwrap();
    assert_eq!(join("c", CredentialKind::Shared).await.unwrap_err(), Full::SharedSessions(2));
    let w = join("w", CredentialKind::PerClient).await.unwrap();
    assert_eq!(join("x", CredentialKind::PerClient).await.unwrap_err(), Full::Sessions(3));
    // A second replica is a new session: the caps apply to it.
    let replica = registry.register("w", CredentialKind::PerClient, opener().0, 2, HANDOVER);
    assert_eq!(replica.await.unwrap_err(), Full::Sessions(3));
    // "a" again replaces "a": no new session, so no cap applies.
    let replacing = join("a", CredentialKind::Shared);
    let old = async {
        a.kicked.cancelled().await;
        registry.unregister("a", &a);
    };
    let (a2, ()) = tokio::join!(replacing, old);
    let a2 = a2.unwrap();
    registry.expose("a", a2.id, "one").unwrap();
    registry.expose("a", a2.id, "two").unwrap();
    registry.expose("a", a2.id, "two").unwrap();
    assert_eq!(registry.expose("a", a2.id, "three"), Err(2));
    // The replacement left the counts as they were (the old "a" let go once, not twice)...
    assert_eq!(join("x", CredentialKind::PerClient).await.unwrap_err(), Full::Sessions(3));
    // ...and a session that ends makes room of its kind.
    registry.unregister("b", &b);
    let c = join("c", CredentialKind::Shared).await.unwrap();
    assert_eq!(join("x", CredentialKind::PerClient).await.unwrap_err(), Full::Sessions(3));
    assert_eq!(join("d", CredentialKind::Shared).await.unwrap_err(), Full::Sessions(3));
    registry.unregister("w", &w);
    assert_eq!(join("d", CredentialKind::Shared).await.unwrap_err(), Full::SharedSessions(2));
    registry.unregister("c", &c);
    join("x", CredentialKind::PerClient).await.unwrap();
    join("y", CredentialKind::Shared).await.unwrap();
    assert_eq!(join("z", CredentialKind::PerClient).await.unwrap_err(), Full::Sessions(3));
}
