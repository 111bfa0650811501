//! Offline evaluation: a candidate and a baseline version scored with ONNX Runtime (the runtime
//! serving uses, so an export bug cannot hide) on the same held-out window, beside the truth
//! (`oracle_p`, when the data carries it) and a constant-CTR model.

use std::collections::BTreeMap;

use adrank_contracts::{
    eval::{Quality, quality},
    events::RawValue,
    spec::{FeatureSpec, Transformer, short_version},
    training_log::Example,
};
use adrank_registry::{
    Manifest, OrtConfig, Registry,
    scoring::{ScoringSession, SessionOptions},
};
use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    data::{self, LogWindow, RowStream},
    model::Batch,
};

/// What to compare.
#[derive(Debug)]
pub struct EvalRequest<'a> {
    pub data: &'a LogWindow,
    pub spec: &'a FeatureSpec,
    pub ort: &'a OrtConfig,
    pub candidate: &'a Manifest,
    pub baseline: Option<&'a Manifest>,
}

/// The evaluation's result, stored as JSON with the candidate version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub model: String,
    pub window: (i64, i64),
    pub examples: u64,
    pub clicks: u64,
    /// candidate, baseline (when given), constant, oracle (when every example has oracle_p).
    pub rows: Vec<ModelResult>,
}

/// One predictor's figures, overall and per slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// `candidate`, `baseline`, `constant` or `oracle`.
    pub role: String,
    pub version: Option<u64>,
    pub overall: Metrics,
    /// By slice name (`surface=feed`, `device=mobile`, `ad_age<1d`, …).
    pub slices: BTreeMap<String, Metrics>,
}

/// Quality figures of one predictor on one set of examples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub examples: u64,
    pub ctr: f64,
    pub mean_prediction: f64,
    /// Predicted clicks over observed clicks: 1 is calibrated.
    pub calibration: f64,
    pub log_loss: f64,
    pub auc: f64,
    /// Log loss over the entropy of the observed click rate.
    pub normalised_entropy: f64,
    /// This normalised entropy over the oracle's on the same examples, minus 1 (0.03: 3% worse
    /// than the truth); absent without oracle_p.
    pub gap_to_oracle: Option<f64>,
}

impl Metrics {
    fn of(q: Quality) -> Self {
        Self {
            examples: q.examples,
            ctr: q.ctr,
            mean_prediction: q.mean_prediction,
            calibration: if q.ctr > 0.0 { q.mean_prediction / q.ctr } else { f64::NAN },
            log_loss: q.log_loss,
            auc: q.auc,
            normalised_entropy: q.normalised_entropy,
            gap_to_oracle: None,
        }
    }
}

/// Rows scored at once by ONNX Runtime.
const SCORE_ROWS: usize = 8192;

/// A loaded version: its transforms and its ONNX Runtime session.
struct Loaded {
    transformer: Transformer,
    session: ScoringSession,
}

async fn load(registry: &Registry, manifest: &Manifest, spec: &FeatureSpec, ort: &OrtConfig) -> Result<Loaded> {
    if manifest.spec_version != spec.version() {
        return Err(Error::Settings(format!(
            "version {} of `{}` reads feature spec {}, not the current spec {}; evaluate it with the spec it was trained on",
            manifest.version,
            manifest.name,
            short_version(&manifest.spec_version),
            short_version(&spec.version())
        )));
    }
    let onnx = registry.artifact(&manifest.onnx).await?;
    let transformer = Transformer::new(spec, &manifest.transform_stats)?;
    let session = ScoringSession::load(&onnx, ort, SessionOptions::of(ort))?;
    Ok(Loaded { transformer, session })
}

/// Scores the window with each model and measures everything.
pub async fn evaluate(registry: &Registry, request: EvalRequest<'_>) -> Result<EvalReport> {
    request.data.require_files()?;
    let mut models = vec![("candidate", request.candidate)];
    models.extend(request.baseline.map(|b| ("baseline", b)));
    let mut loaded = Vec::new();
    for (_, manifest) in &models {
        loaded.push(load(registry, manifest, request.spec, request.ort).await?);
    }
    // Per example: label, oracle_p and each model's prediction; per slice: its examples.
    let mut slices: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut labels: Vec<bool> = Vec::new();
    let mut oracle: Vec<Option<f64>> = Vec::new();
    let mut predictions: Vec<Vec<f64>> = vec![Vec::new(); loaded.len()];
    let window = request.data.window;
    for chunk in RowStream::spawn(request.data, window, |examples| examples) {
        let examples = chunk?;
        for (model, out) in loaded.iter_mut().zip(&mut predictions) {
            score(model, &examples, out)?;
        }
        for example in &examples {
            for name in slice_names(example) {
                slices.entry(name).or_default().push(labels.len() as u32);
            }
            labels.push(example.label());
            oracle.push(example.impression.oracle_p);
        }
    }
    if labels.is_empty() {
        return Err(Error::NoData { location: request.data.location().into(), window });
    }
    // The constant predictor: the candidate's (else the baseline's) training click rate; for
    // imported models without one, the window's own rate (NE 1 by definition).
    let window_ctr = labels.iter().filter(|&&l| l).count() as f64 / labels.len() as f64;
    let constant = [Some(request.candidate), request.baseline]
        .into_iter()
        .flatten()
        .find_map(|m| m.training.as_ref().filter(|t| t.examples > 0))
        .map_or(window_ctr, |t| t.clicks as f64 / t.examples as f64);
    let mut rows: Vec<(String, Option<u64>, Vec<f64>)> = models
        .iter()
        .zip(predictions)
        .map(|((role, manifest), p)| (role.to_string(), Some(manifest.version), p))
        .collect();
    rows.push(("constant".into(), None, vec![constant; labels.len()]));
    let oracle: Option<Vec<f64>> = oracle.into_iter().collect();
    if let Some(truth) = &oracle {
        rows.push(("oracle".into(), None, truth.clone()));
    }
    let measure = |predictions: &[f64], examples: &mut dyn Iterator<Item = usize>| -> Option<Metrics> {
        let pairs: Vec<(f64, bool)> = examples.map(|i| (predictions[i], labels[i])).collect();
        quality(&pairs).map(Metrics::of)
    };
    let mut results = Vec::new();
    for (role, version, p) in &rows {
        let overall = measure(p, &mut (0..labels.len())).expect("there are examples");
        let mut by_slice = BTreeMap::new();
        for (name, members) in &slices {
            if let Some(m) = measure(p, &mut members.iter().map(|&i| i as usize)) {
                by_slice.insert(name.clone(), m);
            }
        }
        results.push(ModelResult { role: role.clone(), version: *version, overall, slices: by_slice });
    }
    if let Some(truth) = results.iter().find(|r| r.role == "oracle").cloned() {
        for result in &mut results {
            result.overall.gap_to_oracle =
                Some(result.overall.normalised_entropy / truth.overall.normalised_entropy - 1.0);
            for (name, m) in &mut result.slices {
                if let Some(t) = truth.slices.get(name) {
                    m.gap_to_oracle = Some(m.normalised_entropy / t.normalised_entropy - 1.0);
                }
            }
        }
    }
    Ok(EvalReport {
        model: request.candidate.name.clone(),
        window: (window.since_ms, window.until_ms),
        examples: labels.len() as u64,
        clicks: labels.iter().filter(|&&l| l).count() as u64,
        rows: results,
    })
}

fn score(model: &mut Loaded, examples: &[Example], out: &mut Vec<f64>) -> Result<()> {
    let mut batch = Batch::default();
    for part in examples.chunks(SCORE_ROWS) {
        batch.clear();
        for example in part {
            data::push_row(&model.transformer, example, &mut batch);
        }
        let scores = model.session.score(batch.rows(), &batch.ids, &batch.dense)?;
        out.extend(scores.into_iter().map(f64::from));
    }
    Ok(())
}

/// The slices an example belongs to: its surface, its user's device, and whether its ad is
/// younger than a day (cold-start ads are where models differ most).
fn slice_names(example: &Example) -> Vec<String> {
    let features = &example.impression.features;
    let mut names = vec![format!("surface={}", example.impression.surface)];
    if let Some(RawValue::Str(device)) = features.get("device") {
        names.push(format!("device={device}"));
    }
    if let Some(RawValue::Num(age)) = features.get("ad_age_hours") {
        names.push(if *age < 24.0 { "ad_age<1d".into() } else { "ad_age>=1d".into() });
    }
    names
}
