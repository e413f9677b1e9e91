//! Go-style command-line flags, the way `spire-server` and `spire-agent` take them: `-name value`,
//! `-name=value`, `--name value`, boolean flags as `-name` or `-name=true|false`, repeatable flags
//! (`-selector a -selector b`), and `--` ending the flags. Users paste SPIRE commands into their
//! scripts; matching Go's `flag` package keeps those scripts working.

use std::collections::BTreeMap;

/// A flag parse failure; the message is what the user sees.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    /// The flag is not declared for this command.
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    /// A value flag came last on the command line.
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    /// A boolean flag got something other than true/false.
    #[error("invalid boolean value {value:?} for -{name}")]
    BadBool { name: String, value: String },
    /// A flag given twice that may only be given once.
    #[error("flag -{0} given more than once")]
    Repeated(String),
    /// A value that failed to parse (message from the typed parser).
    #[error("invalid value {value:?} for flag -{name}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    /// A required flag is absent.
    #[error("flag -{0} is required")]
    Required(String),
    /// A bare word where only flags are accepted.
    #[error("unexpected argument {0:?}")]
    UnexpectedArg(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Value,
    Multi,
}

#[derive(Debug, Clone)]
struct Spec {
    kind: Kind,
    help: &'static str,
}

/// Declared flags of one command. Build with the `bool`/`value`/`multi` methods, then `parse`.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    specs: BTreeMap<&'static str, Spec>,
}

/// The parsed command line.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    values: BTreeMap<String, Vec<String>>,
    /// Words after the flags (or after `--`).
    pub args: Vec<String>,
}

// === impl FlagSet ===

impl FlagSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A boolean flag (`-name`, `-name=false`).
    pub fn bool(mut self, name: &'static str, help: &'static str) -> Self {
        self.specs.insert(
            name,
            Spec {
                kind: Kind::Bool,
                help,
            },
        );
        self
    }

    /// A flag taking one value; given twice, the last wins (as in Go).
    pub fn value(mut self, name: &'static str, help: &'static str) -> Self {
        self.specs.insert(
            name,
            Spec {
                kind: Kind::Value,
                help,
            },
        );
        self
    }

    /// A repeatable flag whose values accumulate.
    pub fn multi(mut self, name: &'static str, help: &'static str) -> Self {
        self.specs.insert(
            name,
            Spec {
                kind: Kind::Multi,
                help,
            },
        );
        self
    }

    /// Usage text, one flag per line, like Go's `PrintDefaults`.
    pub fn usage(&self) -> String {
        let mut out = String::new();
        for (name, spec) in &self.specs {
            let arg = match spec.kind {
                Kind::Bool => "",
                Kind::Value | Kind::Multi => " value",
            };
            out.push_str(&format!("  -{name}{arg}\n    \t{}\n", spec.help));
        }
        out
    }

    /// Parses `args` (without the program and verb names). Flags stop at the first bare word or
    /// at `--`, as with Go's `flag.Parse`.
    pub fn parse<I, S>(&self, args: I) -> Result<Parsed, FlagError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut it = args.into_iter().map(Into::into).peekable();
        let mut parsed = Parsed::default();
        while let Some(arg) = it.next() {
            if arg == "--" {
                parsed.args.extend(it.by_ref());
                break;
            }
            let Some(body) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                parsed.args.push(arg);
                parsed.args.extend(it.by_ref());
                break;
            };
            if body.is_empty() {
                parsed.args.push(arg);
                parsed.args.extend(it.by_ref());
                break;
            }
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let Some(spec) = self.specs.get(name.as_str()) else {
                return Err(FlagError::Unknown(name));
            };
            let value = match (spec.kind, inline) {
                (Kind::Bool, None) => "true".to_string(),
                (Kind::Bool, Some(v)) => match v.as_str() {
                    "1" | "t" | "T" | "true" | "TRUE" | "True" => "true".to_string(),
                    "0" | "f" | "F" | "false" | "FALSE" | "False" => "false".to_string(),
                    _ => return Err(FlagError::BadBool { name, value: v }),
                },
                (_, Some(v)) => v,
                (_, None) => it
                    .next()
                    .ok_or_else(|| FlagError::MissingValue(name.clone()))?,
            };
            let slot = parsed.values.entry(name).or_default();
            if spec.kind == Kind::Multi {
                slot.push(value);
            } else {
                *slot = vec![value];
            }
        }
        Ok(parsed)
    }
}

// === impl Parsed ===

impl Parsed {
    /// The value of a single-value flag, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(String::as_str)
    }

    /// The value of a flag that must be present.
    pub fn required(&self, name: &str) -> Result<&str, FlagError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| FlagError::Required(name.to_string()))
    }

    /// All values of a repeatable flag, in order.
    pub fn all(&self, name: &str) -> &[String] {
        self.values.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether a boolean flag is set to true.
    pub fn flag(&self, name: &str) -> bool {
        self.get(name) == Some("true")
    }

    /// Whether the flag appeared at all.
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Parses a flag's value with `FromStr`, mapping failures to [`FlagError::Invalid`].
    pub fn parse_opt<T>(&self, name: &str) -> Result<Option<T>, FlagError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e: T::Err| FlagError::Invalid {
                name: name.to_string(),
                value: v.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// Fails if bare words were left over.
    pub fn no_args(&self) -> Result<(), FlagError> {
        match self.args.first() {
            Some(a) => Err(FlagError::UnexpectedArg(a.clone())),
            None => Ok(()),
        }
    }
}

/// Parses a Go `time.Duration`-style string ("1h", "90s", "1h30m", "500ms") or a plain number of
/// seconds into whole seconds. SPIRE configs use both forms.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    parse_duration(s).map(|d| d.as_secs())
}

/// [`parse_duration_secs`] to the millisecond (`"500ms"` is half a second, not zero).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(n));
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {s:?}"))?;
        if digits == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let number = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_ms: u128 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        rest = &rest[unit_len..];
        let too_large = || format!("duration {s:?} is too large");
        // Whole numbers exactly; fractions ("1.5h") through f64, whose 53 bits are plenty
        // for a fraction of a unit.
        let ms = match number.parse::<u128>() {
            Ok(n) => n.checked_mul(unit_ms).ok_or_else(too_large)?,
            Err(_) => {
                let f: f64 = number
                    .parse()
                    .map_err(|_| format!("invalid duration {s:?}"))?;
                let ms = f * unit_ms as f64;
                if !(ms.is_finite() && ms < u64::MAX as f64 * 1000.0) {
                    return Err(too_large());
                }
                // In range (checked above) and non-negative (no sign is accepted).
                ms as u128
            }
        };
        total_ms = total_ms.checked_add(ms).ok_or_else(too_large)?;
    }
    u64::try_from(total_ms)
        .map(std::time::Duration::from_millis)
        .map_err(|_| format!("duration {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> FlagSet {
        FlagSet::new()
            .value("spiffeID", "id")
            .multi("selector", "sel")
            .bool("admin", "adm")
    }

    #[test]
    fn go_forms() {
        let p = set()
            .parse([
                "-spiffeID",
                "spiffe://a/b",
                "--selector=unix:uid:1",
                "-selector",
                "unix:gid:2",
                "-admin",
                "rest",
                "-x",
            ])
            .unwrap();
        assert_eq!(p.get("spiffeID"), Some("spiffe://a/b"));
        assert_eq!(p.all("selector"), ["unix:uid:1", "unix:gid:2"]);
        assert!(p.flag("admin"));
        assert_eq!(p.args, ["rest", "-x"]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            set().parse(["-nope"]).unwrap_err(),
            FlagError::Unknown("nope".into())
        );
        assert_eq!(
            set().parse(["-spiffeID"]).unwrap_err(),
            FlagError::MissingValue("spiffeID".into())
        );
        assert!(matches!(
            set().parse(["-admin=maybe"]).unwrap_err(),
            FlagError::BadBool { .. }
        ));
        let p = set().parse(["-admin=false"]).unwrap();
        assert!(!p.flag("admin"));
        assert_eq!(
            p.required("spiffeID").unwrap_err(),
            FlagError::Required("spiffeID".into())
        );
        assert!(p.parse_opt::<u32>("spiffeID").unwrap().is_none());
        let p = set().parse(["-spiffeID", "x"]).unwrap();
        assert!(p.parse_opt::<u32>("spiffeID").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("3600").unwrap(), 3600);
        assert_eq!(parse_duration_secs("1h").unwrap(), 3600);
        assert_eq!(parse_duration_secs("1h30m").unwrap(), 5400);
        assert_eq!(parse_duration_secs("90s").unwrap(), 90);
        assert_eq!(parse_duration_secs("1.5h").unwrap(), 5400);
        assert!(parse_duration_secs("1x").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("").is_err());
        assert_eq!(parse_duration("500ms").unwrap().as_millis(), 500);
        assert_eq!(parse_duration("1m0.5s").unwrap().as_millis(), 60_500);
    }
}
