//! Publishing, listing and reading versions.
//!
//! Layout under the registry location, per model name:
//!
//! ```text
//! models/<name>/blobs/<sha256>.onnx        content-addressed files (ONNX, checkpoints)
//! models/<name>/versions/<00000001>.json   one manifest per version, created once
//! models/<name>/state/<0000000001>.json    alias states, created once each (see `state`)
//! models/<name>/reports/<version>/…json    evaluation reports
//! ```
//!
//! A version becomes visible when its manifest exists, and the manifest is written last, with
//! create-if-absent, after the files it names: a publisher killed at any point leaves either a
//! complete version or none (at worst an unreferenced blob). Two publishers racing for the same
//! number both try to create the manifest; one wins, the other takes the next number.

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload, path::Path};
use sha2::{Digest as _, Sha256};

use crate::{
    Error, Registry, Result,
    manifest::{Artifact, Manifest, Signature, TrainingInfo},
};

/// Everything a new version holds; the registry assigns its number and time.
#[derive(Debug, Clone)]
pub struct Draft {
    pub name: String,
    pub created_by: String,
    pub reason: String,
    pub onnx: Bytes,
    pub checkpoint: Option<Bytes>,
    pub spec_version: String,
    pub signature: Signature,
    pub transform_stats: adrank_contracts::spec::TransformStats,
    pub training: Option<TrainingInfo>,
    pub parent: Option<u64>,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Draft {
    /// A draft of `name` whose model is `onnx` (not checked: for tests of what the registry
    /// keeps, not of what it serves).
    pub fn example(name: &str, onnx: Vec<u8>, reason: &str) -> Self {
        Self {
            name: name.into(),
            created_by: "test".into(),
            reason: reason.into(),
            onnx: onnx.into(),
            checkpoint: None,
            spec_version: "1".into(),
            signature: Signature::expected(2, 3),
            transform_stats: Default::default(),
            training: None,
            parent: None,
            metrics: Default::default(),
            tags: Default::default(),
        }
    }
}

/// How many times a publisher retries after losing a race for a version number.
const PUBLISH_ATTEMPTS: u32 = 20;

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

impl Registry {
    /// Stores the draft's files, then creates its manifest under the next free number.
    pub async fn publish(&self, draft: Draft) -> Result<Manifest> {
        check_name(&draft.name)?;
        if let Some(parent) = draft.parent {
            self.version(&draft.name, parent).await?;
        }
        let onnx = self.put_blob(&draft.name, "onnx", draft.onnx.clone()).await?;
        let checkpoint = match &draft.checkpoint {
            Some(bytes) => Some(self.put_blob(&draft.name, "weights", bytes.clone()).await?),
            None => None,
        };
        for _ in 0..PUBLISH_ATTEMPTS {
            let version = self.latest_number(&draft.name).await?.unwrap_or(0) + 1;
            let manifest = Manifest {
                name: draft.name.clone(),
                version,
                created_at_ms: crate::now_ms(),
                created_by: draft.created_by.clone(),
                reason: draft.reason.clone(),
                onnx: onnx.clone(),
                checkpoint: checkpoint.clone(),
                spec_version: draft.spec_version.clone(),
                signature: draft.signature.clone(),
                transform_stats: draft.transform_stats.clone(),
                training: draft.training.clone(),
                parent: draft.parent,
                metrics: draft.metrics.clone(),
                tags: draft.tags.clone(),
            };
            let bytes = serde_json::to_vec_pretty(&manifest).expect("manifests serialise; this is a bug");
            if self.create(&version_path(&draft.name, version), bytes).await? {
                tracing::info!(name = %manifest.name, version, sha256 = %manifest.onnx.sha256, "published a model version");
                return Ok(manifest);
            }
        }
        Err(Error::Contended { name: draft.name, attempts: PUBLISH_ATTEMPTS })
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<Manifest>> {
        check_name(name)?;
        let mut manifests = Vec::new();
        for path in self.list(&format!("models/{name}/versions/")).await? {
            manifests.push(self.read_manifest(&path).await?);
        }
        manifests.sort_by_key(|m| m.version);
        Ok(manifests)
    }

    /// One version.
    pub async fn version(&self, name: &str, version: u64) -> Result<Manifest> {
        check_name(name)?;
        let path = version_path(name, version);
        match self.get(&path).await? {
            Some(_) => self.read_manifest(&path).await,
            None => Err(Error::NotFound(format!("model `{name}` has no version {version}"))),
        }
    }

    /// The model names this registry holds.
    pub async fn models(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&Path::from("models")))
            .await
            .map_err(|e| self.store_error("listing models", e))?;
        let mut names: Vec<String> =
            listed.common_prefixes.iter().filter_map(|p| p.filename().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }

    /// An artifact's bytes, after checking them against its SHA-256.
    pub async fn artifact(&self, artifact: &Artifact) -> Result<Bytes> {
        let bytes = self
            .get(&artifact.path)
            .await?
            .ok_or_else(|| Error::Corrupt { path: artifact.path.clone(), reason: "the file is missing".into() })?;
        let actual = sha256_hex(&bytes);
        if actual != artifact.sha256 {
            return Err(Error::Corrupt {
                path: artifact.path.clone(),
                reason: format!("its SHA-256 is {actual}, the manifest says {}", artifact.sha256),
            });
        }
        Ok(bytes)
    }

    /// The newest version number of `name`, if any.
    pub(crate) async fn latest_number(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.list(&format!("models/{name}/versions/")).await?.iter().filter_map(|p| number_of(p)).max())
    }

    async fn put_blob(&self, name: &str, extension: &str, bytes: Bytes) -> Result<Artifact> {
        let sha256 = sha256_hex(&bytes);
        let path = format!("models/{name}/blobs/{sha256}.{extension}");
        let size = bytes.len() as u64;
        // Content-addressed: an existing blob should hold exactly these bytes. On a store
        // without atomic puts a killed publisher could have left a torn one: check, and replace
        // it rather than publish a version that can never load.
        if !self.create(&path, bytes.to_vec()).await? {
            let existing = self.get(&path).await?;
            if existing.as_deref().map(sha256_hex).as_deref() != Some(sha256.as_str()) {
                tracing::warn!(path, "replacing a damaged blob");
                self.store
                    .put(&Path::from(path.as_str()), PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.store_error("writing", e))?;
            }
        }
        Ok(Artifact { path, sha256, bytes: size })
    }

    async fn read_manifest(&self, path: &str) -> Result<Manifest> {
        let bytes = self.get(path).await?.ok_or_else(|| Error::NotFound(path.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path: path.into(), reason: e.to_string() })
    }

    /// Lists object paths under a prefix (as strings).
    pub(crate) async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = Path::from(prefix.trim_end_matches('/'));
        let listed: Vec<_> =
            self.store.list(Some(&prefix_path)).try_collect().await.map_err(|e| self.store_error("listing", e))?;
        Ok(listed.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// An object's bytes, `None` when it does not exist.
    pub(crate) async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.store.get(&Path::from(path)).await {
            Ok(result) => Ok(Some(result.bytes().await.map_err(|e| self.store_error("reading", e))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_error("reading", e)),
        }
    }

    /// Deletes an object (absent already is fine).
    pub(crate) async fn delete(&self, path: &str) -> Result<()> {
        match self.store.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_error("deleting", e)),
        }
    }

    /// Creates an object unless it exists; `false` when it did.
    pub(crate) async fn create(&self, path: &str, bytes: Vec<u8>) -> Result<bool> {
        let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
        match self.store.put_opts(&Path::from(path), PutPayload::from(bytes), options).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.store_error("writing", e)),
        }
    }
}

fn version_path(name: &str, version: u64) -> String {
    format!("models/{name}/versions/{version:08}.json")
}

/// The number in a `…/<digits>.json` path.
pub(crate) fn number_of(path: &str) -> Option<u64> {
    path.rsplit('/').next()?.strip_suffix(".json")?.parse().ok()
}

/// Model names and aliases: 1 to 64 of `a-z 0-9 _ -`, starting with a letter.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok { Ok(()) } else { Err(Error::InvalidName(name.into())) }
}
