//! Resources return to their baseline after teardown. This binary holds a single test so that
//! process-wide counts (file descriptors, resident memory) see nothing but this scenario.

mod common;

use common::*;

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
        // Leave one visitor open across the teardown: it must be cut, not leaked.
        let _open = tokio::net::TcpStream::connect(echo_public).await.unwrap();
        client.stop().await;
        server.stop().await;
        drop(_open);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while open_fds() > fds_baseline {
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} file descriptors open, baseline {fds_baseline}:\n{:#?}",
                open_fds(),
                describe_fds()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
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
