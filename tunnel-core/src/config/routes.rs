//! `[[routes]]` of the client's configuration: an HTTP route with the whole set of matches
//! and actions, as plain data.

use std::collections::BTreeMap;

use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use super::HumanDuration;
use crate::http::{
    Answer, Backend, HeaderChanges, HttpAction, HttpRoute, Redirect, Service, DEFAULT_ORIGIN_TIMEOUT,
};
use crate::proto::{HostPattern, HttpMatch, PathMatch};

/// One `[[routes]]` entry.
///
/// ```toml
/// [[routes]]
/// host = "a.example.com"          # or "*.example.com"
/// path = "/api"                   # with path_type = "prefix" (default), "exact" or "regex"
/// methods = ["GET", "POST"]
/// headers = { "x-env" = "canary" }
/// backends = [{ service = "http://127.0.0.1:8081", weight = 80 }, { service = "http://127.0.0.1:8082", weight = 20 }]
/// request_headers = { set = { "x-from" = "tunnel" }, remove = ["cookie"] }
/// host_header = "internal.local"
/// timeout = "30s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// Host: exact, or `*.` then a name (one or more labels).
    pub host: HostPattern,
    /// Path to match (default: any).
    pub path: Option<String>,
    /// How `path` matches: `prefix` (segment-aware, the default), `exact` or `regex`.
    pub path_type: Option<PathType>,
    /// Methods (default: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Headers that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// One service: `http://HOST:PORT`, `https://HOST:PORT` or `http_status:NNN`.
    pub service: Option<Service>,
    /// Several services with weights, for traffic splits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendFile>,
    /// A redirect instead of a service.
    pub redirect: Option<RedirectFile>,
    /// Changes to the request's headers on the way to the origin.
    #[serde(default, skip_serializing_if = "HeaderChangesFile::is_empty")]
    pub request_headers: HeaderChangesFile,
    /// The Host sent to the origin (default: the visitor's).
    pub host_header: Option<String>,
    /// Longest wait for the origin's response headers; then 504 (default `60s`).
    pub timeout: Option<HumanDuration>,
}

/// How a route's path matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathType {
    /// `/api` matches `/api`, `/api/`, `/api/x`, not `/apix`.
    Prefix,
    /// Exactly the path.
    Exact,
    /// A regular expression the whole path must match.
    Regex,
}

/// One of `backends`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendFile {
    /// The service.
    pub service: Service,
    /// Its share (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// `redirect = { scheme, host, port, status }`; unset parts keep the request's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectFile {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// Host.
    pub host: Option<String>,
    /// Port.
    pub port: Option<u16>,
    /// 301, 302 (default), 303, 307 or 308.
    pub status: Option<u16>,
}

/// `request_headers = { set, add, remove }`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderChangesFile {
    /// Replace these headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Add these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Remove these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderChangesFile {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

impl RouteFile {
    /// The route it describes, or what is wrong with it.
    pub fn build(&self) -> Result<HttpRoute, String> {
        let path = match (&self.path, self.path_type) {
            (None, None) => PathMatch::Any,
            (None, Some(_)) => return Err("`path_type` needs a `path`".into()),
            (Some(p), None | Some(PathType::Prefix)) => PathMatch::Prefix(p.clone()),
            (Some(p), Some(PathType::Exact)) => PathMatch::Exact(p.clone()),
            (Some(p), Some(PathType::Regex)) => PathMatch::Regex(p.clone()),
        };
        let matcher = HttpMatch {
            host: self.host.clone(),
            path,
            methods: self.methods.iter().map(|m| m.to_ascii_uppercase()).collect(),
            headers: self.headers.iter().map(|(n, v)| (n.to_ascii_lowercase(), v.clone())).collect(),
        };
        matcher.check()?;
        crate::http::Matcher::new(matcher.clone())?;
        let answer = match (&self.service, self.backends.is_empty(), &self.redirect) {
            (Some(service), true, None) => {
                Answer::Proxy(vec![Backend { service: service.clone(), weight: 1 }])
            }
            (None, false, None) => Answer::Proxy(
                self.backends
                    .iter()
                    .map(|b| Backend { service: b.service.clone(), weight: b.weight })
                    .collect(),
            ),
            (None, true, Some(redirect)) => Answer::Redirect(Redirect {
                scheme: redirect.scheme.clone(),
                host: redirect.host.clone(),
                port: redirect.port,
                status: redirect
                    .status
                    .map(|s| {
                        StatusCode::from_u16(s).map_err(|_| format!("redirect status {s} is not a status"))
                    })
                    .transpose()?,
            }),
            _ => return Err("give exactly one of `service`, `backends` and `redirect`".into()),
        };
        let header = |name: &str| {
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
        };
        let value = |v: &str| HeaderValue::from_str(v).map_err(|_| format!("{v:?} is not a header value"));
        let pairs = |map: &BTreeMap<String, String>| {
            map.iter().map(|(n, v)| Ok((header(n)?, value(v)?))).collect::<Result<Vec<_>, String>>()
        };
        let changes = &self.request_headers;
        let action = HttpAction {
            answer,
            request_headers: HeaderChanges {
                set: pairs(&changes.set)?,
                add: pairs(&changes.add)?,
                remove: changes.remove.iter().map(|n| header(n)).collect::<Result<_, _>>()?,
            },
            host_header: self.host_header.as_deref().map(value).transpose()?,
            timeout: self.timeout.map_or(DEFAULT_ORIGIN_TIMEOUT, |t| t.0),
        };
        action.check()?;
        Ok(HttpRoute { matcher, action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(text: &str) -> Result<HttpRoute, String> {
        let file: RouteFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.build()
    }

    #[test]
    fn a_full_route_builds_with_every_part() {
        let built = route(
            "host = \"*.a.test\"\npath = \"/api\"\nmethods = [\"get\"]\nheaders = { \"X-Env\" = \"canary\" }\n\
             backends = [{ service = \"http://127.0.0.1:1\", weight = 80 }, { service = \"http_status:503\", weight = 20 }]\n\
             request_headers = { set = { \"x-a\" = \"1\" }, add = { \"x-b\" = \"2\" }, remove = [\"cookie\"] }\n\
             host_header = \"internal\"\ntimeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(built.matcher.methods, ["GET"]);
        assert_eq!(built.matcher.headers, [("x-env".to_owned(), "canary".to_owned())]);
        assert_eq!(built.action.total_weight(), 100);
        assert_eq!(built.action.request_headers.remove.len(), 1);
        assert_eq!(built.action.timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn a_route_with_no_answer_or_two_is_refused_naming_the_keys() {
        for (text, needle) in [
            ("host = \"a.test\"\n", "exactly one"),
            (
                "host = \"a.test\"\nservice = \"http_status:404\"\nredirect = { status = 301 }\n",
                "exactly one",
            ),
            (
                "host = \"a.test\"\npath_type = \"exact\"\nservice = \"http_status:404\"\n",
                "`path_type` needs",
            ),
            (
                "host = \"a.test\"\npath = \"(\"\npath_type = \"regex\"\nservice = \"http_status:404\"\n",
                "path expression",
            ),
            ("host = \"a.test\"\nredirect = { status = 200 }\n", "redirect status"),
            ("host = \"a.test\"\nredirect = { port = 0 }\n", "redirect port 0 is not a port"),
            ("host = \"a test\"\nservice = \"http_status:404\"\n", "host"),
            (
                "host = \"a.test\"\nservice = \"http_status:404\"\npath_type = \"glob\"\npath = \"/\"\n",
                "glob",
            ),
        ] {
            let err = route(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
