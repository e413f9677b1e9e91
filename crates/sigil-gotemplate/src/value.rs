//! Runtime values: JSON data seen through Go's type system.
//!
//! Go's template engine works on reflected Go values, and a few of its rules depend on the
//! Go type: a missing key in a map yields "no value" while a missing struct field is an
//! error; a nil pointer prints `<nil>`, a nil map `map[]`. JSON only says "object" and
//! "null", so [`DataModel`] says which objects stand for structs and which for maps, and
//! every [`Val`] drawn from the data remembers which it is.

use std::borrow::Cow;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// How JSON objects in the data map onto Go types.
///
/// - [`DataModel::maps`] (the default): every object is a Go `map[string]any`, as if the
///   data had been decoded with `json.Unmarshal` into an `any`. A missing key is never an
///   error: `.Missing` renders `<no value>`.
/// - [`DataModel::structs`]: objects are Go structs, except the values of the listed field
///   names, which are maps (`Labels`, `Annotations`, ...). `.Missing` on a struct is an
///   error, as a mistyped field name is in Go (`can't evaluate field Lables in type
///   struct`); a listed map field absent from its struct is a nil map (Go's zero value),
///   so a pod without labels still renders `<no value>` for `.PodMeta.Labels.app`. In this
///   mode the caller must give every struct all the Go fields a template may name, with
///   zero values (`""`, `0`, `false`) for unset ones, because only the caller knows their
///   types; a `null` field is a nil pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataModel {
    structs: bool,
    map_fields: BTreeSet<String>,
}

/// The map-typed fields of the Kubernetes types spire-controller-manager hands to its
/// templates (`metav1.ObjectMeta`, `corev1.PodSpec`, `corev1.NodeSpec`): all
/// `map[string]string`.
pub const KUBERNETES_MAP_FIELDS: &[&str] = &["Labels", "Annotations", "NodeSelector"];

// === impl DataModel ===

impl DataModel {
    /// Every object is a `map[string]any`.
    pub fn maps() -> Self {
        Self::default()
    }

    /// Objects are structs, except the values of fields named in `map_fields`.
    pub fn structs<I, S>(map_fields: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        DataModel {
            structs: true,
            map_fields: map_fields.into_iter().map(Into::into).collect(),
        }
    }

    /// [`DataModel::structs`] with [`KUBERNETES_MAP_FIELDS`]: spire-controller-manager's
    /// template data (`TrustDomain`, `ClusterName`, `ClusterDomain`, `PodMeta`, `PodSpec`,
    /// `NodeMeta`, `NodeSpec`).
    pub fn kubernetes() -> Self {
        Self::structs(KUBERNETES_MAP_FIELDS.iter().copied())
    }

    /// How the root of the data is seen.
    pub(crate) fn root_ctx(&self) -> Ctx {
        if self.structs { Ctx::Struct } else { Ctx::Any }
    }

    /// The context of the value of field `name` of a struct.
    pub(crate) fn field_ctx(&self, name: &str) -> Ctx {
        if self.map_fields.contains(name) {
            Ctx::MapField
        } else {
            Ctx::Struct
        }
    }

    pub(crate) fn is_map_field(&self, name: &str) -> bool {
        self.map_fields.contains(name)
    }
}

/// The Go static type a JSON value stands for, decided by where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctx {
    /// Inside a `map[string]any` (or `[]any`): objects are maps, null is a nil interface.
    Any,
    /// A struct field: objects are structs, null is a nil pointer.
    Struct,
    /// A map-typed struct field: an object or null is a `map[string]string`.
    MapField,
}

/// A value during execution. Composite values borrow from the data: no builtin creates a
/// list or map, so they never need owning.
#[derive(Debug, Clone)]
pub(crate) enum Val<'d> {
    /// Go's invalid `reflect.Value`: what a missing map key yields. Prints `<no value>`.
    NoValue,
    /// An untyped nil: the `nil` literal, or a null inside a `map[string]any`.
    Nil,
    /// A nil pointer (null in a struct field).
    NilPtr,
    /// A nil map (null or absent map-typed struct field).
    NilMap,
    Bool(bool),
    Int(i64),
    /// Unsigned: JSON integers above `i64::MAX`, and bytes from `index`/`slice` on strings.
    Uint(u64),
    Float(f64),
    Str(Cow<'d, str>),
    /// Elements are seen in `Ctx`.
    List(&'d [Value], Ctx),
    /// A Go map; values are seen as `Ctx::Any` (`map[string]any`) or, for a map field,
    /// as strings in practice.
    Map(&'d Map<String, Value>),
    Struct(&'d Map<String, Value>),
}

// === impl Val ===

impl<'d> Val<'d> {
    /// A JSON value in its context.
    pub(crate) fn from_json(v: &'d Value, ctx: Ctx) -> Self {
        match v {
            Value::Null => match ctx {
                Ctx::Any => Val::Nil,
                Ctx::Struct => Val::NilPtr,
                Ctx::MapField => Val::NilMap,
            },
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Val::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Val::Uint(u)
                } else {
                    Val::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Array(a) => Val::List(
                a,
                if ctx == Ctx::Struct {
                    Ctx::Struct
                } else {
                    Ctx::Any
                },
            ),
            Value::Object(m) => match ctx {
                Ctx::Struct => Val::Struct(m),
                Ctx::Any | Ctx::MapField => Val::Map(m),
            },
        }
    }

    /// Go's truth: false, 0, nil, empty string/list/map are false; structs are true.
    pub(crate) fn truth(&self) -> bool {
        match self {
            Val::NoValue | Val::Nil | Val::NilPtr | Val::NilMap => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Uint(u) => *u != 0,
            Val::Float(f) => *f != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::List(l, _) => !l.is_empty(),
            Val::Map(m) => !m.is_empty(),
            Val::Struct(_) => true,
        }
    }

    /// A Go-like type name for error messages.
    pub(crate) fn type_name(&self) -> String {
        match self {
            Val::NoValue => "<invalid>".into(),
            Val::Nil => "interface {}".into(),
            Val::NilPtr => "*struct".into(),
            Val::NilMap => "map[string]string".into(),
            Val::Bool(_) => "bool".into(),
            Val::Int(_) => "int".into(),
            Val::Uint(_) => "uint".into(),
            Val::Float(_) => "float64".into(),
            Val::Str(_) => "string".into(),
            Val::List(..) => "[]interface {}".into(),
            Val::Map(_) => "map[string]interface {}".into(),
            Val::Struct(_) => "struct".into(),
        }
    }

    /// Whether Go's `fmt` treats this operand as a string (for `print`'s spacing rule).
    pub(crate) fn is_string(&self) -> bool {
        matches!(self, Val::Str(_))
    }
}

/// The entries of a map in Go's iteration order for `range` and printing: sorted keys.
pub(crate) fn sorted_entries(m: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}
