//! Finding and loading ONNX Runtime.
//!
//! adrank uses `ort` with `load-dynamic`: the official ONNX Runtime shared library is loaded at
//! run time from a path adrank chooses, so one binary runs against the CPU library or the GPU
//! one. ONNX Runtime can be loaded once per process; [`init`] remembers the outcome.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::{Error, OrtConfig, Result};

/// The ONNX Runtime release adrank is built and tested against.
pub const ORT_VERSION: &str = "1.31.1";

/// The library file name the setup script installs.
pub const LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// What was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// The library file.
    pub path: PathBuf,
    /// Its version, as ONNX Runtime reports it.
    pub version: String,
}

/// The places adrank looks for the library, in order: the configured path, `ORT_DYLIB_PATH`,
/// then `.adrank/onnxruntime/` under the working directory and under the folders above the
/// adrank executable (so `target/debug/adrank` finds the repository's copy).
pub fn candidates(config: &OrtConfig) -> Vec<PathBuf> {
    if !config.library_path.is_empty() {
        // A configured path is the only one tried: silently loading another would hide a typo.
        return vec![PathBuf::from(&config.library_path)];
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut candidates = Vec::new();
    let local = |root: &Path| root.join(".adrank").join("onnxruntime").join(LIBRARY_FILE);
    if let Ok(cwd) = std::env::current_dir() {
        candidates.push(local(&cwd));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            let candidate = local(dir);
            if !candidates.contains(&candidate) {
                candidates.push(candidate);
            }
        }
    }
    candidates
}

/// Finds the library without loading it.
pub fn locate(config: &OrtConfig) -> Result<PathBuf> {
    let tried = candidates(config);
    tried.iter().find(|p| p.is_file()).cloned().ok_or(Error::OrtNotFound { tried })
}

/// What the first load gave: the library's description and the environment every session is
/// created in (ONNX Runtime allows one per process; dropping it would tear it down).
static LOADED: OnceLock<Result<(RuntimeInfo, ort::environment::Environment), String>> = OnceLock::new();

/// Loads ONNX Runtime (once per process) and creates its environment. Later calls return the
/// first call's outcome, whatever their config says.
pub fn init(config: &OrtConfig) -> Result<RuntimeInfo> {
    loaded(config).map(|(info, _)| info.clone())
}

/// The process's ONNX Runtime environment, loading the library first if needed.
pub fn environment(config: &OrtConfig) -> Result<ort::environment::Environment> {
    loaded(config).map(|(_, environment)| environment.clone())
}

fn loaded(config: &OrtConfig) -> Result<&'static (RuntimeInfo, ort::environment::Environment)> {
    let path = match LOADED.get() {
        Some(_) => None,
        None => Some(locate(config)?),
    };
    let outcome = LOADED.get_or_init(|| {
        let path = path.clone().expect("located before the first load; this is a bug");
        load(&path)
    });
    outcome.as_ref().map_err(|reason| Error::OrtLoad {
        path: path.unwrap_or_else(|| PathBuf::from("(loaded earlier)")),
        reason: reason.clone(),
    })
}

fn load(path: &Path) -> Result<(RuntimeInfo, ort::environment::Environment), String> {
    let builder = ort::init_from(path).map_err(|e| e.to_string())?;
    let environment = builder.with_name("adrank").build().map_err(|e| e.to_string())?;
    Ok((RuntimeInfo { path: path.to_path_buf(), version: library_version(path)? }, environment))
}

/// ONNX Runtime's own version string (`OrtApiBase::GetVersionString`), which `ort` reads when
/// it loads the library but does not expose.
#[allow(unsafe_code)]
fn library_version(path: &Path) -> Result<String, String> {
    type GetApiBase = unsafe extern "C" fn() -> *const ort::sys::OrtApiBase;
    // SAFETY: `path` is the library `ort` has just loaded and accepted as ONNX Runtime (it
    // resolved `OrtGetApiBase` and checked the API version), so loading it again only bumps the
    // loader's reference count and runs no initialisers. `OrtGetApiBase` takes no arguments and
    // returns a pointer to a static table; `GetVersionString` returns a static NUL-terminated
    // string that must not be freed. The library stays loaded (ort holds it) while we read.
    unsafe {
        let library = libloading::Library::new(path).map_err(|e| e.to_string())?;
        let get_api_base = library.get::<GetApiBase>(b"OrtGetApiBase").map_err(|e| e.to_string())?;
        let base = get_api_base();
        if base.is_null() {
            return Err("OrtGetApiBase returned nothing".into());
        }
        let version = ((*base).GetVersionString)();
        Ok(std::ffi::CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_path_is_the_only_candidate() {
        let config = OrtConfig { library_path: "/opt/ort/libonnxruntime.so".into(), ..OrtConfig::default() };
        assert_eq!(candidates(&config), vec![PathBuf::from("/opt/ort/libonnxruntime.so")]);
        let error =
            locate(&OrtConfig { library_path: "/nonexistent/libonnxruntime.so".into(), ..OrtConfig::default() })
                .unwrap_err()
                .to_string();
        assert!(error.contains("/nonexistent/libonnxruntime.so"), "{error}");
    }
}
