//! The edge's answer to one request: the route it is for, the owning client's session, a
//! place among the streams in flight to it, and the client's answer relayed (or the edge's own,
//! when there is none).

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;

use super::{session_key, Connection, HttpEdge, Upgraded, ROUTE};
use crate::http::client_streams::{exchange, open_upgrade_stream, Lane, SessionKey};
use crate::http::forwarded::set_forwarded;
use crate::http::headers::{
    field_count, is_upgrade, join_cookies, origin_form, route_value, routed_host, strip_hop_by_hop,
    upgrade_asked, MAX_HEADER_FIELDS,
};
use crate::http::inflight::{self, Kind, Ticket};
use crate::http::origin::splice_upgraded;
use crate::http::{normalize_path, text_response, Body};
use crate::mux::StreamOpener;
use crate::proto::{RouteId, StreamHeader};

/// An answer, and whether a client gave it.
struct Answer {
    answer: Response<Body>,
    from_a_client: bool,
}

impl Answer {
    /// One the edge made itself.
    fn edge(answer: Response<Body>) -> Self {
        Self { answer, from_a_client: false }
    }

    fn status(&self) -> StatusCode {
        self.answer.status()
    }
}

impl HttpEdge {
    /// Answers one request, and counts the answer; `true` with an answer that came from a
    /// client (not one the edge made itself, which costs a visitor nothing to ask for).
    pub(super) async fn handle(
        &self,
        request: Request<Incoming>,
        connection: Connection<'_>,
    ) -> (Response<Body>, bool) {
        let (response, owner) = self.answer(request, connection).await;
        if let Some(metrics) = &self.metrics {
            metrics.http_request(owner.as_deref().unwrap_or(""), response.status().as_u16());
        }
        (response.answer, response.from_a_client)
    }

    /// The answer to one request, and the client whose route it went to (`None`: the edge
    /// answered itself).
    async fn answer(
        &self,
        mut request: Request<Incoming>,
        connection: Connection<'_>,
    ) -> (Answer, Option<String>) {
        let Connection { visitor, sni, places, .. } = connection;
        // CONNECT asks a proxy for a tunnel to its target (RFC 9110 9.3.6): the edge is no such
        // proxy, and the origin form a client's service gets could not carry it.
        if request.method() == hyper::Method::CONNECT {
            return (
                Answer::edge(text_response(StatusCode::NOT_IMPLEMENTED, "CONNECT is not served here")),
                None,
            );
        }
        // HTTP/1.1 heads are held to this count by hyper's parser; HTTP/2 ones here (their
        // cookies counted as the one field they go on as), so that both reach an origin alike.
        if field_count(request.headers()) > MAX_HEADER_FIELDS {
            let why = format!("more than {MAX_HEADER_FIELDS} header fields");
            return (Answer::edge(text_response(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &why)), None);
        }
        let host = match routed_host(&request) {
            Ok(host) => host,
            Err(why) => return (Answer::edge(text_response(StatusCode::BAD_REQUEST, why)), None),
        };
        // A path that does not begin with `/` (an HTTP/2 `:path` of `admin`, an authority form
        // outside CONNECT) would be matched as written, and reach the origin with a `/` put
        // before it (its origin form): past a route for `/admin`, or its dot segments left in.
        let path = request.uri().path();
        let asterisk = path == "*" && request.method() == hyper::Method::OPTIONS;
        if !(path.starts_with('/') || asterisk) {
            let why = "the request target's path must begin with /";
            return (Answer::edge(text_response(StatusCode::BAD_REQUEST, why)), None);
        }
        if let Err(refused) = normalize_path(request.uri_mut()) {
            return (Answer::edge(text_response(StatusCode::BAD_REQUEST, &refused.to_string())), None);
        }
        let challenge = self
            .challenges
            .as_deref()
            .and_then(|c| crate::http::challenge::answer(c, &host, request.uri().path()));
        if let Some(answer) = challenge {
            return (Answer::edge(answer), None);
        }
        let routes = self.routes.routes();
        if let Some(sni) = sni.filter(|sni| request.version() == Version::HTTP_2 && *sni != host) {
            if routes.owner_of(sni) != routes.owner_of(&host) {
                let why = format!("this connection was opened for {sni}; open one for {host}");
                return (Answer::edge(text_response(StatusCode::MISDIRECTED_REQUEST, &why)), None);
            }
        }
        let hit = routes.lookup(&host, request.uri().path(), request.method().as_str(), request.headers());
        let Some(hit) = hit else {
            return (Answer::edge(text_response(self.fallback, "")), None);
        };
        let (route_id, owner, per_route) = (hit.id, hit.owner.to_owned(), hit.target.per_route);
        // The least busy of the owner's replicas serving the route.
        let Some(opener) = hit.target.openers.pick().cloned() else {
            let why = format!("the client serving {host} is not reachable");
            return (Answer::edge(text_response(StatusCode::BAD_GATEWAY, &why)), Some(owner));
        };
        // Not held while the request is under way: a snapshot holds every session's opener.
        drop(routes);
        // Pooled and counted per session, not per client name.
        let key = session_key(&opener);
        // An upgraded connection may hold its place for as long as it lasts, so it is held to
        // the per-source cap as passthrough visitors are, and a newcomer may take its place
        // when the session is full; plain requests give theirs back.
        let kind = if upgrade_asked(&request).is_some() { Kind::Lasting } else { Kind::Request(places) };
        let place = match self.inflight.admit(key, visitor.ip(), kind) {
            Ok(place) => place,
            Err(full) => {
                let why = format!("too many requests in flight to the client serving {host} ({full})");
                return (Answer::edge(text_response(StatusCode::SERVICE_UNAVAILABLE, &why)), Some(owner));
            }
        };
        let to = Owner { route_id, opener, key, per_route };
        match self.forward(request, to, place, connection, &host).await {
            Ok(response) => (Answer { answer: response, from_a_client: true }, Some(owner)),
            Err((status, why)) => {
                tracing::debug!(%visitor, host = %crate::log::Escaped(&host), owner = %crate::log::Escaped(&owner), "{why}");
                // A request the visitor broke is not counted against the client.
                let owner = (status != StatusCode::BAD_REQUEST).then_some(owner);
                (Answer::edge(text_response(status, &why)), owner)
            }
        }
    }

    /// Sends `request`, which came on `connection`, to its owner; the answer (its body, or the
    /// upgraded connection, left in `connection.upgraded`) holds `place` until it is over.
    async fn forward(
        &self,
        mut request: Request<Incoming>,
        to: Owner,
        place: Ticket,
        connection: Connection<'_>,
        host: &str,
    ) -> Result<Response<Body>, (StatusCode, String)> {
        let Connection { visitor, scheme, upgraded, places, .. } = connection;
        let upgrade = upgrade_asked(&request);
        let visitor_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut request));
        // HTTP/1.1 to the client, whatever the visitor spoke: an origin-form target, and a Host
        // that is the authority the request was routed by when it named one (an absolute-form
        // target or HTTP/2's :authority wins over a Host header, RFC 9112 3.2.2).
        if let Some(authority) =
            request.uri().authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            request.headers_mut().insert(header::HOST, authority);
        }
        if request.uri().scheme().is_some() || request.uri().authority().is_some() {
            *request.uri_mut() = origin_form(request.uri());
        }
        if request.version() == Version::HTTP_2 {
            join_cookies(request.headers_mut());
        }
        *request.version_mut() = Version::HTTP_11;
        strip_hop_by_hop(request.headers_mut(), upgrade);
        set_forwarded(request.headers_mut(), visitor.ip(), scheme, host);
        if to.per_route {
            // The stream names the route; a visitor's header of that name goes nowhere.
            request.headers_mut().remove(ROUTE);
        } else {
            // Replaces anything a visitor sent under that name.
            request.headers_mut().insert(ROUTE, route_value(to.route_id));
        }

        if visitor_side.is_some() {
            // An upgrade turns its stream into a byte stream: it gets one of its own.
            let header = StreamHeader::Route { route_id: to.route_id, visitor, local: None };
            let exchange = async {
                let mut sender = open_upgrade_stream(&to.opener, header, host, place.eviction()).await?;
                let sent = sender.send_request(request);
                Ok::<_, (StatusCode, String)>(tokio::time::timeout(self.limits.response_timeout, sent).await)
            };
            // A newcomer may take the place before the answer comes: the stream goes with it.
            // The eviction first: it also closes the stream, and the exchange failing for that
            // is no 502 of the client's (the eviction test saw one under load).
            let sent = tokio::select! {
                biased;
                () = place.evicted() => {
                    let why = format!("a newcomer took this request's place toward the client serving {host}");
                    return Err((StatusCode::SERVICE_UNAVAILABLE, why));
                }
                sent = exchange => sent?,
            };
            // Answered without a switch: a plain answer, whose place is a request's.
            let place = match &sent {
                Ok(Ok(response)) if response.status() != StatusCode::SWITCHING_PROTOCOLS => {
                    self.inflight.settle(to.key, visitor.ip(), place, places).map_err(|full| {
                        let why =
                            format!("too many requests in flight to the client serving {host} ({full})");
                        (StatusCode::SERVICE_UNAVAILABLE, why)
                    })?
                }
                _ => place,
            };
            return self.relay(sent, visitor_side.map(|side| (side, upgraded)), host, place);
        }
        // A session's streams of one route (`None`: of all its routes, an older client's).
        let lane = to.per_route.then_some(to.route_id);
        let lane = Lane { streams: &self.streams, key: to.key, lane, opener: &to.opener };
        let request = request.map(|body| Either::Left(place.watch(body)));
        let sent = exchange(lane, visitor, request, self.limits.response_timeout, host).await?;
        self.relay(sent, None, host, place)
    }

    /// The client's answer as the visitor's response: errors become 502 and 504, a switch of
    /// protocols leaves the splice of the two upgraded connections in `Upgraded`, for the
    /// visitor connection's task. `place` is held by the answer's body, or by the splice.
    fn relay<B>(
        &self,
        sent: Result<Result<Response<B>, hyper::Error>, tokio::time::error::Elapsed>,
        visitor_side: Option<(hyper::upgrade::OnUpgrade, &Upgraded)>,
        host: &str,
        place: Ticket,
    ) -> Result<Response<Body>, (StatusCode, String)>
    where
        B: hyper::body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Unpin + 'static,
    {
        let mut response = match sent {
            Ok(Ok(response)) => response,
            // The visitor's body broke off or was malformed (a bad chunk size, say): hyper's
            // error over the visitor's own, hyper's too. Other errors of ours are the client's.
            Ok(Err(err))
                if err.is_user()
                    && std::error::Error::source(&err).is_some_and(|e| e.is::<hyper::Error>()) =>
            {
                return Err((StatusCode::BAD_REQUEST, format!("the request's body could not be read: {err}")))
            }
            Ok(Err(err)) => {
                return Err((
                    StatusCode::BAD_GATEWAY,
                    format!("the client serving {host} did not answer: {err}"),
                ))
            }
            Err(_) => {
                let why = format!(
                    "the client serving {host} did not answer within {:?}",
                    self.limits.response_timeout
                );
                return Err((StatusCode::GATEWAY_TIMEOUT, why));
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let kept = if switching { is_upgrade(response.headers()) } else { None };
        strip_hop_by_hop(response.headers_mut(), kept);
        if switching {
            if let Some((visitor_side, upgraded)) = visitor_side {
                let client_side = hyper::upgrade::on(&mut response);
                let idle = self.limits.upgrade_idle_timeout;
                let splice = async move {
                    tokio::select! {
                        () = splice_upgraded(visitor_side, client_side, Some(idle)) => {}
                        () = place.evicted() => tracing::debug!(
                            "an upgraded connection closed: a newcomer took its place, the session's being full"
                        ),
                    }
                };
                *upgraded.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(splice));
                return Ok(response.map(|body| body.map_err(Into::into).boxed_unsync()));
            }
            // Only a request asking for a switch is answered with one (RFC 9110 15.2.2): a
            // proxy in front of the edge could take the visitor's connection for switched.
            let why = format!(
                "the client serving {host} switched protocols though the request asked for no switch"
            );
            return Err((StatusCode::BAD_GATEWAY, why));
        }
        Ok(response.map(|body| inflight::hold(body, place)))
    }
}

/// Where a request goes: a route of a client.
struct Owner {
    route_id: RouteId,
    opener: StreamOpener,
    /// Its session's key in the pool and the in-flight count.
    key: SessionKey,
    /// The session takes a stream per route.
    per_route: bool,
}
