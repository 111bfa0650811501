//! A trained model into the registry: export to ONNX, prove ONNX Runtime loads it with the
//! expected signature, and publish it with its checkpoint, statistics and training window.

use std::collections::BTreeMap;

use adrank_contracts::spec::{FeatureSpec, Transformer};
use adrank_registry::{
    Draft, Manifest, OrtConfig, Registry, Signature, TrainingInfo,
    scoring::{ScoringSession, SessionOptions},
};

use crate::{Error, Result, checkpoint, onnx, train::Trained};

/// Who publishes and why.
#[derive(Debug, Clone)]
pub struct PublishRequest<'a> {
    pub name: &'a str,
    pub spec: &'a FeatureSpec,
    pub ort: &'a OrtConfig,
    pub created_by: String,
    pub reason: String,
    pub parent: Option<u64>,
    /// Labels kept in the manifest (the retraining cycle that made it).
    pub tags: BTreeMap<String, String>,
}

/// Exports, checks and publishes `trained`.
pub async fn publish(registry: &Registry, trained: &Trained, request: PublishRequest<'_>) -> Result<Manifest> {
    // The transformer must accept the statistics, or serving could not use the version.
    let transformer = Transformer::new(request.spec, &trained.stats)?;
    let spec_version = request.spec.version();
    let architecture = serde_json::to_value(trained.model.architecture()).expect("architectures serialise");
    let onnx =
        onnx::export(&trained.model, &[("spec_version", &spec_version), ("architecture", &architecture.to_string())]);
    let signature = checked_signature(&onnx, request.ort, request.spec, &transformer)?;
    let report = &trained.report;
    let mut metrics = BTreeMap::new();
    if let Some(best) = report.epochs.iter().find(|e| e.epoch == report.best_epoch) {
        metrics.insert("validation_log_loss".into(), best.validation_loss);
        metrics.insert("train_log_loss".into(), best.train_loss);
    }
    let draft = Draft {
        name: request.name.into(),
        created_by: request.created_by,
        reason: request.reason,
        onnx: onnx.into(),
        checkpoint: Some(checkpoint::to_bytes(&trained.model).into()),
        spec_version,
        signature,
        transform_stats: trained.stats.clone(),
        training: Some(TrainingInfo {
            since_ms: report.train_window.0,
            until_ms: report.validation_window.1,
            examples: report.train_examples + report.validation_examples,
            clicks: report.train_clicks + report.validation_clicks,
            architecture,
            report: serde_json::to_value(report).expect("reports serialise"),
        }),
        parent: request.parent,
        metrics,
        tags: request.tags,
    };
    Ok(registry.publish(draft).await?)
}

/// Loads `onnx` in ONNX Runtime, checks its inputs and outputs against the spec's, and runs the
/// spec's largest ids through it.
pub fn checked_signature(
    onnx: &[u8],
    ort: &OrtConfig,
    spec: &FeatureSpec,
    transformer: &Transformer,
) -> Result<Signature> {
    let mut session = ScoringSession::load(onnx, ort, SessionOptions::single_thread())?;
    let expected = Signature::expected(transformer.id_width(), transformer.dense_width());
    let problems = session.signature().mismatches(&expected);
    if !problems.is_empty() {
        return Err(adrank_registry::Error::Incompatible(problems).into());
    }
    session.probe_largest_ids(&spec.largest_ids(), transformer.dense_width())?;
    Ok(session.signature().clone())
}

/// The model and statistics of a published version, for a warm start.
pub async fn warm_start(
    registry: &Registry,
    manifest: &Manifest,
) -> Result<(crate::model::Model, adrank_contracts::spec::TransformStats)> {
    let artifact = manifest.checkpoint.as_ref().ok_or_else(|| {
        Error::Settings(format!(
            "version {} of `{}` has no trainer checkpoint (it was imported); train without a parent",
            manifest.version, manifest.name
        ))
    })?;
    let bytes = registry.artifact(artifact).await?;
    let model = checkpoint::from_bytes(&bytes).map_err(|e| Error::Settings(e.to_string()))?;
    Ok((model, manifest.transform_stats.clone()))
}
