//! Serving's error type.

/// Why serving cannot load a model or answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry could not give the version, or its files are damaged.
    #[error(transparent)]
    Registry(#[from] adrank_registry::Error),

    /// The version does not fit what this server serves.
    #[error("{name} version {version} cannot be served: {reason}")]
    Incompatible { name: String, version: u64, reason: String },

    /// The feature spec and the version's statistics do not fit together.
    #[error(transparent)]
    Spec(#[from] adrank_contracts::spec::SpecError),

    /// The model ran but failed while warming up.
    #[error("{name} version {version} failed its warm-up at {rows} rows: {reason}")]
    WarmUp { name: String, version: u64, rows: usize, reason: String },
}

impl Error {
    /// Whether the failure was to read the version (the object store failed), which a later
    /// try may not meet, rather than the version being bad.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Registry(adrank_registry::Error::Store { .. }))
    }
}

/// Serving's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
