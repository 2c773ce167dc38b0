//! Network namespaces for tests that run as root, deleted with what was made for them.

#![allow(dead_code)]

use std::process::{Command, Stdio};

/// A network namespace, deleted on drop with its links and its `/etc/netns/NAME` directory.
pub struct Namespace(pub String);

impl Namespace {
    /// A new namespace named `PREFIX` and this process's id, its loopback up; one left over from
    /// a run that was killed is deleted first.
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        ip(&["netns", "add", &name]);
        let ns = Namespace(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.0));
    }
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("iproute2 is installed");
    assert!(status.success(), "ip {}", args.join(" "));
}
