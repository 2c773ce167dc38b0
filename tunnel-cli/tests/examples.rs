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
    assert_eq!(file.clients.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("cp.token");
    std::fs::write(&token, "control-plane-secret\n").unwrap();
    file.state_dir = Some(dir.path().to_owned());
    file.clients[0].token_file = Some(token);
    let setup = file.build().unwrap();
    assert!(setup.config.tls.is_some());
    assert_eq!(setup.config.clients["control-plane"].allow_ports.as_ref().unwrap().to_string(), "6443");
    assert_eq!(setup.config.allow_ports.to_string(), "6443,10000-10100");
}

#[test]
fn client_example_parses_and_builds() {
    let mut file = ClientFile::load(&example("client.toml")).unwrap();
    assert_eq!(file.remote.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "secret").unwrap();
    file.token_file = Some(token);
    let config = file.build().unwrap();
    assert_eq!(config.name, "control-plane");
    assert_eq!(config.remotes[0].remote_port, 6443);
}
