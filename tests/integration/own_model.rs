//! Bringing a model trained elsewhere, as a PyTorch team would: the training log exported as
//! exactly the rows serving feeds, with the statistics to import by; a model whose weights sit in
//! a file beside it (as PyTorch's exporter writes them) imported from one folder and served after
//! that folder is gone; a model whose embedding table is too small refused at import; and the
//! PyTorch example (examples/pytorch/) from export to a served ranking.

use std::{path::Path, process::Command};

use adrank_contracts::{
    spec::{TransformStats, Transformer},
    training_log::utc_hour,
};
use adrank_registry::{
    Registry, RegistryConfig,
    scoring::{ScoringSession, SessionOptions},
};
use adrank_trainer::{
    data::{LogWindow, Window},
    model::{Architecture, Batch, InputShape, Model},
};
use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

const HOUR_MS: i64 = 3_600_000;

/// `adrank <args>` in `cwd` against the test's registry: whether it succeeded, and what it said.
fn adrank(dir: &Path, cwd: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_adrank"))
        .args(args)
        .current_dir(cwd)
        .env("ADRANK_REGISTRY__LOCATION", dir.join("registry"))
        .env("ORT_DYLIB_PATH", adrank_testkit::onnxruntime().library_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

/// The rows of an exported Parquet file, as the trainer holds rows.
fn read_rows(path: &Path, id_width: usize, dense_width: usize) -> Batch {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap().build().unwrap();
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let mut rows = Batch::default();
    for batch in &batches {
        assert_eq!(batch.num_columns(), 2 + id_width + dense_width);
        let ids: Vec<_> = (0..id_width).map(|c| batch.column(2 + c).as_primitive::<Int64Type>()).collect();
        let dense: Vec<_> =
            (0..dense_width).map(|c| batch.column(2 + id_width + c).as_primitive::<Float32Type>()).collect();
        for r in 0..batch.num_rows() {
            rows.labels.push(batch.column(0).as_primitive::<Float32Type>().value(r));
            rows.ids.extend(ids.iter().map(|column| column.value(r)));
            rows.dense.extend(dense.iter().map(|column| column.value(r)));
        }
    }
    rows
}

/// Rewrites `model` with every weight in `model.onnx.data` beside it, with the ONNX reference
/// library (installed by ./dev.sh setup), as `torch.onnx.export` leaves a model.
fn with_external_data(model: &Path, out: &Path) {
    let python = adrank_testkit::workspace_root().join(".adrank/tools/bin/python");
    assert!(python.exists(), "{} is missing: run ./dev.sh setup (it installs onnx there)", python.display());
    let script = "import onnx, sys\n\
                  m = onnx.load(sys.argv[1])\n\
                  onnx.save_model(m, sys.argv[2], save_as_external_data=True, all_tensors_to_one_file=True, \
                  location='model.onnx.data', size_threshold=0)\n";
    let output = Command::new(python).args(["-c", script]).arg(model).arg(out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_made_elsewhere_trains_on_served_rows_imports_with_its_weights_file_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (location, span) = crate::trainer::history(root).await;
    let spec = adrank_testkit::spec();
    let spec_path = adrank_testkit::workspace_root().join("config/features.toml").display().to_string();

    // The export: every example of the window, encoded as serving encodes it.
    let (since, until) = (utc_hour(span.since_ms), utc_hour(span.until_ms + HOUR_MS));
    let export = root.join("export");
    let args = ["features", "export", "--training-log", &location, "--since", &since, "--until", &until];
    let (ok, text) =
        adrank(root, root, &[&args[..], &["--out", &export.display().to_string(), "--spec", &spec_path]].concat());
    assert!(ok, "{text}");
    let stats: TransformStats = serde_json::from_slice(&std::fs::read(export.join("stats.json")).unwrap()).unwrap();
    let transformer = Transformer::new(&spec, &stats).unwrap();
    let window = Window {
        since_ms: adrank_contracts::training_log::parse_utc(&since).unwrap(),
        until_ms: adrank_contracts::training_log::parse_utc(&until).unwrap(),
    };
    let expected = crate::trainer::rows(&LogWindow::open(&location, window).await.unwrap(), &transformer);
    let exported = read_rows(&export.join("rows.parquet"), transformer.id_width(), transformer.dense_width());
    assert!(exported.rows() > 25_000, "{text}");
    assert_eq!(exported.rows(), expected.rows());
    assert!(exported.ids == expected.ids && exported.labels == expected.labels, "the ids and labels serving feeds");
    assert_eq!(exported.dense, expected.dense, "the numbers serving feeds, standardised with stats.json");
    assert!(text.contains(&format!("{} rows", expected.rows())), "{text}");

    // A model made elsewhere, its weights beside it, imported from its own folder as production.
    let made = root.join("made");
    std::fs::create_dir(&made).unwrap();
    let model = Model::new(
        &Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: false },
        &InputShape::of(&spec),
        0.05,
        3,
    );
    let inline = adrank_trainer::onnx::export(&model, &[]);
    std::fs::write(root.join("inline.onnx"), &inline).unwrap();
    with_external_data(&root.join("inline.onnx"), &made.join("model.onnx"));
    let graph_only = std::fs::metadata(made.join("model.onnx")).unwrap().len();
    assert!(graph_only < inline.len() as u64 / 10, "the weights went to the data file: {graph_only} bytes left");
    let stats_file = export.join("stats.json").display().to_string();
    let import = ["registry", "import", "ctr", "model.onnx", "--stats", &stats_file, "--spec", &spec_path];
    // Without its data file the import is refused, naming the file.
    std::fs::rename(made.join("model.onnx.data"), root.join("aside.data")).unwrap();
    let (ok, text) = adrank(root, &made, &import);
    assert!(!ok && text.contains("model.onnx.data") && text.contains("keep it beside the model"), "{text}");
    std::fs::rename(root.join("aside.data"), made.join("model.onnx.data")).unwrap();
    let (ok, text) = adrank(root, &made, &[&import[..], &["--alias", "production"]].concat());
    assert!(ok, "{text}");
    assert!(text.contains("imported model.onnx as ctr version 1") && text.contains("production"), "{text}");
    std::fs::remove_dir_all(&made).unwrap();

    // Served from the registry alone: it loads for serving and scores what the original scores.
    let registry = Registry::open(&RegistryConfig { location: root.join("registry").display().to_string() }).unwrap();
    let manifest = registry.version("ctr", registry.resolve("ctr", "production").await.unwrap()).await.unwrap();
    let stored = registry.artifact(&manifest.onnx).await.unwrap();
    let ort = adrank_testkit::onnxruntime();
    let rows = 256;
    let (ids, dense) =
        (&expected.ids[..rows * transformer.id_width()], &expected.dense[..rows * transformer.dense_width()]);
    let mut original = ScoringSession::load(&inline, &ort, SessionOptions::single_thread()).unwrap();
    let mut imported = ScoringSession::load(&stored, &ort, SessionOptions::single_thread()).unwrap();
    assert_eq!(imported.score(rows, ids, dense).unwrap(), original.score(rows, ids, dense).unwrap());
    let serving = adrank_serving::ServingConfig::default();
    let request = adrank_serving::model::LoadRequest {
        registry: &registry,
        name: "ctr",
        version: manifest.version,
        spec: &spec,
        ort: &ort,
        serving: &serving,
    };
    adrank_serving::model::LoadedVersion::load(request).await.unwrap();

    // An embedding table smaller than the spec's ids: refused at import, the feature named.
    let small = root.join("small");
    std::fs::create_dir(&small).unwrap();
    let mut shape = InputShape::of(&spec);
    let last = shape.id_cardinalities.len() - 1;
    shape.id_cardinalities[last] = 10;
    let undersized = adrank_trainer::onnx::export(&Model::new(&Architecture::Logistic, &shape, 0.05, 3), &[]);
    std::fs::write(small.join("model.onnx"), undersized).unwrap();
    let (ok, text) = adrank(root, &small, &import);
    let (name, largest) = &spec.largest_ids()[last];
    assert!(!ok && text.contains(&format!("feature `{name}` (id column {last}) has ids up to {largest}")), "{text}");
    assert_eq!(registry.versions("ctr").await.unwrap().len(), 1, "nothing published for the refused model");
}

/// The PyTorch environment `./dev.sh test` installs once per machine.
fn torch_python() -> std::path::PathBuf {
    let python = adrank_featurestore::kafka::local_broker::cache_dir().join("torch-venv/bin/python");
    assert!(python.exists(), "{} is missing: run ./dev.sh setup-torch (./dev.sh test runs it)", python.display());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pytorch_example_trains_on_an_export_and_its_model_serves() {
    let python = torch_python();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (location, span) = crate::trainer::history(root).await;
    let spec_path = adrank_testkit::workspace_root().join("config/features.toml").display().to_string();
    // Four hours: a few thousand rows, one epoch.
    let (since, until) = (utc_hour(span.since_ms), utc_hour(span.since_ms + 4 * HOUR_MS));
    let data = root.join("data").display().to_string();
    let export = ["features", "export", "--training-log", &location, "--since", &since, "--until", &until];
    let (ok, text) = adrank(root, root, &[&export[..], &["--out", &data, "--spec", &spec_path]].concat());
    assert!(ok, "{text}");

    let made = root.join("made");
    std::fs::create_dir(&made).unwrap();
    let script = adrank_testkit::workspace_root().join("examples/pytorch/train_dlrm.py");
    let output = Command::new(&python)
        .arg(&script)
        .args([&data, "model.onnx", "--epochs", "1"])
        .current_dir(&made)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && said.contains("wrote model.onnx"), "{said}");
    assert!(made.join("model.onnx.data").exists(), "PyTorch's exporter keeps the weights beside the graph: {said}");
    let stats = format!("{data}/stats.json");
    let import =
        ["registry", "import", "ctr", "model.onnx", "--stats", &stats, "--spec", &spec_path, "--alias", "production"];
    let (ok, text) = adrank(root, &made, &import);
    assert!(ok, "{text}");
    std::fs::remove_dir_all(&made).unwrap();

    // `adrank serve`'s model manager follows production: the PyTorch model ranks a request.
    let registry = Registry::open(&RegistryConfig { location: root.join("registry").display().to_string() }).unwrap();
    let config = adrank_serving::ServingConfig::default();
    let models = std::sync::Arc::new(
        adrank_serving::manager::ModelManager::start(crate::serving_api::manager_config(&registry, &config))
            .await
            .unwrap(),
    );
    let addr = crate::serving_api::serve(models, None, None, config).await;
    let mut world = adrank_loadtest::world::World::new(adrank_loadtest::world::WorldConfig::default());
    let (status, _, text) =
        crate::serving_api::http(addr, "POST", "/v1/rank", crate::serving_api::body(&mut world).as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    let ranked: adrank_serving::rank::RankResponse = serde_json::from_str(&text).unwrap();
    assert_eq!(ranked.model.version, 1);
    assert!(ranked.ranked.iter().all(|ad| ad.pctr > 0.0 && ad.pctr < 1.0), "{text}");
}
