//! A DLRM-style network (Naumov et al., 2019): one embedding per id feature, a bottom MLP that
//! maps the numbers to one more vector of the same width, the dot product of every pair of those
//! vectors, and a top MLP over [bottom output, dot products] that gives the logit.

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
        dim: usize,
        bottom: &[usize],
        top: &[usize],
        bias: f32,
        rng: &mut Rng,
    ) -> Self {
        let embeddings = Embeddings::new(&shape.id_cardinalities, dim, 1.0, rng);
        let bottom_sizes: Vec<usize> =
            std::iter::once(shape.dense_width).chain(bottom.iter().copied()).chain(std::iter::once(dim)).collect();
        let vectors = shape.id_width() + 1;
        let top_input = dim + vectors * (vectors - 1) / 2;
        let top_sizes: Vec<usize> =
            std::iter::once(top_input).chain(top.iter().copied()).chain(std::iter::once(1)).collect();
        let mut top = Mlp::new(&top_sizes, false, rng);
        top.layers.last_mut().expect("the top MLP has an output layer").b[0] = bias;
        Self { embeddings, bottom: Mlp::new(&bottom_sizes, true, rng), top }
    }

    pub(super) fn architecture(&self) -> Architecture {
        let hidden = |m: &Mlp| m.layers.iter().skip(1).map(|l| l.w.nrows()).collect();
        Architecture::Dlrm { embedding_dim: self.embeddings.dim, bottom: hidden(&self.bottom), top: hidden(&self.top) }
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
        let (dim, f) = (self.embeddings.dim, self.embeddings.offsets.len());
        let (k, pairs) = (self.vectors(), self.pairs());
        let dense = ArrayView2::from_shape((n, self.bottom.input_width()), rows.dense)
            .expect("the batch holds dense_width numbers per row; this is a bug");
        let bottom = self.bottom.forward(dense.to_owned());
        let mut vectors = Array2::<f32>::zeros((n, k * dim));
        vectors.slice_axis_mut(Axis(1), Slice::from(..dim)).assign(&bottom.output);
        for r in 0..n {
            let mut row = vectors.row_mut(r);
            let row = row.as_slice_mut().expect("rows of a fresh array are contiguous");
            for (i, &id) in rows.ids[r * f..(r + 1) * f].iter().enumerate() {
                let start = (i + 1) * dim;
                row[start..start + dim].copy_from_slice(self.embeddings.vector(self.embeddings.row(i, id)));
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
        let logits = top.output.column(0).to_vec();
        Trace { bottom, vectors, top, logits }
    }

    pub(super) fn loss_and_grads(&self, rows: BatchView<'_>) -> (f64, Grads) {
        let n = rows.rows();
        let (dim, f) = (self.embeddings.dim, self.embeddings.offsets.len());
        let pairs = self.pairs();
        let trace = self.forward(rows);
        let (loss, d_logits) = loss_gradient(&trace.logits, rows.labels);
        let mut dense: Vec<Vec<f32>> = self.dense_params().iter().map(|p| vec![0.0; p.len()]).collect();
        let (bottom_grads, top_grads) = dense.split_at_mut(2 * self.bottom.layers.len());

        let d_top_out = Array2::from_shape_vec((n, 1), d_logits).expect("one logit per row");
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

        let mut sparse = SparseGrad { rows: Vec::with_capacity(n * f), values: Vec::with_capacity(n * f * dim) };
        for r in 0..n {
            let dv = d_vectors.row(r);
            for (i, &id) in rows.ids[r * f..(r + 1) * f].iter().enumerate() {
                sparse.rows.push(self.embeddings.row(i, id));
                sparse.values.extend(dv.iter().skip((i + 1) * dim).take(dim));
            }
        }
        (loss, Grads { dense, sparse })
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
