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
//! versions loaded beside the default one, followed the same way: requests can pin them. An alias
//! that does not exist loads nothing; a version no reference names any more is unloaded (freed
//! once its last request is done).
//!
//! The model's rollout (docs/rollouts.md) is followed too: while one is running or paused, its
//! candidate is kept loaded and [`ModelManager::route`] sends each user to the arm the rollout's
//! salted hash puts them in, so replicas agree without talking to each other.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use adrank_contracts::spec::FeatureSpec;
use adrank_registry::{Arm, Assignment, OrtConfig, Registry, Rollout};

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
    /// Which requests are copied to a shadowed candidate, and the comparison so far.
    shadow: crate::shadow::Gate,
}

/// Where a request goes: the version that serves it, its rollout arm, and, at a rollout's
/// shadow step for a sampled request, the candidate that also scores a copy.
#[derive(Debug)]
pub struct Route {
    pub version: Arc<LoadedVersion>,
    pub assigned: Option<Assignment>,
    pub shadow: Option<crate::rank::Shadowing>,
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
    /// The rollout under way, once its candidate is loaded (held in `extra` as [`ROLLOUT`]).
    rollout: Option<Rollout>,
    /// The default version the last swap replaced, kept loaded: it serves again at once should
    /// the new one fail in inference ([`ModelManager::inference_failed`]).
    previous: Option<Arc<LoadedVersion>>,
}

/// The `extra` entry holding a rollout's candidate: not a valid alias, so no reference is it.
const ROLLOUT: &str = "@rollout";

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
            rollout: None,
            previous: None,
        };
        let serving = &config.serving;
        let shadow = crate::shadow::Gate::new(
            serving.shadow_sample,
            serving.shadow_max_in_flight,
            std::time::Duration::from_millis(serving.default_deadline_ms),
        );
        let manager = Self { config, state: RwLock::new(state), shadow };
        manager.refresh_extra().await;
        manager.refresh_rollout().await;
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
        let state = self.state.read().expect("the state lock is never poisoned");
        state.extra.iter().filter(|(r, _)| *r != ROLLOUT).map(|(r, v)| (r.clone(), *v)).collect()
    }

    /// The registry the versions come from.
    pub fn registry(&self) -> &Registry {
        &self.config.registry
    }

    /// The model served.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The rollout this server routes by now: one under way whose candidate is loaded.
    pub fn rollout(&self) -> Option<Rollout> {
        self.state.read().expect("the state lock is never poisoned").rollout.clone()
    }

    /// The version that serves `user_id`, and the rollout arm it is in (none without a rollout).
    /// A user the rollout puts in the candidate's arm gets the candidate; everyone else the
    /// default version. While the default is not the rollout's production version (the alias
    /// moved outside the rollout), everyone gets the default.
    pub fn route(&self, user_id: &str) -> Route {
        let state = self.state.read().expect("the state lock is never poisoned");
        let default = Arc::clone(&state.default);
        let Some(rollout) = state.rollout.as_ref().filter(|r| r.production == default.manifest.version) else {
            return Route { version: default, assigned: None, shadow: None };
        };
        let assigned = |arm| Some(Assignment { rollout: rollout.id, step: rollout.step, arm });
        let candidate = state.loaded.get(&rollout.candidate);
        match (rollout.arm(user_id), candidate) {
            (Arm::Candidate, Some(candidate)) => {
                Route { version: Arc::clone(candidate), assigned: assigned(Arm::Candidate), shadow: None }
            }
            _ => {
                let shadow = candidate.filter(|_| rollout.is_shadow()).and_then(|candidate| {
                    let permit = self.shadow.admit()?;
                    Some(crate::rank::Shadowing { permit, candidate: Arc::clone(candidate), rollout: rollout.id })
                });
                Route { version: default, assigned: assigned(Arm::Production), shadow }
            }
        }
    }

    /// The shadow gate: the sample, the places, and the comparison so far.
    pub fn shadow(&self) -> &crate::shadow::Gate {
        &self.shadow
    }

    /// Resolves the followed alias once and swaps to its version if it changed; then follows
    /// the extra references.
    pub async fn refresh(&self) -> Result<Refresh> {
        let outcome = self.refresh_default().await;
        self.refresh_extra().await;
        self.refresh_rollout().await;
        outcome
    }

    /// Follows the model's rollout: loads a running or paused one's candidate, then routes by
    /// it; an ended one (or none) routes nothing and unloads its candidate. A registry error
    /// keeps the rollout as it was; a candidate that fails to load is logged, and routed to no
    /// one.
    async fn refresh_rollout(&self) {
        let newest = match self.config.registry.rollout(&self.config.name).await {
            Ok(newest) => newest.filter(Rollout::is_active),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the model's rollout; routing stays as it was");
                return;
            }
        };
        let Some(rollout) = newest else {
            let mut state = self.state.write().expect("the state lock is never poisoned");
            let (routed, held) = (state.rollout.take(), state.extra.remove(ROLLOUT));
            if routed.is_some() || held.is_some() {
                tracing::info!("the rollout ended; every user gets the default version");
                state.prune();
            }
            return;
        };
        let candidate = match self.version(rollout.candidate) {
            Some(loaded) => loaded,
            None => match LoadedVersion::load(request(&self.config, rollout.candidate)).await {
                Ok(loaded) => Arc::new(loaded),
                Err(e) => {
                    tracing::warn!(version = rollout.candidate, error = %e, "the rollout's candidate did not load; no user is routed to it");
                    let mut state = self.state.write().expect("the state lock is never poisoned");
                    state.rollout = None;
                    state.extra.remove(ROLLOUT);
                    state.prune();
                    return;
                }
            },
        };
        let mut state = self.state.write().expect("the state lock is never poisoned");
        if state.rollout.as_ref() != Some(&rollout) {
            tracing::info!(
                rollout = rollout.id,
                seq = rollout.seq,
                candidate = rollout.candidate,
                weight = rollout.weight(),
                status = rollout.status.as_str(),
                "routing by the rollout"
            );
        }
        state.loaded.insert(rollout.candidate, candidate);
        state.extra.insert(ROLLOUT.into(), rollout.candidate);
        state.rollout = Some(rollout);
        state.prune();
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
        let replaced = std::mem::replace(&mut state.default, Arc::clone(&loaded));
        let old = replaced.manifest.version;
        state.previous = Some(replaced);
        state.loaded.insert(target, loaded);
        // The old version leaves the map unless an extra reference holds it; requests holding
        // it finish, then it is freed.
        state.prune();
        state.failed = None;
        crate::metrics::versions(state.loaded.len(), "swapped");
        tracing::info!(name = %self.config.name, from = old, to = target, "swapped the serving model version");
        Ok(Refresh::Swapped { from: old, to: target })
    }

    /// A run of `version` failed in ONNX Runtime. When it is the default version and the one it
    /// replaced is still loaded, that one serves again at once, and `version` is refused until
    /// the alias moves (as a version refused at load is). Whether the previous version took over.
    pub fn inference_failed(&self, version: u64, reason: &str) -> bool {
        let mut state = self.state.write().expect("the state lock is never poisoned");
        if state.default.manifest.version != version {
            return false;
        }
        let Some(previous) = state.previous.take() else {
            tracing::error!(name = %self.config.name, version, reason, "the model failed in inference, and no previous version is loaded to take over");
            return false;
        };
        let back = previous.manifest.version;
        state.default = Arc::clone(&previous);
        state.loaded.insert(back, previous);
        state.failed = Some(Failed { version, bad: true, failures: 1, wait: 0 });
        state.prune();
        crate::metrics::versions(state.loaded.len(), "failed_inference");
        tracing::error!(name = %self.config.name, version, previous = back, reason, "the model failed in inference: the previous version serves again; this one is refused until the alias moves");
        true
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
