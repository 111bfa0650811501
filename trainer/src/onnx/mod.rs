//! ONNX export: a trained [`Model`] as an ONNX graph (opset 17) that any ONNX Runtime loads.
//!
//! Signature, the same for every model of a feature spec:
//!
//! | name   | type    | shape                  | meaning                                   |
//! |--------|---------|------------------------|-------------------------------------------|
//! | `ids`  | int64   | `[batch, id_width]`    | one id per id feature, below its cardinality |
//! | `dense`| float32 | `[batch, dense_width]` | the transformed numbers                   |
//! | `pctr` | float32 | `[batch, 1]`           | click probability                         |
//!
//! The batch dimension is dynamic. The graph computes exactly what the trainer's forward pass
//! computes (the parity test checks it with ONNX Runtime).

pub mod external;
mod graph;
mod proto;

pub use graph::OPSET;
use graph::{Attr, Dim, ElemType, Graph};

use crate::model::{Dlrm, Embeddings, InputShape, Mlp, Model};

/// Input and output names of every exported model.
pub const IDS_INPUT: &str = "ids";
pub const DENSE_INPUT: &str = "dense";
pub const OUTPUT: &str = "pctr";

/// Serialises `model` as an ONNX `ModelProto`, with `metadata` as its metadata properties.
pub fn export(model: &Model, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut g = Graph::default();
    let embeddings = model.embeddings();
    let (f, d) = (embeddings.offsets.len() as i64, model.input_shape().dense_width as i64);
    g.input(IDS_INPUT, ElemType::Int64, &[Dim::Named("batch"), Dim::Fixed(f)]);
    g.input(DENSE_INPUT, ElemType::Float, &[Dim::Named("batch"), Dim::Fixed(d)]);
    g.output(OUTPUT, ElemType::Float, &[Dim::Named("batch"), Dim::Fixed(1)]);
    let rows = lookup(&mut g, embeddings);
    let logit = match model {
        Model::Logistic(m) => {
            // [batch, F, 1] -> [batch, 1]: the sum of the id weights.
            let axes = g.ints("sum_axes", &[1], &[1]);
            let sparse = g.node("ReduceSum", &[&rows, &axes], "id_sum", &[Attr::Int("keepdims", 0)]);
            let bias = g.floats("bias", &[1], &m.bias);
            let with_bias = g.node("Add", &[&sparse, &bias], "id_sum_bias", &[]);
            if m.dense.is_empty() {
                with_bias
            } else {
                let v = g.floats("dense_weights", &[d, 1], &m.dense);
                let dense = g.node("MatMul", &[DENSE_INPUT, &v], "dense_sum", &[]);
                g.node("Add", &[&with_bias, &dense], "logit", &[])
            }
        }
        Model::Dlrm(m) => dlrm(&mut g, m, &rows),
    };
    g.node("Sigmoid", &[&logit], OUTPUT, &[]);
    let name = match model {
        Model::Logistic(_) => "adrank_logistic",
        Model::Dlrm(_) => "adrank_dlrm",
    };
    g.into_model(name, metadata)
}

/// A model of adrank's signature that loads, takes the largest-ids probe and any warm-up of
/// zeros, then fails in ONNX Runtime on every row whose id in `column` is neither 0 nor the
/// largest (`largest`): live traffic. For testing what serving does when a version breaks after
/// it went live.
#[doc(hidden)]
pub fn fails_on_live_ids(shape: &InputShape, column: usize, largest: i64) -> Vec<u8> {
    let mut g = Graph::default();
    let (f, d) = (shape.id_cardinalities.len() as i64, shape.dense_width as i64);
    g.input(IDS_INPUT, ElemType::Int64, &[Dim::Named("batch"), Dim::Fixed(f)]);
    g.input(DENSE_INPUT, ElemType::Float, &[Dim::Named("batch"), Dim::Fixed(d)]);
    g.output(OUTPUT, ElemType::Float, &[Dim::Named("batch"), Dim::Fixed(1)]);
    let (start, end, axis) = (column as i64, column as i64 + 1, 1);
    let (start, end, axis) =
        (g.ints("start", &[1], &[start]), g.ints("end", &[1], &[end]), g.ints("axis", &[1], &[axis]));
    let id = g.node("Slice", &[IDS_INPUT, &start, &end, &axis], "id", &[]);
    // id * (largest - id): 0 at both ends, far past a one-row table in between.
    let top = g.ints("largest", &[1], &[largest]);
    let rest = g.node("Sub", &[&top, &id], "rest", &[]);
    let index = g.node("Mul", &[&id, &rest], "index", &[]);
    let table = g.floats("table", &[1, 1], &[0.0]);
    let row = g.node("Gather", &[&table, &index], "row", &[Attr::Int("axis", 0)]);
    let axes = g.ints("last_axis", &[1], &[2]);
    let logit = g.node("ReduceSum", &[&row, &axes], "logit", &[Attr::Int("keepdims", 0)]);
    g.node("Sigmoid", &[&logit], OUTPUT, &[]);
    g.into_model("adrank_fails_on_live_ids", &[])
}

/// `ids + offsets` into the concatenated table, then one `Gather`: `[batch, F, dim]`.
fn lookup(g: &mut Graph, e: &Embeddings) -> String {
    let offsets = g.ints("table_offsets", &[e.offsets.len() as i64], &e.offsets);
    let global = g.node("Add", &[IDS_INPUT, &offsets], "table_rows", &[]);
    let table = g.floats("table", &[e.rows() as i64, e.dim as i64], &e.table);
    g.node("Gather", &[&table, &global], "embedded", &[Attr::Int("axis", 0)])
}

/// `Gemm` (+ `Relu`) per layer.
fn mlp(g: &mut Graph, m: &Mlp, prefix: &str, input: &str) -> String {
    let mut h = input.to_string();
    let layers = m.layers.len();
    for (i, layer) in m.layers.iter().enumerate() {
        let (rows, cols) = (layer.w.nrows() as i64, layer.w.ncols() as i64);
        let w = g.floats(&format!("{prefix}_{i}_w"), &[rows, cols], layer.w.as_slice().expect("contiguous weights"));
        let b = g.floats(&format!("{prefix}_{i}_b"), &[cols], layer.b.as_slice().expect("contiguous bias"));
        h = g.node("Gemm", &[&h, &w, &b], &format!("{prefix}_{i}"), &[]);
        if i + 1 < layers || m.relu_last {
            h = g.node("Relu", &[&h], &format!("{prefix}_{i}_relu"), &[]);
        }
    }
    h
}

fn dlrm(g: &mut Graph, m: &Dlrm, rows: &str) -> String {
    let (k, dim) = (m.vectors() as i64, m.dim() as i64);
    let (embedded, first_order) = if m.wide {
        let last_axis = g.ints("axis_2", &[1], &[2]);
        // [batch, F, dim + 1]: the vectors, then each id's first-order weight.
        let (zero, dim_start, dim_end) =
            (g.ints("zero", &[1], &[0]), g.ints("dim", &[1], &[dim]), g.ints("dim_1", &[1], &[dim + 1]));
        let vectors = g.node("Slice", &[rows, &zero, &dim_start, &last_axis], "embedded_vectors", &[]);
        let weights = g.node("Slice", &[rows, &dim_start, &dim_end, &last_axis], "first_order_weights", &[]);
        // [batch, F, 1] -> [batch, 1].
        let axes = g.ints("feature_axis", &[1], &[1]);
        let sum = g.node("ReduceSum", &[&weights, &axes], "first_order", &[Attr::Int("keepdims", 0)]);
        (vectors, Some(sum))
    } else {
        (rows.to_string(), None)
    };
    let embedded = embedded.as_str();
    let bottom = mlp(g, &m.bottom, "bottom", DENSE_INPUT);
    let one = g.ints("axis_1", &[1], &[1]);
    let bottom_3d = g.node("Unsqueeze", &[&bottom, &one], "bottom_vector", &[]);
    // [batch, K, dim], K = 1 + F: the bottom output first, as in the trainer.
    let vectors = g.node("Concat", &[&bottom_3d, embedded], "vectors", &[Attr::Int("axis", 1)]);
    let transposed = g.node("Transpose", &[&vectors], "vectors_t", &[Attr::Ints("perm", &[0, 2, 1])]);
    let gram = g.node("MatMul", &[&vectors, &transposed], "gram", &[]);
    let flat_shape = g.ints("gram_flat_shape", &[2], &[0, k * k]);
    let flat = g.node("Reshape", &[&gram, &flat_shape], "gram_flat", &[]);
    let pairs: Vec<i64> = m.pairs().iter().map(|&(i, j)| i as i64 * k + j as i64).collect();
    let pair_index = g.ints("pair_index", &[pairs.len() as i64], &pairs);
    let dots = g.node("Gather", &[&flat, &pair_index], "dots", &[Attr::Int("axis", 1)]);
    let top_input = g.node("Concat", &[&bottom, &dots], "top_input", &[Attr::Int("axis", 1)]);
    let deep = mlp(g, &m.top, "top", &top_input);
    match first_order {
        Some(wide) => g.node("Add", &[&deep, &wide], "logit", &[]),
        None => deep,
    }
}
