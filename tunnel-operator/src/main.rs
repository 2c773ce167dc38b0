//! `tunnel-operator`: prints the CRDs, and renders what the controller would do with a set of
//! Kubernetes objects, with no cluster.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResourceExt;
use tunnel_operator::connector::Settings;
use tunnel_operator::crd::{ClusterTunnel, Tunnel};
use tunnel_operator::objects::Cluster;
use tunnel_operator::routes::Naming;

/// Exit code for input that is wrong: a file that is not YAML, an object that is not valid.
const BAD_INPUT: u8 = 2;

/// The most read of one file (or standard input): past it, the input is refused rather than
/// read into memory to its end (`/dev/zero`, `yes |`). The YAML reader's own budgets stop at
/// 64 MiB of text too.
const MOST_INPUT: u64 = 64 << 20;

#[derive(Parser)]
#[command(name = "tunnel-operator", version, about = "Kubernetes operator for the tunnel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: watch tunnels, Ingresses and HTTPRoutes, apply connectors (one
    /// replica at a time leads, by a Lease in the namespace).
    Run {
        #[command(flatten)]
        settings: SettingsArgs,
        /// This replica's name in the leader lease.
        #[arg(long, env = "POD_NAME", value_name = "NAME")]
        identity: Option<String>,
    },
    /// Print the CustomResourceDefinitions of Tunnel and ClusterTunnel, as YAML.
    Crds,
    /// Read Kubernetes objects from YAML files and print, as YAML, the objects the controller
    /// would apply and the statuses and Events it would write.
    Render {
        /// A file of YAML documents (`-` for standard input); repeatable.
        #[arg(short = 'f', long = "filename", value_name = "FILE", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        settings: SettingsArgs,
    },
}

#[derive(Args)]
struct SettingsArgs {
    /// The operator's namespace: a ClusterTunnel's connector and secrets live here.
    #[arg(long, env = "POD_NAMESPACE", default_value = "tunnel-operator-system")]
    namespace: String,
    /// The connector image, unless a tunnel names its own.
    #[arg(long, value_name = "IMAGE", default_value = concat!("ghcr.io/tunnel-rs/tunnel-cli:", env!("CARGO_PKG_VERSION")))]
    connector_image: String,
    /// The cluster's DNS domain, for Service names.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

impl SettingsArgs {
    fn settings(self) -> Settings {
        Settings {
            namespace: self.namespace,
            image: self.connector_image,
            naming: Naming { cluster_domain: self.cluster_domain },
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run { settings, identity } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
                )
                // A log line that cannot be written is dropped, not reported on the same stderr
                // (which panics when it is closed).
                .log_internal_errors(false)
                .init();
            let identity = identity
                .unwrap_or_else(|| std::env::var("HOSTNAME").unwrap_or_else(|_| "tunnel-operator".into()));
            match run(settings.settings(), identity) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    say_err(&format!("error: {e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crds => {
            let crds = [Tunnel::crd(), ClusterTunnel::crd()];
            match serde_saphyr::to_string_multiple(&crds) {
                Ok(text) => output(&text),
                Err(e) => {
                    say_err(&format!("error: the CRDs do not serialize: {e}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Render { files, settings } => match render(&files, settings.settings()) {
            Ok(text) => output(&text),
            Err(message) => {
                say_err(&format!("error: {message}"));
                ExitCode::from(BAD_INPUT)
            }
        },
    }
}

/// Writes `text` to standard output. A reader that went away (`| head`) is no failure; a
/// write that fails otherwise (a full disk) is, and says so.
fn output(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            say_err(&format!("error: cannot write the output: {e}"));
            ExitCode::FAILURE
        }
        _ => ExitCode::SUCCESS,
    }
}

/// A line on standard error, if it can be written at all (`eprintln!` panics when it cannot).
fn say_err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// All of `reader`, unless it holds more than [`MOST_INPUT`] bytes or is not UTF-8.
fn read_input(reader: impl Read, origin: &str) -> Result<String, String> {
    let mut bytes = Vec::new();
    reader.take(MOST_INPUT + 1).read_to_end(&mut bytes).map_err(|e| format!("{origin}: {e}"))?;
    if bytes.len() as u64 > MOST_INPUT {
        return Err(format!("{origin}: larger than {} MiB", MOST_INPUT >> 20));
    }
    String::from_utf8(bytes).map_err(|e| format!("{origin}: not UTF-8 text: {e}"))
}

#[tokio::main]
async fn run(settings: Settings, identity: String) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| anyhow::anyhow!("no Kubernetes API to talk to: {e}"))?;
    let servers = tunnel_operator::controller::servers::AdminApis;
    tunnel_operator::controller::run(client, settings, servers, identity).await
}

fn render(files: &[PathBuf], settings: Settings) -> Result<String, String> {
    let mut cluster = Cluster::default();
    for file in files {
        let (text, origin) = if file.as_os_str() == "-" {
            (read_input(std::io::stdin().lock(), "standard input")?, "standard input".to_owned())
        } else {
            let origin = file.display().to_string();
            let opened = std::fs::File::open(file).map_err(|e| format!("{origin}: {e}"))?;
            (read_input(opened, &origin)?, origin)
        };
        let skipped =
            cluster.load_yaml(&text, &origin).map_err(|e| tunnel_core::log::Chain(&e).to_string())?;
        for object in skipped {
            say_err(&format!("note: {origin}: {object} is not read by the operator"));
        }
    }
    cluster.check().map_err(|e| e.to_string())?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let desired = tunnel_operator::reconcile::desired(&cluster, &BTreeMap::new(), &settings, &now);
    let documents = tunnel_operator::render::documents(&desired, &now);
    serde_saphyr::to_string_multiple(&documents).map_err(|e| format!("the output does not serialize: {e}"))
}
