//! The trainer's error type.

use crate::data::Window;

/// Everything that can stop training, export or evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The training log could not be read.
    #[error(transparent)]
    Log(#[from] adrank_contracts::Error),

    /// The window holds no committed examples.
    #[error(
        "the training log at {location} has no examples between {} and {} (UTC); run the ingester \
         (`adrank ingest`) or `adrank sim history`, or choose another window",
        adrank_contracts::training_log::utc_hour(window.since_ms),
        adrank_contracts::training_log::utc_hour(window.until_ms - 1)
    )]
    NoData { location: String, window: Window },

    /// The feature spec and the model's statistics do not fit together.
    #[error(transparent)]
    Spec(#[from] adrank_contracts::spec::SpecError),

    /// An operating-system call failed.
    #[error("{action} failed: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },

    /// The training settings cannot work.
    #[error("training settings: {0}")]
    Settings(String),

    /// The model registry refused or failed.
    #[error(transparent)]
    Registry(#[from] adrank_registry::Error),

    /// The thread reading the training log stopped with a panic: training stops rather than
    /// run on part of its window.
    #[error("the training-log reader failed ({0}); training stopped rather than train on part of the window")]
    Reader(String),

    /// The retraining lease was taken by another holder (after this one failed to renew it).
    #[error("the retraining lease was lost ({0}); another loop runs the cycles now")]
    LeaseLost(String),

    /// ONNX Runtime failed to load or run a model.
    #[error("ONNX Runtime: {0}")]
    Runtime(String),
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
