//! Shared taste: an entity's latent vector (and, for users, its bias) is the sum of one
//! component per attribute value (a user's segment, country and device; an ad's category,
//! advertiser and format) plus an individual deviation. What attributes carry, a model learns
//! from everyone with the same attributes; the deviation only from the entity's own history.

use super::rng::Rng;

/// The attributes each entity's taste is composed from.
pub(super) const ATTRIBUTES: usize = 3;

/// One kind of entity's taste (users or ads): the shared components and each entity's own part.
#[derive(Debug, Clone)]
pub(super) struct Taste {
    dim: usize,
    /// The individual deviation's share of the variance; the components share the rest.
    individual: f64,
    /// Each attribute's part of the shared variance (summing to 1).
    weights: [f64; ATTRIBUTES],
    /// Per attribute, `dim` components per value.
    components: [Vec<f32>; ATTRIBUTES],
    /// Per attribute, one bias component per value (all zero where biases are individual).
    biases: [Vec<f32>; ATTRIBUTES],
    /// Each entity's attribute values.
    attributes: Vec<[u32; ATTRIBUTES]>,
    /// Each entity's individual deviation, `dim` per entity, and its bias deviation.
    deviation: Vec<f32>,
    bias_deviation: Vec<f32>,
}

impl Taste {
    /// Draws the shared components: vector components of deviation `vector_std`, split by
    /// `weights` so that the composed vector keeps that deviation; bias components likewise
    /// when `bias_std` > 0.
    /// Nothing is drawn when the taste is wholly individual (the world before shared taste, draw
    /// for draw).
    pub(super) fn new(
        rng: &mut Rng,
        dim: usize,
        individual: f64,
        (values, weights): ([usize; ATTRIBUTES], [f64; ATTRIBUTES]),
        (vector_std, bias_std): (f64, f64),
    ) -> Self {
        let mut draw = |count: usize, weight: f64, std: f64| -> Vec<f32> {
            let scale = ((1.0 - individual) * weight).max(0.0).sqrt() * std;
            if scale == 0.0 {
                return vec![0.0; count];
            }
            (0..count).map(|_| (scale * rng.normal()) as f32).collect()
        };
        let components = std::array::from_fn(|i| draw(values[i] * dim, weights[i], vector_std));
        let biases = std::array::from_fn(|i| draw(values[i], weights[i], bias_std));
        Self {
            dim,
            individual,
            weights,
            components,
            biases,
            attributes: Vec::new(),
            deviation: Vec::new(),
            bias_deviation: Vec::new(),
        }
    }

    /// The scale of an individual deviation against a wholly individual draw.
    pub(super) fn individual_scale(&self) -> f64 {
        self.individual.sqrt()
    }

    /// Adds an entity: its own parts (already scaled) and its attribute values.
    pub(super) fn add(&mut self, deviation: &[f32], bias_deviation: f32, attributes: [u32; ATTRIBUTES]) {
        self.deviation.extend_from_slice(deviation);
        self.bias_deviation.push(bias_deviation);
        self.attributes.push(attributes);
    }

    /// Entity `e`'s composed vector into `out` (`dim` long) and its composed bias.
    pub(super) fn compose(&self, e: usize, out: &mut [f32]) -> f32 {
        out.copy_from_slice(&self.deviation[e * self.dim..(e + 1) * self.dim]);
        let mut bias = self.bias_deviation[e];
        for (i, &value) in self.attributes[e].iter().enumerate() {
            let at = value as usize * self.dim;
            for (x, c) in out.iter_mut().zip(&self.components[i][at..at + self.dim]) {
                *x += c;
            }
            bias += self.biases[i][value as usize];
        }
        bias
    }

    /// Entity `e`'s individual deviation.
    pub(super) fn deviation(&self, e: usize) -> (&[f32], f32) {
        (&self.deviation[e * self.dim..(e + 1) * self.dim], self.bias_deviation[e])
    }

    /// One day's walk of the listed entities' deviations and of every shared vector component,
    /// each keeping its variance; `step` is the composed vector's daily step and `std` its
    /// deviation. The callers recompose what moved.
    pub(super) fn drift(&mut self, rng: &mut Rng, shared_rng: &mut Rng, (step, std): (f64, f64), entities: &[usize]) {
        let keep = (1.0 - (step / std).powi(2)).max(0.0).sqrt() as f32;
        let individual_step = step * self.individual_scale();
        for &e in entities {
            for x in &mut self.deviation[e * self.dim..(e + 1) * self.dim] {
                *x = keep * *x + (individual_step * rng.normal()) as f32;
            }
        }
        for (components, weight) in self.components.iter_mut().zip(self.weights) {
            let shared_step = step * ((1.0 - self.individual) * weight).max(0.0).sqrt();
            if shared_step > 0.0 {
                for x in components {
                    *x = keep * *x + (shared_step * shared_rng.normal()) as f32;
                }
            }
        }
    }
}
