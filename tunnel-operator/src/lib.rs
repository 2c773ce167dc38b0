//! A Kubernetes operator for the tunnel: `Tunnel` and `ClusterTunnel` resources, Ingresses and
//! Gateway API HTTPRoutes from any namespace served through one tunnel, connectors run as
//! Deployments.
//!
//! # Layout
//! - [`crd`]: the two custom resources, their spec and status (CEL rules in the schema).
//! - [`schema`]: the schema's other rules (bounds, lengths, patterns), checked as the API server
//!   checks them.
//! - [`gateway`]: the Gateway API objects read (HTTPRoute, Gateway, GatewayClass, ReferenceGrant).
//! - [`objects`]: the objects of a cluster as one value ([`objects::Cluster`]), from watches or
//!   from YAML files.
//! - [`conditions`]: status conditions that keep their transition time while they hold.
//! - [`tunnels`]: tunnels by key, and which tunnel an Ingress or HTTPRoute names.
//! - [`routes`], [`ingress`], [`httproute`]: Ingresses and HTTPRoutes into `tunnel-core` routes
//!   (`RouteFile`), with notes on what cannot be served.
//! - [`assign`]: the claims of every object decided into each tunnel's routes: which namespace
//!   holds a host, what fits the budgets, recorded in the tunnel's `status.hosts`.
//! - [`patch`]: `deployPatch` (strategic merge or JSON Patch).
//! - [`connector`]: the connector's configuration (`tunnel-core`'s `ClientFile`), ConfigMap and
//!   Deployment.
//! - [`reconcile`]: the whole decision as one pure function, [`reconcile::desired`].
//! - [`render`]: the objects and statuses of a decision as YAML documents.
//! - [`controller`]: the watches, the per-tunnel reconcile that applies a decision (admin API,
//!   finalizer, statuses, Events) and leader election.
//!
//! Each module uses only those listed before it.

pub mod assign;
pub mod conditions;
pub mod connector;
pub mod controller;
pub mod crd;
pub mod gateway;
pub mod httproute;
pub mod ingress;
pub mod objects;
pub mod patch;
pub mod reconcile;
pub mod render;
pub mod routes;
pub mod schema;
pub mod tunnels;
