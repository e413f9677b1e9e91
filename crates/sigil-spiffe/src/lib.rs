//! SPIFFE primitives shared by Sigil's server and agent.
//!
//! - [`id`]: SPIFFE IDs and trust domains, parsed exactly per the SPIFFE ID
//!   specification.
//! - [`selector`]: `type:value` selectors.
//! - [`x509`]: X509-SVID structure checks and chain verification, PEM/DER
//!   helpers.
//! - [`bundle`]: trust bundles and their formats (SPIFFE bundle JSON, JWKS,
//!   DER, PEM).
//! - [`jwk`]: SubjectPublicKeyInfo DER ⇄ JSON Web Key.
//! - [`jwt`]: signing and validating JWT-SVIDs.
//!
//! Cryptography is ring's; certificate parsing is x509-parser's. Nothing
//! here does I/O or reads the clock: callers pass the time in.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
mod der;
pub mod id;
pub mod jwk;
pub mod jwt;
pub mod selector;
pub mod x509;

pub use bundle::{Bundle, BundleError, JwtAuthority};
pub use id::{IdError, SpiffeId, TrustDomain};
pub use jwt::{JwtError, JwtSigner, ValidatedJwt};
pub use selector::{Selector, SelectorError};
pub use x509::SvidError;
