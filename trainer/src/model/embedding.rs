//! Embedding tables: one table per id feature, stored as one concatenated table with a row
//! offset per feature, so a row's global index is `offset[feature] + id`. The ONNX export
//! mirrors this (one `Gather` over the concatenated table after adding the offsets).

use crate::rng::Rng;

/// Every id feature's table, concatenated.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Row values, `rows * dim`.
    pub table: Vec<f32>,
    /// Values per row.
    pub dim: usize,
    /// First row of each feature's table.
    pub offsets: Vec<i64>,
    /// Rows of each feature's table (its id cardinality).
    pub cardinalities: Vec<u64>,
}

/// Gradients of embedding rows, one entry per (row occurrence), not yet merged.
#[derive(Debug, Clone, Default)]
pub(crate) struct SparseGrad {
    pub(crate) rows: Vec<usize>,
    /// `rows.len() * dim`.
    pub(crate) values: Vec<f32>,
}

impl SparseGrad {
    /// Sums the entries of equal rows, in ascending row order (a deterministic order whatever
    /// the order the entries arrived in).
    pub(crate) fn merged(&self, dim: usize) -> SparseGrad {
        let mut order: Vec<usize> = (0..self.rows.len()).collect();
        order.sort_by_key(|&i| self.rows[i]);
        let mut merged = SparseGrad::default();
        for i in order {
            let row = self.rows[i];
            let value = &self.values[i * dim..(i + 1) * dim];
            if merged.rows.last() == Some(&row) {
                let start = merged.values.len() - dim;
                super::linear::add(&mut merged.values[start..], value);
            } else {
                merged.rows.push(row);
                merged.values.extend_from_slice(value);
            }
        }
        merged
    }

    pub(crate) fn append(&mut self, other: SparseGrad) {
        self.rows.extend(other.rows);
        self.values.extend(other.values);
    }
}

impl Embeddings {
    /// Tables for ids with these cardinalities. With `scale` > 0 a table of n rows starts
    /// uniform in ±scale/sqrt(n) (DLRM's initialisation): big tables of rarely seen ids start
    /// near zero, so an id seen a few times adds little noise through its interactions.
    pub(crate) fn new(cardinalities: &[u64], dim: usize, scale: f64, rng: &mut Rng) -> Self {
        let mut offsets = Vec::with_capacity(cardinalities.len());
        let mut table = Vec::new();
        for &c in cardinalities {
            offsets.push((table.len() / dim.max(1)) as i64);
            let bound = scale / (c.max(1) as f64).sqrt();
            table.extend((0..c as usize * dim).map(|_| ((2.0 * rng.f64() - 1.0) * bound) as f32));
        }
        Self { table, dim, offsets, cardinalities: cardinalities.to_vec() }
    }

    /// Rows in all tables.
    pub fn rows(&self) -> usize {
        self.table.len() / self.dim.max(1)
    }

    /// The global row of feature `f`'s id. Ids outside the table are a caller's bug: the
    /// transformer only produces ids below each feature's cardinality.
    pub(crate) fn row(&self, feature: usize, id: i64) -> usize {
        debug_assert!(id >= 0 && (id as u64) < self.cardinalities[feature], "id {id} outside feature {feature}");
        (self.offsets[feature] + id) as usize
    }

    pub(crate) fn vector(&self, row: usize) -> &[f32] {
        &self.table[row * self.dim..(row + 1) * self.dim]
    }
}
