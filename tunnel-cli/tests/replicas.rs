//! Replicas (README "Replicas"): several sessions under one client name serve the same
//! forwards and routes, through one public listener, each visitor going to the least busy;
//! one killed or drained takes no visitor with it, and restarting them one after the other
//! under load fails no request.

#[path = "support/process.rs"]
mod process;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use process::*;

const TOKEN: &str = "replica-test-token-4f81c2d9";
const HOST: &str = "app.test";

/// A server whose client `web` may hold `replicas` sessions and serve [`HOST`].
async fn server(dir: &std::path::Path, replicas: usize) -> (Served, SocketAddr) {
    let file = dir.join("server.toml");
    let text = format!(
        "[[clients]]\nname = \"web\"\ntoken = {TOKEN:?}\nreplicas = {replicas}\nallow_hosts = [{HOST:?}]\n"
    );
    std::fs::write(&file, text).unwrap();
    let args = ["--config", file.to_str().unwrap(), "--http-listen", "127.0.0.1:0"];
    let server = serve(dir, &args, &[]).await;
    let edge = server.cli.line_after("HTTP routes served on ").await.parse().unwrap();
    (server, edge)
}

/// One replica's local side: an HTTP origin answering every request with `label` (keep-alive),
/// and a TCP target writing `label` to each connection and closing it.
struct Site {
    label: String,
    origin: SocketAddr,
    target: SocketAddr,
}

async fn site(label: &str) -> Site {
    let origin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (origin, target) = (origin_listener.local_addr().unwrap(), target_listener.local_addr().unwrap());
    let answer = label.to_owned();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = origin_listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let (read, mut write) = tcp.into_split();
                let mut lines = BufReader::new(read);
                let mut line = String::new();
                loop {
                    // A request with no body: its head ends with an empty line.
                    line.clear();
                    match lines.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => {
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", answer.len());
                            if write.write_all(format!("{head}{answer}").as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    let answer = label.to_owned();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = target_listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    Site { label: label.to_owned(), origin, target }
}

/// Starts replica `site` of `web`, forwarding public `port` and serving [`HOST`]; returns once
/// both are ready.
async fn replica(server: &Served, port: u16, site: &Site) -> Cli {
    let forward = format!("127.0.0.1:{port}:{}", site.target);
    let route = format!("{HOST}=http://{}", site.origin);
    let cli = connect(server, &["--token", TOKEN, "--name", "web", "-R", &forward, "--http", &route], &[]);
    let ready = cli.line_after("remote forward ready: ").await;
    assert_eq!(public_port(&ready), port, "replica {} got a listener of its own", site.label);
    cli.line_after("route ready: v1 http ").await;
    cli
}

/// A visit through the TCP forward: who answered.
async fn visit(port: u16) -> Result<String, String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.map_err(|e| format!("read: {e}"))?;
    if answer.is_empty() {
        return Err("an empty answer".into());
    }
    Ok(answer)
}

/// A request on a keep-alive connection to the edge: who answered.
async fn request(tcp: &mut BufReader<TcpStream>) -> Result<String, String> {
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tcp.get_mut().write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    tcp.read_line(&mut status).await.map_err(|e| format!("read: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("status line {status:?}"));
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        tcp.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().map_err(|_| format!("content-length {value:?}"))?;
        }
    }
    let mut body = vec![0; length];
    tcp.read_exact(&mut body).await.map_err(|e| format!("body: {e}"))?;
    String::from_utf8(body).map_err(|_| "a body not UTF-8".into())
}

async fn edge_connection(edge: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(edge).await.unwrap())
}

/// `count` visits and `count` requests (each on a new connection), all of which must succeed:
/// who answered, how often.
async fn tally(port: u16, edge: SocketAddr, count: usize) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for i in 0..count {
        let visited = visit(port).await.unwrap_or_else(|e| panic!("visit {i} failed: {e}"));
        *seen.entry(visited).or_default() += 1;
        let mut tcp = edge_connection(edge).await;
        let answered = request(&mut tcp).await.unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        *seen.entry(answered).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_listener_and_route_and_survive_one_killed_and_one_drained() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, edge) = server(dir.path(), 3).await;
    let port = free_port();
    let sites = [site("a").await, site("b").await, site("c").await];
    let mut replicas = Vec::new();
    for site in &sites {
        replicas.push(replica(&server, port, site).await);
    }

    // One at a time, visitors and requests are spread over the three (ties go at random).
    let seen = tally(port, edge, 60).await;
    for site in &sites {
        let served = seen.get(&site.label).copied().unwrap_or(0);
        assert!(served >= 10, "replica {} served {served} of 120: {seen:?}", site.label);
    }

    // SIGKILL: once the server has seen that session end, nothing goes to it, nothing fails.
    replicas[0].kill_hard().await;
    server.cli.output_contains("session ended").await;
    let seen = tally(port, edge, 40).await;
    assert_eq!(seen.get("a"), None, "the killed replica answered: {seen:?}");
    assert!(seen.contains_key("b") && seen.contains_key("c"), "{seen:?}");

    // SIGTERM: the replica drains (the server sends it no one new) and exits 0.
    replicas[1].send_term();
    server.cli.output_contains("client draining").await;
    let seen = tally(port, edge, 30).await;
    assert_eq!(seen, HashMap::from([("c".to_owned(), 60)]), "only the last replica may answer");
    assert_eq!(replicas[1].exit_code().await, 0, "{}", replicas[1].output());

    // The last one leaving closes the listener.
    assert_eq!(replicas[2].terminate().await, 0);
    let closed = async {
        while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, closed).await.expect("the listener outlived its last replica");
    assert_eq!(server.cli.terminate().await, 0);
}

/// Load on both ways in while it runs: keep-alive requests through the edge and new
/// connections through the TCP forward, each worker in a loop; counts successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, edge: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut workers = Vec::new();
        for worker in 0..8 {
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            workers.push(tokio::spawn(async move {
                let mut keep_alive = edge_connection(edge).await;
                while !stop.load(Ordering::Relaxed) {
                    // Half the workers go through the edge, half through the forward.
                    let result =
                        if worker % 2 == 0 { request(&mut keep_alive).await } else { visit(port).await };
                    match result {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(err) => {
                            failures.lock().unwrap().push(err);
                            if worker % 2 == 0 {
                                keep_alive = edge_connection(edge).await;
                            }
                            0
                        }
                    };
                }
            }));
        }
        Self { stop, done, failures, workers }
    }

    /// Returns once `more` requests succeeded since the call.
    async fn until_more(&self, more: usize) {
        let target = self.done.load(Ordering::Relaxed) + more;
        let progressed = async {
            while self.done.load(Ordering::Relaxed) < target {
                tokio::task::yield_now().await;
            }
        };
        if tokio::time::timeout(PATIENCE, progressed).await.is_err() {
            panic!("the load stalled; failures so far: {:?}", self.failures.lock().unwrap());
        }
    }

    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.done.load(Ordering::Relaxed), failures)
    }
}

/// Waits until `needle` appears `count` times in what the server printed.
async fn until_logged(server: &Served, needle: &str, count: usize) {
    let logged = async {
        while server.cli.output().matches(needle).count() < count {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    if tokio::time::timeout(PATIENCE, logged).await.is_err() {
        panic!("{needle:?} not printed {count} times:\n{}", server.cli.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_both_replicas_one_after_the_other_under_load_fails_no_request() {
    // Each successor connects while its predecessor drains: the server has three sessions of
    // `web` then, two of them taking visitors.
    let dir = tempfile::tempdir().unwrap();
    let (mut server, edge) = server(dir.path(), 2).await;
    let port = free_port();
    let sites = [site("a").await, site("b").await];
    let mut replicas = vec![replica(&server, port, &sites[0]).await, replica(&server, port, &sites[1]).await];

    let load = Load::start(port, edge);
    load.until_more(200).await;
    for (i, site) in sites.iter().enumerate() {
        // SIGTERM; once the server has the replica draining, its successor starts beside it
        // (a draining session counts for no replica) while it finishes, then exits 0.
        replicas[i].send_term();
        until_logged(&server, "client draining", i + 1).await;
        let successor = replica(&server, port, site).await;
        let mut old = std::mem::replace(&mut replicas[i], successor);
        assert_eq!(old.exit_code().await, 0, "{}", old.output());
        load.until_more(200).await;
    }
    let (done, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        done + failures.len()
    );
    for replica in &mut replicas {
        assert_eq!(replica.terminate().await, 0);
    }
    assert_eq!(server.cli.terminate().await, 0);
}
