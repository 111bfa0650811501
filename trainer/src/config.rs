//! The `[training]` config section.

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

use crate::{
    model::Architecture,
    optim::{DenseOptimizer, OptimizerConfig},
};

/// How training runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// The MPI launcher for data-parallel training across processes or hosts (`mpirun` from
    /// OpenMPI). Training on one machine uses threads and does not need it.
    pub mpi_launcher: String,
    /// The model and its sizes.
    pub model: Architecture,
    /// The dense tensors' optimiser: adam or adagrad.
    pub optimizer: DenseOptimizer,
    /// Its learning rate.
    pub learning_rate: f32,
    /// The learning rate of embedding rows (row-wise sparse Adagrad).
    pub embedding_learning_rate: f32,
    /// L2 penalty on the embedding rows a batch touches: larger values keep rare ids near zero.
    pub embedding_l2: f32,
    /// Examples per optimiser step.
    pub batch_size: usize,
    /// The most passes over the training data.
    pub epochs: u32,
    /// Stop after this many epochs without a better validation loss; the best epoch's model is
    /// kept.
    pub patience: u32,
    /// The newest part of the training window held out for validation (early stopping), as a
    /// fraction of the window's span: validating on later data than training matches how the
    /// model is used.
    pub validation_fraction: f64,
    /// Rows in the shuffle buffer: more mixes better and costs memory (about 150 bytes a row).
    pub shuffle_buffer: usize,
    /// Rows sampled to learn the standardisation constants.
    pub stats_sample: usize,
    /// Threads that compute gradients (data-parallel; results are summed in a fixed order). 0:
    /// one per core. With 1 a seed fixes the model bit for bit.
    pub threads: usize,
    /// Seed of initial weights and shuffling.
    pub seed: u64,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self {
            mpi_launcher: "mpirun".into(),
            model: Architecture::Dlrm { embedding_dim: 16, bottom: vec![64], top: vec![128, 64], wide: true },
            optimizer: DenseOptimizer::Adam,
            learning_rate: 0.001,
            embedding_learning_rate: 0.05,
            embedding_l2: 0.0,
            batch_size: 512,
            epochs: 5,
            patience: 1,
            validation_fraction: 0.1,
            shuffle_buffer: 200_000,
            stats_sample: 100_000,
            threads: 0,
            seed: 42,
        }
    }
}

impl TrainingConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, text: String| problems.push(ConfigProblem::new(key, text));
        if self.mpi_launcher.trim().is_empty() {
            problem("mpi_launcher", "is empty; expected a command such as mpirun".into());
        }
        if let Architecture::Dlrm { embedding_dim, bottom, top, .. } = &self.model {
            if *embedding_dim == 0 || *embedding_dim > 1024 {
                problem("model.embedding_dim", format!("is {embedding_dim}; expected 1 to 1024"));
            }
            if bottom.iter().chain(top).any(|w| *w == 0 || *w > 65536) {
                problem("model", "has a layer width of 0 or above 65536".into());
            }
        }
        for (key, rate) in
            [("learning_rate", self.learning_rate), ("embedding_learning_rate", self.embedding_learning_rate)]
        {
            if !(rate.is_finite() && rate > 0.0) {
                problem(key, format!("is {rate}; expected a positive number"));
            }
        }
        if !(self.embedding_l2.is_finite() && self.embedding_l2 >= 0.0) {
            problem("embedding_l2", format!("is {}; expected 0 or more", self.embedding_l2));
        }
        if self.batch_size == 0 {
            problem("batch_size", "is 0; expected at least 1".into());
        }
        if self.epochs == 0 {
            problem("epochs", "is 0; expected at least 1".into());
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            problem("validation_fraction", format!("is {}; expected between 0 and 1", self.validation_fraction));
        }
        if self.stats_sample == 0 {
            problem("stats_sample", "is 0; expected at least 1".into());
        }
        problems
    }

    pub fn optimizer_config(&self) -> OptimizerConfig {
        OptimizerConfig {
            dense: self.optimizer,
            dense_learning_rate: self.learning_rate,
            embedding_learning_rate: self.embedding_learning_rate,
            embedding_l2: self.embedding_l2,
        }
    }

    /// Gradient threads to use.
    pub fn threads(&self) -> usize {
        if self.threads > 0 { self.threads } else { std::thread::available_parallelism().map_or(1, |n| n.get()) }
    }
}
