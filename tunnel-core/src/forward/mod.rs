//! Forwards: what a client asks the server to publish, and the byte copy that carries a visitor.
//!
//! A remote forward (`-R`) is a port on the server whose visitors become streams to a target near
//! the client. The stream starts with a [`crate::proto::StreamHeader`] naming the forward; then
//! bytes flow both ways unchanged, with each side's FIN carried through.

mod copy;
mod handler;
mod ports;
mod rules;
mod spec;

pub use crate::proto::{IpNet, ProxyProtocol};
pub(crate) use copy::splice_metered;
pub use copy::{copy_until_eof, splice, splice_with, SpliceLimits, SpliceStats, COPY_BUFFER};
pub use handler::{StreamHandler, Target, Visitor};
pub use ports::{PortSet, PortSetError};
pub use rules::{Glob, RuleError, TargetRules, VisitRule};
pub(crate) use spec::check_bind;
pub use spec::{
    LocalForwardSpec, Protocol, RemoteForwardSpec, ServiceSpec, SocksSpec, SpecError, TargetAddr, VisitTarget,
};
