//! A bounded shuffle buffer.

use crate::{
    model::{Batch, InputShape},
    rng::Rng,
};

/// Holds up to `capacity` rows; each row pushed once the buffer is full evicts a random held
/// row into the output. Memory is bounded by `capacity` whatever the data size; rows move at
/// most `capacity` places from where they were read, so a capacity of several hours of data
/// mixes hours, partitions and users well.
#[derive(Debug)]
pub struct Shuffler {
    shape: InputShape,
    capacity: usize,
    held: Batch,
    rng: Rng,
}

impl Shuffler {
    pub fn new(shape: InputShape, capacity: usize, seed: u64) -> Self {
        Self { shape, capacity: capacity.max(1), held: Batch::default(), rng: Rng::new(seed) }
    }

    /// Pushes every row of `rows`; evicted rows are appended to `out`.
    pub fn push(&mut self, rows: &Batch, out: &mut Batch) {
        let (f, d) = (self.shape.id_width(), self.shape.dense_width);
        for r in 0..rows.rows() {
            let (ids, dense, label) = (&rows.ids[r * f..(r + 1) * f], &rows.dense[r * d..(r + 1) * d], rows.labels[r]);
            if self.held.rows() < self.capacity {
                self.held.ids.extend_from_slice(ids);
                self.held.dense.extend_from_slice(dense);
                self.held.labels.push(label);
                continue;
            }
            let slot = self.rng.below(self.capacity);
            out.ids.extend_from_slice(&self.held.ids[slot * f..(slot + 1) * f]);
            out.dense.extend_from_slice(&self.held.dense[slot * d..(slot + 1) * d]);
            out.labels.push(self.held.labels[slot]);
            self.held.ids[slot * f..(slot + 1) * f].copy_from_slice(ids);
            self.held.dense[slot * d..(slot + 1) * d].copy_from_slice(dense);
            self.held.labels[slot] = label;
        }
    }

    /// Empties the buffer into `out` in random order.
    pub fn drain(&mut self, out: &mut Batch) {
        let (f, d) = (self.shape.id_width(), self.shape.dense_width);
        let n = self.held.rows();
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, self.rng.below(i + 1));
        }
        for slot in order {
            out.ids.extend_from_slice(&self.held.ids[slot * f..(slot + 1) * f]);
            out.dense.extend_from_slice(&self.held.dense[slot * d..(slot + 1) * d]);
            out.labels.push(self.held.labels[slot]);
        }
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_comes_out_once_and_the_order_changes() {
        let shape = InputShape { id_cardinalities: vec![1000], dense_width: 1 };
        let mut shuffler = Shuffler::new(shape, 64, 1);
        let rows = Batch {
            ids: (0..1000).collect(),
            dense: (0..1000).map(|i| i as f32).collect(),
            labels: (0..1000).map(|i| (i % 2) as f32).collect(),
        };
        let mut out = Batch::default();
        for chunk in 0..10 {
            let part = Batch {
                ids: rows.ids[chunk * 100..(chunk + 1) * 100].to_vec(),
                dense: rows.dense[chunk * 100..(chunk + 1) * 100].to_vec(),
                labels: rows.labels[chunk * 100..(chunk + 1) * 100].to_vec(),
            };
            shuffler.push(&part, &mut out);
            assert!(out.rows() <= (chunk + 1) * 100 - 64 + 1, "rows leave only once the buffer is full");
        }
        shuffler.drain(&mut out);
        let mut ids = out.ids.clone();
        ids.sort();
        assert_eq!(ids, rows.ids, "every row exactly once");
        assert_ne!(out.ids, rows.ids, "shuffled");
        // Rows stay whole: id, number and label travel together.
        for r in 0..out.rows() {
            assert_eq!(out.dense[r], out.ids[r] as f32);
            assert_eq!(out.labels[r], (out.ids[r] % 2) as f32);
        }
    }
}
