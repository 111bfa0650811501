//! `ADRANK_SECTION__KEY=value` environment overrides.
//!
//! A double underscore separates the levels because keys contain single underscores:
//! `ADRANK_KAFKA__TOPICS__CLICKS__PARTITIONS=16`. A value is read as a TOML value when it is one
//! (`16`, `true`, `["a"]`) and as a string otherwise, so `ADRANK_REDIS__URL=redis://x:6379`
//! needs no quotes.

/// Variables with the `ADRANK_` prefix that are not overrides.
/// (The last three are test hooks: docs/trainer.md.)
const NOT_OVERRIDES: [&str; 6] = [
    "ADRANK_CONFIG",
    "ADRANK_LOG",
    "ADRANK_CACHE_DIR",
    "ADRANK_RETRAIN_STALL",
    "ADRANK_TRAIN_DIE_RANK",
    "ADRANK_TRAIN_FAIL_RANK",
];

/// One override taken from the environment.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Override {
    /// The variable's name, for error reports.
    pub(super) var: String,
    /// The dotted key it sets.
    pub(super) key: Vec<String>,
    /// The value, typed when it reads as TOML.
    pub(super) value: toml::Value,
    /// The value as written, used when the typed reading does not fit the key.
    pub(super) raw: String,
}

/// Splits the environment into overrides and variables that look like overrides but are not
/// (a single underscore, an empty segment), which are reported rather than ignored.
pub(super) fn overrides(vars: impl IntoIterator<Item = (String, String)>) -> (Vec<Override>, Vec<String>) {
    let mut overrides = Vec::new();
    let mut malformed = Vec::new();
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("ADRANK_") else { continue };
        if NOT_OVERRIDES.contains(&var.as_str()) {
            continue;
        }
        let key: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if key.len() < 2 || key.iter().any(String::is_empty) {
            malformed.push(var);
            continue;
        }
        overrides.push(Override { var, key, value: typed(&raw), raw });
    }
    overrides.sort_by(|a, b| a.var.cmp(&b.var));
    malformed.sort();
    (overrides, malformed)
}

fn typed(raw: &str) -> toml::Value {
    let parsed = format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v"));
    match parsed {
        // An inline table would set a whole section from one variable; keep it a plain string.
        Some(toml::Value::Table(_)) | None => toml::Value::String(raw.to_string()),
        Some(value) => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn overrides_are_typed_and_nested() {
        let (overrides, malformed) = overrides(vars(&[
            ("ADRANK_KAFKA__TOPICS__CLICKS__PARTITIONS", "16"),
            ("ADRANK_REDIS__URL", "redis://10.0.0.1:6379/1"),
            ("ADRANK_CONFIG", "x.toml"),
            ("PATH", "/bin"),
        ]));
        assert!(malformed.is_empty());
        assert_eq!(overrides.len(), 2);
        assert_eq!(overrides[0].key, ["kafka", "topics", "clicks", "partitions"]);
        assert_eq!(overrides[0].value, toml::Value::Integer(16));
        assert_eq!(overrides[1].value, toml::Value::String("redis://10.0.0.1:6379/1".into()));
    }

    #[test]
    fn single_underscore_is_malformed() {
        let (overrides, malformed) = overrides(vars(&[("ADRANK_REDIS_URL", "x"), ("ADRANK_KAFKA__", "y")]));
        assert!(overrides.is_empty());
        assert_eq!(malformed, ["ADRANK_KAFKA__", "ADRANK_REDIS_URL"]);
    }
}
