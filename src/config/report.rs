//! The report of everything wrong with a configuration, printed before adrank exits with 2.

use std::{fmt, path::PathBuf};

/// Where a bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A config file, with the line when it is known.
    File { path: PathBuf, line: Option<usize> },
    /// An `ADRANK_…` environment variable.
    Env(String),
    /// A built-in default (only cross-field rules can fault a default).
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File { path, line: Some(line) } => write!(f, "{}:{line}", path.display()),
            Self::File { path, line: None } => write!(f, "{}", path.display()),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::Default => f.write_str("built-in default"),
        }
    }
}

/// One problem: where, which key, what is wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) origin: Origin,
    /// The dotted key, empty for problems with the file as a whole.
    pub(crate) key: String,
    pub(crate) problem: String,
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigReport {
    pub(crate) problems: Vec<Problem>,
}

impl fmt::Display for ConfigReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(f, "error: the configuration has {n} problem{}:", if n == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            if problem.key.is_empty() {
                writeln!(f, "  - {}: {}", problem.origin, problem.problem)?;
            } else {
                writeln!(f, "  - {}: `{}` {}", problem.origin, problem.key, problem.problem)?;
            }
        }
        write!(
            f,
            "adrank reads config/adrank.toml (or --config PATH, or ADRANK_CONFIG), then \
             ADRANK_<SECTION>__<KEY> environment variables; `adrank config` prints the result."
        )
    }
}
