//! Go's `text/template`, for spire-controller-manager's ClusterSPIFFEID templates
//! (`spiffeIDTemplate`, `workloadSelectorTemplates`, `dnsNameTemplates`) and its
//! `parentIDTemplate`.
//!
//! ```
//! use sigil_gotemplate::{DataModel, Template};
//! use serde_json::json;
//!
//! let t = Template::parse(
//!     "spiffeIDTemplate",
//!     "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
//! )?;
//! let data = json!({
//!     "TrustDomain": "example.org",
//!     "PodMeta": {"Name": "web-0", "Namespace": "prod", "Labels": {"app": "web"}},
//!     "PodSpec": {"ServiceAccountName": "web"},
//! });
//! assert_eq!(t.execute(&data)?, "spiffe://example.org/ns/prod/sa/web");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Parse once with [`Template::parse`], execute many times with [`Template::execute`]
//! (or [`Template::execute_with`] and a [`DataModel`]); a [`Template`] is immutable,
//! `Send + Sync`, and cheap to clone (the tree is behind an `Arc`).
//!
//! # Data
//!
//! Data is a [`serde_json::Value`]. Go's templates see Go values; here a JSON object is a
//! Go map or struct (see [`DataModel`]), arrays are slices, numbers are `int` when they are
//! integers and `float64` otherwise. Field names are Go's: spire-controller-manager passes
//! a struct with `TrustDomain`, `ClusterName`, `ClusterDomain`, `PodMeta` and `NodeMeta`
//! (`metav1.ObjectMeta`: `Name`, `Namespace`, `UID`, `Labels`, `Annotations`, ...),
//! `PodSpec` (`ServiceAccountName`, `NodeName`, ...) and `NodeSpec`, so the caller builds
//! JSON with those keys. Map keys (label and annotation names) are used as they are.
//!
//! # Missing labels: `<no value>` versus `""`
//!
//! With Go's default `missingkey=default`, a field-syntax lookup of a key a map does not
//! have yields an invalid `reflect.Value`, whatever the map's element type, and printing
//! one writes `<no value>`. So `{{ .PodMeta.Labels.app }}` on a pod without an `app` label
//! renders `<no value>`: a SPIFFE ID such as `spiffe://td/gateway/<no value>` is then
//! invalid and spire-controller-manager fails the render; in a DNS name or selector it is
//! kept as text. The `index` function is different: for a missing key it returns the zero
//! value of the map's element type, and `ObjectMeta.Labels` is a `map[string]string`, so
//! `{{ index .PodMeta.Labels "app" }}` renders the empty string. This crate does the same:
//! field access on a missing map key is `<no value>`, `index` on a missing key is `""`.
//! (For a `map[string]any`, Go's `index` would give a nil interface, printed `<no
//! value>`; JSON cannot tell the two map types apart and every map in
//! spire-controller-manager's data is a `map[string]string`, so `""` it is.)
//!
//! # Supported
//!
//! Text, comments, trim markers, `{{ pipeline }}`, `if`/`else if`/`else`, `with`/`else
//! with`/`else`, `range` over lists, maps (sorted keys) and integers, with `$v :=` /
//! `$i, $v :=` / `=`, `break`, `continue`, variables and `$`, `|` pipelines,
//! parenthesised pipelines with field chains, string (interpreted and raw), number,
//! character, bool and nil literals, and every builtin: `and`, `or` (short-circuit),
//! `not`, `len`, `index`, `slice`, `print`, `printf`, `println`, `eq` (several operands),
//! `ne`, `lt`, `le`, `gt`, `ge`, `html`, `js`, `urlquery`, and `call` (always an error:
//! data has no functions).
//!
//! # Not supported (all parse or execution errors, never panics)
//!
//! - `define`, `template` and `block` (one template per field; a ParseError);
//! - custom delimiters, a FuncMap, `missingkey` options (spire-controller-manager uses
//!   none);
//! - complex and hexadecimal-float literals;
//! - methods (JSON has none).
//!
//! Differences in detail: error texts name approximate Go types (`struct`, `int`) rather
//! than Go's (`v1.ObjectMeta`, `int32`); structs print their fields in JSON key order;
//! `%v` of a pointer to a struct prints `{...}` where Go prints `&{...}`; `unicode.IsPrint`
//! for `%q` is approximated; execution stops with [`ExecErrorKind::LimitExceeded`]
//! after [`MAX_STEPS`] steps or [`MAX_OUTPUT`] bytes of output, where Go runs on.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod exec;
mod fmt;
mod funcs;
mod lexer;
mod parse;
mod value;

use std::sync::Arc;

use serde_json::Value;

pub use error::{ExecError, ExecErrorKind, ParseError, ParseErrorKind, Position};
pub use value::{DataModel, KUBERNETES_MAP_FIELDS};

/// Output larger than this many bytes stops execution.
pub const MAX_OUTPUT: usize = 1 << 20;

/// Executing more than this many nodes and range iterations stops execution.
pub const MAX_STEPS: usize = 1_000_000;

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    src: String,
    root: parse::List,
}

// === impl Template ===

impl Template {
    /// Parses `text`; `name` appears in error messages (Go's template name).
    pub fn parse(name: &str, text: &str) -> Result<Template, ParseError> {
        let err = |(pos, kind): (usize, ParseErrorKind)| ParseError {
            pos: Position::at(name, text, pos),
            kind,
        };
        let tokens = lexer::lex(text).map_err(err)?;
        let root = parse::parse(tokens, text.len()).map_err(err)?;
        Ok(Template {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                src: text.to_owned(),
                root,
            }),
        })
    }

    /// The name given to [`Template::parse`].
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The source text.
    pub fn source(&self) -> &str {
        &self.inner.src
    }

    /// Executes with every JSON object taken as a Go `map[string]any`
    /// ([`DataModel::maps`]).
    pub fn execute(&self, data: &Value) -> Result<String, ExecError> {
        self.execute_with(data, &DataModel::maps())
    }

    /// Executes with objects typed by `model`.
    pub fn execute_with(&self, data: &Value, model: &DataModel) -> Result<String, ExecError> {
        exec::State::new(&self.inner.name, &self.inner.src, model).run(&self.inner.root, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<Template>();
    }
}
