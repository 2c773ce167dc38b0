//! A session's other connections, on the client. Once the server says the session may have
//! more ([`crate::proto::ControlMessage::Lanes`]), a keeper per extra connection dials one,
//! joins it to the session (streams are then spread over all of them), and dials again when
//! it is lost, until the session ends. A lost connection ends only the streams it carried.

use std::time::Duration;

use super::{Client, Link};
use crate::client::Backoff;
use crate::log::Escaped;
use crate::proto::GoodbyeCode;
use crate::session::{JoinTicket, Session, SessionEnd};
use crate::task::OwnedTask;
use crate::transport::Wire;

/// Delays between attempts to replace a connection: short at first (a connection cut by the
/// path is usually back at once), never so short that a server refusing it is hammered.
const REPLACE: Backoff =
    Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5), max_attempts: None };

impl Client {
    /// Keeps `connections - 1` connections joined to the session of `ticket`, over `wire`,
    /// for as long as this future is polled; never returns. Dropping it closes them.
    pub(super) async fn keep_lanes(&self, link: &Link, wire: Wire, ticket: JoinTicket, connections: usize) {
        let keepers = (2..=connections).map(|n| self.keep_lane(link, wire, &ticket, n));
        futures::future::join_all(keepers).await;
        std::future::pending::<()>().await;
    }

    /// Keeps connection `n` of the session joined.
    async fn keep_lane(&self, link: &Link, wire: Wire, ticket: &JoinTicket, n: usize) {
        let server = Escaped(&link.server);
        let mut backoff = REPLACE.start();
        loop {
            match self.dial_join(link, wire, ticket).await {
                Ok(lane) => {
                    backoff.reset();
                    // Its control stream carries heartbeats only; a message there is dropped.
                    let Session { control: _control, messages: _, opener, incoming, driver } = lane;
                    let driver = OwnedTask::spawn(driver);
                    ticket.first.join(opener, incoming);
                    tracing::debug!(server = %server, "connection {n} joined the session");
                    let end = driver.await.unwrap_or_else(|e| SessionEnd::ProtocolError(e.to_string()));
                    if ticket.first.is_closed()
                        || matches!(end, SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, .. })
                    {
                        // The session is ending: nothing to replace.
                        return;
                    }
                    tracing::info!(server = %server, "connection {n} of the session lost ({}): its streams were cut; replacing it", Escaped(&end.to_string()));
                }
                Err(reason) if backoff.attempts() == 0 => {
                    tracing::warn!(server = %server, "connection {n} of the session: {}; trying again", Escaped(&reason));
                }
                Err(reason) => {
                    tracing::debug!(server = %server, "connection {n} of the session: {}", Escaped(&reason))
                }
            }
            let delay = backoff.next_delay().unwrap_or(REPLACE.max);
            tokio::time::sleep(delay).await;
        }
    }
}
