//! The retraining loop: cycles that pick the final hours, train a candidate warm-started from
//! production, evaluate it against production on newer hours it never saw, judge it by the
//! gates and record the decision (with the `candidate` alias when blessed).
//!
//! - [`config`]: the `[retrain]` section and its `[retrain.gates]`.
//! - [`windows`]: which hours are final (labels complete), and a cycle's train and evaluation
//!   windows.
//! - [`gates`]: value and change thresholds, minimum evidence; the verdict.
//! - [`records`]: one create-once registry record per completed step; history.
//! - [`cycle`]: one cycle, resumable after its last recorded step.
//! - [`lease`]: one cycle at a time across processes and machines.
//! - [`runner`]: once, or as a loop with triggers and retries.

pub mod config;
pub mod cycle;
pub mod gates;
pub mod lease;
pub mod records;
pub mod runner;
pub mod windows;

pub use config::{GatesConfig, RetrainConfig};
pub use cycle::{CANDIDATE, CYCLE_TAG, CycleOutcome, Launch};
pub use gates::{Decision, Verdict};
pub use records::{Cycle, Outcome, Step, StepRecord, cycles};
pub use runner::{LoopSummary, Retrainer};
