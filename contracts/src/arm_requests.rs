//! The requests a rollout's arms were answered, as serving replicas publish them on `/metrics`
//! and the rollout controller reads them back: one histogram of answer times, labelled by
//! rollout, step, arm, version and status class.
//!
//! ```text
//! adrank_serving_rollout_request_seconds_bucket{rollout="3",step="1",arm="candidate",version="7",status="2xx",le="0.0125"} 41
//! ```
//!
//! Each replica counts from its start, so the controller sums the replicas' series as they stand:
//! the figures of a step are the series of that step, and no state of its own is needed. Every
//! replica uses the same bucket bounds ([`buckets`]), so their counts add bucket by bucket.

use std::collections::BTreeMap;

use crate::exposition::labels;

/// The histogram's name.
pub const METRIC: &str = "adrank_serving_rollout_request_seconds";

/// The bucket upper bounds in seconds: 0.5 ms to 10 s, each about 1.25 times the last, so that a
/// quantile read from them is within a quarter of the truth.
pub fn buckets() -> Vec<f64> {
    let mut bounds: Vec<f64> = vec![0.0005];
    while bounds[bounds.len() - 1] < 10.0 {
        let next = bounds[bounds.len() - 1] * 1.25;
        // Four significant digits: bounds that read well on `/metrics`.
        let scale = 10f64.powi(3 - next.log10().floor() as i32);
        bounds.push((next * scale).round() / scale);
    }
    bounds
}

/// The label value for an HTTP status: `2xx`, `4xx` (429 included: refused under load), `5xx`.
pub fn status_class(status: u16) -> &'static str {
    match status {
        500.. => "5xx",
        400.. => "4xx",
        300.. => "3xx",
        _ => "2xx",
    }
}

/// Which series: a rollout's step's arm.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArmStep {
    pub rollout: u64,
    pub step: usize,
    pub arm: String,
}

/// One arm's requests at one step (or summed over several).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmRequests {
    /// Every answered request, whatever its status.
    pub requests: u64,
    /// Answered with a 5xx status: the server's failure.
    pub errors: u64,
    /// Answer times of the successful (2xx) requests: cumulative counts by bucket upper bound,
    /// ascending, the last `+Inf`.
    pub ok_buckets: Vec<(f64, u64)>,
}

impl ArmRequests {
    /// Successful requests.
    pub fn ok(&self) -> u64 {
        self.ok_buckets.last().map_or(0, |&(_, n)| n)
    }

    /// Adds another's counts (another replica's, or another step's).
    pub fn add(&mut self, other: &ArmRequests) {
        self.requests += other.requests;
        self.errors += other.errors;
        for &(bound, count) in &other.ok_buckets {
            match self.ok_buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, n)) => *n += count,
                None => self.ok_buckets.push((bound, count)),
            }
        }
        self.ok_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// The `q` quantile of the successful requests' answer times, in seconds, interpolated
    /// within its bucket as Prometheus' `histogram_quantile` does; `None` without requests.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.ok();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(bound, count) in &self.ok_buckets {
            if count as f64 >= rank && count > below {
                if bound.is_infinite() {
                    return Some(lower);
                }
                return Some(lower + (bound - lower) * (rank - below as f64) / (count - below) as f64);
            }
            (lower, below) = (bound, count);
        }
        Some(lower)
    }

    /// The successful requests slower than `seconds`, counted from the first bucket bound at or
    /// above it (so never more than the truth), with that bound; `None` when no finite bound is.
    pub fn slower_than(&self, seconds: f64) -> Option<(f64, u64)> {
        let &(bound, within) = self.ok_buckets.iter().find(|(b, _)| *b >= seconds && b.is_finite())?;
        Some((bound, self.ok() - within))
    }
}

/// Reads the rollout histogram's series out of a Prometheus text exposition, by arm and step.
/// Other metrics are skipped; a malformed line of this one is an error naming it.
pub fn parse(text: &str) -> Result<BTreeMap<ArmStep, ArmRequests>, String> {
    let mut arms: BTreeMap<ArmStep, ArmRequests> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(METRIC) else { continue };
        let (series, rest) = if let Some(rest) = rest.strip_prefix("_bucket{") {
            (Series::Bucket, rest)
        } else if let Some(rest) = rest.strip_prefix("_count{") {
            (Series::Count, rest)
        } else {
            continue;
        };
        let bad = |why: &str| format!("{why} in `{line}`");
        let (labels, value) = labels(rest).ok_or_else(|| bad("malformed labels"))?;
        let value = value.split_whitespace().next().ok_or_else(|| bad("no value"))?;
        let count = value.parse::<f64>().map_err(|_| bad("a value that is not a number"))?;
        let count = count.max(0.0) as u64;
        let label = |name: &str| labels.get(name).ok_or_else(|| bad(&format!("no `{name}` label")));
        let key = ArmStep {
            rollout: label("rollout")?.parse().map_err(|_| bad("a rollout that is not a number"))?,
            step: label("step")?.parse().map_err(|_| bad("a step that is not a number"))?,
            arm: label("arm")?.clone(),
        };
        let status = label("status")?.as_str();
        let arm = arms.entry(key).or_default();
        match series {
            Series::Count => {
                arm.requests += count;
                if status == "5xx" {
                    arm.errors += count;
                }
            }
            Series::Bucket if status == "2xx" => {
                let le = label("le")?;
                let bound = le.parse::<f64>().map_err(|_| bad("an `le` that is not a number"))?;
                arm.add(&ArmRequests { ok_buckets: vec![(bound, count)], ..ArmRequests::default() });
            }
            Series::Bucket => {}
        }
    }
    Ok(arms)
}

enum Series {
    Bucket,
    Count,
}

#[cfg(test)]
mod tests;
