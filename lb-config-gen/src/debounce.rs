//! When to apply: wait for quiet (`min_wait`) after the latest change, but never more than
//! `max_wait` after the first unapplied one. Pure; the caller supplies the clock.

use std::time::Duration;

use tokio::time::Instant;

/// Pending-change timer.
#[derive(Debug, Clone)]
pub struct Debounce {
    min_wait: Duration,
    max_wait: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debounce {
    /// A timer with nothing pending.
    pub fn new(min_wait: Duration, max_wait: Duration) -> Self {
        Self {
            min_wait,
            max_wait: max_wait.max(min_wait),
            first: None,
            last: None,
        }
    }
    /// Records a change at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
    /// Records a change that must be applied at once (start, SIGHUP).
    pub fn urgent(&mut self, now: Instant) {
        self.first = Some(now.checked_sub(self.max_wait).unwrap_or(now));
        self.last = Some(now);
    }
    /// When the pending change is due, if any.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.min_wait).min(first + self.max_wait))
    }
    /// Marks everything applied.
    pub fn clear(&mut self) {
        self.first = None;
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_period_bounded_by_max_wait() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut d = Debounce::new(ms(100), ms(1000));
        assert_eq!(d.due(), None);
        d.changed(t0);
        assert_eq!(d.due(), Some(t0 + ms(100)));
        d.changed(t0 + ms(50));
        assert_eq!(d.due(), Some(t0 + ms(150)));
        // A steady stream of changes cannot postpone past max_wait.
        for i in 1..=20 {
            d.changed(t0 + ms(i * 80));
        }
        assert_eq!(d.due(), Some(t0 + ms(1000)));
        d.clear();
        assert_eq!(d.due(), None);
    }
}
