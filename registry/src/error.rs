//! The registry's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the registry or while loading ONNX Runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The registry location could not be opened, read or written.
    #[error("registry at {location}: {action} failed: {source}")]
    Store {
        location: String,
        action: &'static str,
        #[source]
        source: object_store::Error,
    },

    /// The registry location is not a local folder or an `s3://` URL.
    #[error("registry location `{0}` is not supported; expected a local folder, file:///path or s3://bucket/prefix")]
    UnsupportedLocation(String),

    /// A model name or alias breaks the naming rule.
    #[error("`{0}` is not a valid name: use 1 to 64 of a-z, 0-9, _ and -, starting with a letter (and not `latest`)")]
    InvalidName(String),

    /// A model, version or alias does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// A state change lost a race: the aliases changed since the caller read them.
    #[error("the aliases of `{name}` changed (state {found}, expected {expected}); read them again and retry")]
    Conflict { name: String, expected: u64, found: u64 },

    /// A rollout cannot do what was asked (none under way, one already running, a bad plan, …).
    #[error("{0}")]
    Rollout(String),

    /// A rollout change lost a race: the rollout changed since the caller read it.
    #[error("the rollout of `{name}` changed (document {found}, expected {expected}); read it again and retry")]
    RolloutChanged { name: String, expected: u64, found: u64 },

    /// Another process holds, or took over, a lease this one needed.
    #[error("the {what} lease of `{name}` is held by {holder}, until {expires}; one {what} runs at a time")]
    LeaseHeld { name: String, what: String, holder: String, expires: String },

    /// Publishers kept taking the version number this one tried.
    #[error("could not publish `{name}`: {attempts} version numbers were taken by concurrent publishers")]
    Contended { name: String, attempts: u32 },

    /// A stored object is damaged.
    #[error("registry object {path} is damaged: {reason}")]
    Corrupt { path: String, reason: String },

    /// A model file does not fit what adrank serves.
    #[error("the model does not fit: {}", .0.join("; "))]
    Incompatible(Vec<String>),

    /// ONNX Runtime could not open a model.
    #[error("ONNX Runtime cannot load the model: {0}")]
    Model(String),

    /// ONNX Runtime opened the model, but a run of it failed.
    #[error("ONNX Runtime failed to run the model: {0}")]
    Run(String),

    /// No ONNX Runtime library was found where adrank looks.
    #[error(
        "ONNX Runtime library not found (tried: {}); run ./dev.sh setup to install it, or set \
         onnxruntime.library_path or ORT_DYLIB_PATH",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    OrtNotFound { tried: Vec<PathBuf> },

    /// The library was found but could not be loaded or initialised.
    #[error("ONNX Runtime library {path}: {reason}")]
    OrtLoad { path: PathBuf, reason: String },
}

/// The registry's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
