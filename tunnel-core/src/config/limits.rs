//! `[limits]` of the server's configuration: caps that keep one peer from exhausting the server.

use serde::{Deserialize, Serialize};

use super::{invalid, positive_duration, window_growth, ConfigError, HumanDuration};
use crate::server::ServerConfig;

/// `[limits]`: caps that keep one peer from exhausting the server.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerLimits {
    /// From TCP accept to authenticated session (default `10s`).
    pub handshake_timeout: Option<HumanDuration>,
    /// Connections in the handshake at once (default 4096).
    pub max_unauthenticated: Option<usize>,
    /// Of those, from one IPv4 address or IPv6 /64 (default 32).
    pub max_unauthenticated_per_source: Option<usize>,
    /// Streams open at once in each direction of a session (default 1024).
    pub max_streams_per_session: Option<usize>,
    /// Remote forwards per client (default 64).
    pub max_forwards_per_client: Option<usize>,
    /// Private services per client (default 64).
    pub max_services_per_client: Option<usize>,
    /// Connections a client's local forwards may carry through the server at once (default
    /// 64): each may pin about 600 KiB of server memory while its target does not read.
    pub max_visits_per_client: Option<usize>,
    /// Visitors one remote forward carries at once (default 512).
    pub max_visitors_per_forward: Option<usize>,
    /// Of those, from one IPv4 address or IPv6 /64 (default 256).
    pub max_visitors_per_source: Option<usize>,
    /// Sessions at once, all clients together (default 10000).
    pub max_sessions: Option<usize>,
    /// Sessions at once on the shared token (default 1000).
    pub max_sessions_per_shared_token: Option<usize>,
    /// Connections one client session may have, its first included (default 4, at most 16).
    pub max_connections_per_session: Option<usize>,
    /// Streams per second one client may open (local forwards), with bursts of as many
    /// (default 2000).
    pub max_stream_rate: Option<u32>,
    /// Largest control message in bytes (default 65536, the least; at most 16 MiB).
    pub max_message_size: Option<usize>,
    /// MiB of receive window a session's streams may grow into together, beyond 256 KiB each,
    /// as yamux tunes them toward the link's bandwidth-delay product (default 16; 0 keeps every
    /// stream at 256 KiB, about 20 Mbit/s per stream at 100 ms).
    pub max_receive_window_mib: Option<usize>,
    /// Visitor connections the HTTP and HTTPS listeners hold at once, each (default 10000);
    /// more are closed at accept.
    pub max_http_connections: Option<usize>,
    /// Time a visitor has to send a request's headers, and an idle keep-alive connection's
    /// next request (default `30s`).
    pub http_header_timeout: Option<HumanDuration>,
    /// Longest wait for a client's answer to a request (default `120s`).
    pub http_response_timeout: Option<HumanDuration>,
    /// Time an upgraded connection (WebSocket) may carry no byte either way before the edge
    /// closes it (default `10m`).
    pub http_upgrade_idle_timeout: Option<HumanDuration>,
    /// Time a visitor may keep a request waiting (taking less than 16 KiB of an answer waiting
    /// for it, or sending less than that of a body asked for) before a newcomer to a client
    /// session whose places are all taken may cut its connection and take its requests'
    /// places (default `5s`).
    pub http_stall_timeout: Option<HumanDuration>,
    /// Largest request head in bytes (default 65536, at least 8192).
    pub max_http_header_bytes: Option<usize>,
    /// HTTP/1.1 connections of each listener that may read a request head longer than 8 KiB at
    /// once (default 512); others wait, reading no more, for a place or their header time.
    pub max_http_large_heads: Option<usize>,
    /// Time a client's stream has to say where it goes (default `10s`).
    pub stream_header_timeout: Option<HumanDuration>,
    /// Time to connect to a target of a client's local forward (default `10s`).
    pub connect_timeout: Option<HumanDuration>,
    /// Time to resolve a target's host name (default `5s`).
    pub lookup_timeout: Option<HumanDuration>,
    /// Time a closing session has to deliver its goodbye (default `5s`).
    pub goodbye_timeout: Option<HumanDuration>,
    /// Time a replaced session has to release its ports, and sessions to close once a drain
    /// is cut (default `5s`).
    pub let_go_timeout: Option<HumanDuration>,
}

impl ServerLimits {
    /// Whether every limit is left at its default.
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// Checks every limit and writes it into `config`.
    pub(super) fn apply(&self, config: &mut ServerConfig) -> Result<(), ConfigError> {
        let positive = |key: &'static str, v: Option<usize>| match v {
            Some(0) => Err(invalid(key, "must be at least 1")),
            other => Ok(other),
        };
        if let Some(d) = self.handshake_timeout {
            config.handshake_timeout = positive_duration("limits.handshake_timeout", d)?;
        }
        let timeouts = &mut config.timeouts;
        for (key, value, field) in [
            ("limits.stream_header_timeout", self.stream_header_timeout, &mut timeouts.stream_header),
            ("limits.connect_timeout", self.connect_timeout, &mut timeouts.connect),
            ("limits.lookup_timeout", self.lookup_timeout, &mut timeouts.lookup),
            ("limits.goodbye_timeout", self.goodbye_timeout, &mut timeouts.goodbye),
            ("limits.let_go_timeout", self.let_go_timeout, &mut timeouts.let_go),
        ] {
            if let Some(d) = value {
                *field = positive_duration(key, d)?;
            }
        }
        if let Some(n) = positive("limits.max_unauthenticated", self.max_unauthenticated)? {
            config.max_unauthenticated = n;
        }
        if let Some(n) =
            positive("limits.max_unauthenticated_per_source", self.max_unauthenticated_per_source)?
        {
            config.max_unauthenticated_per_source = n;
        }
        if let Some(n) = positive("limits.max_streams_per_session", self.max_streams_per_session)? {
            if n > 65_536 {
                return Err(invalid("limits.max_streams_per_session", "must be at most 65536"));
            }
            config.session.mux.max_streams = n;
        }
        if let Some(n) = positive("limits.max_forwards_per_client", self.max_forwards_per_client)? {
            config.max_forwards_per_client = n;
        }
        if let Some(n) = positive("limits.max_services_per_client", self.max_services_per_client)? {
            config.max_services_per_client = n;
        }
        if let Some(n) = positive("limits.max_visits_per_client", self.max_visits_per_client)? {
            // One more for the control stream, which the client opens too.
            config.session.mux.max_inbound_streams = Some(n.saturating_add(1));
        }
        if let Some(n) = positive("limits.max_visitors_per_forward", self.max_visitors_per_forward)? {
            config.max_visitors_per_forward = n;
        }
        if let Some(n) = positive("limits.max_visitors_per_source", self.max_visitors_per_source)? {
            config.max_visitors_per_source = n;
        }
        if let Some(n) = positive("limits.max_sessions", self.max_sessions)? {
            config.max_sessions = n;
        }
        if let Some(n) = positive("limits.max_sessions_per_shared_token", self.max_sessions_per_shared_token)?
        {
            config.max_sessions_per_shared_token = n;
        }
        if let Some(n) = positive("limits.max_connections_per_session", self.max_connections_per_session)? {
            if n > crate::proto::MAX_CONNECTIONS {
                let most = format!("must be at most {}", crate::proto::MAX_CONNECTIONS);
                return Err(invalid("limits.max_connections_per_session", most));
            }
            config.max_connections_per_session = n;
        }
        match self.max_stream_rate {
            Some(0) => return Err(invalid("limits.max_stream_rate", "must be at least 1")),
            Some(n) => config.session.mux.max_inbound_rate = Some(n),
            None => {}
        }
        if let Some(n) = positive("limits.max_message_size", self.max_message_size)? {
            // Below a client's largest route table, that client's session would end each time
            // it sent its table, and the client would reconnect to send it again, forever.
            if !(crate::client::MAX_TABLE_BYTES..=16 * 1024 * 1024).contains(&n) {
                return Err(invalid(
                    "limits.max_message_size",
                    "must be between 65536 (the largest route table a client sends) and 16777216 bytes",
                ));
            }
            config.session.max_message_size = n;
        }
        if let Some(mib) = self.max_receive_window_mib {
            config.session.mux.window_growth = window_growth("limits.max_receive_window_mib", mib)?;
        }
        let edge = &mut config.http.limits;
        if let Some(n) = positive("limits.max_http_connections", self.max_http_connections)? {
            edge.max_connections = n;
        }
        if let Some(d) = self.http_header_timeout {
            edge.header_timeout = positive_duration("limits.http_header_timeout", d)?;
        }
        if let Some(d) = self.http_response_timeout {
            edge.response_timeout = positive_duration("limits.http_response_timeout", d)?;
        }
        if let Some(d) = self.http_upgrade_idle_timeout {
            edge.upgrade_idle_timeout = positive_duration("limits.http_upgrade_idle_timeout", d)?;
        }
        if let Some(d) = self.http_stall_timeout {
            edge.stall_timeout = positive_duration("limits.http_stall_timeout", d)?;
        }
        if let Some(n) = self.max_http_header_bytes {
            if !(8192..=1 << 20).contains(&n) {
                return Err(invalid(
                    "limits.max_http_header_bytes",
                    "must be between 8192 and 1048576 bytes",
                ));
            }
            edge.max_header_bytes = n;
        }
        if let Some(n) = positive("limits.max_http_large_heads", self.max_http_large_heads)? {
            edge.max_large_heads = n;
        }
        Ok(())
    }
}
