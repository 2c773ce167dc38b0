//! Connecting to a host name found at several addresses: the addresses are tried in the
//! order of RFC 8305 ("Happy Eyeballs"), the families taking turns, and each attempt that has
//! neither connected nor failed within [`ATTEMPT_DELAY`] is joined by the next. An address
//! that drops connection attempts (IPv6 that is configured but goes nowhere, the usual case)
//! thus costs a quarter of a second, not the whole handshake time, and the other family's
//! addresses are still tried.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};

/// RFC 8305's "Connection Attempt Delay" (250 ms recommended).
pub(super) const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// The addresses in the order they are tried: the first address's family, then the other,
/// taking turns, each family in the order given.
pub(super) fn interleaved(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_is_v4 = addrs.first().is_some_and(SocketAddr::is_ipv4);
    let (first, other): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|a| a.is_ipv4() == first_is_v4);
    let (mut first, mut other) = (first.into_iter(), other.into_iter());
    let mut order = Vec::with_capacity(first.len() + other.len());
    loop {
        match (first.next(), other.next()) {
            (None, None) => return order,
            (a, b) => order.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connects with `connect` to the first of `addrs` (in the order given) that answers: an
/// attempt starts when the one before failed, or after [`ATTEMPT_DELAY`] without an answer;
/// the first to connect wins and the others are dropped. With every one failed, the last
/// failure.
pub(super) async fn first_to_connect<C, F, S>(addrs: Vec<SocketAddr>, connect: C) -> io::Result<S>
where
    C: Fn(SocketAddr) -> F,
    F: Future<Output = io::Result<S>>,
{
    let mut waiting = addrs.into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut last = None;
    loop {
        if attempts.is_empty() {
            let Some(addr) = waiting.next() else {
                return Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address")));
            };
            attempts.push(connect(addr));
        }
        tokio::select! {
            Some(outcome) = attempts.next() => match outcome {
                Ok(stream) => return Ok(stream),
                Err(err) => last = Some(err),
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if waiting.len() > 0 => {
                attempts.extend(waiting.next().map(&connect));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn families_take_turns_starting_with_the_first_address() {
        let order = interleaved(addrs(&["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]));
        assert_eq!(order, addrs(&["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"]));
        let order = interleaved(addrs(&["10.0.0.1:1", "[::1]:1"]));
        assert_eq!(order, addrs(&["10.0.0.1:1", "[::1]:1"]));
        assert!(interleaved(Vec::new()).is_empty());
    }

    /// An address that never answers holds the next back only [`ATTEMPT_DELAY`]; one that
    /// refuses at once, not at all; with every one failing, the last failure is told.
    #[tokio::test(start_paused = true)]
    async fn a_silent_address_delays_the_next_by_the_attempt_delay_and_a_refusing_one_not_at_all() {
        let [silent, refusing, good] = ["[::1]:1", "127.0.0.2:1", "127.0.0.3:1"].map(|a| a.parse().unwrap());
        let connect = |addr: SocketAddr| async move {
            if addr == silent {
                std::future::pending::<()>().await;
            }
            if addr == refusing {
                return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"));
            }
            Ok(addr)
        };
        let start = tokio::time::Instant::now();
        assert_eq!(first_to_connect(vec![silent, good], connect).await.unwrap(), good);
        assert_eq!(start.elapsed(), ATTEMPT_DELAY);

        let start = tokio::time::Instant::now();
        assert_eq!(first_to_connect(vec![refusing, good], connect).await.unwrap(), good);
        assert_eq!(start.elapsed(), Duration::ZERO);

        let failed = first_to_connect(vec![refusing, refusing], connect).await.unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::ConnectionRefused);
        let failed = first_to_connect(Vec::new(), connect).await.unwrap_err();
        assert_eq!(failed.kind(), io::ErrorKind::InvalidInput);
    }
}
