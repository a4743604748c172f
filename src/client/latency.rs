//! [`Latencies`]: how long batches waited for their acknowledgements, in a fixed
//! amount of memory whatever the file size.
//!
//! A log-linear histogram (as HdrHistogram's, much reduced): microseconds fall in
//! buckets whose width doubles at each power of two, each power split in
//! [`SUB_BUCKETS`] equal parts, so a quantile is read to within 1/[`SUB_BUCKETS`]
//! (12.5 %) of its value, from 1 µs to the largest `u64`, in fewer than 500 counters.

use std::time::Duration;

/// Parts each power of two is split into (a power of two itself).
const SUB_BUCKETS: usize = 8;
/// `log2(SUB_BUCKETS)`.
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Rows of buckets above the first: one per power of two from `2^SUB_BITS` to
/// `2^63`, so every `u64` has a bucket.
const POWERS: usize = 64 - SUB_BITS as usize;

/// A histogram of batch → ACK times.
#[derive(Debug, Clone)]
pub struct Latencies {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    /// An empty histogram.
    pub fn new() -> Latencies {
        Latencies {
            counts: vec![0; (POWERS + 1) * SUB_BUCKETS],
            total: 0,
        }
    }

    /// The bucket of `micros`: values below `SUB_BUCKETS` have one bucket each;
    /// above, the power of two picks a row and the next `SUB_BITS` bits the column.
    fn bucket(micros: u64) -> usize {
        if micros < SUB_BUCKETS as u64 {
            // Less than SUB_BUCKETS: fits a usize.
            return micros as usize;
        }
        let power = 63 - micros.leading_zeros(); // >= SUB_BITS
        let column = (micros >> (power - SUB_BITS)) as usize & (SUB_BUCKETS - 1);
        (power - SUB_BITS + 1) as usize * SUB_BUCKETS + column
    }

    /// The smallest value of bucket `index` (the inverse of [`Latencies::bucket`]).
    fn lowest(index: usize) -> u64 {
        let (row, column) = (index / SUB_BUCKETS, (index % SUB_BUCKETS) as u64);
        if row == 0 {
            return column;
        }
        let power = row as u32 + SUB_BITS - 1;
        (1u64 << power) | (column << (power - SUB_BITS))
    }

    /// Counts one batch acknowledged `elapsed` after it was sent.
    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let index = Latencies::bucket(micros).min(self.counts.len() - 1);
        self.counts[index] += 1;
        self.total += 1;
    }

    /// The `q`-quantile (0.5: the median) in microseconds: the middle of the bucket
    /// that holds it; `None` if nothing was counted.
    pub fn quantile_micros(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        // The rank of the quantile, 1..=total.
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let low = Latencies::lowest(index);
                let high = match index + 1 {
                    next if next < self.counts.len() => Latencies::lowest(next),
                    _ => low, // The last bucket: no upper end.
                };
                return Some(low + (high - low) / 2);
            }
        }
        None
    }

    /// `q` as text for the log: microseconds, or `-` if nothing was counted.
    pub fn quantile_text(&self, q: f64) -> String {
        self.quantile_micros(q)
            .map_or_else(|| "-".to_string(), |us| us.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut previous = 0;
        for index in 1..((POWERS + 1) * SUB_BUCKETS) {
            let low = Latencies::lowest(index);
            assert!(
                low > previous,
                "bucket {index} starts at {low} after {previous}"
            );
            assert_eq!(Latencies::bucket(low), index, "value {low}");
            assert_eq!(Latencies::bucket(low - 1), index - 1, "value {}", low - 1);
            previous = low;
        }
    }

    #[test]
    fn quantiles_are_within_an_eighth_of_the_exact_value() {
        let mut h = Latencies::new();
        assert_eq!(h.quantile_micros(0.5), None);
        assert_eq!(h.quantile_text(0.99), "-");
        // 1..=10_000 µs, once each: the median is 5_000, p99 9_900.
        for us in 1..=10_000u64 {
            h.record(Duration::from_micros(us));
        }
        assert_eq!(h.total, 10_000);
        for (q, exact) in [
            (0.5, 5_000f64),
            (0.99, 9_900.0),
            (0.0, 1.0),
            (1.0, 10_000.0),
        ] {
            let got = h.quantile_micros(q).unwrap() as f64;
            assert!(
                (got - exact).abs() <= exact / 8.0 + 1.0,
                "q {q}: {got} for {exact}"
            );
        }
    }

    #[test]
    fn huge_values_land_in_the_last_bucket() {
        let mut h = Latencies::new();
        h.record(Duration::MAX);
        h.record(Duration::from_secs(3600));
        assert_eq!(h.total, 2);
        assert!(h.quantile_micros(0.5).unwrap() >= 3_000_000_000 / 2);
    }
}
