//! Inbound data streams on the client: read the header, dial the target, splice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::forward::{splice, TargetAddr};
use crate::mux::MuxStream;
use crate::proto::StreamHeader;
use crate::transport;

/// The server writes the header first thing; a stream silent this long is abandoned.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn handle(
    mut stream: MuxStream,
    targets: Arc<HashMap<u32, TargetAddr>>,
    owned: CancellationToken,
) {
    let header = match tokio::time::timeout(HEADER_TIMEOUT, StreamHeader::read(&mut stream)).await {
        Ok(Ok(header)) => header,
        Ok(Err(err)) => return tracing::warn!("dropping stream: {err}"),
        Err(_) => return tracing::warn!("dropping stream: no header within {HEADER_TIMEOUT:?}"),
    };
    let (forward_id, visitor) = match header {
        StreamHeader::RemoteForward { forward_id, visitor } => (forward_id, visitor),
    };
    let Some(target) = targets.get(&forward_id) else {
        return tracing::warn!(forward_id, "dropping stream for a forward this client never requested");
    };
    let mut tcp = match transport::connect_tcp(&target.to_string()).await {
        Ok(tcp) => tcp,
        Err(err) => return tracing::warn!(%visitor, %target, "cannot reach the target: {err}"),
    };
    let failed = tokio::select! {
        () = owned.cancelled() => true,
        result = splice(&mut stream, &mut tcp) => match result {
            Ok(stats) => {
                tracing::trace!(%visitor, %target, ?stats, "visitor done");
                false
            }
            Err(err) => {
                tracing::debug!(%visitor, %target, "visitor connection failed: {err}");
                true
            }
        },
    };
    if failed {
        // The tunnel side broke: the target must see an error, not an orderly end of stream.
        transport::reset_on_close(&tcp);
    }
}
