//! Data-parallel training across ranks: the window's files are cut into `shards` (file `i` goes
//! to shard `i % shards`), each shard is read, shuffled and batched on its own, and rank `r`
//! owns the shards `s` with `s % ranks == r`. A global step takes `batch_size / shards` rows
//! from every shard; each rank computes its shards' gradients, the ranks exchange them (dense
//! tensors and the embedding rows the batch touched) and everyone sums them in shard order and
//! applies the same update. So the model depends on `shards`, never on how many ranks share
//! them: one rank reading two shards trains the model two ranks train (given the same gradient
//! threads per rank; the retraining loop launches one per rank).

use std::sync::Arc;

use adrank_contracts::spec::Transformer;

use crate::{
    Result,
    collective::{Collective, Local},
    data::{LogWindow, RowStream, Shuffler, Window},
    model::{Batch, Grads, InputShape},
};

/// How training is spread: the ranks and the data shards.
#[derive(Debug, Clone, Copy)]
pub struct Parallel<'a> {
    pub collective: &'a dyn Collective,
    /// Data shards (at least the number of ranks); 1 reads the window as one stream.
    pub shards: usize,
}

static LOCAL: Local = Local;

impl Parallel<'static> {
    /// One process, one stream of data.
    pub fn local() -> Self {
        Self { collective: &LOCAL, shards: 1 }
    }
}

impl Parallel<'_> {
    /// The shards this rank reads.
    pub fn owned(&self) -> Vec<usize> {
        let (rank, ranks) = (self.collective.rank(), self.collective.size());
        (0..self.shards).filter(|s| s % ranks == rank).collect()
    }

    /// Rows of a global batch of `batch_size` that shard `shard` contributes.
    pub(crate) fn share(&self, batch_size: usize, shard: usize) -> usize {
        batch_size * (shard + 1) / self.shards - batch_size * shard / self.shards
    }

    /// A seed for shard `shard`: `seed` itself when there is one shard, so that single-stream
    /// training keeps its results.
    pub(crate) fn seed(&self, seed: u64, shard: usize) -> u64 {
        if self.shards == 1 { seed } else { seed ^ (shard as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) }
    }

    /// Every rank's `(shard, item)` pairs, sorted by shard (collective). One rank keeps its own
    /// without encoding them.
    pub(crate) fn gather<T>(
        &self,
        mine: Vec<(usize, T)>,
        encode: impl Fn(&T, &mut Vec<u8>),
        decode: impl Fn(&[u8]) -> Option<(T, usize)>,
    ) -> Vec<(usize, T)> {
        if self.collective.size() == 1 {
            return mine;
        }
        let mut bytes = Vec::new();
        for (shard, item) in &mine {
            bytes.extend_from_slice(&(*shard as u64).to_le_bytes());
            encode(item, &mut bytes);
        }
        let mut all = Vec::new();
        for theirs in self.collective.all_gather(&bytes) {
            let mut at = 0;
            while at < theirs.len() {
                let shard = u64::from_le_bytes(theirs[at..at + 8].try_into().expect("8 bytes")) as usize;
                let (item, used) = decode(&theirs[at + 8..]).expect("ranks run the same build; this is a bug");
                all.push((shard, item));
                at += 8 + used;
            }
        }
        all.sort_by_key(|(shard, _)| *shard);
        all
    }
}

/// One shard's rows for an epoch: read, transformed, shuffled, handed out in steps.
pub(crate) struct ShardStream {
    rows: RowStream<Batch>,
    shuffler: Shuffler,
    pending: Batch,
    shape: InputShape,
    done: bool,
}

impl ShardStream {
    pub(crate) fn new(
        data: &LogWindow,
        window: Window,
        transformer: &Arc<Transformer>,
        shape: &InputShape,
        (buffer, seed): (usize, u64),
    ) -> Self {
        Self {
            rows: crate::train::rows(data, window, transformer),
            shuffler: Shuffler::new(shape.clone(), buffer, seed),
            pending: Batch::default(),
            shape: shape.clone(),
            done: false,
        }
    }

    /// The next `want` rows (fewer at the end of the shard, none after it).
    pub(crate) fn next_rows(&mut self, want: usize) -> Result<Batch> {
        while self.pending.rows() < want && !self.done {
            match self.rows.next() {
                Some(chunk) => self.shuffler.push(&chunk?, &mut self.pending),
                None => {
                    self.shuffler.drain(&mut self.pending);
                    self.done = true;
                }
            }
        }
        let n = want.min(self.pending.rows());
        let (f, d) = (self.shape.id_width(), self.shape.dense_width);
        Ok(Batch {
            ids: self.pending.ids.drain(..n * f).collect(),
            dense: self.pending.dense.drain(..n * d).collect(),
            labels: self.pending.labels.drain(..n).collect(),
        })
    }
}

/// One shard's part of a global step: rows, summed loss and gradients.
pub(crate) struct Step {
    pub(crate) rows: usize,
    pub(crate) loss: f64,
    pub(crate) grads: Grads,
}

impl Step {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.rows as u64).to_le_bytes());
        out.extend_from_slice(&self.loss.to_le_bytes());
        self.grads.encode(out);
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<(Self, usize)> {
        let rows = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
        let loss = f64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        let (grads, used) = Grads::decode(bytes.get(16..)?)?;
        Some((Self { rows, loss, grads }, 16 + used))
    }
}

/// Sums, counts and clicks of a validation pass over one shard.
pub(crate) fn encode_sums(sums: &(f64, u64, u64), out: &mut Vec<u8>) {
    out.extend_from_slice(&sums.0.to_le_bytes());
    out.extend_from_slice(&sums.1.to_le_bytes());
    out.extend_from_slice(&sums.2.to_le_bytes());
}

pub(crate) fn decode_sums(bytes: &[u8]) -> Option<((f64, u64, u64), usize)> {
    let word = |i: usize| -> Option<[u8; 8]> { bytes.get(i * 8..(i + 1) * 8)?.try_into().ok() };
    Some(((f64::from_le_bytes(word(0)?), u64::from_le_bytes(word(1)?), u64::from_le_bytes(word(2)?)), 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_a_batch_exactly_and_ranks_own_disjoint_shards() {
        let parallel = Parallel { collective: &Local, shards: 3 };
        assert_eq!((0..3).map(|s| parallel.share(512, s)).collect::<Vec<_>>(), vec![170, 171, 171]);
        assert_eq!(parallel.owned(), vec![0, 1, 2], "one rank owns every shard");
        assert_eq!(Parallel::local().seed(7, 0), 7, "one shard keeps the configured seed");
        assert_ne!(parallel.seed(7, 0), parallel.seed(7, 1));
    }
}
