//! Resources return to their baseline after teardown. This binary holds a single test so that
//! process-wide counts (file descriptors, resident memory) see nothing but this scenario.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_descriptors_and_memory_return_to_baseline_after_sessions_end() {
    let echo = echo_target().await;
    let sink = sink_target().await;
    let fds_baseline = open_fds();
    let mut rss_after_round = Vec::new();
    for round in 0..ROUNDS {
        let server = start_server(|_| {}).await;
        let mut client =
            start_client(server.client_config("round", &[&format!("0:{echo}"), &format!("0:{sink}")]));
        let forwards = client.connected().await;
        let (echo_public, sink_public) = (forwards[0].public_addr, forwards[1].public_addr);
        let visitors: Vec<_> = (0..200)
            .map(|i| {
                tokio::spawn(async move { round_trip(echo_public, format!("{round}/{i}").as_bytes()).await })
            })
            .collect();
        for visitor in visitors {
            visitor.await.unwrap().unwrap();
        }
        throughput(sink_public, 16 * 1024 * 1024).await;
        // Leave one visitor open across the teardown: it must be cut, not leaked. First let the
        // connections above finish closing, so the count below sees only this visitor.
        let data_ports = [echo_public.port(), sink_public.port(), echo.port(), sink.port()];
        eventually("the earlier visitors' sockets to close", || async move {
            live_sockets(&data_ports, false).is_empty()
        })
        .await;
        let idle = open_fds();
        let mut open = tokio::net::TcpStream::connect(echo_public).await.unwrap();
        // An echo proves it is carried end to end: the server, the client and the target each
        // hold a socket for it besides ours.
        open.write_all(b"live").await.unwrap();
        let mut echoed = [0u8; 4];
        open.read_exact(&mut echoed).await.unwrap();
        let live = open_fds();
        assert!(live >= idle + 4, "round {round}: a live visitor took {idle} -> {live} descriptors");
        client.stop().await;
        server.stop().await;
        // Our end stays open and is the only one that may remain: the server released its end of
        // the visitor (and the client and the target theirs) on their own.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while open_fds() > fds_baseline + 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} file descriptors open with the visitor held, baseline {fds_baseline} + 1:\n{:#?}",
                open_fds(),
                describe_fds()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // Cut, not ended cleanly: the session it rode on is gone.
        let end = open.read(&mut echoed).await;
        assert!(is_reset(&end), "round {round}: the held visitor saw {end:?}, expected a reset");
        drop(open);
        assert!(
            open_fds() <= fds_baseline,
            "round {round}: {} descriptors after the visitor closed",
            open_fds()
        );
        rss_after_round.push(rss_bytes());
    }
    // Round 1 warms the allocator up (TLS, yamux and copy buffers); from round 2 on, memory
    // must be reused, not grow.
    let growth = rss_after_round[ROUNDS - 1].saturating_sub(rss_after_round[1]);
    eprintln!(
        "RSS after each round (KiB): {:?}",
        rss_after_round.iter().map(|r| r / 1024).collect::<Vec<_>>()
    );
    // The allocator keeps freed memory for reuse; what must not happen is growth per round.
    assert!(growth < 8 * 1024 * 1024, "RSS grew by {} KiB over {} rounds", growth / 1024, ROUNDS - 2);
}
