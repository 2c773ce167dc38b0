//! The commented example configurations parse, and build once their paths point somewhere real.

use std::path::Path;

use tunnel_core::config::{ClientFile, ServerFile};

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(name)
}

#[test]
fn server_example_parses_and_builds() {
    let mut file = ServerFile::load(&example("server.toml")).unwrap();
    assert_eq!(file.listen.as_deref(), Some("0.0.0.0:7700"));
    assert_eq!(file.clients.len(), 3);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("cp.token");
    std::fs::write(&token, "control-plane-secret\n").unwrap();
    let web_token = dir.path().join("web.token");
    std::fs::write(&web_token, "web-connector-secret\n").unwrap();
    file.state_dir = Some(dir.path().to_owned());
    file.clients[0].token_file = Some(token);
    file.clients[2].token_file = Some(web_token);
    let setup = file.build().unwrap();
    assert_eq!(setup.config.policy.clients["web"].replicas, Some(3));
    assert_eq!(setup.config.policy.max_replicas, 1);
    assert!(setup.config.tls.is_some());
    assert_eq!(setup.config.policy.clients["control-plane"].ports.as_ref().unwrap().to_string(), "6443");
    assert_eq!(
        setup.config.policy.allow_bind,
        ["0.0.0.0".parse::<std::net::IpAddr>().unwrap(), "127.0.0.1".parse().unwrap()]
    );
    assert_eq!(setup.config.max_visitors_per_forward, 512);
    assert_eq!(setup.config.timeouts.lookup, std::time::Duration::from_secs(5));
    assert_eq!(setup.config.policy.allow_ports.to_string(), "6443,10000-10100");
    assert_eq!(setup.config.policy.clients["control-plane"].allow_visit[0].to_string(), "worker-*/kubelet");
    assert!(!setup.config.policy.allow_targets.is_empty());
}

#[test]
fn client_example_parses_and_builds() {
    let mut file = ClientFile::load(&example("client.toml")).unwrap();
    assert_eq!(file.remote.len(), 5);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "client-example-secret").unwrap();
    file.token_file = Some(token);
    let config = file.build().unwrap();
    assert_eq!(config.name, "control-plane");
    assert_eq!(config.remotes[0].remote_port, 6443);
    assert_eq!(config.remotes[3].proxy_protocol, Some(tunnel_core::forward::ProxyProtocol::V2));
    assert_eq!(config.wire, tunnel_core::transport::Wire::Auto);
    assert_eq!(config.connections, 2);
    assert_eq!(config.remotes[2].idle_timeout, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(config.remotes[4].protocol, tunnel_core::forward::Protocol::Udp);
    assert_eq!(config.remotes[4].idle_timeout, Some(std::time::Duration::from_secs(30)));
    assert_eq!(config.locals[0].target.to_string(), "worker-1/kubelet");
    assert_eq!(config.services[0].name, "apiserver");
}

#[test]
fn hybrid_kubernetes_examples_parse_and_build() {
    let mut server = ServerFile::load(&example("hybrid-kubernetes/server.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    server.state_dir = Some(dir.path().to_owned());
    for client in &mut server.clients {
        let token = dir.path().join(format!("{}.token", client.name));
        std::fs::write(&token, format!("{}-secret-token", client.name)).unwrap();
        client.token_file = Some(token);
    }
    let setup = server.build().unwrap();
    assert_eq!(setup.config.policy.clients.len(), 3);
    for name in ["control-plane.toml", "worker.toml"] {
        let mut client = ClientFile::load(&example(&format!("hybrid-kubernetes/{name}"))).unwrap();
        client.token_file = Some(dir.path().join("worker-1.token"));
        client.fingerprint = vec!["0".repeat(64).parse().unwrap()];
        let config = client.build().unwrap();
        assert!(!config.locals.is_empty() && !config.services.is_empty(), "{name}");
    }
}

#[test]
fn every_example_renders_back_to_the_same_configuration() {
    for name in ["server.toml", "hybrid-kubernetes/server.toml"] {
        let file = ServerFile::load(&example(name)).unwrap();
        let rendered = file.to_toml().unwrap();
        let again = ServerFile::parse(&rendered, Path::new(name)).unwrap();
        assert_eq!(again.to_toml().unwrap(), rendered, "{name}");
        assert_eq!(again.clients.len(), file.clients.len(), "{name}");
    }
    for name in ["client.toml", "hybrid-kubernetes/control-plane.toml", "hybrid-kubernetes/worker.toml"] {
        let file = ClientFile::load(&example(name)).unwrap();
        let rendered = file.to_toml().unwrap();
        let again = ClientFile::parse(&rendered, Path::new(name)).unwrap();
        assert_eq!(again.to_toml().unwrap(), rendered, "{name}");
        assert_eq!(again.remote, file.remote, "{name}");
    }
}
