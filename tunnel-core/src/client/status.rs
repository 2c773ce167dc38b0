//! What a client reports: the forwards in service, and its state as a whole (also what
//! `/ready` says of it).

use std::net::SocketAddr;
use std::time::Duration;

use super::links::Link;
use super::{routes, Client, RefusedRoute};
use crate::forward::{IpNet, LocalForwardSpec, RemoteForwardSpec, ServiceSpec, SocksSpec};
use crate::http::{HttpRoute, TlsRoute};
use crate::log::Escaped;

/// A remote forward the server is listening for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveForward {
    /// The forward as configured.
    pub spec: RemoteForwardSpec,
    /// Where the server listens for visitors.
    pub public_addr: SocketAddr,
}

/// A local forward's listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveLocal {
    /// The forward as configured.
    pub spec: LocalForwardSpec,
    /// Where it listens.
    pub bound_addr: SocketAddr,
}

/// A SOCKS proxy, listening.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSocks {
    /// The proxy as configured.
    pub spec: SocksSpec,
    /// Where it listens.
    pub bound_addr: SocketAddr,
}

/// What the client is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientStatus {
    /// Dialing and authenticating.
    Connecting,
    /// Session up and the route table answered: what is in service and what was refused.
    Connected {
        /// The forwards in service, in table order.
        forwards: Vec<ActiveForward>,
        /// The services exposed, in table order.
        services: Vec<ServiceSpec>,
        /// The HTTP routes in service.
        http: Vec<HttpRoute>,
        /// Whether the HTTP fallback is in service.
        http_fallback: bool,
        /// The TLS passthrough routes in service.
        tls: Vec<TlsRoute>,
        /// The networks routed to this client.
        networks: Vec<IpNet>,
        /// Entries the server refused; the others are unaffected.
        refused: Vec<RefusedRoute>,
        /// Version of the table this answers (it grows with every change).
        version: u64,
        /// Whether this is the first answer of a new session (the first connect or a reconnect).
        new_session: bool,
    },
    /// Waiting before the next attempt.
    Reconnecting {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Wait before the next one.
        delay: Duration,
        /// Why the last attempt or session failed.
        error: String,
    },
    /// With several servers, this one's link stopped while the others serve on: refused for
    /// good (tried again after 5 s, doubling up to a minute), or given up on after
    /// `reconnect.max_attempts` (not tried again).
    Stopped {
        /// Why.
        error: String,
    },
}

impl ClientStatus {
    /// What `/ready` says: ready while a session is up with its table answered (the session
    /// ends, and so does readiness, when heartbeats stop), with the state and table version.
    pub fn readiness(&self) -> crate::metrics::Readiness {
        use crate::metrics::json_string;
        match self {
            Self::Connected { version, refused, .. } => crate::metrics::Readiness {
                ready: true,
                json: format!(
                    "{{\"ready\":true,\"state\":\"connected\",\"table_version\":{version},\"refused_routes\":{}}}",
                    refused.len()
                ),
            },
            Self::Connecting => crate::metrics::Readiness {
                ready: false,
                json: "{\"ready\":false,\"state\":\"connecting\"}".to_owned(),
            },
            Self::Reconnecting { attempt, error, .. } => crate::metrics::Readiness {
                ready: false,
                json: format!(
                    "{{\"ready\":false,\"state\":\"reconnecting\",\"attempt\":{attempt},\"error\":{}}}",
                    json_string(error)
                ),
            },
            Self::Stopped { error } => crate::metrics::Readiness {
                ready: false,
                json: format!("{{\"ready\":false,\"state\":\"stopped\",\"error\":{}}}", json_string(error)),
            },
        }
    }

    /// The forwards in service, once connected (`None` while connecting or reconnecting):
    /// `status.wait_for(|s| s.forwards().is_some())` waits for the first answer.
    pub fn forwards(&self) -> Option<&[ActiveForward]> {
        match self {
            Self::Connected { forwards, .. } => Some(forwards),
            _ => None,
        }
    }
}

impl ClientStatus {
    fn set_new_session(&mut self, to: bool) {
        if let Self::Connected { new_session, .. } = self {
            *new_session = to;
        }
    }
}

impl Client {
    /// Logs what the server answered and makes it the link's status. An answer the same as
    /// the link's status already (a server repeating itself) is neither logged nor published
    /// again: before, a server sending one answer in a loop wrote a log line per route each time.
    pub(super) fn publish(&self, link: &Link, answered: routes::Answered, new_session: bool) {
        let routes::Answered {
            forwards, services, http, http_fallback, tls, networks, refused, version, ..
        } = answered;
        let mut status = ClientStatus::Connected {
            forwards,
            services,
            http,
            http_fallback,
            tls,
            networks,
            refused,
            version,
            new_session,
        };
        if !new_session {
            // The same as the status now, whichever answer of the session that came from.
            let now = link.status.borrow();
            if let ClientStatus::Connected { new_session: first, .. } = &*now {
                status.set_new_session(*first);
                if *now == status {
                    return;
                }
                status.set_new_session(false);
            }
        }
        if let ClientStatus::Connected { forwards, services, http, tls, networks, refused, .. } = &status {
            for forward in forwards {
                tracing::info!(public = %forward.public_addr, local = %forward.spec.local, version, "remote forward ready");
            }
            for service in services {
                tracing::info!(service = %service.name, local = %service.target, version, "service exposed");
            }
            for route in refused {
                tracing::warn!(route = %route.route, version, "route refused: {} ({})", Escaped(&route.message), route.code);
            }
            for route in http {
                tracing::info!(route = %route, version, "HTTP route ready");
            }
            for route in tls {
                tracing::info!(route = %route, version, "TLS route ready");
            }
            for net in networks {
                tracing::info!(network = %net, version, "network route ready");
            }
        }
        self.set_status(link, status);
    }
}
