//! `tunnel-cli admin`: the server's admin API from the command line.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::Value;
use tunnel_core::admin::{AdminClient, AdminClientError, AdminTarget, Grant};
use tunnel_core::auth::Token;
use tunnel_core::config::SecretString;
use tunnel_core::forward::{Glob, PortSet, VisitRule};
use tunnel_core::tls::{Fingerprint, ServerTrust};

use crate::{written, Failure};

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin API: HOST:PORT (TLS), or the path of its UNIX socket.
    #[arg(long, global = true, env = "TUNNEL_ADMIN", value_name = "HOST:PORT|SOCKET")]
    pub admin: Option<String>,
    /// The admin token (else TUNNEL_ADMIN_TOKEN); not needed on a UNIX socket.
    #[arg(long, global = true, env = "TUNNEL_ADMIN_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub admin_token: Option<SecretString>,
    /// Expected SHA-256 fingerprint of the server's certificate (printed by `serve`).
    #[arg(long, global = true, value_name = "FP", conflicts_with = "ca")]
    pub fingerprint: Option<Fingerprint>,
    /// PEM file of CA certificates to verify the server with.
    #[arg(long, global = true, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Print the API's answers as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The server's status and its sessions.
    Status,
    /// Clients with their own token: list, create, rotate, revoke.
    #[command(subcommand)]
    Clients(ClientsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Every client with its own token (never the tokens).
    List,
    /// Create a client; prints its new token alone on stdout.
    Create(CreateArgs),
    /// Give a created client a new token (its sessions end); prints the token alone.
    Rotate {
        /// The client's name.
        name: String,
    },
    /// Revoke a created client: its sessions end, its token no longer works.
    Revoke {
        /// The client's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The client's name (`connect --name`).
    pub name: String,
    /// Ports it may bind, e.g. 10000-10010, or none [default: the server's allow_ports].
    #[arg(long, value_name = "LIST")]
    pub allow_ports: Option<PortSet>,
    /// Hosts it may serve over HTTP and TLS, as globs (repeatable or comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_hosts: Vec<Glob>,
    /// Services it may visit, as CLIENT/SERVICE globs (repeatable or comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_visit: Vec<VisitRule>,
    /// Service names it may expose, as globs (repeatable or comma-separated).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allow_expose: Vec<Glob>,
    /// Sessions it may hold at once, replicas serving the same routes (1 to 64) [default: 1].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=64))]
    pub replicas: Option<u8>,
}

pub async fn run(args: AdminArgs) -> Result<(), Failure> {
    let client = AdminClient::new(target(&args)?).map_err(Failure::error)?;
    let refused = |err: AdminClientError| Failure::error(err);
    match args.command {
        AdminCommand::Status => {
            let status = client.status().await.map_err(refused)?;
            let sessions = client.sessions().await.map_err(refused)?;
            written(if args.json {
                emit!("{}", serde_json::json!({ "status": status, "sessions": sessions }))
            } else {
                emit!("{}", status_text(&status, &sessions))
            })?;
        }
        AdminCommand::Clients(ClientsCommand::List) => {
            let clients = client.clients().await.map_err(refused)?;
            written(if args.json {
                emit!("{}", Value::Array(clients))
            } else {
                emit!("{}", clients_text(&clients))
            })?;
        }
        AdminCommand::Clients(ClientsCommand::Create(create)) => {
            let mut grant = Grant::default();
            grant.allow_ports = create.allow_ports;
            grant.allow_hosts = create.allow_hosts;
            grant.allow_visit = create.allow_visit;
            grant.allow_expose = create.allow_expose;
            grant.replicas = create.replicas.map(usize::from);
            let token = client.create(&create.name, &grant).await.map_err(refused)?;
            print_token(&create.name, &token, args.json)?;
        }
        AdminCommand::Clients(ClientsCommand::Rotate { name }) => {
            let token = client.rotate(&name).await.map_err(refused)?;
            print_token(&name, &token, args.json)?;
        }
        AdminCommand::Clients(ClientsCommand::Revoke { name }) => {
            let ended = client.revoke(&name).await.map_err(refused)?;
            written(if args.json {
                emit!("{}", serde_json::json!({ "name": name, "ended": ended }))
            } else {
                let ended = if ended.is_empty() { "none".to_owned() } else { ended.join(", ") };
                emit!("revoked {name}; sessions ended: {ended}")
            })?;
        }
    }
    Ok(())
}

/// Where the API is and how to trust it, from the flags (exit 2 when they do not say).
fn target(args: &AdminArgs) -> Result<AdminTarget, Failure> {
    let admin = args.admin.clone().ok_or_else(|| {
        Failure::usage("missing --admin HOST:PORT or the path of the admin socket (or TUNNEL_ADMIN)")
    })?;
    if admin.contains('/') {
        return Ok(AdminTarget::Unix(admin.into()));
    }
    let trust = match (&args.fingerprint, &args.ca) {
        (Some(fp), _) => ServerTrust::Pinned(*fp),
        (None, Some(ca)) => {
            ServerTrust::ca_file(ca).map_err(|e| Failure::usage(tunnel_core::log::Chain(&e)))?
        }
        (None, None) => {
            return Err(Failure::usage(
                "pass --fingerprint (printed by `serve`) or --ca PEM to trust the server",
            ))
        }
    };
    let token = args
        .admin_token
        .as_ref()
        .ok_or_else(|| Failure::usage("missing --admin-token (or TUNNEL_ADMIN_TOKEN)"))
        .and_then(|t| {
            Token::new(t.expose_secret()).map_err(|e| Failure::usage(format!("invalid --admin-token: {e}")))
        })?;
    Ok(AdminTarget::Tls { addr: admin, trust, token })
}

/// The token alone (for `$(...)`), or the API's object with `--json`. The token is shown
/// this once: not writing it is a failure, even to a reader that left.
fn print_token(name: &str, token: &Token, json: bool) -> Result<(), Failure> {
    let written = if json {
        emit!("{}", serde_json::json!({ "name": name, "token": token.expose_secret() }))
    } else {
        emit!("{}", token.expose_secret())
    };
    written.map_err(|err| {
        Failure::runtime(format!(
            "the server issued a token for {name}, but it could not be written ({err}); rotate it to get another"
        ))
    })
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn status_text(status: &Value, sessions: &[Value]) -> String {
    let head = format!(
        "version {}, {} sessions{}; clients: {} from the configuration, {} created",
        text(&status["version"]),
        text(&status["sessions"]),
        if status["draining"] == Value::Bool(true) { ", draining" } else { "" },
        text(&status["clients"]["config"]),
        text(&status["clients"]["admin"]),
    );
    if sessions.is_empty() {
        return head;
    }
    let columns = [
        "name",
        "peer",
        "credential",
        "since",
        "rtt_ms",
        "open_streams",
        "bytes_received",
        "bytes_sent",
        "table_version",
    ];
    format!("{head}\n{}", table(&columns, sessions))
}

fn clients_text(clients: &[Value]) -> String {
    let columns = ["name", "source", "online", "allow_ports", "allow_hosts", "allow_visit", "allow_expose"];
    table(&columns, clients)
}

/// One row per item, the columns aligned; values printed as they come, `-` for none.
fn table(columns: &[&str], items: &[Value]) -> String {
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| columns.iter().map(|c| text(&item[*c])).collect()).collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let header = line(columns.iter().map(|c| c.to_uppercase()).collect());
    std::iter::once(header).chain(rows.into_iter().map(line)).collect::<Vec<_>>().join("\n")
}
