//! serde for the types that have a text form (`6443,10000-10100`, `worker-*/kubelet`,
//! `2222:127.0.0.1:22`): they are written and read as that text, so a file or a rendered
//! manifest shows them the way the flags take them, and a bad value is refused while parsing,
//! naming its line and key.

use std::fmt::Display;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};

use crate::forward::{
    Glob, IpNet, LocalForwardSpec, PortSet, RemoteForwardSpec, ServiceSpec, SocksSpec, TargetRules, VisitRule,
};
use crate::http::{HttpRoute, Service, TlsRoute};
use crate::tls::Fingerprint;

fn serialize<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn deserialize<'de, T, D>(deserializer: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: Display,
    D: Deserializer<'de>,
{
    String::deserialize(deserializer)?.parse().map_err(D::Error::custom)
}

macro_rules! as_text {
    ($($ty:ty),* $(,)?) => {$(
        impl serde::Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serialize(self, serializer)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserialize(deserializer)
            }
        }
    )*};
}

as_text!(
    PortSet,
    TargetRules,
    Glob,
    VisitRule,
    RemoteForwardSpec,
    LocalForwardSpec,
    SocksSpec,
    IpNet,
    ServiceSpec,
    Fingerprint,
    super::HumanDuration,
    Service,
    HttpRoute,
    TlsRoute,
    crate::proto::HostPattern
);

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Sample {
        ports: PortSet,
        rules: TargetRules,
        visit: Vec<VisitRule>,
        remote: RemoteForwardSpec,
        grace: super::super::HumanDuration,
    }

    #[test]
    fn typed_values_round_trip_through_their_text() {
        let text = "ports = \"6443,10000-10100\"\nrules = \"10.0.0.0/8:10250\"\n\
                    visit = [\"worker-*/kubelet\", \"shared:*/ssh\"]\nremote = \"2222:127.0.0.1:22\"\ngrace = \"90s\"\n";
        let sample: Sample = toml::from_str(text).unwrap();
        let again: Sample = toml::from_str(&toml::to_string(&sample).unwrap()).unwrap();
        assert_eq!(again.ports.to_string(), "6443,10000-10100");
        assert_eq!(again.remote, sample.remote);
        assert_eq!(again.grace, sample.grace);
        assert_eq!(again.visit[1].to_string(), "shared:*/ssh");
    }

    #[test]
    fn a_bad_value_is_refused_with_the_parser_reason() {
        let err = toml::from_str::<Sample>("ports = \"80-\"\n").unwrap_err().to_string();
        assert!(err.contains("port"), "{err}");
    }
}
