//! `sigil-controller`: spire-controller-manager for Sigil. It watches the Kubernetes API for the
//! `spire.spiffe.io/v1alpha1` resources (`ClusterSPIFFEID`, `ClusterStaticEntry`) and the pods,
//! namespaces, nodes and EndpointSlices they select, and keeps the server's registration
//! entries what they declare, through the server's admin API.
//!
//! - [`crd`], [`duration`], [`crds`]: the custom resources as Rust types and the CRDs generated
//!   from them (`sigil-controller crds`).
//! - [`config`]: spire-controller-manager's `ControllerManagerConfig` file.
//! - [`render`], [`plan`], [`diff`]: the pure half of a pass: a pod's entry, the entries and
//!   status of a whole pass, the writes that make the server agree.
//! - [`federation`]: ClusterFederatedTrustDomains → the server's federation relationships.
//! - [`cluster`]: the watches and the in-memory objects a pass reads.
//! - [`admin`]: the server's admin API client; [`reconcile`]: one pass, its writes, statuses
//!   and Events; [`run`]: the loop, leadership ([`leader`]), health and metrics ([`health`]).
//! - [`cli`]: the command line.

pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod crd;
pub mod crds;
pub mod diff;
pub mod duration;
pub mod federation;
pub mod health;
pub mod leader;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod run;
