//! The `[stack]` config section: how `adrank up` runs the local stack.

use std::path::PathBuf;

use adrank_contracts::ConfigProblem;
use serde::{Deserialize, Serialize};

/// How `adrank up` runs the local stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct StackConfig {
    /// Where `up` keeps pid files, logs and the local broker's data. Relative paths start at the
    /// directory adrank runs in.
    pub(crate) state_dir: PathBuf,
    /// The tansu executable. Empty: the copy the setup script builds in the cache folder
    /// (`~/.cache/adrank/tansu-0.6.0/bin/tansu`), then `tansu` on `PATH`.
    pub(crate) tansu_binary: String,
    /// Storage of the local broker: `sqlite` keeps topics, messages and committed offsets across
    /// restarts (about 50k messages/s here); `memory` is about 9x faster and keeps nothing.
    pub(crate) kafka_storage: KafkaStorage,
    /// How long `up` waits for a process it started to answer, in seconds.
    pub(crate) start_timeout_secs: u64,
}

/// Storage engine of the local broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KafkaStorage {
    /// `sqlite://<state_dir>/tansu.db`.
    Sqlite,
    /// `memory://`.
    Memory,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(".adrank/state"),
            tansu_binary: String::new(),
            kafka_storage: KafkaStorage::Sqlite,
            start_timeout_secs: 30,
        }
    }
}

impl StackConfig {
    /// Every problem in this section; empty when it is usable.
    pub(crate) fn problems(&self) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        if self.state_dir.as_os_str().is_empty() {
            problems.push(ConfigProblem::new("state_dir", "is empty; expected a folder"));
        }
        if self.start_timeout_secs == 0 {
            problems.push(ConfigProblem::new("start_timeout_secs", "is 0; expected at least 1"));
        }
        problems
    }

    /// The configured tansu path, when one is set.
    pub(crate) fn tansu_binary(&self) -> Option<PathBuf> {
        (!self.tansu_binary.is_empty()).then(|| PathBuf::from(&self.tansu_binary))
    }
}
