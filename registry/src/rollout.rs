//! Rollouts: a candidate version's way to production, step by step, as a sequence of
//! create-once documents beside the aliases.
//!
//! ```text
//! models/<name>/rollout/<seq>.json
//! ```
//!
//! Every change (a start, a step, a pause, a promotion, a rollback) creates the next document with
//! create-if-absent, naming the sequence number it was decided on, so two controllers or an
//! operator and a controller cannot both change one state (compare-and-swap). The sequence is the
//! audit log of every rollout of the model: who, what, when, why, and the figures a decision
//! rested on. Serving replicas read the newest document and split users by a salted hash of
//! their id ([`Rollout::arm`]): they agree without talking to each other, and a user stays in one
//! arm for the whole rollout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    Error, Registry, Result,
    state::{Change, PRODUCTION, document_path},
};

/// The default plan: shadow (the candidate scores a copy of production's requests, serves
/// nothing), then 5%, 25%, 50% and 100% of users.
pub const DEFAULT_PLAN: [u8; 5] = [0, 5, 25, 50, 100];

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    /// Held at its step: no automatic decision until resumed.
    Paused,
    /// Ended: the candidate is production.
    Promoted,
    /// Ended: production serves everyone, the candidate no one.
    RolledBack,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::RolledBack => "rolled back",
        }
    }
}

/// One state of a model's rollouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The document's sequence number (1, 2, …) among all of the model's rollout documents.
    pub seq: u64,
    /// Which rollout of the model this is: a new one starts once the last has ended.
    pub id: u64,
    /// The version serving the control arm.
    pub production: u64,
    pub candidate: u64,
    /// Salts the users' hash, so that each rollout splits users afresh.
    pub salt: String,
    /// The candidate's share of users per step, in percent; 0 is shadow.
    pub plan: Vec<u8>,
    /// The current step (an index into `plan`).
    pub step: usize,
    /// When the current step began (the rollout started or advanced to it), milliseconds since
    /// the Unix epoch: how long a step has lasted survives a controller's restart.
    #[serde(default)]
    pub step_started_ms: i64,
    pub status: Status,
    /// The change that made this state: when, who, what, why, and the figures it rested on.
    pub changed_at_ms: i64,
    pub changed_by: String,
    pub change: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub figures: BTreeMap<String, f64>,
}

/// Which version serves a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Production,
    Candidate,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Candidate => "candidate",
        }
    }
}

/// A user's place in a rollout: which rollout, at which step, in which arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub rollout: u64,
    pub step: usize,
    pub arm: Arm,
}

/// Buckets users fall in; a weight of w% takes buckets below w x 100.
const BUCKETS: u64 = 10_000;

impl Rollout {
    /// The candidate's share of users now, in percent: its step's while running or paused, 100
    /// once promoted, 0 once rolled back.
    pub fn weight(&self) -> u8 {
        match self.status {
            Status::Running | Status::Paused => self.plan[self.step],
            Status::Promoted => 100,
            Status::RolledBack => 0,
        }
    }

    /// Whether the rollout is still under way (running or paused).
    pub fn is_active(&self) -> bool {
        matches!(self.status, Status::Running | Status::Paused)
    }

    /// Whether the candidate scores a copy of production's requests (the shadow step).
    pub fn is_shadow(&self) -> bool {
        self.is_active() && self.weight() == 0
    }

    /// The arm `user_id` is in. A raised weight only moves users from production to the
    /// candidate, never back: the buckets below the old weight stay below the new one.
    pub fn arm(&self, user_id: &str) -> Arm {
        if user_bucket(&self.salt, user_id) < u64::from(self.weight()) * (BUCKETS / 100) {
            Arm::Candidate
        } else {
            Arm::Production
        }
    }

    /// The version serving `user_id`.
    pub fn version_for(&self, user_id: &str) -> u64 {
        match self.arm(user_id) {
            Arm::Candidate => self.candidate,
            Arm::Production => self.production,
        }
    }
}

/// The bucket (0..10,000) of a user in a rollout salted with `salt`.
pub fn user_bucket(salt: &str, user_id: &str) -> u64 {
    let mut key = Vec::with_capacity(salt.len() + 1 + user_id.len());
    key.extend_from_slice(salt.as_bytes());
    key.push(0);
    key.extend_from_slice(user_id.as_bytes());
    xxhash_rust::xxh3::xxh3_64(&key) % BUCKETS
}

/// A plan's problems: empty, not rising, above 100, or not ending at 100.
pub fn check_plan(plan: &[u8]) -> Result<(), String> {
    if plan.is_empty() {
        return Err("the plan has no steps".into());
    }
    if let Some(&w) = plan.iter().find(|&&w| w > 100) {
        return Err(format!("the plan has a step of {w}%; weights are 0 (shadow) to 100"));
    }
    if plan.windows(2).any(|pair| pair[1] <= pair[0]) {
        return Err(format!("the plan {plan:?} does not rise step by step"));
    }
    if plan.last() != Some(&100) {
        return Err(format!("the plan {plan:?} does not end at 100%"));
    }
    Ok(())
}

/// What an operator or the controller does to the current rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// To the next step; from the last one, promote.
    Advance,
    Pause,
    Resume,
    /// Straight to production.
    Promote,
    /// Back to production for everyone.
    RollBack,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Advance => "advance",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Promote => "promote",
            Self::RollBack => "roll_back",
        }
    }
}

/// Who acts, why, on which state, with which figures.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The document the decision was made on; it fails if another landed since.
    pub expected_seq: u64,
    pub by: String,
    pub reason: String,
    pub figures: BTreeMap<String, f64>,
}

impl Registry {
    /// The newest rollout document of `name`, `None` before the first rollout.
    pub async fn rollout(&self, name: &str) -> Result<Option<Rollout>> {
        let newest = self.sequence(name, "rollout").await?.pop();
        match newest {
            None => Ok(None),
            Some(seq) => self.document(name, "rollout", seq).await.map(Some),
        }
    }

    /// Every rollout document of `name`, oldest first: the rollouts' audit log.
    pub async fn rollout_history(&self, name: &str) -> Result<Vec<Rollout>> {
        let seqs = self.sequence(name, "rollout").await?;
        let mut rollouts = Vec::with_capacity(seqs.len());
        for seq in seqs {
            rollouts.push(self.document(name, "rollout", seq).await?);
        }
        Ok(rollouts)
    }

    /// Starts rolling `candidate` out against the current `production` version, at the plan's
    /// first step. Fails while another rollout is under way.
    pub async fn start_rollout(
        &self,
        name: &str,
        candidate: u64,
        plan: Vec<u8>,
        decision: Decision,
    ) -> Result<Rollout> {
        check_plan(&plan).map_err(Error::Rollout)?;
        let current = self.rollout(name).await?;
        let seq = current.as_ref().map_or(0, |r| r.seq);
        if seq != decision.expected_seq {
            return Err(Error::RolloutChanged { name: name.into(), expected: decision.expected_seq, found: seq });
        }
        if let Some(active) = current.as_ref().filter(|r| r.is_active()) {
            return Err(Error::Rollout(format!(
                "rollout {} of `{name}` (version {} against {}) is {}; promote or roll it back first",
                active.id,
                active.candidate,
                active.production,
                active.status.as_str()
            )));
        }
        let production = self.state(name).await?.aliases.get(PRODUCTION).copied().ok_or_else(|| {
            Error::Rollout(format!("`{name}` has no production version to roll a candidate out against"))
        })?;
        self.version(name, candidate).await?;
        if candidate == production {
            return Err(Error::Rollout(format!("version {candidate} of `{name}` is production already")));
        }
        let id = current.as_ref().map_or(1, |r| r.id + 1);
        let now = crate::now_ms();
        let next = Rollout {
            seq: seq + 1,
            id,
            production,
            candidate,
            salt: format!("{name}-rollout-{id}"),
            change: format!("started rollout {id}: version {candidate} against {production}, plan {plan:?}"),
            plan,
            step: 0,
            step_started_ms: now,
            status: Status::Running,
            changed_at_ms: now,
            changed_by: decision.by,
            reason: decision.reason,
            figures: decision.figures,
        };
        self.create_rollout(name, next, decision.expected_seq).await
    }

    /// Applies `action` to the rollout under way, if it is still the state `decision` was made
    /// on. A promotion also points `production` at the candidate.
    pub async fn act_on_rollout(&self, name: &str, action: Action, decision: Decision) -> Result<Rollout> {
        let current = self.rollout(name).await?.ok_or_else(|| Error::Rollout(format!("`{name}` has no rollout")))?;
        if current.seq != decision.expected_seq {
            return Err(Error::RolloutChanged {
                name: name.into(),
                expected: decision.expected_seq,
                found: current.seq,
            });
        }
        let mut next = Rollout {
            seq: current.seq + 1,
            changed_at_ms: crate::now_ms(),
            changed_by: decision.by.clone(),
            reason: decision.reason.clone(),
            figures: decision.figures.clone(),
            change: String::new(),
            ..current.clone()
        };
        let (from, id) = (current.weight(), current.id);
        match (action, current.status) {
            (_, Status::Promoted | Status::RolledBack) => {
                return Err(Error::Rollout(format!(
                    "rollout {id} of `{name}` has ended ({}); start a new one",
                    current.status.as_str()
                )));
            }
            (Action::Advance, Status::Running) if current.step + 1 < current.plan.len() => {
                next.step += 1;
                next.step_started_ms = next.changed_at_ms;
                next.change =
                    format!("rollout {id}: step {} -> {} ({from}% -> {}%)", current.step, next.step, next.weight());
            }
            (Action::Advance, Status::Running) | (Action::Promote, _) => {
                next.status = Status::Promoted;
                next.change = format!("rollout {id}: promoted version {} ({from}% -> 100%)", current.candidate);
            }
            (Action::Pause, Status::Running) => {
                next.status = Status::Paused;
                next.change = format!("rollout {id}: paused at {from}%");
            }
            (Action::Resume, Status::Paused) => {
                next.status = Status::Running;
                next.change = format!("rollout {id}: resumed at {from}%");
            }
            (Action::RollBack, _) => {
                next.status = Status::RolledBack;
                next.change = format!("rollout {id}: rolled back version {} ({from}% -> 0%)", current.candidate);
            }
            (Action::Advance | Action::Pause, Status::Paused) | (Action::Resume, Status::Running) => {
                return Err(Error::Rollout(format!(
                    "rollout {id} of `{name}` is {}; cannot {action:?} it",
                    current.status.as_str()
                )));
            }
        }
        let next = self.create_rollout(name, next, decision.expected_seq).await?;
        if next.status == Status::Promoted {
            self.reconcile_rollout(name, &next).await?;
        }
        Ok(next)
    }

    /// Points `production` at a promoted rollout's candidate if it does not yet (a promotion
    /// interrupted between its two writes is finished here). Returns whether it changed.
    pub async fn reconcile_rollout(&self, name: &str, rollout: &Rollout) -> Result<bool> {
        if rollout.status != Status::Promoted {
            return Ok(false);
        }
        for _ in 0..3 {
            let state = self.state(name).await?;
            if state.aliases.get(PRODUCTION) == Some(&rollout.candidate) {
                return Ok(false);
            }
            let change = Change {
                expected_seq: state.seq,
                set: vec![(PRODUCTION.into(), Some(rollout.candidate))],
                by: rollout.changed_by.clone(),
                reason: format!("rollout {} promoted: {}", rollout.id, rollout.reason),
            };
            match self.change(name, change).await {
                Ok(_) => return Ok(true),
                Err(Error::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Rollout(format!("the aliases of `{name}` kept changing while promoting rollout {}", rollout.id)))
    }

    async fn create_rollout(&self, name: &str, next: Rollout, expected: u64) -> Result<Rollout> {
        let bytes = serde_json::to_vec_pretty(&next).expect("rollouts serialise; this is a bug");
        if self.create(&document_path(name, "rollout", next.seq), bytes).await? {
            tracing::info!(name, seq = next.seq, change = %next.change, "rollout changed");
            Ok(next)
        } else {
            let found = self.rollout(name).await?.map_or(0, |r| r.seq);
            Err(Error::RolloutChanged { name: name.into(), expected, found })
        }
    }
}

#[cfg(test)]
mod tests;
