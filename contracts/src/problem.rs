//! One problem found in a config section, so that every crate's checks report alike.

/// One problem found while checking a config section: the key (relative to the section) and
/// what is wrong with it, including what would be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key below the section, for example `topics.clicks.partitions`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub problem: String,
}

impl ConfigProblem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), problem: problem.into() }
    }
}
