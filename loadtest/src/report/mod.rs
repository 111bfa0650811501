//! What a load test leaves behind: a JSON document with every figure, and one self-contained
//! HTML page that draws them ([`html`]).

pub mod html;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    generator::{LATE, RunReport, Second, Slo, Step, SweepPlan, knee, per_second},
    ranking::{Business, ClickDelivery, ServerTimings},
};

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub title: String,
    pub target: String,
    /// `open loop`, `closed loop`; with `sweep` when the rate was swept.
    pub mode: String,
    pub arrivals: String,
    pub connections: usize,
    /// The run the latency figures describe: the only run, or a sweep's knee.
    pub run: RunSummary,
    pub series: Vec<Second>,
    /// The latency percentile curve of `run` (HdrHistogram's plot).
    pub percentiles: Vec<Percentile>,
    pub sweep: Option<SweepSummary>,
    pub server: Option<ServerSummary>,
    /// Closed loop: business figures by model version (`name/version`).
    pub versions: Vec<VersionFigures>,
    /// Closed loop: the same by simulated hour, each version beside the rankings of its requests.
    pub hours: Vec<HourFigures>,
    pub clicks: Option<ClickDelivery>,
    /// `adrank demo`: what the loop did while the load ran (versions, gates, rollout steps,
    /// decisions), in order, and the run's one-line verdict.
    pub timeline: Vec<LoopEvent>,
    pub verdict: Option<String>,
}

/// One thing the loop did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoopEvent {
    /// Seconds since the load started (negative: before it).
    pub at_s: f64,
    /// `version`, `cycle`, `rollout`, `injected`.
    pub kind: String,
    /// The model version it concerns.
    pub version: Option<u64>,
    pub text: String,
}

/// One version's figures over one simulated hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HourFigures {
    /// The hour's start, ms since the Unix epoch (simulated time).
    pub hour_ms: i64,
    pub version: String,
    pub requests: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub ctr: f64,
    pub rpm: f64,
    pub expected_rpm: f64,
    pub oracle_rpm: f64,
    pub ceiling_rpm: f64,
    pub bid_only_rpm: f64,
}

/// Every (hour, version) with requests, oldest first.
pub fn hours(hourly: &BTreeMap<(i64, String), Business>) -> Vec<HourFigures> {
    hourly
        .iter()
        .map(|((hour_ms, version), b)| {
            let per_mille = 1000.0 / b.requests.max(1) as f64;
            HourFigures {
                hour_ms: *hour_ms,
                version: version.clone(),
                requests: b.requests,
                impressions: b.impressions,
                clicks: b.clicks,
                ctr: b.ctr(),
                rpm: b.rpm(),
                expected_rpm: b.expected_revenue * per_mille,
                oracle_rpm: b.oracle_revenue * per_mille,
                ceiling_rpm: b.ceiling_revenue * per_mille,
                bid_only_rpm: b.bid_only_revenue * per_mille,
            }
        })
        .collect()
}

/// One run's client-side figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub rate: f64,
    pub achieved_rate: f64,
    pub scheduled: u64,
    pub measured: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without a reply, by kind (`connect`, `timeout`, `protocol`).
    pub failures: BTreeMap<String, u64>,
    /// Sent more than `late_threshold_ms` after their intended time: the generator fell behind.
    pub late: u64,
    pub late_threshold_ms: f64,
    /// From the intended send time: `p50`, `p90`, `p99`, `p99.9`, `max`.
    pub latency_ms: BTreeMap<String, f64>,
}

impl RunSummary {
    pub fn of(report: &RunReport) -> Self {
        let h = &report.latency_us;
        let latency_ms = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)]
            .into_iter()
            .map(|(name, q)| (name.to_string(), report.latency_ms(q)))
            .chain(std::iter::once(("max".to_string(), h.max() as f64 / 1000.0)))
            .collect();
        Self {
            rate: report.rate,
            achieved_rate: report.achieved_rate,
            scheduled: report.scheduled,
            measured: report.samples.len() as u64,
            statuses: report.statuses.clone(),
            failures: report.failures.iter().map(|(f, n)| (format!("{f:?}").to_lowercase(), *n)).collect(),
            late: report.late,
            late_threshold_ms: LATE.as_secs_f64() * 1000.0,
            latency_ms,
        }
    }
}

/// A point of the percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentile {
    pub percentile: f64,
    pub ms: f64,
}

/// Points at 0, 90, 99, 99.9 … percent and a few between, up to what the run can resolve.
pub fn percentiles(report: &RunReport) -> Vec<Percentile> {
    let h = &report.latency_us;
    if h.is_empty() {
        return Vec::new();
    }
    // Tenths of a decade of 1/(1-q): evenly spaced on the plot's logarithmic axis.
    let resolvable = (h.len() as f64).log10();
    (0..=60)
        .map(|k| f64::from(k) / 10.0)
        .take_while(|decades| *decades <= resolvable)
        .map(|decades| {
            let q = 1.0 - 10f64.powf(-decades);
            Percentile { percentile: 100.0 * q, ms: h.value_at_quantile(q) as f64 / 1000.0 }
        })
        .collect()
}

/// A rate sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepSummary {
    pub slo: Slo,
    pub plan: SweepPlan,
    pub steps: Vec<Step>,
    /// The highest offered rate that held the SLO with no errors.
    pub knee: Option<f64>,
}

impl SweepSummary {
    pub fn new(slo: Slo, plan: SweepPlan, steps: Vec<Step>) -> Self {
        let knee = knee(&steps).map(|s| s.rate);
        Self { slo, plan, steps, knee }
    }
}

/// Percentiles of one stage, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StageSummary {
    pub mean: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// The server's timing breakdown over the measured replies.
#[derive(Debug, Clone, Serialize)]
pub struct ServerSummary {
    pub replies: u64,
    /// `features`, `queue`, `inference`, `total` (inside the server), and `outside`: the
    /// client's latency minus the server's total at the same percentile (network, HTTP, the
    /// generator's own scheduling).
    pub stages: BTreeMap<String, StageSummary>,
    pub batch_rows_mean: f64,
    pub batch_rows_p50: u64,
    pub degraded: u64,
    pub unparsable: u64,
    /// Replies by the model version that scored them (`name/version`).
    pub versions: BTreeMap<String, u64>,
}

impl ServerSummary {
    /// `None` when no reply carried timings (not the ranking API).
    pub fn of(timings: &ServerTimings, client: &RunReport) -> Option<Self> {
        let total = timings.stages.get("total")?;
        if total.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        let mut stages: BTreeMap<String, StageSummary> = timings
            .stages
            .iter()
            .map(|(name, h)| {
                let s = StageSummary {
                    mean: h.mean() / 1000.0,
                    p50: ms(h.value_at_quantile(0.5)),
                    p99: ms(h.value_at_quantile(0.99)),
                    p999: ms(h.value_at_quantile(0.999)),
                };
                (name.to_string(), s)
            })
            .collect();
        let server = stages["total"];
        let c = &client.latency_us;
        stages.insert(
            "outside".into(),
            StageSummary {
                mean: (c.mean() / 1000.0 - server.mean).max(0.0),
                p50: (client.latency_ms(0.5) - server.p50).max(0.0),
                p99: (client.latency_ms(0.99) - server.p99).max(0.0),
                p999: (client.latency_ms(0.999) - server.p999).max(0.0),
            },
        );
        Some(Self {
            replies: total.len(),
            stages,
            batch_rows_mean: timings.batch_rows.mean(),
            batch_rows_p50: timings.batch_rows.value_at_quantile(0.5),
            degraded: timings.degraded,
            unparsable: timings.unparsable,
            versions: timings.versions.clone(),
        })
    }
}

/// One model version's business figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VersionFigures {
    pub version: String,
    pub requests: u64,
    pub impressions: u64,
    pub clicks: u64,
    pub ctr: f64,
    /// Mean predicted CTR of the shown slots, and the true one.
    pub predicted_ctr: f64,
    pub true_ctr: f64,
    /// Revenue (clicked bids) per thousand requests.
    pub rpm: f64,
    /// The same in expectation (true click probability x bid), and the oracle ranking's.
    pub expected_rpm: f64,
    pub oracle_rpm: f64,
    /// oracle_rpm - expected_rpm.
    pub regret_rpm: f64,
    pub oracle_share: f64,
    /// Expected RPM of ranking the same requests by the learnable ceiling's predictor (the best
    /// any model can do) and by bid alone (the world's baseline).
    pub ceiling_rpm: f64,
    pub bid_only_rpm: f64,
    /// Mean predicted against mean true CTR of the shown slots, by position and by decile of the
    /// predicted CTR.
    pub calibration_by_position: Vec<Calibration>,
    pub calibration_by_decile: Vec<Calibration>,
}

/// Predicted against true CTR over a group of shown slots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// The position (`0`, `1`, …) or the decile's range of predicted CTR.
    pub group: String,
    pub slots: u64,
    pub predicted_ctr: f64,
    pub true_ctr: f64,
}

impl Calibration {
    fn of(group: String, slots: &[(u16, f32, f32)]) -> Self {
        let n = slots.len().max(1) as f64;
        Self {
            group,
            slots: slots.len() as u64,
            predicted_ctr: slots.iter().map(|s| f64::from(s.1)).sum::<f64>() / n,
            true_ctr: slots.iter().map(|s| f64::from(s.2)).sum::<f64>() / n,
        }
    }

    /// Predicted over true: 1 is calibrated.
    pub fn ratio(&self) -> f64 {
        if self.true_ctr > 0.0 { self.predicted_ctr / self.true_ctr } else { f64::NAN }
    }
}

/// Calibration of `shown` slots by position, and by decile of the predicted CTR.
fn calibration(shown: &[(u16, f32, f32)]) -> (Vec<Calibration>, Vec<Calibration>) {
    let positions = shown.iter().map(|s| s.0).max().map_or(0, |p| p + 1);
    let by_position = (0..positions)
        .map(|p| {
            let at: Vec<_> = shown.iter().copied().filter(|s| s.0 == p).collect();
            Calibration::of(p.to_string(), &at)
        })
        .collect();
    let mut sorted = shown.to_vec();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    let by_decile = if sorted.len() < 10 {
        Vec::new()
    } else {
        (0..10)
            .map(|d| {
                let part = &sorted[d * sorted.len() / 10..(d + 1) * sorted.len() / 10];
                let (low, high) = (part.first().map_or(0.0, |s| s.1), part.last().map_or(0.0, |s| s.1));
                Calibration::of(format!("{low:.4}-{high:.4}"), part)
            })
            .collect()
    };
    (by_position, by_decile)
}

/// The figures of every version that served.
pub fn versions(business: &BTreeMap<String, Business>) -> Vec<VersionFigures> {
    business
        .iter()
        .map(|(version, b)| {
            let per_mille = 1000.0 / b.requests.max(1) as f64;
            let slots = b.impressions.max(1) as f64;
            let (calibration_by_position, calibration_by_decile) = calibration(&b.shown);
            VersionFigures {
                version: version.clone(),
                requests: b.requests,
                impressions: b.impressions,
                clicks: b.clicks,
                ctr: b.ctr(),
                predicted_ctr: b.predicted_ctr_sum / slots,
                true_ctr: b.true_ctr_sum / slots,
                rpm: b.rpm(),
                expected_rpm: b.expected_revenue * per_mille,
                oracle_rpm: b.oracle_revenue * per_mille,
                regret_rpm: b.regret_per_mille(),
                oracle_share: b.oracle_share(),
                ceiling_rpm: b.ceiling_revenue * per_mille,
                bid_only_rpm: b.bid_only_revenue * per_mille,
                calibration_by_position,
                calibration_by_decile,
            }
        })
        .collect()
}

impl Report {
    /// The latency parts of a report for `run`; the caller fills in the rest.
    pub fn for_run(
        title: String,
        target: String,
        mode: String,
        arrivals: String,
        connections: usize,
        run: &RunReport,
    ) -> Self {
        Self {
            title,
            target,
            mode,
            arrivals,
            connections,
            run: RunSummary::of(run),
            series: per_second(&run.samples),
            percentiles: percentiles(run),
            sweep: None,
            server: None,
            versions: Vec::new(),
            hours: Vec::new(),
            clicks: None,
            timeline: Vec::new(),
            verdict: None,
        }
    }
}
