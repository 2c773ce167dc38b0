use super::*;
use crate::proto::PROTOCOL_VERSION;

fn set(remotes: &[&str], services: &[&str]) -> RouteSet {
    RouteSet {
        remotes: remotes.iter().map(|r| r.parse().unwrap()).collect(),
        services: services.iter().map(|s| s.parse().unwrap()).collect(),
        ..RouteSet::default()
    }
}

#[test]
fn ids_stay_when_the_order_or_the_target_of_a_fixed_port_changes() {
    let (mut assigned, mut version) = (HashMap::new(), 0);
    let before = Table::new(
        &(set(&["8080:127.0.0.1:80", "0:127.0.0.1:22"], &["k=h:1"])),
        &assigned,
        &mut version,
        PROTOCOL_VERSION,
    );
    let after = Table::new(
        &(set(&["0:127.0.0.1:22", "8080:127.0.0.1:81"], &["k=h:2"])),
        &assigned,
        &mut version,
        PROTOCOL_VERSION,
    );
    let ids = |t: &Table| t.items.iter().map(|(e, _)| e.id).collect::<HashSet<_>>();
    assert_eq!(ids(&before), ids(&after));
    assert_eq!((before.version(), after.version()), (1, 2));
    // A port-0 forward is its target: another target is another route.
    let other = Table::new(&(set(&["0:127.0.0.1:23"], &[])), &assigned, &mut version, PROTOCOL_VERSION);
    assert!(ids(&other).is_disjoint(&ids(&before)));
    // The port the server picked is asked for again.
    let id = "0:127.0.0.1:22".parse::<RemoteForwardSpec>().unwrap().route_id();
    assigned.insert(id, 41000);
    let again = Table::new(&(set(&["0:127.0.0.1:22"], &[])), &assigned, &mut version, PROTOCOL_VERSION);
    assert_eq!(again.items[0].0.kind, RouteKind::Tcp { bind: None, port: 0, preferred_port: 41000 });
}

#[test]
fn a_set_with_the_same_route_twice_is_refused_naming_both() {
    let err = set(&["8080:127.0.0.1:80", "8080:127.0.0.1:81"], &[]).check().unwrap_err();
    assert!(
        err.to_string().contains("8080:127.0.0.1:80") && err.to_string().contains("8080:127.0.0.1:81"),
        "{err}"
    );
    // Two forwards on port 0 to one target are two routes (they may differ in options).
    let twice = set(&["0:h:1", "0:h:1"], &[]);
    assert!(twice.check().is_ok());
    let ids = twice.remote_ids();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0], set(&["0:h:1"], &[]).remote_ids()[0], "the first keeps the plain id");
    // The server leases ports, not addresses: one port is one forward, whatever the address.
    assert!(set(&["127.0.0.1:8080:h:1", "127.0.0.2:8080:h:1"], &[]).check().is_err());
    assert_eq!(set(&[], &["k=h:1", "k=h:2"]).check(), Err(RouteSetError::DuplicateService("k".into())));
}

#[test]
fn a_table_larger_than_a_server_takes_is_refused_before_it_is_sent() {
    // Long paths: 60 routes fit in a server's 64 KiB, 80 do not (each takes about 920
    // bytes), though both are far below the count of routes a table may hold.
    let routes = |n: usize| RouteSet {
        http: (0..n)
            .map(|i| format!("app{i}.example.com/{}{i}=http_status:204", "a".repeat(900)).parse().unwrap())
            .collect(),
        networks: vec!["10.0.0.0/8".parse().unwrap()],
        ..set(&["0:127.0.0.1:22"], &["k=h:1"])
    };
    let mut version = 0;
    for n in [60, 80] {
        let set = routes(n);
        // What is counted is what is sent: the message, as the server's frame limit sees it.
        let table = Table::new(&set, &HashMap::new(), &mut version, PROTOCOL_VERSION);
        assert_eq!(set.table_bytes(), table.message().encode().len(), "{n} routes");
    }
    assert!(routes(60).table_bytes() <= MAX_TABLE_BYTES && routes(60).check().is_ok());
    let bytes = routes(80).table_bytes();
    assert!(bytes > MAX_TABLE_BYTES);
    assert_eq!(routes(80).check(), Err(RouteSetError::TooLarge(bytes)));
    assert!(RouteSetError::TooLarge(bytes).to_string().contains(&bytes.to_string()));
}

#[test]
fn answers_must_cover_every_entry_once_and_nothing_else() {
    let mut version = 0;
    let table =
        Table::new(&(set(&["8080:h:1"], &["k=h:2"])), &HashMap::new(), &mut version, PROTOCOL_VERSION);
    let ready = |id| RouteResult {
        id,
        outcome: RouteOutcome::Ready { public_addr: Some("0.0.0.0:8080".parse().unwrap()) },
    };
    let service =
        RouteResult { id: RouteId::of_service("k"), outcome: RouteOutcome::Ready { public_addr: None } };
    let forward = table.items[0].0.id;
    let mut assigned = HashMap::new();
    let ok = table.answer(vec![service.clone(), ready(forward)], &mut assigned).ok().unwrap();
    assert_eq!((ok.forwards.len(), ok.services.len(), ok.refused.len()), (1, 1, 0));
    assert!(table.answer(vec![ready(forward)], &mut assigned).is_err(), "a missing answer");
    assert!(table.answer(vec![ready(forward), ready(forward), service.clone()], &mut assigned).is_err());
    assert!(table.answer(vec![ready(forward), service, ready(RouteId(9))], &mut assigned).is_err());
    let refused = RouteResult {
        id: forward,
        outcome: RouteOutcome::Refused { code: RefusalCode::PortTaken, message: "taken".into() },
    };
    let service_refused = RouteResult {
        id: RouteId::of_service("k"),
        outcome: RouteOutcome::Refused { code: RefusalCode::NameNotAllowed, message: "no".into() },
    };
    let mut none = table.answer(vec![refused, service_refused], &mut assigned).ok().unwrap();
    assert!(matches!(table.nothing_published(&mut none), Some(ClientError::ForwardRefused { .. })));
}

#[test]
fn udp_forwards_go_as_udp_routes_and_an_older_server_is_told_nothing_of_them() {
    let (assigned, mut version) = (HashMap::new(), 0);
    let both = set(&["53:127.0.0.1:53", "udp:53:127.0.0.1:53"], &[]);
    both.check().expect("TCP and UDP on one port are two forwards");
    let table = Table::new(&both, &assigned, &mut version, PROTOCOL_VERSION);
    let kinds: Vec<_> = table.items.iter().map(|(entry, _)| entry.kind.clone()).collect();
    assert_eq!(kinds[1], RouteKind::Udp { bind: None, port: 53, preferred_port: 0, idle_secs: 60 });
    let old = Table::new(&both, &assigned, &mut version, UDP_VERSION - 1);
    assert_eq!(old.items.len(), 1);
    let answered = old
        .answer(
            vec![RouteResult {
                id: old.items[0].0.id,
                outcome: RouteOutcome::Ready { public_addr: Some("127.0.0.1:53".parse().unwrap()) },
            }],
            &mut HashMap::new(),
        )
        .ok()
        .unwrap();
    assert_eq!(answered.refused.len(), 1);
    assert!(
        answered.refused[0].message.contains("UDP forwards need protocol 5"),
        "{}",
        answered.refused[0].message
    );
    let twice = set(&["udp:53:127.0.0.1:53", "udp:53:127.0.0.1:54"], &[]);
    assert!(matches!(twice.check(), Err(RouteSetError::DuplicateForward { .. })));
}
