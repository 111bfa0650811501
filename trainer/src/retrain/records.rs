//! What a cycle leaves in the registry: one create-once record per completed step.
//!
//! ```text
//! models/<name>/records/cycles/<cycle>/<n>-<step>.json
//! ```
//!
//! A step's record is written after its side effect; a cycle without a `done` record is
//! unfinished, and the next start resumes it after its last recorded step.

use std::collections::BTreeMap;

use adrank_registry::Registry;
use serde::{Deserialize, Serialize};

use super::{gates::Decision, gates::Verdict, windows::Plan};
use crate::{Result, evaluate::EvalReport};

/// The record kind of cycles.
pub(super) const KIND: &str = "cycles";

/// The steps of a cycle, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Window,
    Train,
    Evaluate,
    Gate,
    Publish,
    Done,
}

impl Step {
    pub const ALL: [Step; 6] = [Step::Window, Step::Train, Step::Evaluate, Step::Gate, Step::Publish, Step::Done];

    pub fn name(self) -> &'static str {
        match self {
            Step::Window => "window",
            Step::Train => "train",
            Step::Evaluate => "evaluate",
            Step::Gate => "gate",
            Step::Publish => "publish",
            Step::Done => "done",
        }
    }

    fn key(self, cycle: u64) -> String {
        format!("{cycle:06}/{}-{}", self as u8 + 1, self.name())
    }
}

/// One completed step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub cycle: u64,
    pub step: Step,
    /// Who ran it (the lease holder) and when.
    pub by: String,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    pub outcome: Outcome,
}

impl StepRecord {
    pub fn seconds(&self) -> f64 {
        (self.finished_at_ms - self.started_at_ms) as f64 / 1e3
    }
}

/// What a step found or made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The windows chosen and the production version the candidate is judged against.
    Window { plan: Plan, production: Option<u64> },
    /// The candidate, published (tagged with its cycle) but not yet pointed at by any alias.
    Train {
        version: u64,
        parent: Option<u64>,
        /// Why it did not warm-start from production, when it did not.
        cold_start: Option<String>,
        examples: u64,
        clicks: u64,
        validation_log_loss: f64,
        epochs: u32,
    },
    /// The candidate and production on the evaluation window.
    Evaluate { report: EvalReport },
    /// The gates' decision.
    Gate { verdict: Verdict },
    /// The audit-log entry (and alias change when blessed).
    Publish { aliases: Vec<String>, state_seq: u64 },
    /// The end: the decision, or the error that ended the cycle.
    Done { decision: Option<Decision>, version: Option<u64>, error: Option<String> },
}

/// Every record of one cycle, by step.
#[derive(Debug, Clone, Default)]
pub struct Cycle {
    pub id: u64,
    pub steps: BTreeMap<Step, StepRecord>,
}

impl Cycle {
    pub fn is_done(&self) -> bool {
        self.steps.contains_key(&Step::Done)
    }

    pub fn plan(&self) -> Option<(Plan, Option<u64>)> {
        match &self.steps.get(&Step::Window)?.outcome {
            Outcome::Window { plan, production } => Some((*plan, *production)),
            _ => None,
        }
    }

    pub fn version(&self) -> Option<u64> {
        match &self.steps.get(&Step::Train)?.outcome {
            Outcome::Train { version, .. } => Some(*version),
            _ => None,
        }
    }

    pub fn report(&self) -> Option<&EvalReport> {
        match &self.steps.get(&Step::Evaluate)?.outcome {
            Outcome::Evaluate { report } => Some(report),
            _ => None,
        }
    }

    pub fn verdict(&self) -> Option<&Verdict> {
        match &self.steps.get(&Step::Gate)?.outcome {
            Outcome::Gate { verdict } => Some(verdict),
            _ => None,
        }
    }

    /// How it ended: a decision, `failed`, or `running` while unfinished.
    pub fn status(&self) -> String {
        match self.steps.get(&Step::Done).map(|r| &r.outcome) {
            Some(Outcome::Done { decision: Some(d), .. }) => d.to_string(),
            Some(Outcome::Done { error: Some(_), .. }) => "failed".into(),
            Some(_) => "done".into(),
            None => "unfinished".into(),
        }
    }

    pub fn started_at_ms(&self) -> Option<i64> {
        self.steps.values().map(|r| r.started_at_ms).min()
    }

    pub fn finished_at_ms(&self) -> Option<i64> {
        self.steps.get(&Step::Done).map(|r| r.finished_at_ms)
    }
}

/// Every cycle of model `name`, oldest first.
pub async fn cycles(registry: &Registry, name: &str) -> Result<Vec<Cycle>> {
    let mut cycles: BTreeMap<u64, Cycle> = BTreeMap::new();
    for key in registry.record_keys(name, KIND).await? {
        let Some(id) = key.split('/').next().and_then(|id| id.parse::<u64>().ok()) else { continue };
        if let Some(record) = registry.record::<StepRecord>(name, KIND, &key).await? {
            let cycle = cycles.entry(id).or_insert_with(|| Cycle { id, ..Cycle::default() });
            cycle.steps.insert(record.step, record);
        }
    }
    Ok(cycles.into_values().collect())
}

/// Records a completed step; `false` when a record of that step already exists (the cycle is
/// being run by someone else: the caller must stop).
pub(super) async fn put(registry: &Registry, name: &str, record: &StepRecord) -> Result<bool> {
    Ok(registry.put_record(name, KIND, &record.step.key(record.cycle), record).await?)
}

/// The newest cycle of model `name`, if any (reads only its records).
pub async fn newest(registry: &Registry, name: &str) -> Result<Option<Cycle>> {
    let keys = registry.record_keys(name, KIND).await?;
    let Some(id) = keys.iter().filter_map(|k| k.split('/').next()?.parse::<u64>().ok()).max() else {
        return Ok(None);
    };
    let mut cycle = Cycle { id, ..Cycle::default() };
    let prefix = format!("{id:06}/");
    for key in keys.iter().filter(|k| k.starts_with(&prefix)) {
        if let Some(record) = registry.record::<StepRecord>(name, KIND, key).await? {
            cycle.steps.insert(record.step, record);
        }
    }
    Ok(Some(cycle))
}
