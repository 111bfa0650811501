//! The contracts' error type: what the training log's storage can refuse.

/// Everything that can go wrong reading or writing the training log.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The training log's storage refused an operation.
    #[error("training log at {location}: {action} failed: {reason}")]
    TrainingLog { location: String, action: String, reason: String },

    /// Another ingester committed the same training-log sequence number first.
    #[error("training log partition {partition}: commit {seq} was made by another ingester")]
    LogConflict { partition: i32, seq: u64 },
}

/// The contracts' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
