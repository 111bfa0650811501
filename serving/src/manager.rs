//! The model manager: which versions are loaded, which one serves by default, and hot swaps.
//!
//! It follows one alias of one model (`production` by default). [`ModelManager::refresh`]
//! resolves the alias; when it names another version, that version is loaded, verified and
//! warmed while the current one keeps serving, then swapped in with one pointer store. Requests
//! already holding the old version finish on it; its batcher and ONNX Runtime session are freed
//! when the last of them is done. A version that is bad (damaged, for another spec, refused by
//! ONNX Runtime or its warm-up) is refused and remembered: not tried again until the alias moves.
//! A version that could not be *read* (the object store failed) is tried again, at the next
//! refresh and then after 1, 3, 7 … (at most 63) refreshes; meanwhile the current one keeps
//! serving. [`ModelManager::watch`] refreshes on an interval.
//!
//! More references (`also`: aliases such as `candidate` or `shadow`, or numbers) keep their
//! versions loaded beside the default one, followed the same way: requests can pin them, and the
//! rollout controller routes between them. An alias that does not exist loads nothing; a version
//! no reference names any more is unloaded (freed once its last request is done).

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use adrank_contracts::spec::FeatureSpec;
use adrank_registry::{OrtConfig, Registry};

use crate::{
    Error, Result, ServingConfig,
    model::{LoadRequest, LoadedVersion},
};

/// What the manager follows and how it loads.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub registry: Registry,
    pub name: String,
    /// The alias (or `latest`, or a fixed number) whose version serves by default.
    pub follow: String,
    pub spec: FeatureSpec,
    pub ort: OrtConfig,
    pub serving: ServingConfig,
    /// More references whose versions are kept loaded beside the default one.
    pub also: Vec<String>,
}

/// The loaded versions and the default one.
#[derive(Debug)]
pub struct ModelManager {
    config: ManagerConfig,
    state: RwLock<State>,
}

#[derive(Debug, Clone)]
struct State {
    default: Arc<LoadedVersion>,
    loaded: BTreeMap<u64, Arc<LoadedVersion>>,
    /// The last version that failed to load, so a broken version is not reloaded every poll.
    failed: Option<Failed>,
    /// Each extra reference's version, while it names one that loaded.
    extra: BTreeMap<String, u64>,
    /// Each extra reference's last version that failed to load.
    extra_failed: BTreeMap<String, Failed>,
}

impl State {
    /// Unloads every version neither the default nor an extra reference names.
    fn prune(&mut self) {
        let default = self.default.manifest.version;
        let extra: Vec<u64> = self.extra.values().copied().collect();
        self.loaded.retain(|v, _| *v == default || extra.contains(v));
    }
}

/// A version that failed to load, and when to try it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Failed {
    version: u64,
    /// Bad (refused for good) or unreadable (retried).
    bad: bool,
    /// Failures in a row to read it.
    failures: u32,
    /// Refreshes left before the next try.
    wait: u32,
}

impl Failed {
    /// After a failure to load `version`, following `previous`.
    fn after(error: &Error, version: u64, previous: Option<&Failed>) -> Self {
        let failures = previous.filter(|p| p.version == version).map_or(0, |p| p.failures) + 1;
        // 0, 1, 3, 7 … refreshes skipped: backing off, and never longer than 63 polls.
        let wait = (1u32 << (failures - 1).min(6)) - 1;
        Self { version, bad: !error.is_transient(), failures, wait }
    }

    /// Whether `target` is held back at this refresh; counts the wait down.
    fn holds_back(failed: &mut Option<Self>, target: u64) -> bool {
        match failed {
            Some(f) if f.version == target => {
                if f.bad {
                    return true;
                }
                if f.wait > 0 {
                    f.wait -= 1;
                    return true;
                }
                false
            }
            _ => false,
        }
    }
}

/// What one refresh did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    Swapped {
        from: u64,
        to: u64,
    },
    /// The followed version is bad (the reason was logged); `current` serves on, and it is not
    /// tried again until the alias moves.
    Refused {
        version: u64,
        current: u64,
        reason: String,
    },
    /// The followed version could not be read now; `current` serves on, and it is tried again
    /// (`failures` in a row so far).
    Retrying {
        version: u64,
        current: u64,
        failures: u32,
        reason: String,
    },
}

impl ModelManager {
    /// Loads the version the alias names now. Fails when it cannot be served: a server must not
    /// start without a model.
    pub async fn start(config: ManagerConfig) -> Result<Self> {
        let version = config.registry.resolve(&config.name, &config.follow).await?;
        let loaded = Arc::new(LoadedVersion::load(request(&config, version)).await?);
        let state = State {
            default: Arc::clone(&loaded),
            loaded: BTreeMap::from([(version, loaded)]),
            failed: None,
            extra: BTreeMap::new(),
            extra_failed: BTreeMap::new(),
        };
        let manager = Self { config, state: RwLock::new(state) };
        manager.refresh_extra().await;
        Ok(manager)
    }

    /// The version that serves requests that pin none.
    pub fn default_version(&self) -> Arc<LoadedVersion> {
        Arc::clone(&self.state.read().expect("the state lock is never poisoned").default)
    }

    /// A loaded version, by number.
    pub fn version(&self, version: u64) -> Option<Arc<LoadedVersion>> {
        self.state.read().expect("the state lock is never poisoned").loaded.get(&version).cloned()
    }

    /// The versions loaded now.
    pub fn loaded(&self) -> Vec<u64> {
        self.state.read().expect("the state lock is never poisoned").loaded.keys().copied().collect()
    }

    /// The extra references and the versions they hold loaded now.
    pub fn extra(&self) -> BTreeMap<String, u64> {
        self.state.read().expect("the state lock is never poisoned").extra.clone()
    }

    /// Resolves the followed alias once and swaps to its version if it changed; then follows
    /// the extra references.
    pub async fn refresh(&self) -> Result<Refresh> {
        let outcome = self.refresh_default().await;
        self.refresh_extra().await;
        outcome
    }

    async fn refresh_default(&self) -> Result<Refresh> {
        let target = self.config.registry.resolve(&self.config.name, &self.config.follow).await?;
        let (current, held_back) = {
            let mut state = self.state.write().expect("the state lock is never poisoned");
            (state.default.manifest.version, Failed::holds_back(&mut state.failed, target))
        };
        if target == current || held_back {
            return Ok(Refresh::Unchanged);
        }
        let loaded = match LoadedVersion::load(request(&self.config, target)).await {
            Ok(loaded) => Arc::new(loaded),
            Err(e) => {
                let mut state = self.state.write().expect("the state lock is never poisoned");
                let failed = Failed::after(&e, target, state.failed.as_ref());
                state.failed = Some(failed);
                let reason = e.to_string();
                if failed.bad {
                    tracing::warn!(name = %self.config.name, version = target, error = %e, "refused a model version; the current one keeps serving");
                    crate::metrics::versions(state.loaded.len(), "refused");
                    return Ok(Refresh::Refused { version: target, current, reason });
                }
                tracing::warn!(
                    name = %self.config.name, version = target, failures = failed.failures, error = %e,
                    "cannot read a model version now; the current one keeps serving, it is tried again"
                );
                crate::metrics::versions(state.loaded.len(), "unreadable");
                return Ok(Refresh::Retrying { version: target, current, failures: failed.failures, reason });
            }
        };
        let mut state = self.state.write().expect("the state lock is never poisoned");
        let old = std::mem::replace(&mut state.default, Arc::clone(&loaded)).manifest.version;
        state.loaded.insert(target, loaded);
        // The old version leaves the map unless an extra reference holds it; requests holding
        // it finish, then it is freed.
        state.prune();
        state.failed = None;
        crate::metrics::versions(state.loaded.len(), "swapped");
        tracing::info!(name = %self.config.name, from = old, to = target, "swapped the serving model version");
        Ok(Refresh::Swapped { from: old, to: target })
    }

    /// Loads what each extra reference names now and unloads what none names any more. A
    /// registry error leaves that reference as it was; a version that fails to load is logged
    /// and remembered.
    async fn refresh_extra(&self) {
        for reference in &self.config.also {
            let target = match self.config.registry.resolve(&self.config.name, reference).await {
                Ok(version) => Some(version),
                Err(adrank_registry::Error::NotFound(_)) => None,
                Err(e) => {
                    tracing::warn!(reference, error = %e, "cannot resolve an extra model reference; it stays as it was");
                    continue;
                }
            };
            let (current, held_back) = {
                let mut state = self.state.write().expect("the state lock is never poisoned");
                let mut failed = state.extra_failed.get(reference).copied();
                let held_back = target.is_some_and(|t| Failed::holds_back(&mut failed, t));
                if let Some(failed) = failed {
                    state.extra_failed.insert(reference.clone(), failed);
                }
                (state.extra.get(reference).copied(), held_back)
            };
            if target == current || held_back {
                continue;
            }
            let loaded = match target {
                None => None,
                Some(version) => match self.version(version) {
                    Some(loaded) => Some(loaded),
                    None => match LoadedVersion::load(request(&self.config, version)).await {
                        Ok(loaded) => Some(Arc::new(loaded)),
                        Err(e) => {
                            let mut state = self.state.write().expect("the state lock is never poisoned");
                            let failed = Failed::after(&e, version, state.extra_failed.get(reference));
                            state.extra_failed.insert(reference.clone(), failed);
                            let outcome = if failed.bad { "refused" } else { "unreadable" };
                            tracing::warn!(reference, version, error = %e, outcome, failures = failed.failures, "an extra reference's version did not load");
                            crate::metrics::versions(state.loaded.len(), outcome);
                            continue;
                        }
                    },
                },
            };
            let mut state = self.state.write().expect("the state lock is never poisoned");
            state.extra_failed.remove(reference);
            match loaded {
                Some(loaded) => {
                    let version = loaded.manifest.version;
                    state.loaded.insert(version, loaded);
                    state.extra.insert(reference.clone(), version);
                    tracing::info!(reference, version, "an extra reference's version is loaded");
                }
                None => {
                    state.extra.remove(reference);
                    tracing::info!(reference, "an extra reference names no version any more");
                }
            }
            state.prune();
            crate::metrics::versions(state.loaded.len(), "extra");
        }
    }

    /// Refreshes every `interval` until `shutdown` completes. Registry errors are logged and
    /// retried at the next tick.
    pub async fn watch(&self, interval: Duration, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticks.tick() => {
                    if let Err(e) = self.refresh().await {
                        tracing::warn!(error = %e, "cannot check the registry for a new model version");
                    }
                }
            }
        }
    }
}

fn request(config: &ManagerConfig, version: u64) -> LoadRequest<'_> {
    LoadRequest {
        registry: &config.registry,
        name: &config.name,
        version,
        spec: &config.spec,
        ort: &config.ort,
        serving: &config.serving,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreadable() -> Error {
        let source = object_store::Error::Generic { store: "test", source: "connection reset".into() };
        Error::Registry(adrank_registry::Error::Store { location: "s3://x".into(), action: "reading", source })
    }

    #[test]
    fn a_bad_version_is_held_back_until_the_reference_moves() {
        let bad = Error::Incompatible { name: "ctr".into(), version: 3, reason: "another spec".into() };
        let mut failed = Some(Failed::after(&bad, 3, None));
        assert!((0..100).all(|_| Failed::holds_back(&mut failed, 3)));
        assert!(!Failed::holds_back(&mut failed, 4), "another version is tried");
    }

    #[test]
    fn an_unreadable_version_is_tried_again_backing_off() {
        let mut failed: Option<Failed> = None;
        let mut tried = Vec::new();
        for refresh in 0..40 {
            if !Failed::holds_back(&mut failed, 7) {
                tried.push(refresh);
                failed = Some(Failed::after(&unreadable(), 7, failed.as_ref()));
            }
        }
        assert_eq!(tried, [0, 1, 3, 7, 15, 31], "tried at once, then after 1, 3, 7, 15 refreshes");
        let last = failed.unwrap();
        assert!(!last.bad && last.failures == 6, "{last:?}");
    }
}
