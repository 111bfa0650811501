//! Logistic regression over hashed ids (features and crosses) and numbers: the ads classic.
//!
//! logit = bias + sum over id features of w[feature, id] + sum over numbers of v[j] x[j].
//! The id weights are a one-wide embedding table, so they get the same sparse row-wise
//! updates as DLRM's embeddings.

use super::{BatchView, Embeddings, Grads, InputShape, SparseGrad, loss_gradient};

/// Logistic regression's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    /// One weight per (feature, id): a one-wide table.
    pub weights: Embeddings,
    /// One weight per number.
    pub dense: Vec<f32>,
    /// The intercept.
    pub bias: Vec<f32>,
}

impl Logistic {
    pub(super) fn new(shape: &InputShape, bias: f32) -> Self {
        let mut rng = crate::rng::Rng::new(0);
        Self {
            weights: Embeddings::new(&shape.id_cardinalities, 1, 0.0, &mut rng),
            dense: vec![0.0; shape.dense_width],
            bias: vec![bias],
        }
    }

    pub(super) fn dense_params(&self) -> Vec<&[f32]> {
        vec![&self.dense, &self.bias]
    }

    pub(super) fn dense_params_mut(&mut self) -> Vec<&mut [f32]> {
        vec![&mut self.dense, &mut self.bias]
    }

    pub(super) fn logits(&self, rows: BatchView<'_>) -> Vec<f32> {
        let (f, d) = (self.weights.offsets.len(), self.dense.len());
        (0..rows.rows())
            .map(|r| {
                let ids = &rows.ids[r * f..(r + 1) * f];
                let x = &rows.dense[r * d..(r + 1) * d];
                let sparse: f32 =
                    ids.iter().enumerate().map(|(i, &id)| self.weights.table[self.weights.row(i, id)]).sum();
                let dense: f32 = x.iter().zip(&self.dense).map(|(a, b)| a * b).sum();
                self.bias[0] + sparse + dense
            })
            .collect()
    }

    pub(super) fn loss_and_grads(&self, rows: BatchView<'_>) -> (f64, Grads) {
        let (f, d) = (self.weights.offsets.len(), self.dense.len());
        let (loss, g) = loss_gradient(&self.logits(rows), rows.labels);
        let mut dense = vec![0.0; d];
        let mut sparse = SparseGrad::default();
        for (r, &g) in g.iter().enumerate() {
            for (acc, x) in dense.iter_mut().zip(&rows.dense[r * d..(r + 1) * d]) {
                *acc += g * x;
            }
            for (i, &id) in rows.ids[r * f..(r + 1) * f].iter().enumerate() {
                sparse.rows.push(self.weights.row(i, id));
                sparse.values.push(g);
            }
        }
        (loss, Grads { dense: vec![dense, vec![g.iter().sum()]], sparse })
    }
}
