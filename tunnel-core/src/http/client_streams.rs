//! Data streams from the edge to a client: opened with their stream header, then spoken to as
//! HTTP/1.1. A failure is the answer the visitor gets: 502 with a one-line reason.

use http::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::upstream::Upstream;
use crate::mux::{MuxStream, StreamOpener};
use crate::proto::StreamHeader;

/// Opens a data stream to the client with `header`.
async fn open_raw(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
) -> Result<MuxStream, (StatusCode, String)> {
    let unreachable = || (StatusCode::BAD_GATEWAY, format!("the client serving {host} is not reachable"));
    let mut stream = opener.open().await.map_err(|_| unreachable())?;
    stream.write_all(&header.encode()).await.map_err(|_| unreachable())?;
    Ok(stream)
}

fn no_talk(host: &str, err: hyper::Error) -> (StatusCode, String) {
    (StatusCode::BAD_GATEWAY, format!("cannot talk to the client serving {host}: {err}"))
}

/// Opens a data stream of HTTP requests to the client.
pub(super) async fn open_stream(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
) -> Result<Upstream<MuxStream>, (StatusCode, String)> {
    let stream = open_raw(opener, header, host).await?;
    Upstream::handshake(stream).await.map_err(|e| no_talk(host, e))
}

/// Opens a data stream for one request that may switch protocols; its connection has a task of
/// its own, which the upgraded bytes outlive.
pub(super) async fn open_upgrade_stream(
    opener: &StreamOpener,
    header: StreamHeader,
    host: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Incoming>, (StatusCode, String)> {
    let stream = open_raw(opener, header, host).await?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| no_talk(host, e))?;
    tokio::spawn(async move {
        if let Err(err) = connection.with_upgrades().await {
            tracing::debug!("stream to the client ended: {err}");
        }
    });
    Ok(sender)
}
