//! The load-test harness: the synthetic ads world (ground truth), the open-loop load
//! generator, closed-loop runs and reports.
//!
//! The data-contracts issue adds the world and the load-test issue the generator; this crate
//! is their home. Nothing here yet.
