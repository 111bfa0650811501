//! Loading a model version for serving: verify it, warm it, start its batcher.
//!
//! A version is refused — and whatever serves now keeps serving — when its files fail their
//! SHA-256, when it reads another feature spec, when its graph's signature is not adrank's, or
//! when it fails a warm-up run. Warm-up runs the batch sizes the batcher forms, so the first
//! requests after a swap do not pay for ONNX Runtime's first-run allocations.

use std::{sync::Arc, time::Instant};

use adrank_contracts::spec::{FeatureSpec, Transformer, short_version};
use adrank_registry::{
    Manifest, OrtConfig, Provider, Registry, Signature,
    scoring::{ScoringSession, SessionOptions},
};

use crate::{
    Error, Result, ServingConfig,
    batcher::{Batcher, Rows},
    rows::Encoder,
};

/// A version ready to take traffic.
#[derive(Debug, Clone)]
pub struct LoadedVersion {
    pub manifest: Arc<Manifest>,
    /// The spec compiled with this version's statistics.
    pub transformer: Arc<Transformer>,
    /// The transforms as applied to requests' candidates.
    pub encoder: Arc<Encoder>,
    pub batcher: Batcher,
    /// How long loading and warming took.
    pub load_seconds: f64,
    /// Where the model runs (the CPU when CUDA was asked for and could not be had).
    pub provider: Provider,
}

/// What [`LoadedVersion::load`] needs.
#[derive(Debug, Clone, Copy)]
pub struct LoadRequest<'a> {
    pub registry: &'a Registry,
    pub name: &'a str,
    pub version: u64,
    pub spec: &'a FeatureSpec,
    pub ort: &'a OrtConfig,
    pub serving: &'a ServingConfig,
}

impl LoadedVersion {
    /// Loads, verifies and warms one version. Must run inside a tokio runtime (the batcher's
    /// task is spawned on it).
    pub async fn load(request: LoadRequest<'_>) -> Result<Self> {
        let started = Instant::now();
        let (name, version) = (request.name, request.version);
        let incompatible = |reason: String| Error::Incompatible { name: name.into(), version, reason };
        let manifest = request.registry.version(name, version).await?;
        if manifest.spec_version != request.spec.version() {
            return Err(incompatible(format!(
                "it reads feature spec {}, this server serves spec {}",
                short_version(&manifest.spec_version),
                short_version(&request.spec.version())
            )));
        }
        let transformer = Arc::new(Transformer::new(request.spec, &manifest.transform_stats)?);
        let onnx = request.registry.artifact(&manifest.onnx).await?;
        let options = SessionOptions::of(request.ort);
        let ort = request.ort.clone();
        let session = in_background(move || ScoringSession::load(&onnx, &ort, options))
            .await
            .map_err(|_| incompatible("loading did not finish: its thread panicked or could not start".into()))??;
        let expected = Signature::expected(transformer.id_width(), transformer.dense_width());
        let problems = session.signature().mismatches(&expected);
        if !problems.is_empty() {
            return Err(incompatible(problems.join("; ")));
        }
        let mut session = session;
        let sizes = warm_up_sizes(request.serving.max_batch_rows);
        let (ids, dense) = (transformer.id_width(), transformer.dense_width());
        let largest = request.spec.largest_ids();
        let session = in_background(move || {
            // A model that cannot take the spec's largest ids would fail on live traffic.
            session.probe_largest_ids(&largest, dense).map_err(|e| (1, e.to_string()))?;
            for &rows in &sizes {
                // Id 0 is every feature's "missing" bucket: always a valid input.
                session
                    .score(rows, &vec![0; rows * ids], &vec![0.0; rows * dense])
                    .map_err(|e| (rows, e.to_string()))?;
            }
            Ok::<_, (usize, String)>(session)
        })
        .await
        .map_err(|_| incompatible("the warm-up did not finish: its thread panicked or could not start".into()))?
        .map_err(|(rows, reason)| Error::WarmUp { name: name.into(), version, rows, reason })?;
        let provider = session.provider();
        let batcher = Batcher::spawn(session, request.serving.batcher());
        tracing::info!(name, version, %provider, seconds = started.elapsed().as_secs_f64(), "model version loaded and warmed");
        Ok(Self {
            manifest: Arc::new(manifest),
            encoder: Arc::new(Encoder::new(transformer.clone())),
            transformer,
            batcher,
            load_seconds: started.elapsed().as_secs_f64(),
            provider,
        })
    }

    /// Rows of zeros (every feature missing) in this version's shape, for warm-ups and tests.
    pub fn empty_rows(&self, rows: usize) -> Rows {
        Rows {
            rows,
            ids: vec![0; rows * self.transformer.id_width()],
            dense: vec![0.0; rows * self.transformer.dense_width()],
        }
    }
}

/// How much lower than the serving threads' priority a version loads and warms (a nice value).
const LOAD_NICENESS: i32 = 10;

/// Runs `work` on a thread of its own at a lower priority: a new version's graph optimisation
/// and warm-up runs, beside the serving version on the same cores, then take only the CPU the
/// serving threads leave (a load beside serving was a swap's latency spike: BENCHMARKS.md). The
/// session's pool threads start at normal priority all the same (`start_spawner`), and the
/// thread ends with `work`, so nothing that serves keeps the low priority. The receiver errs
/// when `work` panicked.
fn in_background<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> tokio::sync::oneshot::Receiver<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    adrank_registry::scoring::start_spawner();
    let started = std::thread::Builder::new().name("adrank-load".into()).spawn(move || {
        if let Err(e) = adrank_registry::scoring::lower_thread_priority(LOAD_NICENESS) {
            tracing::debug!(error = %e, "cannot lower the loading thread's priority");
        }
        let _ = done.send(work());
    });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start a loading thread");
    }
    result
}

/// The batch sizes the batcher forms most: one request alone, a few merged, a full batch.
fn warm_up_sizes(max_batch_rows: usize) -> Vec<usize> {
    let mut sizes = vec![1, 200.min(max_batch_rows), max_batch_rows];
    sizes.dedup();
    sizes
}
