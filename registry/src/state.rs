//! Aliases (production, candidate, …) and their audit log.
//!
//! A model's state is a sequence of immutable documents `state/<seq>.json`; the newest is the
//! current state. A change names the sequence number it was based on and creates the next one
//! with create-if-absent, so two concurrent changes cannot both win (compare-and-swap on any
//! object store with conditional creates: local folders and S3). The sequence never shrinks:
//! it is the append-only audit log of every alias change, with who, what, when and why.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Error, Registry, Result,
    versions::{check_name, number_of},
};

/// One state of a model's aliases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// 0 before the first change.
    pub seq: u64,
    /// Alias -> version.
    pub aliases: BTreeMap<String, u64>,
    /// The change that made this state: when, who, what and why.
    pub changed_at_ms: i64,
    pub changed_by: String,
    pub change: String,
    pub reason: String,
}

/// A requested change of aliases.
#[derive(Debug, Clone)]
pub struct Change {
    /// The state this change was decided on; the change fails if another landed since.
    pub expected_seq: u64,
    /// Aliases to point at a version (`Some`) or remove (`None`).
    pub set: Vec<(String, Option<u64>)>,
    pub by: String,
    pub reason: String,
}

/// The alias every new `adrank train` compares against and serving loads by default.
pub const PRODUCTION: &str = "production";

impl Registry {
    /// The current state of `name`'s aliases (the empty state before any change).
    pub async fn state(&self, name: &str) -> Result<State> {
        let newest = self.sequence(name, "state").await?.pop();
        match newest {
            None => Ok(State::default()),
            Some(seq) => self.document(name, "state", seq).await,
        }
    }

    /// Every state of `name`, oldest first: the audit log.
    pub async fn history(&self, name: &str) -> Result<Vec<State>> {
        let seqs = self.sequence(name, "state").await?;
        let mut states = Vec::with_capacity(seqs.len());
        for seq in seqs {
            states.push(self.document(name, "state", seq).await?);
        }
        Ok(states)
    }

    /// Applies `change` if the state is still `change.expected_seq`; fails with
    /// [`Error::Conflict`] otherwise. Aliases must name existing versions.
    pub async fn change(&self, name: &str, change: Change) -> Result<State> {
        check_name(name)?;
        let current = self.state(name).await?;
        if current.seq != change.expected_seq {
            return Err(Error::Conflict { name: name.into(), expected: change.expected_seq, found: current.seq });
        }
        let mut next = State {
            seq: current.seq + 1,
            aliases: current.aliases.clone(),
            changed_at_ms: crate::now_ms(),
            changed_by: change.by,
            change: String::new(),
            reason: change.reason,
        };
        let mut described = Vec::new();
        for (alias, version) in change.set {
            check_alias(&alias)?;
            match version {
                Some(v) => {
                    self.version(name, v).await?;
                    let before = next.aliases.insert(alias.clone(), v);
                    described.push(match before {
                        Some(b) => format!("{alias}: {b} -> {v}"),
                        None => format!("{alias}: -> {v}"),
                    });
                }
                None => {
                    if let Some(b) = next.aliases.remove(&alias) {
                        described.push(format!("{alias}: {b} -> (removed)"));
                    }
                }
            }
        }
        next.change = described.join(", ");
        let bytes = serde_json::to_vec_pretty(&next).expect("states serialise; this is a bug");
        if self.create(&document_path(name, "state", next.seq), bytes).await? {
            tracing::info!(name, seq = next.seq, change = %next.change, "changed aliases");
            Ok(next)
        } else {
            let found = self.state(name).await?.seq;
            Err(Error::Conflict { name: name.into(), expected: change.expected_seq, found })
        }
    }

    /// The version an alias, a number or `latest` names.
    pub async fn resolve(&self, name: &str, reference: &str) -> Result<u64> {
        if let Ok(version) = reference.parse::<u64>() {
            return Ok(self.version(name, version).await?.version);
        }
        if reference == "latest" {
            return self
                .latest_number(name)
                .await?
                .ok_or_else(|| Error::NotFound(format!("model `{name}` has no versions")));
        }
        self.state(name)
            .await?
            .aliases
            .get(reference)
            .copied()
            .ok_or_else(|| Error::NotFound(format!("model `{name}` has no alias `{reference}`")))
    }

    /// The sequence numbers of model `name`'s documents under `kind/` (`state`, `rollout`),
    /// ascending.
    pub(crate) async fn sequence(&self, name: &str, kind: &str) -> Result<Vec<u64>> {
        check_name(name)?;
        let mut seqs: Vec<u64> =
            self.list(&format!("models/{name}/{kind}/")).await?.iter().filter_map(|p| number_of(p)).collect();
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Document `seq` of model `name`'s sequence under `kind/`.
    pub(crate) async fn document<T: serde::de::DeserializeOwned>(&self, name: &str, kind: &str, seq: u64) -> Result<T> {
        let path = document_path(name, kind, seq);
        let bytes = self.get(&path).await?.ok_or_else(|| Error::NotFound(path.clone()))?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path, reason: e.to_string() })
    }
}

/// Where document `seq` of a model's sequence under `kind/` (`state`, `rollout`) lives.
pub(crate) fn document_path(name: &str, kind: &str, seq: u64) -> String {
    format!("models/{name}/{kind}/{seq:010}.json")
}

/// Aliases are names that cannot be mistaken for a version reference.
fn check_alias(alias: &str) -> Result<()> {
    check_name(alias)?;
    if alias == "latest" {
        return Err(Error::InvalidName(alias.into()));
    }
    Ok(())
}
