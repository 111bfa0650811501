//! The model registry and the ONNX Runtime that loads its models.
//!
//! A model version is an ONNX file plus a manifest; serving and the trainer's evaluation both
//! load it with the same ONNX Runtime, so the runtime lives here, below both of them.
//!
//! # Layout
//!
//! - [`config`]: the `[registry]` and `[onnxruntime]` sections of `adrank.toml`.
//! - [`store`]: where versions are kept: a local folder or `s3://` through `object_store`.
//! - [`runtime`]: finding and loading the ONNX Runtime shared library (`ort`, `load-dynamic`),
//!   and reading a model's signature with it.
//! - [`scoring`]: an ONNX Runtime session over an adrank model (signature, scoring); the
//!   trainer's evaluation and serving both score through it.
//! - [`manifest`]: what a version records: files with their SHA-256, spec version, signature,
//!   transform statistics, training window, parent, metrics.
//! - [`versions`]: publishing (crash-safe: a version is visible only when complete), listing
//!   and reading versions and their files.
//! - [`state`]: aliases changed by compare-and-swap; the sequence of states is the audit log.
//! - [`records`]: create-once JSON records for the control plane's own state (retrain cycles).
//! - [`lease`]: one holder at a time for control-plane work, with expiry and renewal.

pub mod config;
mod error;
pub mod lease;
pub mod manifest;
pub mod records;
pub mod rollout;
pub mod runtime;
pub mod scoring;
pub mod state;
pub mod store;
pub mod versions;

use std::sync::Arc;

use object_store::ObjectStore;

pub use config::{Location, OrtConfig, Provider, RegistryConfig};
pub use error::{Error, Result};
pub use lease::{Acquired, Lease, LeaseRecord};
pub use manifest::{Artifact, Manifest, Signature, TensorSignature, TrainingInfo};
pub use rollout::{Action, Arm, Assignment, Decision, Rollout};
pub use state::{Change, PRODUCTION, State};
pub use versions::Draft;

/// A model registry at one location.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Arc<dyn ObjectStore>,
    location: String,
}

impl Registry {
    /// Opens the configured location (a local folder is created when missing).
    pub fn open(config: &RegistryConfig) -> Result<Self> {
        Ok(Self { store: store::open(config)?, location: config.location.clone() })
    }

    /// Where it is.
    pub fn location(&self) -> &str {
        &self.location
    }

    fn store_error(&self, action: &'static str, source: object_store::Error) -> Error {
        Error::Store { location: self.location.clone(), action, source }
    }

    /// Stores an evaluation report with a version (`reports/<version>/<name>.json`); a report
    /// of the same name is replaced.
    pub async fn put_report(&self, name: &str, version: u64, report: &str, json: Vec<u8>) -> Result<String> {
        versions::check_name(name)?;
        let path = format!("models/{name}/reports/{version:08}/{report}.json");
        use object_store::ObjectStoreExt as _;
        self.store
            .put(&object_store::path::Path::from(path.as_str()), json.into())
            .await
            .map_err(|e| self.store_error("writing a report", e))?;
        Ok(path)
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
