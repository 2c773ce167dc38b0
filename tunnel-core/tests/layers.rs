//! The crate's layers import only from the layers beneath them (see the crate docs' `# Layout`
//! and `docs/design.md`): `proto` stays free of sockets and of everything above it, the
//! multiplexer knows nothing of sessions, and `server` and `client` never reach into each other.

use std::collections::BTreeSet;
use std::path::Path;

/// Each module with the crate modules it may use, bottom up. The crate root sits on top;
/// `admin` beneath it, over `config`, which builds `server` and `client` configurations.
const LAYERS: &[(&str, &[&str])] = &[
    ("log", &[]),
    ("metrics", &[]),
    ("fs", &[]),
    ("shards", &[]),
    ("task", &["shards"]),
    ("time", &[]),
    ("auth", &["fs"]),
    ("source", &[]),
    ("proto", &["auth", "log"]),
    ("tls", &["auth", "fs"]),
    ("transport", &["auth", "log", "proto", "shards", "tls"]),
    ("mux", &["shards", "transport"]),
    ("session", &["auth", "log", "metrics", "mux", "proto", "task", "time", "transport"]),
    ("forward", &["log", "metrics", "mux", "proto", "time"]),
    ("socks", &["proto"]),
    ("udp", &["log", "proto", "socks", "source"]),
    ("http", &["forward", "log", "metrics", "mux", "proto", "shards", "source", "time", "tls", "transport"]),
    ("acme", &["fs", "http", "log", "tls"]),
    (
        "server",
        &[
            "acme",
            "auth",
            "forward",
            "fs",
            "http",
            "log",
            "metrics",
            "mux",
            "proto",
            "session",
            "shards",
            "socks",
            "source",
            "task",
            "tls",
            "transport",
            "udp",
        ],
    ),
    (
        "client",
        &[
            "auth",
            "forward",
            "http",
            "log",
            "metrics",
            "mux",
            "proto",
            "session",
            "shards",
            "socks",
            "task",
            "time",
            "tls",
            "transport",
            "udp",
        ],
    ),
    (
        "config",
        &[
            "acme",
            "auth",
            "client",
            "forward",
            "fs",
            "http",
            "log",
            "proto",
            "server",
            "socks",
            "time",
            "tls",
            "transport",
        ],
    ),
    ("admin", &["auth", "config", "forward", "fs", "log", "proto", "server", "source", "tls", "transport"]),
];

/// `crate::NAME` paths in the code of `path` (comments and doc comments excluded), with lines.
fn crate_paths(path: &Path, found: &mut Vec<(String, usize, String)>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            crate_paths(&entry.unwrap().path(), found);
        }
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (at, _) in code.match_indices("crate::") {
            let name: String =
                code[at + 7..].chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            found.push((path.display().to_string(), n + 1, name));
        }
    }
}

#[test]
fn every_layer_imports_only_the_layers_beneath_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    let mut checked = 0;
    for (module, allowed) in LAYERS {
        let dir = src.join(module);
        let path = if dir.is_dir() { dir } else { src.join(format!("{module}.rs")) };
        assert!(path.exists(), "no module {module} at {}", path.display());
        let mut found = Vec::new();
        crate_paths(&path, &mut found);
        checked += found.len();
        let allowed: BTreeSet<&str> = allowed.iter().copied().chain([*module]).collect();
        for (file, line, name) in found {
            if !allowed.contains(name.as_str()) {
                violations.push(format!("{file}:{line}: `{module}` uses `crate::{name}`"));
            }
        }
    }
    assert!(checked > 50, "the scan found only {checked} crate paths: is it reading the sources?");
    assert!(violations.is_empty(), "layering violations:\n{}", violations.join("\n"));
}
