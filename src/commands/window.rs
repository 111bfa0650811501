//! Time-window flags shared by `train` and `eval`.

use adrank_contracts::training_log::{parse_utc, utc_hour};
use adrank_trainer::data::{Window, log_span};
use anyhow::{Context as _, bail};

/// A window of the training log.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WindowArgs {
    /// The training log (default: `ingest.training_log`).
    #[arg(long, value_name = "LOCATION")]
    pub(crate) training_log: Option<String>,
    /// Start of the window, UTC: YYYY-MM-DD, YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// End of the window (exclusive), same forms.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

/// Which part of the log a command reads when its flags leave the window open: training takes
/// everything but the newest day, evaluation the newest day, so the defaults of the two never
/// overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DefaultPart {
    AllButLastDay,
    LastDay,
}

const DAY_MS: i64 = 24 * 3_600_000;

impl WindowArgs {
    pub(crate) fn location(&self, default: &str) -> String {
        self.training_log.clone().unwrap_or_else(|| default.to_string())
    }

    /// The window the flags name, filling open ends from the log's span.
    pub(crate) async fn resolve(&self, location: &str, part: DefaultPart) -> anyhow::Result<Window> {
        let parse = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<i64>> {
            text.as_deref()
                .map(|t| {
                    parse_utc(t).with_context(|| {
                        format!("--{flag} {t:?} is not a UTC time; write YYYY-MM-DD, YYYY-MM-DDTHH or YYYY-MM-DDTHH:MM")
                    })
                })
                .transpose()
        };
        let (since, until) = (parse("since", &self.since)?, parse("until", &self.until)?);
        let (since, until) = match (since, until) {
            (Some(s), Some(u)) => (s, u),
            _ => {
                let span = log_span(location).await?.with_context(|| {
                    format!(
                        "the training log at {location} is empty; run `adrank ingest` or `adrank sim history` first"
                    )
                })?;
                let split = (span.until_ms - DAY_MS).max(span.since_ms);
                let (default_since, default_until) = match part {
                    DefaultPart::AllButLastDay => (span.since_ms, split),
                    DefaultPart::LastDay => (split, span.until_ms),
                };
                (since.unwrap_or(default_since), until.unwrap_or(default_until))
            }
        };
        if until <= since {
            bail!(
                "the window {} .. {} (UTC) is empty; --until must be after --since",
                utc_hour(since),
                utc_hour(until)
            );
        }
        Ok(Window { since_ms: since, until_ms: until })
    }
}
