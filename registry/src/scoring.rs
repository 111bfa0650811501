//! An ONNX Runtime session over an adrank model: read its signature, score rows.
//!
//! The trainer's offline evaluation and serving both score through this type, so an export bug
//! shows up in evaluation exactly as it would in production.

use ort::{
    session::{Session, builder::GraphOptimizationLevel},
    value::{TensorElementType, TensorRef, ValueType},
};

use crate::{Error, OrtConfig, Result, Signature, TensorSignature, config::GraphOptimization, runtime};

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads one run may use (ONNX Runtime's intra-op pool); 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    pub graph_optimization: GraphOptimization,
    /// Pool threads spin-wait for work after a run.
    pub intra_spinning: bool,
}

impl SessionOptions {
    /// The `[onnxruntime]` section's settings.
    pub fn of(config: &OrtConfig) -> Self {
        Self {
            intra_threads: config.intra_threads,
            graph_optimization: config.graph_optimization,
            intra_spinning: config.intra_spinning,
        }
    }

    /// One thread, every optimisation: for tests and small models.
    pub fn single_thread() -> Self {
        Self { intra_threads: 1, graph_optimization: GraphOptimization::All, intra_spinning: false }
    }
}

/// A loaded model.
#[derive(Debug)]
pub struct ScoringSession {
    session: Session,
    signature: Signature,
}

impl ScoringSession {
    /// Loads an ONNX model from bytes.
    pub fn load(onnx: &[u8], ort: &OrtConfig, options: SessionOptions) -> Result<Self> {
        let environment = runtime::environment(ort)?;
        let model_error = |e: ort::Error| Error::Model(e.to_string());
        let mut builder = Session::builder(&environment)
            .map_err(model_error)?
            .with_optimization_level(match options.graph_optimization {
                GraphOptimization::Disable => GraphOptimizationLevel::Disable,
                GraphOptimization::Basic => GraphOptimizationLevel::Level1,
                GraphOptimization::Extended => GraphOptimizationLevel::Level2,
                GraphOptimization::All => GraphOptimizationLevel::All,
            })
            .map_err(|e| Error::Model(e.to_string()))?
            .with_intra_op_spinning(options.intra_spinning)
            .map_err(|e| Error::Model(e.to_string()))?;
        if options.intra_threads > 0 {
            builder = builder.with_intra_threads(options.intra_threads).map_err(|e| Error::Model(e.to_string()))?;
        }
        let session = builder.commit_from_memory(onnx).map_err(model_error)?;
        let describe = |name: &str, dtype: &ValueType| TensorSignature {
            name: name.to_string(),
            elem_type: match dtype {
                ValueType::Tensor { ty, .. } => elem_type_name(*ty),
                other => format!("{other:?}"),
            },
            shape: match dtype {
                ValueType::Tensor { shape, .. } => shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
                _ => vec![],
            },
        };
        let signature = Signature {
            inputs: session.inputs().iter().map(|i| describe(i.name(), i.dtype())).collect(),
            outputs: session.outputs().iter().map(|o| describe(o.name(), o.dtype())).collect(),
        };
        Ok(Self { session, signature })
    }

    /// The model's inputs and outputs, as ONNX Runtime reads them.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Click probabilities of `rows` rows: `ids` holds `rows * id_width` ids, `dense`
    /// `rows * dense_width` numbers. The model must have adrank's signature.
    pub fn score(&mut self, rows: usize, ids: &[i64], dense: &[f32]) -> Result<Vec<f32>> {
        let width = |len: usize| len.checked_div(rows).unwrap_or(0);
        let run_error = |e: ort::Error| Error::Model(e.to_string());
        let ids = TensorRef::from_array_view(([rows, width(ids.len())], ids)).map_err(run_error)?;
        let dense = TensorRef::from_array_view(([rows, width(dense.len())], dense)).map_err(run_error)?;
        let outputs = self.session.run(ort::inputs!["ids" => ids, "dense" => dense]).map_err(run_error)?;
        let (_, scores) = outputs["pctr"].try_extract_tensor::<f32>().map_err(run_error)?;
        Ok(scores.to_vec())
    }
}

/// ONNX's element type names (`float32`, `int64`, …), as manifests record them.
fn elem_type_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        other => other.to_string(),
    }
}
