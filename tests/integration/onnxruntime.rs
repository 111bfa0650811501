//! The real ONNX Runtime library loads through `ort` (load-dynamic).

use adrank_registry::runtime;

#[test]
fn onnxruntime_loads_and_reports_its_version() {
    let config = adrank_testkit::onnxruntime();
    let info = runtime::init(&config).unwrap();
    assert_eq!(info.version, runtime::ORT_VERSION);
    assert_eq!(info.path.display().to_string(), config.library_path);
}

/// Asked for CUDA where it cannot be had (this build lacks the `cuda` feature, or the library is
/// the CPU-only one CI installs), a model loads on the CPU, says so, and scores exactly as a CPU
/// session does: serving on the CPU beats not serving.
#[test]
fn a_model_asked_for_cuda_without_it_runs_on_the_cpu() {
    use adrank_registry::{
        Provider,
        scoring::{ScoringSession, SessionOptions},
    };
    use adrank_trainer::model::{Architecture, InputShape, Model};

    let shape = InputShape::of(&adrank_testkit::spec());
    let architecture = Architecture::Dlrm { embedding_dim: 8, bottom: vec![16], top: vec![32], wide: true };
    let onnx = adrank_trainer::onnx::export(&Model::new(&architecture, &shape, 0.02, 5), &[]);
    let ort = adrank_testkit::onnxruntime();
    let cuda = SessionOptions { provider: Provider::Cuda, ..SessionOptions::single_thread() };
    let mut on_cpu = ScoringSession::load(&onnx, &ort, SessionOptions::single_thread()).unwrap();
    let mut fallen_back = ScoringSession::load(&onnx, &ort, cuda).unwrap();
    assert_eq!(on_cpu.provider(), Provider::Cpu);
    assert_eq!(
        fallen_back.provider(),
        Provider::Cpu,
        "CI has no GPU ONNX Runtime: the session must say it runs on the CPU"
    );
    let rows = 7;
    let ids: Vec<i64> =
        (0..rows).flat_map(|r| shape.id_cardinalities.iter().map(move |&c| (r as u64 * 31 % c) as i64)).collect();
    let dense: Vec<f32> = (0..rows * shape.dense_width).map(|i| (i % 13) as f32 / 6.5 - 1.0).collect();
    assert_eq!(on_cpu.score(rows, &ids, &dense).unwrap(), fallen_back.score(rows, &ids, &dense).unwrap());
}
