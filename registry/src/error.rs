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
