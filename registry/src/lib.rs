//! The model registry and the ONNX Runtime that loads its models.
//!
//! A model version is an ONNX file plus a manifest; serving and the trainer's evaluation both
//! load it with the same ONNX Runtime, so the runtime lives here, below both of them.
//!
//! # Layout
//!
//! - [`config`]: the `[registry]` and `[onnxruntime]` sections of `adrank.toml`.
//! - [`store`]: where versions are kept: a local folder or `s3://` through `object_store`.
//! - [`runtime`]: finding and loading the ONNX Runtime shared library (`ort`, `load-dynamic`).
//!
//! The trainer/registry issue adds versions, manifests, aliases with compare-and-swap and the
//! audit log on top of [`store`].

pub mod config;
mod error;
pub mod runtime;
pub mod store;

pub use config::{Location, OrtConfig, RegistryConfig};
pub use error::{Error, Result};
