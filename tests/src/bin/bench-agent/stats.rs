//! Samples of durations and the summaries the report prints (nearest-rank percentiles, mean,
//! max), plus the formatting shared by every table.

use std::time::Duration;

/// A set of measured durations.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one measurement.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The nearest-rank percentile `p` (0–100), or `None` without samples.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut sorted = self.0.clone();
        sorted.sort();
        let n = sorted.len();
        if n == 0 {
            return None;
        }
        // Nearest rank: the smallest value with at least p % of the samples at or below it.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        Some(sorted[rank.clamp(1, n) - 1])
    }

    /// The median.
    pub fn p50(&self) -> Option<Duration> {
        self.percentile(50.0)
    }

    /// The largest sample.
    pub fn max(&self) -> Option<Duration> {
        self.0.iter().max().copied()
    }

    /// The arithmetic mean.
    pub fn mean(&self) -> Option<Duration> {
        let n = u32::try_from(self.0.len()).ok().filter(|n| *n > 0)?;
        Some(self.0.iter().sum::<Duration>() / n)
    }
}

/// Milliseconds with a precision that suits the size: `0.123`, `4.56`, `123`.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1e3;
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.0}")
    }
}

/// [`ms`] of an optional value, `–` when absent.
pub fn ms_opt(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), ms)
}

/// `a / b` as `×1.23`, `–` when either is missing or `b` is zero.
pub fn ratio(a: Option<Duration>, b: Option<Duration>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if !b.is_zero() => format!("×{:.2}", a.as_secs_f64() / b.as_secs_f64()),
        _ => "–".to_owned(),
    }
}

/// `met` or `NOT met`.
pub fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**NOT met**" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: &[u64]) -> Samples {
        let mut s = Samples::default();
        for m in ms {
            s.push(Duration::from_millis(*m));
        }
        s
    }

    #[test]
    fn nearest_rank_percentiles() {
        let s = samples(&[5, 1, 4, 2, 3]);
        assert_eq!(s.p50(), Some(Duration::from_millis(3)));
        assert_eq!(s.percentile(99.0), Some(Duration::from_millis(5)));
        assert_eq!(s.percentile(0.0), Some(Duration::from_millis(1)));
        assert_eq!(s.max(), Some(Duration::from_millis(5)));
        assert_eq!(s.mean(), Some(Duration::from_millis(3)));
        assert_eq!(Samples::default().p50(), None);
    }

    #[test]
    fn formatting() {
        assert_eq!(ms(Duration::from_micros(123)), "0.123");
        assert_eq!(ms(Duration::from_micros(4560)), "4.56");
        assert_eq!(ms(Duration::from_millis(123)), "123");
        assert_eq!(
            ratio(
                Some(Duration::from_millis(3)),
                Some(Duration::from_millis(2))
            ),
            "×1.50"
        );
        assert_eq!(ratio(Some(Duration::from_millis(3)), None), "–");
    }
}
