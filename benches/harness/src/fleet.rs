//! Many client sessions in this one process, through the library, against `tunnel-cli serve`
//! processes: the scale run (`sessions`) and the soak (`soak`) share it.
//!
//! Each client dials from a loopback source address of its own (127.1.X.Y), as a fleet of
//! machines would, so the server's per-source handshake caps see each alone; pins the
//! servers' certificates; and answers its one remote forward with an echo inside this process,
//! so no target port is needed per client.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tunnel_core::auth::{ChannelBinding, Token};
use tunnel_core::client::{Client, ClientConfig, ClientStatus, ServerEndpoint};
use tunnel_core::forward::{RemoteForwardSpec, StreamHandler, Visitor};
use tunnel_core::tls::{client_config, Fingerprint, ServerTrust};
use tunnel_core::transport::{
    buffered, configure_tcp, ClientTransport, ConnectError, Connection, Connector, TlsConnector, Wire,
};

use crate::procs::{free_port, Proc};
use crate::subjects::{fingerprint, TOKEN};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The library's log lines on stderr when `RUST_LOG` asks for them (`RUST_LOG=warn`); none
/// otherwise, as thousands of clients would drown the report.
pub fn log_if_asked() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
}

/// Distinct source addresses available: 127.1.0.1 to 127.1.249.250.
pub const MAX_CLIENTS: usize = 250 * 250;

/// The loopback address client `i` dials from.
pub fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// A `tunnel-cli serve` on a fixed loopback port, with its state directory kept, so that it can
/// be killed and started again as the same server (same address, same certificate).
pub struct Server {
    bin: PathBuf,
    args: Vec<String>,
    name: String,
    proc: Option<Proc>,
    pub listen: SocketAddr,
    pub fingerprint: Fingerprint,
    metrics: SocketAddr,
}

impl Server {
    /// Starts a server with the benchmark token whose configuration file holds `config` (TOML
    /// keys beside the ones set here).
    pub fn start(bin: &Path, dir: &Path, name: &str, config: &str) -> Result<Self> {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("server.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"{listen}\"\nmetrics = \"{metrics}\"\nstate_dir = \"{}\"\nbind_addr = \"127.0.0.1\"\n{config}",
                dir.join("state").display()
            ),
        )?;
        let args = vec![
            "serve".into(),
            "--config".into(),
            file.display().to_string(),
            "--token".into(),
            TOKEN.into(),
        ];
        let mut proc = Proc::spawn(name, bin, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
        proc.wait_for_line("tunnel server listening on ", START_TIMEOUT)?;
        let fingerprint = fingerprint(&mut proc)?.parse().context("the server's fingerprint")?;
        Ok(Self {
            bin: bin.to_owned(),
            args,
            name: name.to_owned(),
            proc: Some(proc),
            listen,
            fingerprint,
            metrics,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts it again (after [`Self::kill`]) and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let mut proc = Proc::spawn(&self.name, &self.bin, &args)?;
        proc.wait_for_line("tunnel server listening on ", START_TIMEOUT)?;
        self.proc = Some(proc);
        Ok(())
    }

    /// The sum of the samples of `metric` (a name, or a name with a label prefix such as
    /// `tunnel_handshake_failures_total{reason="overload"`) on its metrics endpoint.
    pub fn metric(&self, metric: &str) -> Result<f64> {
        Ok(sum_samples(&self.metrics()?, metric))
    }

    /// The samples of `metric` by label set, as `labels value` lines (`reason="tls" 3`).
    pub fn samples(&self, metric: &str) -> Result<Vec<String>> {
        let text = self.metrics()?;
        let prefix = format!("{metric}{{");
        Ok(text
            .lines()
            .filter_map(|line| line.strip_prefix(&prefix))
            .map(|rest| rest.replacen("} ", " ", 1))
            .collect())
    }

    fn metrics(&self) -> Result<String> {
        let mut tcp = std::net::TcpStream::connect(self.metrics)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(tcp, "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        tcp.read_to_string(&mut text)?;
        Ok(text)
    }
}

/// Sums the values of the Prometheus text lines that start with `metric` followed by a space or
/// a label set (a prefix of one).
fn sum_samples(text: &str, metric: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix(metric)?;
            if !(rest.starts_with(' ') || rest.starts_with('{') || metric.ends_with('"')) {
                return None;
            }
            line.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Dials the server from a fixed source address.
struct FromSource {
    source: IpAddr,
    server: SocketAddr,
}

impl Connector for FromSource {
    fn connect(&self) -> BoxFuture<'_, Result<Connection, ConnectError>> {
        Box::pin(async move {
            let unreachable = |source| ConnectError::Unreachable { peer: self.server.to_string(), source };
            let socket = TcpSocket::new_v4().map_err(unreachable)?;
            socket.bind(SocketAddr::new(self.source, 0)).map_err(unreachable)?;
            let tcp = socket.connect(self.server).await.map_err(unreachable)?;
            configure_tcp(&tcp).map_err(unreachable)?;
            Ok(Connection { io: Box::new(buffered(tcp)), binding: ChannelBinding::Plaintext })
        })
    }
}

/// TLS pinned to `server`'s certificate, from client `i`'s source address.
fn transport(i: usize, server: &Server) -> Result<ClientTransport> {
    let tls = client_config(&ServerTrust::Pinned(server.fingerprint))?;
    let dial = FromSource { source: source(i), server: server.listen };
    Ok(ClientTransport::custom(TlsConnector::new(dial, tls, "tunnel.bench".try_into()?)))
}

async fn echo(mut visitor: Visitor) {
    let (mut from, mut to) = tokio::io::split(&mut visitor);
    if tokio::io::copy(&mut from, &mut to).await.is_ok() {
        let _ = to.shutdown().await;
    }
}

/// Client `i` (named `load-i`), keeping one echo forward on a port each server picks, on every
/// server of `servers`, with `connections` connections per session.
pub fn client(i: usize, servers: &[&Server], connections: usize) -> Result<Client> {
    let Some((first, others)) = servers.split_first() else { bail!("a client needs a server") };
    let token = Token::new(TOKEN).context("the benchmark token")?;
    let mut config =
        ClientConfig::new(first.listen.to_string(), format!("load-{i}"), token, transport(i, first)?);
    config.wire = Wire::Tcp;
    config.connections = connections;
    config.remotes.push(RemoteForwardSpec::new(0, StreamHandler::new("echo", echo)));
    for other in others {
        config.other_servers.push(ServerEndpoint::new(other.listen.to_string(), transport(i, other)?));
    }
    Ok(Client::new(config))
}

/// A client running as a task, with its status on each server.
pub struct Running {
    pub statuses: Vec<watch::Receiver<ClientStatus>>,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start(mut client: Client) -> Self {
        // Resolved now, so the statuses taken are those of the links the client will run.
        client.resolve_servers().await;
        let statuses = client.server_statuses().into_iter().map(|(_, status)| status).collect();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let _ = client.run(stop.cancelled_owned()).await;
            }
        });
        Self { statuses, stop, task }
    }

    /// Where its forward takes visitors on each server it is connected to now.
    pub fn fronts(&self) -> Vec<SocketAddr> {
        self.statuses
            .iter()
            .filter_map(|status| status.borrow().forwards().and_then(|f| f.first()).map(|f| f.public_addr))
            .collect()
    }
}

/// The number of descriptors `pid` holds open.
pub fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_distinct_loopback_addresses() {
        let all: std::collections::HashSet<IpAddr> = (0..MAX_CLIENTS).map(source).collect();
        assert_eq!(all.len(), MAX_CLIENTS);
        assert!(all.iter().all(|a| a.is_loopback() && *a != IpAddr::from([127, 1, 0, 0])));
    }

    #[test]
    fn samples_are_summed_by_name_or_label_prefix() {
        let text = "# TYPE x counter\ntunnel_sessions 7\ntunnel_sessions_established_total 9\n\
                    tunnel_handshake_failures_total{reason=\"overload\"} 3\n\
                    tunnel_handshake_failures_total{reason=\"tls\"} 2\n";
        assert_eq!(sum_samples(text, "tunnel_sessions"), 7.0);
        assert_eq!(sum_samples(text, "tunnel_handshake_failures_total"), 5.0);
        assert_eq!(sum_samples(text, "tunnel_handshake_failures_total{reason=\"overload\""), 3.0);
    }
}
