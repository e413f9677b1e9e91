//! The last few decisions of an engine whose policies read nothing but the peer.
//!
//! Why: inside Envoy the filter runs once per request, and one decision costs little when the
//! CPU caches are warm (about 0.3 µs in V8) but several µs when they are cold, as they are
//! after the rest of a request's work: the peer's SPIFFE ID is parsed, hashed for the
//! principal index and matched against compiled rules spread over the heap. A sidecar's
//! inbound listener sees a handful of callers, most of them again and again, so comparing the
//! peer's URI SAN with a few remembered ones touches far less memory.
//!
//! When: only when no policy (enforced, AUDIT or dry-run) reads anything of the request (no
//! `to` operation, no `when` on a request header; see [`Engine::is_peer_only`]), so that the
//! whole [`Evaluation`] is a function of the URI SAN, and only for mutual-TLS peers (the
//! others are decided at once without a lookup). The engine never changes after it is
//! compiled, and a new configuration compiles a new engine with an empty memory.
//!
//! [`Engine::is_peer_only`]: crate::Engine::is_peer_only

use super::Evaluation;

/// How many peers' decisions are remembered (replaced in turn).
const ENTRIES: usize = 4;
/// URI SANs longer than this are not remembered (no valid SPIFFE ID is).
const MAX_KEY: usize = 2048;

/// Remembered decisions, keyed by the exact URI SAN.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recent {
    entries: [Option<(Box<str>, Evaluation)>; ENTRIES],
    next: usize,
}

impl Recent {
    pub(crate) fn get(&self, uri_san: &str) -> Option<&Evaluation> {
        self.entries
            .iter()
            .flatten()
            .find(|(k, _)| **k == *uri_san)
            .map(|(_, ev)| ev)
    }

    pub(crate) fn remember(&mut self, uri_san: &str, ev: &Evaluation) {
        if uri_san.len() > MAX_KEY {
            return;
        }
        self.entries[self.next] = Some((uri_san.into(), ev.clone()));
        self.next = (self.next + 1) % ENTRIES;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{DecidedBy, Verdict};

    fn ev(i: usize) -> Evaluation {
        Evaluation {
            verdict: Verdict {
                allowed: true,
                decided_by: DecidedBy::Policy(i),
            },
            dry_run: None,
            audited: vec![],
        }
    }

    #[test]
    fn remembers_the_last_entries_by_exact_key() {
        let mut r = Recent::default();
        for i in 0..ENTRIES + 1 {
            r.remember(&format!("spiffe://td/{i}"), &ev(i));
        }
        // The oldest was replaced; the others answer with their own evaluation.
        assert_eq!(r.get("spiffe://td/0"), None);
        for i in 1..ENTRIES + 1 {
            assert_eq!(r.get(&format!("spiffe://td/{i}")), Some(&ev(i)));
        }
        assert_eq!(r.get("spiffe://td/1/"), None);
        assert_eq!(r.get("spiffe://td/"), None);
        r.remember(&"x".repeat(MAX_KEY + 1), &ev(9));
        assert_eq!(r.get(&"x".repeat(MAX_KEY + 1)), None);
    }
}
