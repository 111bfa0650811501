//! Loading versions for serving from a real registry with the real ONNX Runtime: a good version
//! is verified, warmed and scores; a version for another spec or with a damaged file is refused.

use std::time::{Duration, Instant};

use adrank_registry::Error as RegistryError;
use adrank_serving::{
    Error, ServingConfig,
    model::{LoadRequest, LoadedVersion},
};
use adrank_trainer::model::Architecture;

use crate::registry::{draft, model_file, registry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_is_verified_warmed_and_scores_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let architecture = Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true };
    let (onnx, stats) = model_file(&architecture);
    let good = registry.publish(draft(&onnx, &stats, "good")).await.unwrap();
    let mut other_spec = draft(&onnx, &stats, "another spec");
    other_spec.spec_version = "0".repeat(64);
    let other = registry.publish(other_spec).await.unwrap();

    let (spec, ort, serving) = (adrank_testkit::spec(), adrank_testkit::onnxruntime(), ServingConfig::default());
    let request =
        |version| LoadRequest { registry: &registry, name: "ctr", version, spec: &spec, ort: &ort, serving: &serving };
    let loaded = LoadedVersion::load(request(good.version)).await.unwrap();
    let scored = loaded.batcher.score(loaded.empty_rows(3), Instant::now() + Duration::from_secs(5)).await.unwrap();
    assert_eq!(scored.scores.len(), 3);
    assert!(scored.scores.iter().all(|p| (0.0..=1.0).contains(p)), "{scored:?}");

    let refused = LoadedVersion::load(request(other.version)).await.unwrap_err();
    assert!(matches!(refused, Error::Incompatible { .. }) && refused.to_string().contains("feature spec"), "{refused}");

    // A damaged model file is caught by its checksum before ONNX Runtime sees it.
    let file = dir.path().join("registry").join(&good.onnx.path);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&file, bytes).unwrap();
    let damaged = LoadedVersion::load(request(good.version)).await.unwrap_err();
    assert!(matches!(damaged, Error::Registry(RegistryError::Corrupt { .. })), "{damaged}");
    // The version already loaded keeps serving.
    assert!(loaded.batcher.score(loaded.empty_rows(1), Instant::now() + Duration::from_secs(5)).await.is_ok());
}
