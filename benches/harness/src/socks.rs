//! `tunnel-bench socks`: bulk downloads through a client's SOCKS5 proxy (`-D`) into a network
//! another client routes (`--expose-network`), against the same downloads through a local
//! forward (`-L`) to a service that client exposes, and direct, in the same run. Both tunnel
//! paths take the same hops (client, server, client); what differs is the SOCKS exchange and
//! the network lookup at the server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{addr_after, Proc};
use crate::report;
use crate::subjects::fingerprint;

const START_TIMEOUT: Duration = Duration::from_secs(20);
const SITE_TOKEN: &str = "benchmark-site-token-0123456789";
const LAPTOP_TOKEN: &str = "benchmark-laptop-token-0123456";
/// Read and write size of the source and the downloads.
const CHUNK: usize = 256 * 1024;

#[derive(clap::Args)]
pub struct SocksArgs {
    /// The tunnel-cli binary (a release build).
    #[arg(long, default_value = "target/release/tunnel-cli")]
    tunnel_cli: PathBuf,
    /// Seconds per download run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds; each runs every path in turn, and each cell is the median (one stream through
    /// a tunnel moves by a tenth between runs: three rounds were not enough).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Markdown file whose `socks` section is replaced with the results.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Where a download goes in.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Direct,
    Forward,
    Socks,
}

impl Way {
    const ALL: [Way; 3] = [Way::Direct, Way::Forward, Way::Socks];

    fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct TCP",
            Way::Forward => "local forward (`-L` to a service, TLS)",
            Way::Socks => "SOCKS5 (`-D` into a routed network, TLS)",
        }
    }
}

/// The addresses of the three paths.
struct Fronts {
    source: SocketAddr,
    forward: SocketAddr,
    socks: SocketAddr,
}

pub fn run(args: SocksArgs) -> Result<()> {
    let source = start_source()?;
    let work = tempfile::tempdir()?;
    let (_server, _site, mut laptop) = start_tunnel(&args.tunnel_cli, work.path(), source)?;
    let forward =
        addr_after(&laptop.wait_for_line("local forward listening: ", START_TIMEOUT)?, "listening: ")?;
    let socks = addr_after(&laptop.wait_for_line("SOCKS proxy listening: ", START_TIMEOUT)?, "listening: ")?;
    laptop.wait_for_line("connected to ", START_TIMEOUT)?;
    let fronts = Fronts { source, forward, socks };
    // Every path proven to carry data before anything is timed.
    for path in Way::ALL {
        let got = download(&fronts, path, 1, Duration::from_millis(300))
            .with_context(|| format!("{} does not carry data", path.label()))?;
        if got == 0.0 {
            bail!("{} carried nothing", path.label());
        }
    }
    let seconds = Duration::from_secs(args.seconds);
    let streams = [1usize, 8];
    let mut runs = vec![vec![Vec::new(); Way::ALL.len()]; streams.len()];
    let mut errors = Vec::new();
    for round in 1..=args.repeat {
        for (s, &n) in streams.iter().enumerate() {
            for (p, path) in Way::ALL.into_iter().enumerate() {
                eprintln!("== round {round}/{}: {} x{n}", args.repeat, path.label());
                match download(&fronts, path, n, seconds) {
                    Ok(rate) => runs[s][p].push(rate),
                    Err(err) => errors.push(format!("{} x{n} round {round}: {err:#}", path.label())),
                }
            }
        }
    }
    let median = |v: &Vec<f64>| -> Option<f64> {
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let cell = |rate: Option<f64>| rate.map_or("failed".to_owned(), report::gbits);
    let mut section = format!(
        "Run on {} ({}), `tunnel-bench socks`: downloads from a local source, {} s per run, {} rounds over the paths in turn; each cell is the median round.\n\n\
         | path | 1 stream | 8 streams |\n|---|---|---|\n",
        report::today(),
        report::machine(),
        args.seconds,
        args.repeat
    );
    let medians: Vec<Vec<Option<f64>>> =
        runs.iter().map(|by_path| by_path.iter().map(median).collect()).collect();
    for (p, path) in Way::ALL.into_iter().enumerate() {
        section.push_str(&format!(
            "| {} | {} | {} |\n",
            path.label(),
            cell(medians[0][p]),
            cell(medians[1][p])
        ));
    }
    section.push_str("\n| target | measured | met |\n|---|---|---|\n");
    for (s, n) in streams.iter().enumerate() {
        let ratio = medians[s][2].zip(medians[s][1]).map(|(socks, forward)| socks / forward);
        let (measured, met) = match ratio {
            Some(r) => (format!("{r:.2}x"), if r >= 0.9 { "yes" } else { "**no**" }),
            None => ("failed".to_owned(), "**no**"),
        };
        section
            .push_str(&format!("| SOCKS5 >= 0.9x the local forward, {n} stream(s) | {measured} | {met} |\n"));
    }
    for error in &errors {
        section.push_str(&format!("\nfailed: {error}\n"));
    }
    report::publish(&section, "socks", args.out.as_deref())
}

/// A server that sends zeros on every connection until the reader goes away.
fn start_source() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for tcp in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut tcp = tcp;
                let zeros = vec![0u8; CHUNK];
                while tcp.write_all(&zeros).is_ok() {}
            });
        }
    });
    Ok(addr)
}

/// The server, the site (routing 127.0.0.0/8 and exposing the source as a service) and the
/// laptop (with `-D` and `-L` to that service).
fn start_tunnel(cli: &Path, dir: &Path, source: SocketAddr) -> Result<(Proc, Proc, Proc)> {
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[clients]]\nname = \"site\"\ntoken = \"{SITE_TOKEN}\"\nallow_networks = [\"127.0.0.0/8\"]\nallow_expose = [\"source\"]\n\n\
             [[clients]]\nname = \"laptop\"\ntoken = \"{LAPTOP_TOKEN}\"\nallow_visit = [\"site/source\", \"site/127.0.0.0/8\"]\n"
        ),
    )?;
    let state = dir.join("state");
    let (config, state) = (config.to_string_lossy().into_owned(), state.to_string_lossy().into_owned());
    let mut server = Proc::spawn(
        "server",
        cli,
        &["serve", "--listen", "127.0.0.1:0", "--state-dir", &state, "--config", &config],
    )?;
    let line = server.wait_for_line("tunnel server listening on ", START_TIMEOUT)?;
    let addr = addr_after(&line, "listening on ")?.to_string();
    let fp = fingerprint(&mut server)?;
    let common = ["connect", "--server", &addr, "--fingerprint", &fp];
    let exposed = format!("source={source}");
    let site_args =
        ["--name", "site", "--token", SITE_TOKEN, "--expose-network", "127.0.0.0/8", "--expose", &exposed];
    let mut site = Proc::spawn("site", cli, &[&common[..], &site_args[..]].concat())?;
    site.wait_for_line("route ready: v1 network 127.0.0.0/8", START_TIMEOUT)?;
    let laptop_args =
        ["--name", "laptop", "--token", LAPTOP_TOKEN, "-D", "127.0.0.1:0", "-L", "127.0.0.1:0:site/source"];
    let laptop = Proc::spawn("laptop", cli, &[&common[..], &laptop_args[..]].concat())?;
    Ok((server, site, laptop))
}

/// `streams` downloads at once through `path` for `limit`; bits per second received.
fn download(fronts: &Fronts, path: Way, streams: usize, limit: Duration) -> Result<f64> {
    let connections = (0..streams).map(|_| open(fronts, path)).collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let deadline = start + limit;
    let readers: Vec<_> = connections
        .into_iter()
        .map(|mut tcp| {
            std::thread::spawn(move || -> Result<u64> {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                while Instant::now() < deadline {
                    let n = tcp.read(&mut buf)?;
                    if n == 0 {
                        bail!("the source closed");
                    }
                    total += n as u64;
                }
                Ok(total)
            })
        })
        .collect();
    let mut bytes = 0u64;
    for reader in readers {
        bytes += reader.join().map_err(|_| anyhow::anyhow!("a reader panicked"))??;
    }
    Ok(bytes as f64 * 8.0 / start.elapsed().as_secs_f64())
}

/// A connection to the source through `path`, ready to read.
fn open(fronts: &Fronts, path: Way) -> Result<TcpStream> {
    let tcp = match path {
        Way::Direct => TcpStream::connect(fronts.source)?,
        Way::Forward => TcpStream::connect(fronts.forward)?,
        Way::Socks => {
            let mut tcp = TcpStream::connect(fronts.socks)?;
            tcp.write_all(&[5, 1, 0])?;
            let mut method = [0u8; 2];
            tcp.read_exact(&mut method)?;
            if method != [5, 0] {
                bail!("the proxy chose method {method:?}");
            }
            let SocketAddr::V4(source) = fronts.source else { bail!("an IPv4 source") };
            let mut request = vec![5, 1, 0, 1];
            request.extend_from_slice(&source.ip().octets());
            request.extend_from_slice(&source.port().to_be_bytes());
            tcp.write_all(&request)?;
            let mut reply = [0u8; 10];
            tcp.read_exact(&mut reply)?;
            if reply[1] != 0 {
                bail!("the proxy answered {}", reply[1]);
            }
            tcp
        }
    };
    tcp.set_nodelay(true)?;
    Ok(tcp)
}
