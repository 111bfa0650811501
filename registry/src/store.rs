//! Where the registry keeps its objects: a local folder or S3, behind one `object_store` API.

use std::sync::Arc;

use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, path::Path};

use crate::{Error, RegistryConfig, Result};

/// Opens the configured location. A local folder is created when missing.
pub fn open(config: &RegistryConfig) -> Result<Arc<dyn ObjectStore>> {
    let store_error = |action, source| Error::Store { location: config.location.clone(), action, source };
    config.parsed()?.open().map_err(|e| store_error("opening the location", e))
}

/// Proves that the location accepts writes: puts a small object and deletes it again.
pub async fn check_writable(config: &RegistryConfig) -> Result<()> {
    let store = open(config)?;
    let store_error = |action, source| Error::Store { location: config.location.clone(), action, source };
    let probe = Path::from(format!(".adrank-write-probe-{}", std::process::id()));
    store
        .put(&probe, PutPayload::from_static(b"adrank"))
        .await
        .map_err(|e| store_error("writing a probe object", e))?;
    store.delete(&probe).await.map_err(|e| store_error("deleting the probe object", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_folder_is_created_and_writable() {
        let dir = tempfile::tempdir().unwrap();
        let config = RegistryConfig { location: dir.path().join("nested/registry").display().to_string() };
        check_writable(&config).await.unwrap();
        assert!(dir.path().join("nested/registry").is_dir());
        assert_eq!(std::fs::read_dir(dir.path().join("nested/registry")).unwrap().count(), 0, "probe left behind");
    }

    #[tokio::test]
    async fn unwritable_folder_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let config = RegistryConfig { location: file.join("registry").display().to_string() };
        let error = check_writable(&config).await.unwrap_err().to_string();
        assert!(error.contains("a-file"), "{error}");
    }
}
