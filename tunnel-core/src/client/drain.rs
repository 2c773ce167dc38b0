//! A client's drain, session by session: the server is told, the visitors it still sends are
//! carried and the open streams finish, within the drain time; then the session closes.

use super::error::Failure;
use super::{close, Client, Running};
use crate::log::Escaped;
use crate::proto::{ControlMessage, GoodbyeCode, DRAINING_VERSION, HANDOVER_VERSION};
use crate::session::SessionEnd;

impl Client {
    /// Drains a session as this client stops: tells the server, carries the visitors it still
    /// sends and lets the open streams finish, within the drain time; then closes.
    pub(super) async fn drain(&self, running: Running) -> Result<(), Failure> {
        // From protocol 6 the server answers the drain and ends the session: until then idle
        // HTTP streams stay open (the edge may be sending them a request).
        let handover = running.protocol >= HANDOVER_VERSION;
        if !handover {
            running.visits.draining.cancel();
        }
        self.say_draining(&running.control, running.protocol).await;
        // The intake goes on taking the visitors the server still sends, until the end.
        let Running {
            control,
            mut messages,
            mut moved,
            intake: _intake,
            mut driver,
            streams,
            visits,
            protocol,
        } = running;
        let drain = async {
            loop {
                tokio::select! {
                    // The drain notice may have been lost with the connection that carried it.
                    () = moved.next() => self.say_draining(&control, protocol).await,
                    // The control stream is the one left.
                    () = streams.until_open_at_most(1), if !handover => return None,
                    Some(message) = messages.recv() => {
                        if matches!(message, ControlMessage::NoNewVisitors) {
                            visits.draining.cancel();
                        }
                    }
                    // With a handover, the server's goodbye once the streams are done.
                    end = &mut driver => return Some(end),
                }
            }
        };
        let limit = self.config.drain_timeout;
        tracing::info!("draining: open streams have up to {limit:?}");
        let drained = tokio::select! {
            drained = tokio::time::timeout(limit, drain) => drained.map_err(|_| "the drain time ran out"),
            () = self.cut.cancelled() => Err("cut"),
        };
        match drained {
            Ok(None) => tracing::info!("drained"),
            Ok(Some(Ok(SessionEnd::Goodbye { code: GoodbyeCode::Shutdown, .. }))) if handover => {
                tracing::info!("drained");
                return Ok(());
            }
            Ok(Some(end)) => {
                let end = end.map_or_else(|e| e.to_string(), |end| end.to_string());
                tracing::warn!("the session ended during the drain: {}", Escaped(&end));
                return Ok(());
            }
            Err(why) => tracing::warn!("cutting the streams still open ({why})"),
        }
        close(&control, driver).await;
        Ok(())
    }

    /// Tells the server this client drains (protocol 3 and later).
    async fn say_draining(&self, control: &crate::session::ControlSender, protocol: u16) {
        if protocol >= DRAINING_VERSION {
            let deadline_ms = u32::try_from(self.config.drain_timeout.as_millis()).unwrap_or(u32::MAX);
            let message = "client shutting down".to_owned();
            let _ = control.send(ControlMessage::Draining { deadline_ms, message }).await;
        }
    }
}
