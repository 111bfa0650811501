//! Fully connected layers and multi-layer perceptrons, forward and backward.
//!
//! Weights are `[inputs, outputs]` so a layer is `y = x W + b`, which is exactly ONNX's `Gemm`
//! with `transB = 0`: the exporter writes the same matrices the trainer multiplies.

use crate::rng::Rng;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// One fully connected layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// `[inputs, outputs]`.
    pub w: Array2<f32>,
    /// `[outputs]`.
    pub b: Array1<f32>,
}

impl Linear {
    /// He-initialised weights (suited to ReLU), zero bias.
    pub(crate) fn new(inputs: usize, outputs: usize, rng: &mut Rng) -> Self {
        let std = (2.0 / inputs.max(1) as f64).sqrt();
        Self {
            w: Array2::from_shape_simple_fn((inputs, outputs), || (std * rng.normal()) as f32),
            b: Array1::zeros(outputs),
        }
    }

    pub(crate) fn forward(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        x.dot(&self.w) + &self.b
    }
}

/// A stack of layers with ReLU after each hidden layer and, when `relu_last`, after the last.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub relu_last: bool,
}

/// What the backward pass needs from the forward pass.
#[derive(Debug)]
pub(crate) struct MlpTrace {
    /// The input of each layer; the output of layer i is `inputs[i + 1]` or `output`.
    inputs: Vec<Array2<f32>>,
    pub(crate) output: Array2<f32>,
}

impl Mlp {
    /// Layers of `sizes[0] -> sizes[1] -> ... -> sizes[last]`.
    pub(crate) fn new(sizes: &[usize], relu_last: bool, rng: &mut Rng) -> Self {
        Self { layers: sizes.windows(2).map(|w| Linear::new(w[0], w[1], rng)).collect(), relu_last }
    }

    pub(crate) fn input_width(&self) -> usize {
        self.layers.first().map_or(0, |l| l.w.nrows())
    }

    fn relu_after(&self, layer: usize) -> bool {
        layer + 1 < self.layers.len() || self.relu_last
    }

    pub(crate) fn forward(&self, x: Array2<f32>) -> MlpTrace {
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let mut out = layer.forward(h.view());
            if self.relu_after(i) {
                out.mapv_inplace(|v| v.max(0.0));
            }
            inputs.push(h);
            h = out;
        }
        MlpTrace { inputs, output: h }
    }

    /// Adds the weight gradients to `grads` (two per layer: w then b, in layer order) and
    /// returns the gradient of the input.
    pub(crate) fn backward(&self, trace: &MlpTrace, d_output: Array2<f32>, grads: &mut [Vec<f32>]) -> Array2<f32> {
        let mut d = d_output;
        for (i, layer) in self.layers.iter().enumerate().rev() {
            if self.relu_after(i) {
                let out = trace.inputs.get(i + 1).unwrap_or(&trace.output);
                ndarray::Zip::from(&mut d).and(out).for_each(|g, &o| {
                    if o <= 0.0 {
                        *g = 0.0;
                    }
                });
            }
            // A product with a transposed view may come out column-major: iterate in logical
            // (row-major) order, the order of the weights.
            let gw = trace.inputs[i].t().dot(&d);
            grads[2 * i].iter_mut().zip(gw.iter()).for_each(|(a, b)| *a += b);
            let gb = d.sum_axis(Axis(0));
            grads[2 * i + 1].iter_mut().zip(gb.iter()).for_each(|(a, b)| *a += b);
            d = d.dot(&layer.w.t());
        }
        d
    }

    /// The parameters, two per layer (w, b), in the order of [`Mlp::backward`]'s gradients.
    pub(crate) fn params(&self) -> Vec<&[f32]> {
        self.layers
            .iter()
            .flat_map(|l| [l.w.as_slice().expect("weights are contiguous"), l.b.as_slice().expect("contiguous")])
            .collect()
    }

    pub(crate) fn params_mut(&mut self) -> Vec<&mut [f32]> {
        self.layers
            .iter_mut()
            .flat_map(|l| {
                [l.w.as_slice_mut().expect("weights are contiguous"), l.b.as_slice_mut().expect("contiguous")]
            })
            .collect()
    }
}

pub(crate) fn add(into: &mut [f32], from: &[f32]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}
