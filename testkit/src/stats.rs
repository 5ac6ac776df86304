//! Latency samples of a benchmark and their one-line summary: n, min, median, p99, max.

use std::time::Duration;

/// Durations, kept in one unit (milliseconds or microseconds).
#[derive(Debug, Clone)]
pub struct Samples {
    unit: &'static str,
    per_second: f64,
    values: Vec<f64>,
}

impl Samples {
    /// Samples shown in milliseconds.
    pub fn ms() -> Self {
        Self::new("ms", 1e3)
    }

    /// Samples shown in microseconds.
    pub fn us() -> Self {
        Self::new("µs", 1e6)
    }

    fn new(unit: &'static str, per_second: f64) -> Self {
        Self {
            unit,
            per_second,
            values: Vec::new(),
        }
    }

    /// Adds one sample.
    pub fn push(&mut self, d: Duration) {
        self.values.push(d.as_secs_f64() * self.per_second);
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there is no sample yet.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q` quantile (0.0..=1.0, nearest rank), in the unit. Panics without samples.
    pub fn quantile(&self, q: f64) -> f64 {
        assert!(!self.values.is_empty(), "no samples");
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = ((sorted.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        sorted[rank]
    }

    /// The median, in the unit.
    pub fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    /// `label  n=…  min …  p50 …  p99 …  max …`, aligned for a table of such lines.
    pub fn line(&self, label: &str) -> String {
        let u = self.unit;
        format!(
            "{label:<36} n={:<4} min {:>9.2} {u}  p50 {:>9.2} {u}  p99 {:>9.2} {u}  max {:>9.2} {u}",
            self.len(),
            self.quantile(0.0),
            self.quantile(0.5),
            self.quantile(0.99),
            self.quantile(1.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank_in_the_unit() {
        let mut s = Samples::ms();
        for ms in [5, 1, 3, 2, 4] {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.len(), 5);
        assert_eq!(s.quantile(0.0), 1.0);
        assert_eq!(s.median(), 3.0);
        assert_eq!(s.quantile(1.0), 5.0);
        let mut us = Samples::us();
        us.push(Duration::from_millis(2));
        assert_eq!(us.median(), 2000.0);
        assert!(us.line("x").contains("p50   2000.00 µs"), "{}", us.line("x"));
    }
}
