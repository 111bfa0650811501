//! Create-once JSON records beside a model's versions, for the control plane's own state (the
//! retraining loop's cycles and steps, its lease).
//!
//! ```text
//! models/<name>/records/<kind>/<key>.json
//! ```
//!
//! A record is written once, with create-if-absent, and never changed: two writers of one key
//! cannot both succeed, and a reader never sees half a record on a store with atomic puts (local
//! folders and S3). State that moves is a sequence of records, like the alias states.

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Registry, Result, versions::check_name};

impl Registry {
    /// Creates record `kind/key` of model `name` unless it exists; `false` when it did.
    pub async fn put_record(&self, name: &str, kind: &str, key: &str, value: &impl Serialize) -> Result<bool> {
        let path = record_path(name, kind, key)?;
        let bytes = serde_json::to_vec_pretty(value).expect("records serialise; this is a bug");
        self.create(&path, bytes).await
    }

    /// Record `kind/key` of model `name`, `None` when there is none.
    pub async fn record<T: DeserializeOwned>(&self, name: &str, kind: &str, key: &str) -> Result<Option<T>> {
        let path = record_path(name, kind, key)?;
        match self.get(&path).await? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Corrupt { path, reason: e.to_string() })
            }
        }
    }

    /// The keys of model `name`'s records under `kind/` (and below), in name order.
    pub async fn record_keys(&self, name: &str, kind: &str) -> Result<Vec<String>> {
        check_name(name)?;
        check_key(kind)?;
        let prefix = format!("models/{name}/records/{kind}/");
        let mut keys: Vec<String> = self
            .list(&prefix)
            .await?
            .into_iter()
            .filter_map(|p| Some(p.strip_prefix(&prefix)?.strip_suffix(".json")?.to_string()))
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Deletes record `kind/key` (only for sequences that prune their old entries).
    pub async fn delete_record(&self, name: &str, kind: &str, key: &str) -> Result<()> {
        let path = record_path(name, kind, key)?;
        self.delete(&path).await
    }
}

fn record_path(name: &str, kind: &str, key: &str) -> Result<String> {
    check_name(name)?;
    check_key(kind)?;
    check_key(key)?;
    Ok(format!("models/{name}/records/{kind}/{key}.json"))
}

/// Record kinds and keys: segments of `a-z 0-9 _ -` joined by `/`, none empty.
fn check_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        });
    if ok { Ok(()) } else { Err(Error::InvalidName(key.into())) }
}
