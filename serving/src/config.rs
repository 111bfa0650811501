//! The `[serving]` config section.

use std::net::SocketAddr;

use adrank_featurestore::ConfigProblem;
use serde::{Deserialize, Serialize};

/// The ranking API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServingConfig {
    /// The address the HTTP API listens on, `ip:port`. Loopback by default; `0.0.0.0:8080`
    /// serves other machines.
    pub listen: SocketAddr,
}

impl Default for ServingConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 8080)) }
    }
}

impl ServingConfig {
    /// Every problem in this section; empty when it is usable.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        vec![]
    }
}
