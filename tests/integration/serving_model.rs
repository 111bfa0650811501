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

/// The process's threads as (name, nice value), from /proc.
fn threads() -> Vec<(String, i64)> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // pid (comm) state ppid … : the nice value is the 17th field after the name.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_string();
            Some((name, rest.split_whitespace().nth(16)?.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_loading_at_low_priority_leaves_its_pool_at_normal_priority() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: true });
    let version = registry.publish(draft(&onnx, &stats, "priorities")).await.unwrap().version;
    // Two threads per run: ONNX Runtime starts one pool thread besides the caller.
    let ort = adrank_registry::OrtConfig { intra_threads: 2, ..adrank_testkit::onnxruntime() };
    let (spec, serving) = (adrank_testkit::spec(), ServingConfig::default());
    let request = LoadRequest { registry: &registry, name: "ctr", version, spec: &spec, ort: &ort, serving: &serving };
    let loaded = LoadedVersion::load(request).await.unwrap();
    assert!(loaded.batcher.score(loaded.empty_rows(300), Instant::now() + Duration::from_secs(5)).await.is_ok());
    // The session was built on a thread at a lower priority (threads inherit their creator's
    // name and priority); its pool thread comes from the spawner all the same, at normal priority.
    let threads = threads();
    let pool: Vec<_> = threads.iter().filter(|(name, _)| name == "ort-pool").collect();
    assert!(!pool.is_empty(), "the session's pool thread came from the spawner: {threads:?}");
    assert!(pool.iter().all(|&&(_, nice)| nice == 0), "pool threads at normal priority: {threads:?}");
}
