//! SPIRE's domain policy: the discovery document is only served for a `Host` (or
//! `X-Forwarded-Host`) in `domains`, so a request routed here under another name cannot make
//! the provider vouch for an issuer it does not own.
//!
//! SPIRE compares names after IDNA lookup (`idna.Lookup.ToASCII`) and requires them to be
//! punycode already. Sigil keeps that contract for ASCII names: lowercase letters, digits and
//! hyphens in dot-separated labels (STD3), no label starting or ending with a hyphen, no
//! `--` at positions 3-4 except in `xn--` labels; anything else (upper case, non-ASCII) is
//! not in punycode form and refused with SPIRE's message.

use std::collections::HashSet;

/// Why a domain is refused. The text is SPIRE's (the HTTP 400 body).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain {} is not a valid domain name: idna: disallowed rune {}", go_quote(.domain), .rune)]
    Invalid { domain: String, rune: String },
    #[error("domain {} is not a valid domain name: idna: invalid label {}", go_quote(.domain), go_quote(.label))]
    InvalidLabel { domain: String, label: String },
    #[error("domain {} must already be punycode encoded", go_quote(.0))]
    NotPunycode(String),
    #[error("domain {} is not allowed", go_quote(.0))]
    NotAllowed(String),
}

/// The configured `domains`, checked once at start-up.
#[derive(Clone, Debug)]
pub struct DomainPolicy {
    allowed: HashSet<String>,
}

// === impl DomainPolicy ===

impl DomainPolicy {
    /// SPIRE's `DomainAllowlist`: every configured domain must itself be valid.
    pub fn allowlist<'a>(
        domains: impl IntoIterator<Item = &'a String>,
    ) -> Result<Self, DomainError> {
        let allowed = domains
            .into_iter()
            .map(|d| domain_key(d).map(str::to_string))
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether `domain` (a host name without port) may be served.
    pub fn check(&self, domain: &str) -> Result<(), DomainError> {
        let key = domain_key(domain)?;
        if self.allowed.contains(key) {
            Ok(())
        } else {
            Err(DomainError::NotAllowed(domain.to_string()))
        }
    }
}

fn domain_key(domain: &str) -> Result<&str, DomainError> {
    if !domain.is_ascii() || domain.bytes().any(|b| b.is_ascii_uppercase()) {
        // IDNA lookup maps these to another string: not punycode-encoded as written.
        return Err(DomainError::NotPunycode(domain.to_string()));
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.')))
    {
        return Err(DomainError::Invalid {
            domain: domain.to_string(),
            rune: format!("U+{:04X}", u32::from(c)),
        });
    }
    // A trailing dot (a fully-qualified name) leaves an empty last label, which is fine.
    let labels = domain.strip_suffix('.').unwrap_or(domain);
    for label in labels.split('.') {
        let bad_hyphen = label.starts_with('-')
            || label.ends_with('-')
            || (label.get(2..4) == Some("--") && !label.starts_with("xn--"));
        if bad_hyphen {
            return Err(DomainError::InvalidLabel {
                domain: domain.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(domain)
}

/// Go's `%q` for the strings that reach it here (ASCII or not).
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spire_domain_policy() {
        let domains = vec!["oidc.example.org".to_string(), "127.0.0.1".to_string()];
        let p = DomainPolicy::allowlist(&domains).unwrap();
        assert_eq!(p.check("oidc.example.org"), Ok(()));
        assert_eq!(p.check("127.0.0.1"), Ok(()));
        assert_eq!(
            p.check("evil.example.org").unwrap_err().to_string(),
            "domain \"evil.example.org\" is not allowed"
        );
        assert_eq!(
            p.check("OIDC.example.org").unwrap_err().to_string(),
            "domain \"OIDC.example.org\" must already be punycode encoded"
        );
        assert_eq!(
            p.check("bücher.example").unwrap_err().to_string(),
            "domain \"bücher.example\" must already be punycode encoded"
        );
        assert!(matches!(
            p.check("a_b.example"),
            Err(DomainError::Invalid { .. })
        ));
        assert!(matches!(
            p.check("-a.example"),
            Err(DomainError::InvalidLabel { .. })
        ));
        assert_eq!(
            p.check("xn--bcher-kva.example").unwrap_err(),
            DomainError::NotAllowed("xn--bcher-kva.example".into())
        );
        // A configured domain must be valid too.
        assert!(DomainPolicy::allowlist(&["Example.org".to_string()]).is_err());
    }
}
