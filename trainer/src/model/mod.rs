//! The models: logistic regression and a DLRM-style network, with hand-written forward and
//! backward passes (checked against finite differences in `tests.rs`).
//!
//! Both read one row as `id_width` int64 ids (one per id feature, each below its feature's
//! cardinality) and `dense_width` float32 numbers, the [`adrank_contracts::spec::Transformer`]'s
//! output, and produce one logit; pCTR is its sigmoid. The ONNX export ([`crate::onnx`]) writes
//! the same computation as a graph.

mod dlrm;
mod embedding;
mod linear;
mod logistic;
#[cfg(test)]
mod tests;

use adrank_contracts::spec::{FeatureSpec, Output};
use serde::{Deserialize, Serialize};

pub use dlrm::Dlrm;
pub use embedding::Embeddings;
pub(crate) use embedding::SparseGrad;
pub use linear::{Linear, Mlp};
pub use logistic::Logistic;

use crate::rng::Rng;

/// The input shape every model of a feature spec shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputShape {
    /// Cardinality of each id column (ids are `0..cardinality`).
    pub id_cardinalities: Vec<u64>,
    /// Float columns.
    pub dense_width: usize,
}

impl InputShape {
    /// The shape of `spec`'s model inputs.
    pub fn of(spec: &FeatureSpec) -> Self {
        let mut id_cardinalities = Vec::new();
        let mut dense_width = 0;
        for feature in &spec.features {
            match feature.output() {
                Output::Id { cardinality } => id_cardinalities.push(cardinality),
                Output::Dense => dense_width += 1,
            }
        }
        Self { id_cardinalities, dense_width }
    }

    pub fn id_width(&self) -> usize {
        self.id_cardinalities.len()
    }
}

/// Rows of model inputs and labels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// `rows * id_width`.
    pub ids: Vec<i64>,
    /// `rows * dense_width`.
    pub dense: Vec<f32>,
    /// 1.0 for a click, 0.0 otherwise.
    pub labels: Vec<f32>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    pub fn clear(&mut self) {
        self.ids.clear();
        self.dense.clear();
        self.labels.clear();
    }

    /// Rows `range` of this batch.
    pub fn view(&self, shape: &InputShape, range: std::ops::Range<usize>) -> BatchView<'_> {
        let (f, d) = (shape.id_width(), shape.dense_width);
        BatchView {
            ids: &self.ids[range.start * f..range.end * f],
            dense: &self.dense[range.start * d..range.end * d],
            labels: &self.labels[range],
        }
    }
}

/// Borrowed rows of a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    pub ids: &'a [i64],
    pub dense: &'a [f32],
    pub labels: &'a [f32],
}

impl BatchView<'_> {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }
}

/// Which model to train, with its sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Architecture {
    /// Logistic regression: one weight per id (hashed features and crosses) and per number.
    Logistic,
    /// DLRM: embeddings, a bottom MLP over the numbers, pairwise dot products, a top MLP.
    Dlrm {
        /// Embedding dimension (also the bottom MLP's output width).
        embedding_dim: usize,
        /// Hidden widths of the bottom MLP (its output is `embedding_dim` wide).
        bottom: Vec<usize>,
        /// Hidden widths of the top MLP (its output is the logit).
        top: Vec<usize>,
        /// Add a first-order weight per id to the logit (the wide part of Wide & Deep).
        #[serde(default = "yes")]
        wide: bool,
    },
}

/// A model's parameters: the embedding tables (updated sparsely) and the dense tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    Logistic(Logistic),
    Dlrm(Dlrm),
}

/// Gradients of one batch (sums over its rows, not means).
#[derive(Debug, Clone)]
pub(crate) struct Grads {
    /// One per dense tensor, in [`Model::dense_params`] order.
    pub(crate) dense: Vec<Vec<f32>>,
    pub(crate) sparse: SparseGrad,
}

impl Grads {
    /// Adds another shard's gradients (dense summed, sparse appended).
    pub(crate) fn absorb(&mut self, other: Grads) {
        for (a, b) in self.dense.iter_mut().zip(&other.dense) {
            linear::add(a, b);
        }
        self.sparse.append(other.sparse);
    }

    /// Little-endian bytes, for the exchange between ranks (bit for bit: floats are copied).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let floats = |values: &[f32], out: &mut Vec<u8>| {
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        };
        out.extend_from_slice(&(self.dense.len() as u64).to_le_bytes());
        for tensor in &self.dense {
            floats(tensor, out);
        }
        out.extend_from_slice(&(self.sparse.rows.len() as u64).to_le_bytes());
        self.sparse.rows.iter().for_each(|r| out.extend_from_slice(&(*r as u64).to_le_bytes()));
        floats(&self.sparse.values, out);
    }

    /// What [`Grads::encode`] wrote, and the bytes it took.
    pub(crate) fn decode(bytes: &[u8]) -> Option<(Self, usize)> {
        let mut cursor = Cursor { bytes, at: 0 };
        let tensors = cursor.count()?;
        let mut dense = Vec::with_capacity(tensors);
        for _ in 0..tensors {
            let n = cursor.count()?;
            dense.push(cursor.floats(n)?);
        }
        let n_rows = cursor.count()?;
        let rows = (0..n_rows).map(|_| cursor.count()).collect::<Option<Vec<usize>>>()?;
        let n_values = cursor.count()?;
        let values = cursor.floats(n_values)?;
        Some((Self { dense, sparse: SparseGrad { rows, values } }, cursor.at))
    }
}

/// Reads what [`Grads::encode`] wrote.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn count(&mut self) -> Option<usize> {
        let word = self.bytes.get(self.at..self.at + 8)?;
        self.at += 8;
        Some(u64::from_le_bytes(word.try_into().ok()?) as usize)
    }

    fn floats(&mut self, n: usize) -> Option<Vec<f32>> {
        let raw = self.bytes.get(self.at..self.at.checked_add(n.checked_mul(4)?)?)?;
        self.at += 4 * n;
        Some(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
}

impl Model {
    /// A freshly initialised model; `base_rate` sets the output bias so training starts at the
    /// observed click rate.
    pub fn new(architecture: &Architecture, shape: &InputShape, base_rate: f64, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let bias = logit(base_rate.clamp(1e-6, 1.0 - 1e-6)) as f32;
        match architecture {
            Architecture::Logistic => Self::Logistic(Logistic::new(shape, bias)),
            Architecture::Dlrm { embedding_dim, bottom, top, wide } => {
                Self::Dlrm(Dlrm::new(shape, (*embedding_dim, bottom, top), *wide, bias, &mut rng))
            }
        }
    }

    pub fn architecture(&self) -> Architecture {
        match self {
            Self::Logistic(_) => Architecture::Logistic,
            Self::Dlrm(m) => m.architecture(),
        }
    }

    pub fn embeddings(&self) -> &Embeddings {
        match self {
            Self::Logistic(m) => &m.weights,
            Self::Dlrm(m) => &m.embeddings,
        }
    }

    pub(crate) fn embeddings_mut(&mut self) -> &mut Embeddings {
        match self {
            Self::Logistic(m) => &mut m.weights,
            Self::Dlrm(m) => &mut m.embeddings,
        }
    }

    /// The inputs this model reads.
    pub fn input_shape(&self) -> InputShape {
        let dense_width = match self {
            Self::Logistic(m) => m.dense.len(),
            Self::Dlrm(m) => m.bottom.input_width(),
        };
        InputShape { id_cardinalities: self.embeddings().cardinalities.clone(), dense_width }
    }

    /// Every dense tensor, in a fixed order (gradients and checkpoints use it).
    pub fn dense_params(&self) -> Vec<&[f32]> {
        match self {
            Self::Logistic(m) => m.dense_params(),
            Self::Dlrm(m) => m.dense_params(),
        }
    }

    pub(crate) fn dense_params_mut(&mut self) -> Vec<&mut [f32]> {
        match self {
            Self::Logistic(m) => m.dense_params_mut(),
            Self::Dlrm(m) => m.dense_params_mut(),
        }
    }

    /// Logits of every row.
    pub fn logits(&self, rows: BatchView<'_>) -> Vec<f32> {
        match self {
            Self::Logistic(m) => m.logits(rows),
            Self::Dlrm(m) => m.forward(rows).logits,
        }
    }

    /// Click probabilities of every row.
    pub fn predict(&self, rows: BatchView<'_>) -> Vec<f32> {
        self.logits(rows).into_iter().map(sigmoid).collect()
    }

    /// The summed log loss of the rows and its gradients.
    pub(crate) fn loss_and_grads(&self, rows: BatchView<'_>) -> (f64, Grads) {
        match self {
            Self::Logistic(m) => m.loss_and_grads(rows),
            Self::Dlrm(m) => m.loss_and_grads(rows),
        }
    }

    /// The summed log loss of the rows.
    pub fn loss(&self, rows: BatchView<'_>) -> f64 {
        self.logits(rows).iter().zip(rows.labels).map(|(&z, &y)| log_loss(z, y)).sum()
    }
}

fn yes() -> bool {
    true
}

pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

/// Binary cross-entropy of a logit, computed stably for large |z|.
pub(crate) fn log_loss(z: f32, y: f32) -> f64 {
    let z = f64::from(z);
    z.max(0.0) - z * f64::from(y) + (-z.abs()).exp().ln_1p()
}

/// Loss and its gradient with respect to each logit.
pub(crate) fn loss_gradient(logits: &[f32], labels: &[f32]) -> (f64, Vec<f32>) {
    let loss = logits.iter().zip(labels).map(|(&z, &y)| log_loss(z, y)).sum();
    (loss, logits.iter().zip(labels).map(|(&z, &y)| sigmoid(z) - y).collect())
}
