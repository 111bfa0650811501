//! The `[registry]` and `[onnxruntime]` config sections.

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

/// Where model versions are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// A local folder (relative paths start at the directory adrank runs in), `file:///path`,
    /// or `s3://bucket/prefix` (credentials and region from the usual `AWS_*` variables).
    /// Every serving replica and trainer must point at the same location.
    pub location: String,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { location: ".adrank/registry".into() }
    }
}

/// A parsed registry location (the feature store's storage locations).
pub use adrank_contracts::storage::Location;

impl RegistryConfig {
    /// The location, parsed.
    pub fn parsed(&self) -> Result<Location, crate::Error> {
        Location::parse(&self.location).ok_or_else(|| crate::Error::UnsupportedLocation(self.location.clone()))
    }

    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        match self.parsed() {
            Ok(_) => vec![],
            Err(e) => vec![ConfigProblem::new("location", e.to_string())],
        }
    }
}

/// How adrank finds and configures ONNX Runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct OrtConfig {
    /// The `libonnxruntime.so` to load. Empty: `ORT_DYLIB_PATH`, then the copy the setup
    /// script installs under `.adrank/onnxruntime/`. Must be ONNX Runtime 1.31 or newer.
    pub library_path: String,
    /// Threads one model run may use (ONNX Runtime's intra-op pool). 0: ONNX Runtime's default
    /// (one per core). Serving runs one model thread per loaded version, so more versions or
    /// replicas on one machine want fewer threads each.
    pub intra_threads: usize,
    /// Graph optimisations applied when a model loads: disable, basic, extended or all. More
    /// optimisation loads slower and usually runs faster.
    pub graph_optimization: GraphOptimization,
    /// Whether the intra-op pool's threads spin-wait for work after a run (ONNX Runtime's
    /// default). Spinning shaves microseconds off back-to-back runs but burns the CPU the rest
    /// of the server (HTTP, features, the next batch) and the machine need, and counts as busy
    /// when nothing runs; off by default.
    pub intra_spinning: bool,
    /// ONNX Runtime's memory pattern: it plans a run's memory once per distinct input shape and
    /// reuses the plan. Serving's batches come in many shapes (rows vary with every batch), and
    /// a freshly loaded version plans each anew on its first runs; off by default.
    pub memory_pattern: bool,
    /// Where models run: `cpu`, or `cuda` (needs adrank built with the `cuda` feature, the GPU
    /// build of ONNX Runtime and a device; when any is missing the model runs on the CPU and a
    /// warning says why).
    pub execution_provider: Provider,
    /// The CUDA device models run on, when `execution_provider` is `cuda`.
    pub cuda_device: u32,
}

/// Where ONNX Runtime runs a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    #[default]
    Cpu,
    Cuda,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name.trim() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" => Ok(Provider::Cuda),
            other => Err(format!("unknown execution provider {other:?}: expected cpu or cuda")),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ONNX Runtime's graph optimisation levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GraphOptimization {
    Disable,
    Basic,
    Extended,
    #[default]
    All,
}

impl OrtConfig {
    /// Every problem in this section; empty when it is usable. (Whether the library loads is
    /// `doctor`'s question, not the config's: a config is valid on a machine still being set up.)
    pub fn problems(&self) -> Vec<ConfigProblem> {
        vec![]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_location_is_a_config_problem() {
        let problems = RegistryConfig { location: "gs://bucket".into() }.problems();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].problem.contains("gs://bucket"), "{}", problems[0].problem);
        assert_eq!(RegistryConfig::default().problems(), vec![]);
    }
}
