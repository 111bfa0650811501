//! Optimisers: Adam or Adagrad for the dense tensors, row-wise sparse Adagrad for embedding
//! tables (only the rows a batch touched are updated; one accumulator per row, as in DLRM's
//! reference trainers, so the state costs one float per row instead of one per value).

use serde::{Deserialize, Serialize};

use crate::model::{Grads, Model};

/// The dense tensors' optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenseOptimizer {
    Adam,
    Adagrad,
}

/// Learning rates and the like.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    pub dense: DenseOptimizer,
    pub dense_learning_rate: f32,
    pub embedding_learning_rate: f32,
    /// L2 penalty on the embedding rows a batch touches (applied with their update).
    pub embedding_l2: f32,
}

const ADAM_BETA1: f32 = 0.9;
const ADAM_BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;
/// Adagrad accumulators start here, so the first steps are not huge.
const ADAGRAD_INITIAL: f32 = 1e-6;

/// The optimiser's state for one model.
#[derive(Debug, Clone)]
pub struct Optimizer {
    config: OptimizerConfig,
    step: i32,
    /// Per dense tensor: Adam's first moment (unused by Adagrad).
    first: Vec<Vec<f32>>,
    /// Per dense tensor: Adam's second moment or Adagrad's accumulator.
    second: Vec<Vec<f32>>,
    /// Per embedding row: the mean squared gradient accumulated.
    rows: Vec<f32>,
}

impl Optimizer {
    pub fn new(config: OptimizerConfig, model: &Model) -> Self {
        let zeros = |v: f32| model.dense_params().iter().map(|p| vec![v; p.len()]).collect::<Vec<_>>();
        Self {
            config,
            step: 0,
            first: zeros(0.0),
            second: zeros(if config.dense == DenseOptimizer::Adagrad { ADAGRAD_INITIAL } else { 0.0 }),
            rows: vec![ADAGRAD_INITIAL; model.embeddings().rows()],
        }
    }

    /// Applies one batch's summed gradients, averaged over its `rows` examples.
    pub(crate) fn apply(&mut self, model: &mut Model, grads: &Grads, rows: usize) {
        let scale = 1.0 / rows.max(1) as f32;
        self.step += 1;
        let lr = self.config.dense_learning_rate;
        let (c1, c2) = (1.0 - ADAM_BETA1.powi(self.step), 1.0 - ADAM_BETA2.powi(self.step));
        for (t, param) in model.dense_params_mut().into_iter().enumerate() {
            let (m, v) = (&mut self.first[t], &mut self.second[t]);
            for (i, w) in param.iter_mut().enumerate() {
                let g = grads.dense[t][i] * scale;
                match self.config.dense {
                    DenseOptimizer::Adam => {
                        m[i] = ADAM_BETA1 * m[i] + (1.0 - ADAM_BETA1) * g;
                        v[i] = ADAM_BETA2 * v[i] + (1.0 - ADAM_BETA2) * g * g;
                        *w -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + EPSILON);
                    }
                    DenseOptimizer::Adagrad => {
                        v[i] += g * g;
                        *w -= lr * g / (v[i].sqrt() + EPSILON);
                    }
                }
            }
        }
        let embeddings = model.embeddings_mut();
        let dim = embeddings.dim;
        let sparse = grads.sparse.merged(dim);
        let (lr, l2) = (self.config.embedding_learning_rate, self.config.embedding_l2);
        for (k, &row) in sparse.rows.iter().enumerate() {
            let values = &mut embeddings.table[row * dim..(row + 1) * dim];
            let g: Vec<f32> = sparse.values[k * dim..(k + 1) * dim]
                .iter()
                .zip(values.iter())
                .map(|(g, w)| g * scale + l2 * w)
                .collect();
            self.rows[row] += g.iter().map(|g| g * g).sum::<f32>() / dim as f32;
            let step = lr / (self.rows[row].sqrt() + EPSILON);
            for (w, g) in values.iter_mut().zip(&g) {
                *w -= step * g;
            }
        }
    }
}
