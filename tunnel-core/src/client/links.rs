//! The client's links, one per server: each keeps a session with its server (reconnecting
//! with its own backoff), and the client's status is derived from theirs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::error::{Failure, Interruption};
use super::{Client, ClientError, ClientStatus, SessionState, MAX_REJOIN_DELAY};
use crate::log::Escaped;
use crate::mux::StreamOpener;
use crate::proto::RouteId;
use crate::transport::ClientTransport;

/// With several servers, a link stopped by a permanent failure is tried again after this, the
/// wait doubling with each such failure in a row up to [`STOPPED_RETRY_MOST`].
const STOPPED_RETRY: Duration = Duration::from_secs(5);
const STOPPED_RETRY_MOST: Duration = Duration::from_secs(60);

/// One server the client keeps a session with.
#[derive(Debug)]
pub(super) struct Link {
    pub(super) server: String,
    pub(super) transport: ClientTransport,
    pub(super) status: watch::Sender<ClientStatus>,
    /// With [`Wire::Auto`](crate::transport::Wire::Auto): WebSocket worked last, so it is tried first.
    pub(super) websocket_first: AtomicBool,
    /// Reached through [`ClientConfig::proxy`](super::ClientConfig::proxy): decided by the name
    /// the server was given as, before any lookup (`no_proxy` lists names).
    pub(super) proxied: bool,
}

impl Link {
    pub(super) fn new(server: String, transport: ClientTransport) -> Self {
        Self {
            server,
            transport,
            status: watch::Sender::new(ClientStatus::Connecting),
            websocket_first: AtomicBool::new(false),
            proxied: false,
        }
    }

    /// The proxy this link's connections go through, if any (never with a connector of the
    /// program's own, which decides for itself where it connects).
    pub(super) fn proxy<'a>(
        &self,
        config: &'a super::ClientConfig,
    ) -> Option<&'a crate::transport::HttpProxy> {
        let own = matches!(self.transport, ClientTransport::Custom(_));
        config.proxy.as_ref().filter(|_| self.proxied && !own)
    }
}

/// One link per server, in order; a server named by a host that `resolve` finds at several
/// addresses of one family becomes a link per address of that family (each presenting and
/// verifying the host's name over TLS). A host found at one address per family (a dual-stack
/// server, `localhost`), or not found, stays one link that looks the name up at every attempt
/// and tries its addresses in turn: two links to one server would replace each other's session.
pub(super) fn links_for(
    servers: Vec<(String, ClientTransport)>,
    resolve: impl Fn(&str) -> Vec<std::net::SocketAddr>,
) -> Vec<Link> {
    let mut links = Vec::with_capacity(servers.len());
    for (server, transport) in servers {
        let is_address = server.parse::<std::net::SocketAddr>().is_ok();
        let found = if is_address { Vec::new() } else { resolve(&server) };
        match servers_among(&found) {
            Some(each) => {
                let list = each.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                let others = found.iter().collect::<std::collections::HashSet<_>>().len() - each.len();
                tracing::info!(
                    server = %Escaped(&server),
                    "{} addresses, each a server of its own: {list} (the other family's {others} taken to be the same servers)",
                    each.len()
                );
                links.extend(each.into_iter().map(|addr| Link::new(addr.to_string(), transport.clone())));
            }
            None => links.push(Link::new(server, transport)),
        }
    }
    links
}

/// The addresses among `found` that are servers of their own, when there are several: those of
/// the family with more of them (on a tie, the family of the first, the system's preference),
/// duplicates dropped. `None` when each family has one address at most: one server.
fn servers_among(found: &[std::net::SocketAddr]) -> Option<Vec<std::net::SocketAddr>> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<_> = found.iter().copied().filter(|addr| seen.insert(*addr)).collect();
    let (v4, v6): (Vec<_>, Vec<_>) = unique.iter().partition(|addr| addr.is_ipv4());
    let first_is_v4 = unique.first().is_some_and(std::net::SocketAddr::is_ipv4);
    let each = match v4.len().cmp(&v6.len()) {
        std::cmp::Ordering::Greater => v4,
        std::cmp::Ordering::Less => v6,
        std::cmp::Ordering::Equal if first_is_v4 => v4,
        std::cmp::Ordering::Equal => v6,
    };
    (each.len() > 1).then_some(each)
}

impl Client {
    /// Sets `link`'s status, and the client's from all of them (told only when it changed).
    /// Every link runs inside [`Client::run`]'s one task, so two never set it at once.
    pub(super) fn set_status(&self, link: &Link, status: ClientStatus) {
        link.status.send_replace(status);
        let statuses: Vec<_> = self.links.iter().map(|l| l.status.borrow().clone()).collect();
        let whole = statuses
            .iter()
            .find(|s| matches!(s, ClientStatus::Connected { .. }))
            .or_else(|| statuses.iter().find(|s| !matches!(s, ClientStatus::Stopped { .. })))
            .unwrap_or(&statuses[0]);
        self.status.send_if_modified(|now| {
            let changed = now != whole;
            if changed {
                *now = whole.clone();
            }
            changed
        });
    }

    /// Runs a link per server until `stop`. With one server, a permanent failure (a refused
    /// token, a certificate no pin matches) or giving up (`reconnect.max_attempts`) ends the
    /// client. With several, either stops that server's link alone ([`ClientStatus::Stopped`])
    /// while the others serve on: a server of the deployment that has not yet learnt a rotated
    /// token, or someone else answering at one of its addresses, does not take the rest down.
    /// A link stopped by a permanent failure is tried again after [`STOPPED_RETRY`] (doubling
    /// up to [`STOPPED_RETRY_MOST`]), so it comes back once its server is fixed; one given up on
    /// stays stopped. The client ends when every link is stopped at the same time, with the
    /// failure that stopped the last; or, on any server, when replaced by a newer client of
    /// its name.
    pub(super) async fn run_links(
        &self,
        stop: CancellationToken,
        sessions: &[watch::Sender<Option<StreamOpener>>],
    ) -> Result<(), ClientError> {
        use futures::StreamExt;
        if let ([link], [session]) = (&self.links[..], sessions) {
            return self.run_until(link, stop, session).await;
        }
        // Links stopped now: waiting to be tried again, or given up on. (An atomic only because
        // the client's future must be `Send`: every link runs in this one task.)
        let stopped = AtomicUsize::new(0);
        let attempt = |index: usize, wait: Duration| {
            let (link, session, stop, stopped) =
                (&self.links[index], &sessions[index], stop.clone(), &stopped);
            async move {
                if !wait.is_zero() {
                    tokio::select! {
                        () = stop.cancelled() => return (index, Ok(()), Duration::ZERO),
                        () = tokio::time::sleep(wait) => {}
                    }
                    stopped.fetch_sub(1, Ordering::Relaxed);
                }
                let began = tokio::time::Instant::now();
                (index, self.run_until(link, stop, session).await, began.elapsed())
            }
        };
        let mut running: futures::stream::FuturesUnordered<_> =
            (0..self.links.len()).map(|index| attempt(index, Duration::ZERO)).collect();
        let mut waits = vec![STOPPED_RETRY; self.links.len()];
        let (mut ended, mut replaced) = (None, None);
        while let Some((index, outcome, lasted)) = running.next().await {
            let Err(err) = outcome else { continue };
            // A newer client of this name took over here (or the server now allows fewer): it
            // takes the others too, so this client ends on every server, as with one. Tried
            // again, the two would take turns kicking each other off.
            if matches!(err, ClientError::Replaced(_)) {
                if replaced.is_none() {
                    stop.cancel();
                    replaced = Some(err);
                }
                continue;
            }
            let link = &self.links[index];
            let error = crate::log::Chain(&err).to_string();
            stopped.fetch_add(1, Ordering::Relaxed);
            if matches!(err, ClientError::GaveUp { .. }) {
                tracing::error!(server = %Escaped(&link.server), "stopped: {}", Escaped(&error));
            } else {
                if lasted > STOPPED_RETRY_MOST {
                    waits[index] = STOPPED_RETRY;
                }
                let wait = waits[index];
                waits[index] = (wait * 2).min(STOPPED_RETRY_MOST);
                tracing::error!(server = %Escaped(&link.server), "stopped: {}; trying again in {wait:?}", Escaped(&error));
                running.push(attempt(index, wait));
            }
            self.set_status(link, ClientStatus::Stopped { error });
            ended = Some(err);
            if stopped.load(Ordering::Relaxed) == self.links.len() {
                break;
            }
        }
        match (replaced, ended) {
            (Some(err), _) => Err(err),
            (None, Some(err)) if !stop.is_cancelled() => Err(err),
            _ => Ok(()),
        }
    }

    /// Keeps a session with `link`'s server until `stop` (or a permanent failure).
    async fn run_until(
        &self,
        link: &Link,
        stop: CancellationToken,
        session: &watch::Sender<Option<StreamOpener>>,
    ) -> Result<(), ClientError> {
        let mut reconnect = self.config.reconnect;
        if self.links.len() > 1 {
            // A server back from a restart is rejoined within seconds, the others serving meanwhile.
            reconnect.max = reconnect.max.min(MAX_REJOIN_DELAY);
            reconnect.initial = reconnect.initial.min(reconnect.max);
        }
        let mut backoff = reconnect.start();
        // Ports the server assigned to `REMOTE_PORT 0` forwards, asked for again on reconnect.
        let mut assigned: HashMap<RouteId, u16> = HashMap::new();
        let mut version = 0;
        // Whether a session with this server has worked: after one, a refusal that may come
        // from something on the way is retried (see `Interruption::AfterSessions`).
        let mut worked = false;
        loop {
            self.set_status(link, ClientStatus::Connecting);
            let outcome = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                outcome = self.connect(link) => outcome,
            };
            let failure = match outcome {
                Ok(established) => {
                    worked = true;
                    let mut state = SessionState { assigned: &mut assigned, version: &mut version };
                    let served =
                        self.serve(link, established, &mut state, &mut backoff, &stop, session).await;
                    session.send_replace(None);
                    match served {
                        Ok(()) => return Ok(()),
                        Err(failure) => failure,
                    }
                }
                Err(failure) => failure,
            };
            let error = match failure {
                Failure::Permanent(err) if worked && err.may_be_the_way() => {
                    Interruption::AfterSessions(Box::new(err))
                }
                Failure::Permanent(err) => return Err(err),
                Failure::Transient(error) => error,
            };
            let Some(delay) = backoff.next_delay() else {
                return Err(ClientError::GaveUp { attempts: backoff.attempts(), last: error });
            };
            let error = crate::log::Chain(&error).to_string();
            tracing::warn!(server = %Escaped(&link.server), "{}; reconnecting in {delay:.1?}", Escaped(&error));
            self.metrics.reconnect();
            self.set_status(link, ClientStatus::Reconnecting { attempt: backoff.attempts(), delay, error });
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_at_several_addresses_of_one_family_is_a_server_per_address_in_place() {
        let servers =
            ["a.test:7700", "10.0.0.9:7700", "b.test:7700", "c.test:7700", "d.test:7700", "e.test:7700"]
                .map(|s| (s.to_owned(), ClientTransport::Plaintext))
                .to_vec();
        let resolve = |host: &str| -> Vec<std::net::SocketAddr> {
            let addrs: &[&str] = match host {
                "a.test:7700" => &["127.0.0.1:7700", "127.0.0.2:7700", "127.0.0.1:7700"],
                "b.test:7700" => &["127.0.0.2:7700"],
                "10.0.0.9:7700" => panic!("an address is never looked up"),
                // Two dual-stack servers, the system preferring IPv6: the IPv6 addresses.
                "d.test:7700" => &["[::2]:7700", "10.0.0.1:7700", "[::3]:7700", "10.0.0.2:7700"],
                // Two servers on IPv6, one of them on IPv4 too.
                "e.test:7700" => &["10.0.0.1:7700", "[::2]:7700", "[::3]:7700"],
                _ => &[],
            };
            addrs.iter().map(|a| a.parse().unwrap()).collect()
        };
        let links = links_for(servers, resolve);
        let names: Vec<&str> = links.iter().map(|l| l.server.as_str()).collect();
        // Duplicates once; one address or none: the name stays, looked up at each attempt.
        let expected = [
            "127.0.0.1:7700",
            "127.0.0.2:7700",
            "10.0.0.9:7700",
            "b.test:7700",
            "c.test:7700",
            "[::2]:7700",
            "[::3]:7700",
            "[::2]:7700",
            "[::3]:7700",
        ];
        assert_eq!(names, expected);
    }

    #[test]
    fn a_host_at_one_address_per_family_is_one_server() {
        // `localhost`, or a dual-stack server: two links would replace each other's session.
        let servers = vec![("localhost:7700".to_owned(), ClientTransport::Plaintext)];
        let links =
            links_for(servers, |_| vec!["[::1]:7700".parse().unwrap(), "127.0.0.1:7700".parse().unwrap()]);
        let names: Vec<&str> = links.iter().map(|l| l.server.as_str()).collect();
        assert_eq!(names, ["localhost:7700"]);
    }
}
