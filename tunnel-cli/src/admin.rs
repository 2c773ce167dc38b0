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
    // A name no server could take is a bad argument (2), found before any request.
    let refused = |err: AdminClientError| match err {
        AdminClientError::InvalidName(_) => Failure::usage(tunnel_core::log::Chain(&err)),
        err => Failure::error(err),
    };
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
    // The API gives Unix seconds; a reader compares the table with logs, in UTC.
    let sessions: Vec<Value> = sessions
        .iter()
        .map(|session| {
            let mut session = session.clone();
            if let Some(seconds) = session["since"].as_u64() {
                session["since"] = Value::String(utc(seconds));
            }
            session
        })
        .collect();
    let columns = [
        "name",
        "peer",
        "credential",
        "since",
        "rtt_ms",
        "connections",
        "open_streams",
        "bytes_received",
        "bytes_sent",
        "table_version",
    ];
    format!("{head}\n{}", table(&columns, &sessions))
}

/// `seconds` after the Unix epoch as an RFC 3339 UTC time, e.g. `2026-12-02T18:40:21Z`.
fn utc(seconds: u64) -> String {
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    // The civil date of a day count, in 400-year eras of 146,097 days starting on 1 March
    // (so a leap day is the last day of its year); valid for every `u64` input.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = u128::from(year_of_era) + u128::from(era) * 400 + u128::from(month <= 2);
    let (hour, minute, second) = (rest / 3_600, rest % 3_600 / 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_start_times_read_as_utc_dates_across_leap_days_and_centuries() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z"); // a leap day of a 400th year
        assert_eq!(utc(4_107_542_399), "2100-02-28T23:59:59Z"); // 2100 has no 29 February
        assert_eq!(utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(utc(1_796_236_821), "2026-12-02T18:40:21Z");
        assert!(utc(u64::MAX).ends_with('Z'), "the largest value still formats");
    }

    #[test]
    fn the_status_table_shows_when_each_session_started_in_utc() {
        let status =
            serde_json::json!({"version": "0.1.0", "sessions": 1, "clients": {"config": 1, "admin": 0}});
        let sessions = [serde_json::json!({
            "name": "worker-1", "peer": "10.0.0.7:51000", "since": 1_796_236_821, "connections": 3
        })];
        let text = status_text(&status, &sessions);
        assert!(text.contains("2026-12-02T18:40:21Z"), "{text}");
        let (head, row) = (text.lines().nth(1).unwrap(), text.lines().nth(2).unwrap());
        let column = head.find("CONNECTIONS").expect("a connections column");
        assert_eq!(row[column..].split_whitespace().next(), Some("3"), "{text}");
        assert!(!text.contains("1796236821"), "{text}");
    }
}
