//! When to renew certificates, and how long to wait after failures.

use std::time::Duration;

use rand::Rng;

/// Relative jitter around the half-life: ±10%, so that SVIDs issued together (an agent start, a
/// mass entry creation) do not all come back to the server in the same second.
pub const JITTER: f64 = 0.10;

/// When to rotate a certificate valid from `start` until `not_after` (Unix seconds), in Unix
/// milliseconds: at half that lifetime, scaled by `1 + JITTER * jitter` with `jitter` in
/// `[-1, 1]`. An empty or inverted window is due immediately.
pub fn rotate_at_ms(start: i64, not_after: i64, jitter: f64) -> i64 {
    let lifetime_ms = (not_after.saturating_sub(start))
        .max(0)
        .saturating_mul(1000);
    let half = lifetime_ms as f64 / 2.0;
    let offset = half * (1.0 + JITTER * jitter.clamp(-1.0, 1.0));
    start.saturating_mul(1000).saturating_add(offset as i64)
}

/// The start of a certificate's lifetime for rotation purposes: its `notBefore`, or when the
/// agent received it if that is later. Servers backdate `notBefore` (SPIRE's and Sigil's by 10s)
/// to absorb clock skew; counting the backdated part would move rotation of short-lived SVIDs
/// to right after issuance (a 10s SVID backdated 10s would be "half-way" on arrival).
pub fn lifetime_start(not_before: i64, received_at: i64) -> i64 {
    not_before.max(received_at)
}

/// [`rotate_at_ms`] from [`lifetime_start`] with a random jitter.
pub fn random_rotate_at_ms(not_before: i64, not_after: i64, received_at: i64) -> i64 {
    rotate_at_ms(
        lifetime_start(not_before, received_at),
        not_after,
        rand::thread_rng().gen_range(-1.0..=1.0),
    )
}

/// Exponential backoff with jitter, 100ms doubling up to a cap.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The server-reconnect backoff: quick first retries (a restarting server is usually back in
    /// well under a second), capped at 5 s.
    pub fn reconnect() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// The next delay (with ±20% jitter), doubling the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        let factor = rand::thread_rng().gen_range(0.8..=1.2);
        base.mul_f64(factor).min(self.max)
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life() {
        // One hour SVID issued at t=1000s: rotate at 1000s + 30min.
        assert_eq!(rotate_at_ms(1000, 4600, 0.0), 1000 * 1000 + 1_800_000);
    }

    #[test]
    fn jitter_bounds() {
        let (nb, na) = (1_000_000, 1_000_000 + 3600);
        let half = 1_800_000;
        assert_eq!(rotate_at_ms(nb, na, -1.0), nb * 1000 + half * 9 / 10);
        assert_eq!(rotate_at_ms(nb, na, 1.0), nb * 1000 + half * 11 / 10);
        // Out-of-range jitter is clamped.
        assert_eq!(rotate_at_ms(nb, na, 5.0), rotate_at_ms(nb, na, 1.0));
        for _ in 0..1000 {
            let t = random_rotate_at_ms(nb, na, 0);
            assert!(
                t >= nb * 1000 + half * 9 / 10 && t <= nb * 1000 + half * 11 / 10,
                "{t}"
            );
        }
    }

    #[test]
    fn backdated_not_before_is_ignored() {
        // A 10s SVID backdated by 10s, received at t=1000: rotate ~5s after receipt, not at once.
        let (nb, na, received) = (990, 1010, 1000);
        let t = random_rotate_at_ms(nb, na, received);
        assert!((1_004_500..=1_005_500).contains(&t), "{t}");
        // A persisted certificate loaded late in its life: half of what is left.
        assert_eq!(rotate_at_ms(lifetime_start(0, 3000), 3600, 0.0), 3_300_000);
    }

    #[test]
    fn degenerate_windows() {
        assert_eq!(rotate_at_ms(100, 100, 0.3), 100_000);
        assert_eq!(rotate_at_ms(100, 50, 0.3), 100_000);
    }

    #[test]
    fn backoff_caps() {
        let mut b = Backoff::reconnect();
        let delays: Vec<_> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(120));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(delays[19] >= Duration::from_secs(4));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }
}
