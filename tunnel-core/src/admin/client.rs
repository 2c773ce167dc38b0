//! A client for the admin API: `tunnel-cli admin` uses it, and so can a program (the
//! Kubernetes operator minting credentials).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::Grant;
use crate::auth::Token;
use crate::tls::{ServerTrust, TlsError};
use crate::transport::ClientTransport;

/// Time allowed to connect and to get an answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Largest answer read: a listing of 10,000 sessions is about 3 MiB. Past it, the server is
/// not the API (an operator following a tenant's `adminSecret` must not read gigabytes).
pub(crate) const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Where the admin API is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AdminTarget {
    /// Over TCP with TLS: `HOST:PORT`, how to trust the server's certificate, the admin token.
    Tls {
        /// `HOST:PORT`.
        addr: String,
        /// The server's certificate: pinned or from a CA.
        trust: ServerTrust,
        /// The admin token.
        token: Token,
    },
    /// A UNIX socket.
    Unix(PathBuf),
}

/// Why a request to the admin API failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminClientError {
    /// TLS could not be set up for the server.
    #[error("TLS setup for the admin API")]
    Tls(#[from] TlsError),
    /// The API could not be reached.
    #[error("cannot reach the admin API at {target}")]
    Connect {
        /// Where.
        target: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the exchange with the admin API failed")]
    Http(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The API refused the request.
    #[error("the admin API answered {status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its `error` message.
        message: String,
    },
    /// The client name is not one (it would not stay one path segment).
    #[error("invalid client name: {0}")]
    InvalidName(String),
    /// The answer was not what the API documents.
    #[error("unexpected answer from the admin API: {0}")]
    Unexpected(String),
}

/// A client for one server's admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    target: AdminTarget,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl AdminClient {
    /// A client for `target`.
    pub fn new(target: AdminTarget) -> Result<Self, AdminClientError> {
        let tls = match &target {
            AdminTarget::Tls { trust, .. } => {
                let mut config = (*crate::tls::client_config(trust)?).clone();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(Arc::new(config))
            }
            AdminTarget::Unix(_) => None,
        };
        Ok(Self { target, tls })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Value, AdminClientError> {
        self.request(Method::GET, "/v1/status", None).await
    }

    /// `GET /v1/sessions`: the sessions up, as the API lists them.
    pub async fn sessions(&self) -> Result<Vec<Value>, AdminClientError> {
        list(self.request(Method::GET, "/v1/sessions", None).await?, "sessions")
    }

    /// `GET /v1/routes`.
    pub async fn routes(&self) -> Result<Vec<Value>, AdminClientError> {
        list(self.request(Method::GET, "/v1/routes", None).await?, "routes")
    }

    /// `GET /v1/clients`: the clients with their own token (never their tokens).
    pub async fn clients(&self) -> Result<Vec<Value>, AdminClientError> {
        list(self.request(Method::GET, "/v1/clients", None).await?, "clients")
    }

    /// `POST /v1/clients`: creates client `name`; returns its new token.
    pub async fn create(&self, name: &str, grant: &Grant) -> Result<Token, AdminClientError> {
        let mut body =
            serde_json::to_value(grant).map_err(|e| AdminClientError::Unexpected(e.to_string()))?;
        if let Value::Object(fields) = &mut body {
            fields.insert("name".to_owned(), Value::String(name.to_owned()));
        }
        token(self.request(Method::POST, "/v1/clients", Some(body)).await?)
    }

    /// `POST /v1/clients/NAME/rotate`: returns the client's new token.
    pub async fn rotate(&self, name: &str) -> Result<Token, AdminClientError> {
        checked(name)?;
        token(self.request(Method::POST, &format!("/v1/clients/{name}/rotate"), None).await?)
    }

    /// `PUT /v1/clients/NAME`: gives the client what `grant` allows instead, keeping its
    /// token; returns the clients whose sessions ended (none, unless the new grant no longer
    /// allows what they hold).
    pub async fn regrant(&self, name: &str, grant: &Grant) -> Result<Vec<String>, AdminClientError> {
        checked(name)?;
        let body = serde_json::to_value(grant).map_err(|e| AdminClientError::Unexpected(e.to_string()))?;
        ended(self.request(Method::PUT, &format!("/v1/clients/{name}"), Some(body)).await?)
    }

    /// `DELETE /v1/clients/NAME`: returns the clients whose sessions ended.
    pub async fn revoke(&self, name: &str) -> Result<Vec<String>, AdminClientError> {
        checked(name)?;
        ended(self.request(Method::DELETE, &format!("/v1/clients/{name}"), None).await?)
    }

    /// One request; the JSON answer of a 2xx, else [`AdminClientError::Refused`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminClientError> {
        tokio::time::timeout(TIMEOUT, self.exchange(method, path, body)).await.map_err(|_| {
            AdminClientError::Connect { target: self.describe(), source: std::io::ErrorKind::TimedOut.into() }
        })?
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminClientError> {
        let connect_err = |source| AdminClientError::Connect { target: self.describe(), source };
        let mut request =
            Request::builder().method(method).uri(path).header(http::header::HOST, "tunnel-admin");
        let io: crate::transport::BoxedIo = match (&self.target, &self.tls) {
            (AdminTarget::Tls { addr, token, .. }, Some(tls)) => {
                let mut value = http::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .map_err(|e| AdminClientError::Http(e.into()))?;
                value.set_sensitive(true);
                request = request.header(http::header::AUTHORIZATION, value);
                let transport = ClientTransport::tls(tls.clone(), addr).map_err(|e| {
                    connect_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
                })?;
                transport.connect(addr).await.map_err(|e| connect_err(std::io::Error::other(e)))?.io
            }
            #[cfg(unix)]
            (AdminTarget::Unix(path), _) => {
                Box::new(tokio::net::UnixStream::connect(path).await.map_err(connect_err)?)
            }
            _ => return Err(AdminClientError::Unexpected("no TLS configuration".into())),
        };
        let body = match body {
            Some(body) => {
                request = request.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(body.to_string())
            }
            None => Bytes::new(),
        };
        let request = request.body(Full::new(body)).map_err(|e| AdminClientError::Http(e.into()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| AdminClientError::Http(e.into()))?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| AdminClientError::Http(e.into()))?;
        let status = response.status();
        let bytes = match Limited::new(response.into_body(), MAX_ANSWER).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
                let why = format!("{status}: an answer larger than {MAX_ANSWER} bytes");
                return Err(AdminClientError::Unexpected(why));
            }
            Err(err) => return Err(AdminClientError::Http(err)),
        };
        let answer: Value = serde_json::from_slice(&bytes).map_err(|_| {
            // What a server that is not the API sent: its start only.
            let start = String::from_utf8_lossy(&bytes[..bytes.len().min(256)]).into_owned();
            AdminClientError::Unexpected(format!("{status}: {}", crate::log::Escaped(&start)))
        })?;
        if !status.is_success() {
            let message = answer.get("error").and_then(Value::as_str).unwrap_or_default().to_owned();
            return Err(AdminClientError::Refused { status: status.as_u16(), message });
        }
        Ok(answer)
    }

    fn describe(&self) -> String {
        match &self.target {
            AdminTarget::Tls { addr, .. } => addr.clone(),
            AdminTarget::Unix(path) => path.display().to_string(),
        }
    }
}

/// A name goes into a path: a valid client name only (nothing that a URL reads otherwise).
fn checked(name: &str) -> Result<(), AdminClientError> {
    crate::proto::validate_name(name).map_err(|e| AdminClientError::InvalidName(e.to_string()))
}

fn unexpected(answer: &Value) -> AdminClientError {
    AdminClientError::Unexpected(answer.to_string())
}

fn list(answer: Value, key: &str) -> Result<Vec<Value>, AdminClientError> {
    match answer.get(key) {
        Some(Value::Array(items)) => Ok(items.clone()),
        _ => Err(unexpected(&answer)),
    }
}

fn token(answer: Value) -> Result<Token, AdminClientError> {
    let text = answer.get("token").and_then(Value::as_str).ok_or_else(|| unexpected(&answer))?;
    Token::new(text).map_err(|e| AdminClientError::Unexpected(e.to_string()))
}

/// The `ended` list of an answer.
fn ended(answer: Value) -> Result<Vec<String>, AdminClientError> {
    let ended = answer.get("ended").and_then(Value::as_array).ok_or_else(|| unexpected(&answer))?;
    Ok(ended.iter().filter_map(Value::as_str).map(str::to_owned).collect())
}
