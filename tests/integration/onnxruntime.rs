//! The real ONNX Runtime library loads through `ort` (load-dynamic).

use adrank_registry::runtime;

#[test]
fn onnxruntime_loads_and_reports_its_version() {
    let config = adrank_testkit::onnxruntime();
    let info = runtime::init(&config).unwrap();
    assert_eq!(info.version, runtime::ORT_VERSION);
    assert_eq!(info.path.display().to_string(), config.library_path);
}
