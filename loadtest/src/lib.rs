//! The load-test harness: the synthetic ads world (ground truth), and later the open-loop load
//! generator, closed-loop runs and reports.
//!
//! # Layout
//!
//! - [`world`]: users, advertisers and ads with known true click probabilities; requests in
//!   the ranking API's shape; impression and click events in the Kafka contract; oracle
//!   metrics (the quality the truth itself achieves).
//! - [`generator`]: the open-loop load generator (wrk2's model: a fixed schedule, latency from
//!   the intended send time, HDR histograms).
//! - [`history`]: simulated history written straight into a training log (no Kafka).
//! - [`oracle`]: quality measures of the truth on a set of impressions.

pub mod generator;
pub mod history;
pub mod oracle;
pub mod ranking;
pub mod report;
pub mod world;
