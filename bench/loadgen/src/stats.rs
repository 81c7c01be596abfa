//! Latency samples (µs) and percentiles.

#[derive(Default)]
pub struct Samples(pub Vec<u32>);

impl Samples {
    pub fn push_us(&mut self, us: u64) {
        self.0.push(us.min(u32::MAX as u64) as u32);
    }

    pub fn merge(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    /// Percentiles in µs (nearest rank) as JSON; sorts in place.
    pub fn summary(&mut self) -> serde_json::Value {
        let v = &mut self.0;
        v.sort_unstable();
        let n = v.len();
        let pct = |p: f64| -> Option<u32> {
            if n == 0 {
                return None;
            }
            let rank = ((p / 100.0) * n as f64).ceil() as usize;
            Some(v[rank.clamp(1, n) - 1])
        };
        let mean = if n > 0 {
            Some(v.iter().map(|x| *x as f64).sum::<f64>() / n as f64)
        } else {
            None
        };
        serde_json::json!({
            "count": n,
            "mean_us": mean,
            "p50_us": pct(50.0),
            "p90_us": pct(90.0),
            "p99_us": pct(99.0),
            "p999_us": pct(99.9),
            "max_us": v.last(),
        })
    }
}
