//! The test kit: the real dependencies integration tests run against.
//!
//! - [`broker::TestBroker`]: a fresh tansu broker (memory storage) on a free port, stopped on
//!   drop.
//! - [`redis::TestRedis`]: the machine's Redis with a key prefix of the test's own, whose keys
//!   are deleted on drop.
//! - [`registry`]: a temporary registry folder.
//! - [`onnxruntime`]: the ONNX Runtime library the setup script installs.
//!
//! No mocks: a test that cannot reach a dependency panics with what to run, so a missing
//! dependency fails CI instead of passing silently.

pub mod broker;
pub mod redis;

use std::path::{Path, PathBuf};

use adrank_registry::{OrtConfig, RegistryConfig, runtime};

/// The repository root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().expect("the test kit lives inside the workspace").to_path_buf()
}

/// The shipped feature spec, `config/features.toml`.
pub fn spec() -> adrank_contracts::spec::FeatureSpec {
    let path = workspace_root().join("config").join("features.toml");
    adrank_contracts::spec::FeatureSpec::load(&path).unwrap_or_else(|e| panic!("the shipped spec loads: {e}"))
}

/// A registry in a temporary folder, removed when the returned guard drops.
pub fn registry() -> (tempfile::TempDir, RegistryConfig) {
    let dir = tempfile::tempdir().expect("cannot create a temporary folder");
    let config = RegistryConfig { location: dir.path().join("registry").display().to_string() };
    (dir, config)
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the copy `./dev.sh setup` installs under
/// `.adrank/onnxruntime/`. Panics with what to run when neither exists.
pub fn onnxruntime() -> OrtConfig {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".adrank").join("onnxruntime").join(runtime::LIBRARY_FILE));
    assert!(
        path.is_file(),
        "ONNX Runtime library not found at {}: run ./dev.sh setup (or set ORT_DYLIB_PATH)",
        path.display()
    );
    OrtConfig { library_path: path.display().to_string(), ..OrtConfig::default() }
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("cannot bind a port on 127.0.0.1")
        .port()
}

/// Taken first by the tests that load the machine hardest (a whole chain of processes, a
/// crash-and-rebalance run), so two of them never run at once: on 2 cores they starved each
/// other's session timeouts and a group rebalance did not settle within ten minutes.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::OnceLock<tokio::sync::Mutex<()>> = std::sync::OnceLock::new();
    HEAVY.get_or_init(|| tokio::sync::Mutex::new(())).lock().await
}

/// An `adrank.toml` for the `adrank` processes of a test: the registry and training log at the
/// given places, the ONNX Runtime library found here, then `extra` (more TOML).
pub fn adrank_config(registry: &Path, log: &Path, extra: &str) -> String {
    format!(
        "[registry]\nlocation = \"{}\"\n[ingest]\ntraining_log = \"{}\"\n[onnxruntime]\nlibrary_path = \"{}\"\n{extra}",
        registry.display(),
        log.display(),
        onnxruntime().library_path
    )
}
