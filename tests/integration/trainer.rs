//! The trainer against the real ONNX Runtime and a real Parquet training log: models learn,
//! exported graphs score exactly what the trainer computes, one row at a time equals a batch,
//! evaluation compares with the truth, warm starts carry the weights.

use std::path::Path;

use adrank_contracts::{spec::FeatureSpec, training_log::TrainingLog};
use adrank_loadtest::{
    history::{HistoryOptions, write_history},
    world::{World, WorldConfig},
};
use adrank_registry::{
    Registry, RegistryConfig,
    scoring::{ScoringSession, SessionOptions},
};
use adrank_trainer::{
    TrainingConfig,
    data::{LogWindow, RowStream, Window, push_row},
    evaluate::{EvalRequest, evaluate},
    model::{Architecture, Batch},
    parallel::Parallel,
    publish::{PublishRequest, publish, warm_start},
    train::{TrainRequest, Trained, train},
};

const HOUR_MS: i64 = 3_600_000;

/// Twelve simulated hours of a small world: about 30k impressions.
pub(crate) async fn history(dir: &Path) -> (String, Window) {
    let location = dir.join("log").display().to_string();
    let log = TrainingLog::open(&location).unwrap();
    let mut world = World::new(WorldConfig {
        users: 3_000,
        advertisers: 100,
        ads: 600,
        requests_per_hour: 500,
        ..WorldConfig::default()
    });
    let options = HistoryOptions {
        days: 0.5,
        attribution_window_ms: 15 * 60_000,
        allowed_lateness_ms: 10 * 60_000,
        commit_examples: 10_000,
    };
    let summary = write_history(&mut world, &log, options).await.unwrap();
    assert!(summary.examples > 25_000, "{summary:?}");
    (location, Window { since_ms: summary.start_ms, until_ms: summary.end_ms })
}

fn small(model: Architecture) -> TrainingConfig {
    TrainingConfig { model, epochs: 2, threads: 2, shuffle_buffer: 5_000, ..TrainingConfig::default() }
}

fn fit(data: &LogWindow, spec: &FeatureSpec, config: &TrainingConfig) -> Trained {
    train(TrainRequest { data, spec, config, warm_start: None, progress: false, parallel: Parallel::local() }).unwrap()
}

/// Rows of the held-out window as the trainer builds them.
pub(crate) fn rows(data: &LogWindow, transformer: &adrank_contracts::spec::Transformer) -> Batch {
    let mut batch = Batch::default();
    for chunk in RowStream::spawn(data, data.window, |examples| examples) {
        for example in &chunk.unwrap() {
            push_row(transformer, example, &mut batch);
        }
    }
    batch
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trained_models_export_to_onnx_with_parity_and_beat_a_constant() {
    let dir = tempfile::tempdir().unwrap();
    let (location, span) = history(dir.path()).await;
    let spec = adrank_testkit::spec();
    let ort = adrank_testkit::onnxruntime();
    let registry =
        Registry::open(&RegistryConfig { location: dir.path().join("registry").display().to_string() }).unwrap();
    let train_window = Window { since_ms: span.since_ms, until_ms: span.until_ms - 3 * HOUR_MS };
    let held_out = Window { since_ms: train_window.until_ms, until_ms: span.until_ms };
    let data = LogWindow::open(&location, train_window).await.unwrap();
    let test = LogWindow::open(&location, held_out).await.unwrap();

    // A window whose newest tenth (the validation part) holds no examples is refused, never
    // trained and published with a NaN validation loss.
    let beyond = Window { since_ms: span.since_ms, until_ms: span.until_ms + 24 * HOUR_MS };
    let beyond = LogWindow::open(&location, beyond).await.unwrap();
    let (spec2, config) = (spec.clone(), TrainingConfig { epochs: 1, ..small(Architecture::Logistic) });
    let refused = tokio::task::spawn_blocking(move || {
        train(TrainRequest {
            data: &beyond,
            spec: &spec2,
            config: &config,
            warm_start: None,
            progress: false,
            parallel: Parallel::local(),
        })
    })
    .await
    .unwrap();
    match refused {
        Err(adrank_trainer::Error::NoData { window, .. }) => assert!(window.since_ms > span.until_ms),
        other => panic!("expected NoData for the empty validation window, got {:?}", other.map(|t| t.report)),
    }

    let (mut versions, mut models) = (Vec::new(), Vec::new());
    for architecture in [
        Architecture::Logistic,
        Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32, 16], wide: true },
    ] {
        let (window, spec2, config) = (data.clone(), spec.clone(), small(architecture.clone()));
        let trained = tokio::task::spawn_blocking(move || fit(&window, &spec2, &config)).await.unwrap();
        let report = &trained.report;
        assert!(report.train_examples > 15_000 && report.validation_examples > 1_000, "{report:?}");
        assert!(report.epochs.iter().all(|e| e.validation_loss.is_finite()), "{report:?}");

        // Parity: ONNX Runtime scores the exported graph as the trainer's forward pass does, on
        // 10k logged rows (the held-out hours first).
        let transformer = adrank_contracts::spec::Transformer::new(&spec, &trained.stats).unwrap();
        let mut batch = rows(&test, &transformer);
        let more = rows(&data, &transformer);
        batch.ids.extend(more.ids);
        batch.dense.extend(more.dense);
        batch.labels.extend(more.labels);
        let n = 10_000;
        assert!(batch.rows() >= n, "the log has {} rows", batch.rows());
        let shape = trained.model.input_shape();
        let mine = trained.model.predict(batch.view(&shape, 0..n));
        let onnx = adrank_trainer::onnx::export(&trained.model, &[]);
        let mut session = ScoringSession::load(&onnx, &ort, SessionOptions::single_thread()).unwrap();
        let (f, d) = (shape.id_width(), shape.dense_width);
        let theirs = session.score(n, &batch.ids[..n * f], &batch.dense[..n * d]).unwrap();
        let worst = mine.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= 1e-5, "{architecture:?}: ONNX Runtime differs from the trainer by up to {worst}");
        // One row at a time equals the batch (ONNX Runtime and the trainer).
        for r in (0..n).step_by(97) {
            let one = session.score(1, &batch.ids[r * f..(r + 1) * f], &batch.dense[r * d..(r + 1) * d]).unwrap();
            assert!((one[0] - theirs[r]).abs() <= 1e-6, "row {r}: alone {} vs batched {}", one[0], theirs[r]);
            let own = trained.model.predict(batch.view(&shape, r..r + 1));
            assert!((own[0] - mine[r]).abs() <= 1e-6, "row {r}: trainer alone {} vs batched {}", own[0], mine[r]);
        }

        let request = PublishRequest {
            name: "ctr",
            spec: &spec,
            ort: &ort,
            created_by: "test".into(),
            reason: format!("{architecture:?}"),
            parent: None,
            tags: Default::default(),
        };
        versions.push(publish(&registry, &trained, request).await.unwrap());
        models.push(trained.model);
    }

    // Evaluation with ONNX Runtime: both models beat the constant; the truth beats both.
    let (logistic, dlrm) = (&versions[0], &versions[1]);
    let report = evaluate(
        &registry,
        EvalRequest { data: &test, spec: &spec, ort: &ort, candidate: dlrm, baseline: Some(logistic) },
    )
    .await
    .unwrap();
    let ne = |role: &str| report.rows.iter().find(|r| r.role == role).unwrap().overall.normalised_entropy;
    // Twelve hours of a small world teach little (the held-out 3 hours have ~150 clicks), but
    // clearly more than a constant.
    assert!(ne("candidate") < 0.985 && ne("baseline") < 0.985, "{report:#?}");
    assert!(ne("constant") >= 0.999, "{report:#?}");
    assert!(ne("oracle") < ne("candidate") && ne("oracle") < ne("baseline"), "{report:#?}");
    let candidate = report.rows.iter().find(|r| r.role == "candidate").unwrap();
    assert!(candidate.slices.keys().any(|s| s.starts_with("surface=")), "{:?}", candidate.slices.keys());
    assert!(candidate.slices.contains_key("ad_age<1d"), "{:?}", candidate.slices.keys());
    assert!((0.7..1.3).contains(&candidate.overall.calibration), "{report:#?}");

    // A warm start begins from the parent's exact weights.
    let (parent_model, parent_stats) = warm_start(&registry, dlrm).await.unwrap();
    assert_eq!(parent_stats, dlrm.transform_stats);
    assert!(parent_model == models[1], "the checkpoint holds the trained weights exactly");
}

#[test]
fn single_thread_training_is_deterministic() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (location, span) = runtime.block_on(history(dir.path()));
    let data = runtime.block_on(LogWindow::open(&location, span)).unwrap();
    let spec = adrank_testkit::spec();
    let config = TrainingConfig {
        threads: 1,
        epochs: 1,
        ..small(Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: true })
    };
    let a = fit(&data, &spec, &config);
    let b = fit(&data, &spec, &config);
    assert_eq!(a.model, b.model, "same seed, same data, one thread: the same weights");
    assert_eq!(a.report.epochs[0].validation_loss, b.report.epochs[0].validation_loss);
    let c = fit(&data, &spec, &TrainingConfig { seed: 7, ..config });
    assert_ne!(a.model, c.model, "another seed gives another model");
}
