//! The `remote` and `tls` entries of a client's file: a spec alone (`"8080:127.0.0.1:80"`) or
//! a table with the spec and per-entry options.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, HumanDuration};
use crate::forward::RemoteForwardSpec;
use crate::http::TlsRoute;

/// One `remote` entry: a spec alone, or a table with the spec and per-forward options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RemoteEntry {
    /// `"8080:127.0.0.1:80"`.
    Spec(RemoteForwardSpec),
    /// `{ spec = "2222:127.0.0.1:22", idle_timeout = "1h" }`.
    WithOptions(RemoteOptions),
}

/// A remote forward written as a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteOptions {
    /// `[BIND_ADDR:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT`.
    pub spec: RemoteForwardSpec,
    /// Cut a visitor after this long without a byte either way (default: never).
    pub idle_timeout: Option<HumanDuration>,
    /// Write a PROXY protocol header (`"v1"` or `"v2"`) to the target before each visitor's
    /// bytes, so it sees the visitor's address (default: none).
    pub proxy_protocol: Option<crate::forward::ProxyProtocol>,
}

impl RemoteEntry {
    pub(super) fn build(&self) -> Result<RemoteForwardSpec, ConfigError> {
        match self {
            Self::Spec(spec) => Ok(spec.clone()),
            Self::WithOptions(RemoteOptions { spec, idle_timeout, proxy_protocol }) => {
                let mut spec = spec.clone();
                spec.proxy_protocol = *proxy_protocol;
                if let Some(idle) = idle_timeout {
                    if idle.0.is_zero() {
                        return Err(invalid(
                            "remote.idle_timeout",
                            "must be more than 0 (leave it out for no timeout)",
                        ));
                    }
                    spec.idle_timeout = Some(idle.0);
                }
                spec.check().map_err(|e| invalid("remote.proxy_protocol", e.to_string()))?;
                Ok(spec)
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for RemoteEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SpecOrTable::new(RemoteEntry::Spec, RemoteEntry::WithOptions))
    }
}

/// One `tls` entry: a route alone, or a table with the route and its options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TlsEntry {
    /// `"app.example.com=127.0.0.1:443"`.
    Spec(TlsRoute),
    /// `{ spec = "app.example.com=127.0.0.1:443", proxy_protocol = "v2" }`.
    WithOptions(TlsOptions),
}

/// A TLS passthrough route written as a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// `HOST=HOST:PORT`.
    pub spec: TlsRoute,
    /// Write a PROXY protocol header (`"v1"` or `"v2"`) to the origin before each visitor's
    /// bytes, so it sees the visitor's address (default: none).
    pub proxy_protocol: Option<crate::forward::ProxyProtocol>,
}

impl TlsEntry {
    pub(super) fn build(&self) -> TlsRoute {
        match self {
            Self::Spec(route) => route.clone(),
            Self::WithOptions(TlsOptions { spec, proxy_protocol }) => {
                TlsRoute { proxy_protocol: *proxy_protocol, ..spec.clone() }
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for TlsEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SpecOrTable::new(TlsEntry::Spec, TlsEntry::WithOptions))
    }
}

/// Reads a list entry written as a spec string (`S`, by `FromStr`) or as a table of options
/// (`O`), into `T`.
struct SpecOrTable<T, S, O> {
    spec: fn(S) -> T,
    table: fn(O) -> T,
}

impl<T, S, O> SpecOrTable<T, S, O> {
    fn new(spec: fn(S) -> T, table: fn(O) -> T) -> Self {
        Self { spec, table }
    }
}

impl<'de, T, S, O> serde::de::Visitor<'de> for SpecOrTable<T, S, O>
where
    S: std::str::FromStr,
    S::Err: std::fmt::Display,
    O: serde::Deserialize<'de>,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a spec string, or a table with `spec` and options")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map(self.spec).map_err(E::custom)
    }

    fn visit_map<M: serde::de::MapAccess<'de>>(self, map: M) -> Result<T, M::Error> {
        O::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(self.table)
    }
}
