//! `sigil-controller`: spire-controller-manager's CRDs (`spire.spiffe.io/v1alpha1`) for Sigil.
//!
//! So far: the custom resource types ([`crd`]), their TTL type ([`duration`]), the CRDs
//! generated from them ([`crds`]), spire-controller-manager's config file ([`config`]), a pod's entry from a ClusterSPIFFEID
//! ([`render`]) the entries and stats of a whole pass ([`plan`]) and the writes that
//! make the server agree ([`diff`]) and the
//! command line ([`cli`]). Watching the API and writing
//! entries come later.

pub mod cli;
pub mod config;
pub mod crd;
pub mod crds;
pub mod diff;
pub mod duration;
pub mod health;
pub mod leader;
pub mod plan;
pub mod render;
