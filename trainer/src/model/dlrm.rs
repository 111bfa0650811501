//! A DLRM-style network (Naumov et al., 2019): one embedding per id feature, a bottom MLP that
//! maps the numbers to one more vector of the same width, the dot product of every pair of those
//! vectors, and a top MLP over [bottom output, dot products] that gives the logit.
//!
//! With `wide`, each embedding row carries one more value, a first-order weight summed straight
//! into the logit (the "wide" part of Wide & Deep): a per-id bias that DLRM's interactions can
//! only approximate, learned as directly as logistic regression learns it.

use ndarray::{Array2, ArrayView2, Axis, Slice};

use super::{Architecture, BatchView, Embeddings, Grads, InputShape, Mlp, SparseGrad, loss_gradient};
use crate::rng::Rng;

/// DLRM's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Dlrm {
    pub embeddings: Embeddings,
    /// numbers -> `embedding_dim`, ReLU after every layer.
    pub bottom: Mlp,
    /// [bottom output, pairwise dots] -> logit.
    pub top: Mlp,
    /// Whether the last value of each embedding row is a first-order weight.
    pub wide: bool,
}

/// The forward pass's intermediate values.
#[derive(Debug)]
pub(crate) struct Trace {
    bottom: super::linear::MlpTrace,
    /// `[rows, vectors * dim]`: the bottom output, then each feature's embedding.
    vectors: Array2<f32>,
    top: super::linear::MlpTrace,
    pub(crate) logits: Vec<f32>,
}

impl Dlrm {
    pub(super) fn new(
        shape: &InputShape,
        sizes: (usize, &[usize], &[usize]),
        wide: bool,
        bias: f32,
        rng: &mut Rng,
    ) -> Self {
        let (dim, bottom, top) = sizes;
        let mut embeddings = Embeddings::new(&shape.id_cardinalities, dim + usize::from(wide), 1.0, rng);
        if wide {
            // First-order weights start at zero: a new id starts without a bias.
            embeddings.table.iter_mut().skip(dim).step_by(dim + 1).for_each(|w| *w = 0.0);
        }
        let bottom_sizes: Vec<usize> =
            std::iter::once(shape.dense_width).chain(bottom.iter().copied()).chain(std::iter::once(dim)).collect();
        let vectors = shape.id_width() + 1;
        let top_input = dim + vectors * (vectors - 1) / 2;
        let top_sizes: Vec<usize> =
            std::iter::once(top_input).chain(top.iter().copied()).chain(std::iter::once(1)).collect();
        let mut top = Mlp::new(&top_sizes, false, rng);
        top.layers.last_mut().expect("the top MLP has an output layer").b[0] = bias;
        Self { embeddings, bottom: Mlp::new(&bottom_sizes, true, rng), top, wide }
    }

    pub(super) fn architecture(&self) -> Architecture {
        let hidden = |m: &Mlp| m.layers.iter().skip(1).map(|l| l.w.nrows()).collect();
        Architecture::Dlrm {
            embedding_dim: self.dim(),
            bottom: hidden(&self.bottom),
            top: hidden(&self.top),
            wide: self.wide,
        }
    }

    /// The width of the vectors that interact (the table rows without the first-order weight).
    pub fn dim(&self) -> usize {
        self.embeddings.dim - usize::from(self.wide)
    }

    /// Vectors per row: the bottom output and one per id feature.
    pub fn vectors(&self) -> usize {
        self.embeddings.offsets.len() + 1
    }

    /// The pairs whose dot products feed the top MLP, in order: (i, j) for i < j, by i then j.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let k = self.vectors();
        (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j))).collect()
    }

    pub(super) fn dense_params(&self) -> Vec<&[f32]> {
        let mut params = self.bottom.params();
        params.extend(self.top.params());
        params
    }

    pub(super) fn dense_params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut params = self.bottom.params_mut();
        params.extend(self.top.params_mut());
        params
    }

    pub(crate) fn forward(&self, rows: BatchView<'_>) -> Trace {
        let n = rows.rows();
        let (dim, f) = (self.dim(), self.embeddings.offsets.len());
        let mut first_order = vec![0.0f32; n];
        let (k, pairs) = (self.vectors(), self.pairs());
        let dense = ArrayView2::from_shape((n, self.bottom.input_width()), rows.dense)
            .expect("the batch holds dense_width numbers per row; this is a bug");
        let bottom = self.bottom.forward(dense.to_owned());
        let mut vectors = Array2::<f32>::zeros((n, k * dim));
        vectors.slice_axis_mut(Axis(1), Slice::from(..dim)).assign(&bottom.output);
        for (r, first_order) in first_order.iter_mut().enumerate() {
            let mut row = vectors.row_mut(r);
            let row = row.as_slice_mut().expect("rows of a fresh array are contiguous");
            for (i, &id) in rows.ids[r * f..(r + 1) * f].iter().enumerate() {
                let start = (i + 1) * dim;
                let vector = self.embeddings.vector(self.embeddings.row(i, id));
                row[start..start + dim].copy_from_slice(&vector[..dim]);
                if self.wide {
                    *first_order += vector[dim];
                }
            }
        }
        let mut top_input = Array2::<f32>::zeros((n, dim + pairs.len()));
        top_input.slice_axis_mut(Axis(1), Slice::from(..dim)).assign(&bottom.output);
        for r in 0..n {
            let v = vectors.row(r);
            let v = v.as_slice().expect("rows of a fresh array are contiguous");
            let mut out = top_input.row_mut(r);
            for (p, &(i, j)) in pairs.iter().enumerate() {
                out[dim + p] = dot(&v[i * dim..(i + 1) * dim], &v[j * dim..(j + 1) * dim]);
            }
        }
        let top = self.top.forward(top_input);
        let logits = top.output.column(0).iter().zip(&first_order).map(|(t, w)| t + w).collect();
        Trace { bottom, vectors, top, logits }
    }

    pub(super) fn loss_and_grads(&self, rows: BatchView<'_>) -> (f64, Grads) {
        let n = rows.rows();
        let (dim, f) = (self.dim(), self.embeddings.offsets.len());
        let pairs = self.pairs();
        let trace = self.forward(rows);
        let (loss, d_logits) = loss_gradient(&trace.logits, rows.labels);
        let mut dense: Vec<Vec<f32>> = self.dense_params().iter().map(|p| vec![0.0; p.len()]).collect();
        let (bottom_grads, top_grads) = dense.split_at_mut(2 * self.bottom.layers.len());

        let d_top_out = Array2::from_shape_vec((n, 1), d_logits.clone()).expect("one logit per row");
        let d_top_in = self.top.backward(&trace.top, d_top_out, top_grads);
        let mut d_vectors = Array2::<f32>::zeros((n, self.vectors() * dim));
        for r in 0..n {
            let v = trace.vectors.row(r);
            let v = v.as_slice().expect("rows of a fresh array are contiguous");
            let g = d_top_in.row(r);
            let mut dv = d_vectors.row_mut(r);
            let dv = dv.as_slice_mut().expect("rows of a fresh array are contiguous");
            for (p, &(i, j)) in pairs.iter().enumerate() {
                let gp = g[dim + p];
                for e in 0..dim {
                    dv[i * dim + e] += gp * v[j * dim + e];
                    dv[j * dim + e] += gp * v[i * dim + e];
                }
            }
        }
        let first = Slice::from(..dim);
        let d_bottom_out = &d_top_in.slice_axis(Axis(1), first) + &d_vectors.slice_axis(Axis(1), first);
        self.bottom.backward(&trace.bottom, d_bottom_out, bottom_grads);

        let width = self.embeddings.dim;
        let mut sparse = SparseGrad { rows: Vec::with_capacity(n * f), values: Vec::with_capacity(n * f * width) };
        for (r, &d_logit) in d_logits.iter().enumerate() {
            let dv = d_vectors.row(r);
            for (i, &id) in rows.ids[r * f..(r + 1) * f].iter().enumerate() {
                sparse.rows.push(self.embeddings.row(i, id));
                sparse.values.extend(dv.iter().skip((i + 1) * dim).take(dim));
                if self.wide {
                    sparse.values.push(d_logit);
                }
            }
        }
        (loss, Grads { dense, sparse })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
