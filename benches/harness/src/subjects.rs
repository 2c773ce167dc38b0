//! The systems under comparison, each started in front of the same four targets (an iperf3
//! server, an echo server, Redis and nginx): direct TCP, `tunnel-cli` with TLS and plaintext,
//! rathole with TLS and plaintext, bore (plaintext only; it has no TLS), and the relay floor:
//! two bare relays in a chain, the least any tunnel with a server and a client process costs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::procs::{addr_after, free_port, Proc};

/// How long a subject may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The token every tunnel under test uses.
pub const TOKEN: &str = "benchmark-token-0123456789abcdef";
/// bore's control port is fixed.
const BORE_CONTROL_PORT: u16 = 7835;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Direct,
    TunnelTls,
    TunnelPlain,
    RatholeTls,
    RatholePlain,
    Bore,
    RelayFloor,
}

impl Subject {
    pub const ALL: [Subject; 7] = [
        Subject::Direct,
        Subject::RelayFloor,
        Subject::TunnelTls,
        Subject::TunnelPlain,
        Subject::RatholeTls,
        Subject::RatholePlain,
        Subject::Bore,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Subject::Direct => "direct TCP",
            Subject::TunnelTls => "tunnel-cli TLS",
            Subject::TunnelPlain => "tunnel-cli plain",
            Subject::RatholeTls => "rathole TLS",
            Subject::RatholePlain => "rathole plain",
            Subject::Bore => "bore (plain)",
            Subject::RelayFloor => "relay floor (2 bare relays)",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Subject::Direct => "direct",
            Subject::TunnelTls => "tunnel-tls",
            Subject::TunnelPlain => "tunnel-plain",
            Subject::RatholeTls => "rathole-tls",
            Subject::RatholePlain => "rathole-plain",
            Subject::Bore => "bore",
            Subject::RelayFloor => "relay-floor",
        }
    }

    pub fn parse(key: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|s| s.key() == key).with_context(|| {
            let keys: Vec<&str> = Self::ALL.iter().map(|s| s.key()).collect();
            format!("unknown subject '{key}' (one of {})", keys.join(", "))
        })
    }
}

/// Where the binaries are.
#[derive(Debug, Clone)]
pub struct Tools {
    pub tunnel_cli: PathBuf,
    pub rathole: PathBuf,
    pub bore: PathBuf,
}

/// The services every subject publishes (or, for a subject, where visitors reach them).
#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub iperf: SocketAddr,
    pub echo: SocketAddr,
    pub redis: SocketAddr,
    pub nginx: SocketAddr,
}

impl Targets {
    fn all(&self) -> [SocketAddr; 4] {
        [self.iperf, self.echo, self.redis, self.nginx]
    }

    /// The fronts of [`Targets::all`], in its order.
    fn from_fronts(fronts: &[SocketAddr]) -> Result<Self> {
        let [iperf, echo, redis, nginx] = fronts else { bail!("{} fronts for 4 targets", fronts.len()) };
        Ok(Self { iperf: *iperf, echo: *echo, redis: *redis, nginx: *nginx })
    }
}

/// A subject up and running: where visitors connect, and its processes by side.
pub struct Running {
    pub fronts: Targets,
    pub server: Vec<Proc>,
    pub client: Vec<Proc>,
}

impl Running {
    pub fn server_pids(&self) -> Vec<u32> {
        self.server.iter().map(Proc::pid).collect()
    }

    pub fn client_pids(&self) -> Vec<u32> {
        self.client.iter().map(Proc::pid).collect()
    }

    /// Both sides, for CPU time.
    pub fn all_pids(&self) -> Vec<u32> {
        self.server_pids().into_iter().chain(self.client_pids()).collect()
    }
}

/// Starts `subject` publishing `targets`; `streams` is the most connections it must carry at
/// once (for our per-session limit). Scratch files go to `work`.
pub fn start(
    subject: Subject,
    targets: Targets,
    tools: &Tools,
    work: &Path,
    streams: usize,
) -> Result<Running> {
    let dir = work.join(subject.key());
    std::fs::create_dir_all(&dir)?;
    match subject {
        Subject::Direct => Ok(Running { fronts: targets, server: Vec::new(), client: Vec::new() }),
        Subject::TunnelTls => tunnel(&tools.tunnel_cli, targets, &dir, streams, true),
        Subject::TunnelPlain => tunnel(&tools.tunnel_cli, targets, &dir, streams, false),
        Subject::RatholeTls => rathole(&tools.rathole, targets, &dir, true),
        Subject::RatholePlain => rathole(&tools.rathole, targets, &dir, false),
        Subject::Bore => bore(&tools.bore, targets),
        Subject::RelayFloor => relay_floor(targets),
    }
}

fn tunnel(bin: &Path, targets: Targets, dir: &Path, streams: usize, tls: bool) -> Result<Running> {
    // The per-session stream and per-forward visitor caps raised for the idle-streams measurement.
    let config = dir.join("server.toml");
    std::fs::write(&config, format!(
            "[limits]\nmax_streams_per_session = {n}\nmax_visitors_per_forward = {n}\nmax_visitors_per_source = {n}\n",
            n = streams.max(1024) + 64
        ))?;
    let config = config.to_str().context("scratch path is not UTF-8")?;
    let state = dir.join("state");
    let state = state.to_str().context("scratch path is not UTF-8")?;
    let mut args = vec!["serve", "--config", config, "--listen", "127.0.0.1:0", "--state-dir", state];
    args.extend(["--token", TOKEN]);
    if !tls {
        args.push("--insecure-plaintext");
    }
    let mut server = Proc::spawn("tunnel-cli serve", bin, &args)?;
    let listening = server.wait_for_line("tunnel server listening on ", START_TIMEOUT)?;
    let listen = addr_after(&listening, "listening on ")?.to_string();
    let remotes: Vec<String> = targets.all().iter().map(|t| format!("0:{t}")).collect();
    let mut args = vec!["connect", "--server", &listen, "--token", TOKEN, "--name", "bench"];
    for remote in &remotes {
        args.extend(["-R", remote]);
    }
    let fingerprint;
    if tls {
        fingerprint = self::fingerprint(&mut server)?;
        args.extend(["--fingerprint", &fingerprint]);
    } else {
        args.push("--insecure-plaintext");
    }
    let mut client = Proc::spawn("tunnel-cli connect", bin, &args)?;
    let ready = client.wait_for_lines("remote forward ready: ", remotes.len(), START_TIMEOUT)?;
    let front = |target: &SocketAddr| -> Result<SocketAddr> {
        let line =
            ready.iter().find(|l| l.ends_with(&format!("-> {target}"))).context("a forward per target")?;
        addr_after(line, "ready: ")
    };
    let fronts = targets.all().iter().map(front).collect::<Result<Vec<_>>>()?;
    Ok(Running { fronts: Targets::from_fronts(&fronts)?, server: vec![server], client: vec![client] })
}

/// The certificate fingerprint a starting `tunnel-cli serve` prints.
pub fn fingerprint(server: &mut Proc) -> Result<String> {
    let line = server.wait_for_line("certificate fingerprint: ", START_TIMEOUT)?;
    Ok(line.rsplit(' ').next().unwrap_or_default().to_owned())
}

fn rathole(bin: &Path, targets: Targets, dir: &Path, tls: bool) -> Result<Running> {
    let control = free_port()?;
    let names = ["iperf", "echo", "redis", "nginx"];
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let (server_transport, client_transport) = if tls {
        let identity = rathole_identity(dir)?;
        (
            format!(
                "[server.transport]\ntype = \"tls\"\n[server.transport.tls]\npkcs12 = \"{}\"\npkcs12_password = \"bench\"\n",
                identity.pkcs12.display()
            ),
            format!(
                "[client.transport]\ntype = \"tls\"\n[client.transport.tls]\ntrusted_root = \"{}\"\nhostname = \"localhost\"\n",
                identity.certificate.display()
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let (mut server_services, mut client_services) = (String::new(), String::new());
    for ((name, port), target) in names.iter().zip(ports).zip(targets.all()) {
        server_services +=
            &format!("[server.services.{name}]\ntoken = \"{TOKEN}\"\nbind_addr = \"127.0.0.1:{port}\"\n");
        client_services +=
            &format!("[client.services.{name}]\ntoken = \"{TOKEN}\"\nlocal_addr = \"{target}\"\n");
    }
    let server_config = dir.join("server.toml");
    std::fs::write(
        &server_config,
        format!("[server]\nbind_addr = \"127.0.0.1:{control}\"\n{server_transport}{server_services}"),
    )?;
    let client_config = dir.join("client.toml");
    std::fs::write(
        &client_config,
        format!("[client]\nremote_addr = \"localhost:{control}\"\n{client_transport}{client_services}"),
    )?;
    let mut server = Proc::spawn("rathole server", bin, &["-s", path_str(&server_config)?])?;
    server.wait_for_line(&format!("Listening at 127.0.0.1:{control}"), START_TIMEOUT)?;
    let client = Proc::spawn("rathole client", bin, &["-c", path_str(&client_config)?])?;
    // The server opens a service's port once that service's control channel is up.
    for port in ports {
        server.wait_for_line(&format!("Listening at 127.0.0.1:{port}"), START_TIMEOUT)?;
    }
    let fronts: Vec<SocketAddr> = ports.iter().map(|port| ([127, 0, 0, 1], *port).into()).collect();
    Ok(Running { fronts: Targets::from_fronts(&fronts)?, server: vec![server], client: vec![client] })
}

struct Identity {
    pkcs12: PathBuf,
    certificate: PathBuf,
}

/// An ECDSA P-256 certificate for `localhost` (the key type our server generates), as the
/// PKCS#12 bundle rathole's server reads.
fn rathole_identity(dir: &Path) -> Result<Identity> {
    let (key, certificate, pkcs12) = (dir.join("key.pem"), dir.join("cert.pem"), dir.join("identity.p12"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost",
        "-keyout",
        path_str(&key)?,
        "-out",
        path_str(&certificate)?,
    ])?;
    openssl(&[
        "pkcs12",
        "-export",
        "-inkey",
        path_str(&key)?,
        "-in",
        path_str(&certificate)?,
        "-out",
        path_str(&pkcs12)?,
        "-passout",
        "pass:bench",
    ])?;
    Ok(Identity { pkcs12, certificate })
}

fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl").args(args).output().context("running openssl (is it installed?)")?;
    if !output.status.success() {
        bail!("openssl {} failed: {}", args[0], String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn bore(bin: &Path, targets: Targets) -> Result<Running> {
    if std::net::TcpListener::bind(("127.0.0.1", BORE_CONTROL_PORT)).is_err() {
        bail!("bore needs port {BORE_CONTROL_PORT}, which is taken");
    }
    let mut server = Proc::spawn("bore server", bin, &["server", "--bind-addr", "127.0.0.1"])?;
    server.wait_for_line("server listening", START_TIMEOUT)?;
    let mut client = Vec::new();
    let mut fronts = Vec::new();
    for target in targets.all() {
        let port = target.port().to_string();
        let args = ["local", &port, "--local-host", "127.0.0.1", "--to", "127.0.0.1"];
        let mut local = Proc::spawn("bore local", bin, &args)?;
        let line = local.wait_for_line("listening at ", START_TIMEOUT)?;
        fronts.push(addr_after(&line, "listening at ")?);
        client.push(local);
    }
    Ok(Running { fronts: Targets::from_fronts(&fronts)?, server: vec![server], client })
}

/// Two bare relays (`tunnel-bench relay`) in a chain, as a tunnel's client and server would
/// be: visitors reach the "server" relay, which relays to the "client" relay, which relays to
/// the target.
fn relay_floor(targets: Targets) -> Result<Running> {
    let me = std::env::current_exe()?;
    let start = |name: &str, to: &[SocketAddr]| -> Result<(Proc, Vec<SocketAddr>)> {
        let mut args = vec!["relay".to_owned()];
        for target in to {
            args.extend(["--to".to_owned(), target.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut relay = Proc::spawn(name, &me, &args)?;
        let lines = relay.wait_for_lines("relay ", to.len(), START_TIMEOUT)?;
        // In the order of `to`: each line names its target.
        let front = |target: &SocketAddr| -> Result<SocketAddr> {
            let line =
                lines.iter().find(|l| l.ends_with(&format!("-> {target}"))).context("a relay per target")?;
            addr_after(line, "relay ")
        };
        let fronts = to.iter().map(front).collect::<Result<Vec<_>>>()?;
        Ok((relay, fronts))
    };
    let (client, inner) = start("relay (client side)", &targets.all())?;
    let (server, fronts) = start("relay (server side)", &inner)?;
    Ok(Running { fronts: Targets::from_fronts(&fronts)?, server: vec![server], client: vec![client] })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_by_key_and_reject_unknown_ones() {
        for subject in Subject::ALL {
            assert_eq!(Subject::parse(subject.key()).unwrap(), subject);
        }
        let err = Subject::parse("frp").unwrap_err().to_string();
        assert!(err.contains("frp") && err.contains("rathole-tls"), "{err}");
    }
}
