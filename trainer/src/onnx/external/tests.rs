use super::*;
use crate::onnx::proto::Message;

/// A tensor named `name` whose data is `length` bytes at `offset` of `location`.
fn external_tensor(name: &str, location: &str, offset: u64, length: u64) -> Message {
    let entry = |key: &str, value: &str| Message::new().string(1, key).string(2, value);
    Message::new()
        .packed_ints(1, &[2])
        .int(2, 1)
        .string(8, name)
        .message(13, &entry("location", location))
        .message(13, &entry("offset", &offset.to_string()))
        .message(13, &entry("length", &length.to_string()))
        .int(14, 1)
}

/// A model with one external initializer and one external tensor in a node's attribute.
fn model(location: &str) -> Vec<u8> {
    let constant = Message::new().string(1, "value").message(5, &external_tensor("c", location, 8, 4));
    let node = Message::new().string(4, "Constant").message(5, &constant);
    let graph = Message::new().message(1, &node).string(2, "g").message(5, &external_tensor("w", location, 0, 8));
    Message::new().int(1, 8).message(7, &graph).into_bytes()
}

/// The tensors of `message` (of `kind`) anywhere below it: (name, raw_data, has external fields).
fn tensors(message: &[u8], kind: Kind, found: &mut Vec<(String, Vec<u8>, bool)>) {
    for field in fields(message).unwrap() {
        match kind.child(field.number) {
            Some(Kind::Tensor) => {
                let parts = fields(field.value).unwrap();
                let get = |n| parts.iter().find(|p| p.number == n).map(|p| p.value.to_vec()).unwrap_or_default();
                let external = parts.iter().any(|p| matches!(p.number, EXTERNAL_DATA | DATA_LOCATION));
                found.push((String::from_utf8(get(8)).unwrap(), get(RAW_DATA), external));
            }
            Some(child) if field.wire == 2 => tensors(field.value, child, found),
            _ => {}
        }
    }
}

#[test]
fn external_tensors_are_read_from_beside_the_model_and_inlined() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.onnx.data"), b"ABCDEFGHIJKL").unwrap();
    let inlined = inline_external_data(&model("model.onnx.data"), dir.path()).unwrap();
    let mut found = Vec::new();
    tensors(&inlined, Kind::Model, &mut found);
    found.sort();
    assert_eq!(found, [("c".into(), b"IJKL".to_vec(), false), ("w".into(), b"ABCDEFGH".to_vec(), false)]);
    // Nothing left to inline: the same bytes back.
    assert_eq!(inline_external_data(&inlined, dir.path()).unwrap(), inlined);
}

#[test]
fn a_missing_or_escaping_data_file_is_refused_with_the_tensor_named() {
    let dir = tempfile::tempdir().unwrap();
    let error = inline_external_data(&model("model.onnx.data"), dir.path()).unwrap_err();
    assert!(error.contains("cannot read its data file") && error.contains("keep it beside the model"), "{error}");
    for location in ["../secret", "/etc/passwd"] {
        let error = inline_external_data(&model(location), dir.path()).unwrap_err();
        assert!(error.contains("is not inside the model's folder"), "{error}");
    }
    std::fs::write(dir.path().join("short.data"), b"ABC").unwrap();
    let error = inline_external_data(&model("short.data"), dir.path()).unwrap_err();
    assert!(error.contains("outside") && error.contains("(3 bytes)"), "{error}");
}

#[test]
fn a_self_contained_model_is_unchanged_and_garbage_is_refused() {
    use crate::model::{Architecture, InputShape, Model};
    let shape = InputShape { id_cardinalities: vec![3, 5], dense_width: 2 };
    let model = Model::new(&Architecture::Logistic, &shape, 0.1, 1);
    let onnx = crate::onnx::export(&model, &[]);
    assert_eq!(inline_external_data(&onnx, Path::new("/nonexistent")).unwrap(), onnx);
    assert!(inline_external_data(b"\x0f\xff", Path::new(".")).is_err());
}
