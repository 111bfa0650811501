//! The `[training]` config section.

use adrank_featurestore::ConfigProblem;
use serde::{Deserialize, Serialize};

/// How training runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainingConfig {
    /// The MPI launcher for data-parallel training across processes or hosts (`mpirun` from
    /// OpenMPI). Training on one machine uses threads and does not need it.
    pub mpi_launcher: String,
}

impl Default for TrainingConfig {
    fn default() -> Self {
        Self { mpi_launcher: "mpirun".into() }
    }
}

impl TrainingConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        if self.mpi_launcher.trim().is_empty() {
            return vec![ConfigProblem::new("mpi_launcher", "is empty; expected a command such as mpirun")];
        }
        vec![]
    }
}
