//! One block of a configuration file and typed reads of its keys.

use serde_json::{Map, Value};

use crate::ConfigError;

/// The keys of one block (`agent {}`, `health_checks {}`, a plugin's `plugin_data {}`, the file
/// itself), consumed as they are read: whatever is left when the reader is done is a key Sigil
/// does not know, and [`Block::finish`] names it.
///
/// A block written several times (`server {} server {}`, or SPIRE's JSON form, where blocks are
/// arrays of objects) is one block: later keys win.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Block {
    /// How errors name this block: `agent block`, `sds block`, `config file`.
    what: String,
    entries: Map<String, Value>,
}

/// Parses a configuration file: HCL, or JSON (SPIRE accepts both; a document starting with `{`
/// is JSON, which HCL's parser would reject). The result is the top level, named `config file`.
pub fn parse(text: &str) -> Result<Block, ConfigError> {
    let parse_error = |message: String| ConfigError::Parse {
        path: None,
        message,
    };
    let root: Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?
    } else {
        hcl::from_str(text).map_err(|e| parse_error(e.to_string()))?
    };
    match root {
        Value::Object(entries) => Ok(Block::new("config file", entries)),
        _ => Err(parse_error("the top level must be a body of blocks".into())),
    }
}

// === impl Block ===

impl Block {
    pub fn new(what: impl Into<String>, entries: Map<String, Value>) -> Self {
        Self {
            what: what.into(),
            entries,
        }
    }

    /// The value of `key` as a block: one object, or several (an array of objects) merged.
    /// Anything else is an error naming `key`.
    pub(crate) fn from_value(key: &str, what: String, value: Value) -> Result<Self, ConfigError> {
        let mut entries = Map::new();
        for object in objects(key, value)? {
            entries.extend(object);
        }
        Ok(Self::new(what, entries))
    }

    /// How errors name this block.
    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys not read yet.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Takes every key not read yet (for blocks whose keys are names, such as `plugins`).
    pub(crate) fn drain(self) -> impl Iterator<Item = (String, Value)> {
        self.entries.into_iter()
    }

    /// A nested block (`sds {}` in `agent {}`), named `what` in errors.
    pub fn block(&mut self, key: &str, what: &str) -> Result<Option<Block>, ConfigError> {
        self.entries
            .remove(key)
            .map(|v| Self::from_value(key, what.to_string(), v))
            .transpose()
    }

    /// Labelled blocks (`federates_with "td" { ... }`, `profile "https_web" { ... }`): each
    /// label with its body, in label order. HCL and JSON both give `{label: {body}}`.
    pub fn labelled(&mut self, key: &str, what: &str) -> Result<Vec<(String, Block)>, ConfigError> {
        let Some(v) = self.entries.remove(key) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for object in objects(key, v)? {
            for (label, body) in object {
                let named = format!("{what} \"{label}\"");
                out.push((label, Self::from_value(key, named, body)?));
            }
        }
        Ok(out)
    }

    /// A scalar as text: a string, or a number or boolean as written.
    pub fn string(&mut self, key: &str) -> Result<Option<String>, ConfigError> {
        self.entries
            .remove(key)
            .map(|v| scalar(key, &v))
            .transpose()
    }

    /// `true` or `false`, also quoted (in any case), as SPIRE's examples write them. Anything
    /// else is an error: `"treu"` must not read as `false`.
    pub fn bool(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(v) = self.entries.remove(key) else {
            return Ok(None);
        };
        match &v {
            Value::Bool(b) => Ok(Some(*b)),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
            _ => Err(type_error(key, "true or false")),
        }
    }

    /// An integer, also quoted.
    pub fn integer(&mut self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(text) = self.string(key)? else {
            return Ok(None);
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|e| ConfigError::invalid(key, e))
    }

    /// A duration (`"1h"`, `"90s"`, plain seconds).
    pub fn duration(&mut self, key: &str) -> Result<Option<std::time::Duration>, ConfigError> {
        self.string(key)?
            .map(|s| crate::parse_duration(key, &s))
            .transpose()
    }

    /// A list of scalars; a single scalar is a list of one.
    pub fn strings(&mut self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(v) = self.entries.remove(key) else {
            return Ok(None);
        };
        match &v {
            Value::Array(items) => items.iter().map(|i| scalar(key, i)).collect(),
            other => scalar(key, other).map(|s| vec![s]),
        }
        .map(Some)
    }

    /// Ends reading: a key still here is one nobody knows.
    pub fn finish(self) -> Result<(), ConfigError> {
        match self.entries.into_iter().next() {
            Some((key, _)) => Err(ConfigError::UnsupportedKey {
                key,
                block: self.what,
            }),
            None => Ok(()),
        }
    }
}

/// One object or an array of objects (a repeated block), else an error naming `key`.
pub(crate) fn objects(key: &str, value: Value) -> Result<Vec<Map<String, Value>>, ConfigError> {
    match value {
        // JSON configs write an empty block as `null` (SPIRE's Helm chart:
        // `"memory": {"plugin_data": null}`); HCL's decoder takes it as empty.
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => Ok(vec![m]),
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(m) => Ok(m),
                _ => Err(type_error(key, "a block")),
            })
            .collect(),
        _ => Err(type_error(key, "a block")),
    }
}

fn scalar(key: &str, v: &Value) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(type_error(key, "a string, number or boolean")),
    }
}

fn type_error(key: &str, expected: &'static str) -> ConfigError {
    ConfigError::Type {
        key: key.to_string(),
        expected,
    }
}
