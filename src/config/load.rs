//! Reading a config file, applying environment overrides and collecting every problem.
//!
//! serde stops at the first error, so the loader deserialises in a loop: each error names its
//! key (`serde_path_to_error`); the problem is recorded and the bad value replaced by its
//! default (an unknown key is dropped) so the next attempt can find the next problem. When the
//! value tree finally deserialises, the sections' own checks run.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde_path_to_error::Segment;
use toml::de::DeTable;

use super::{
    AdrankConfig,
    env::{self, Override},
    report::{ConfigReport, Origin, Problem},
};

/// The file read when no `--config` is given, relative to the working directory.
pub(crate) const DEFAULT_PATH: &str = "config/adrank.toml";

/// A config that passed every check, and where it came from.
#[derive(Debug, Clone)]
pub(crate) struct Loaded {
    pub(crate) config: AdrankConfig,
    /// The file, or `None` when only defaults and the environment were used.
    pub(crate) file: Option<PathBuf>,
    /// The environment variables that overrode keys.
    pub(crate) overrides: Vec<String>,
}

/// The feature spec read when no `--spec` is given and none lies beside the config file,
/// relative to the working directory.
pub(crate) const DEFAULT_SPEC: &str = "config/features.toml";

impl Loaded {
    /// The feature spec to read: `given`, else `features.toml` beside the config file when there
    /// is one, else [`DEFAULT_SPEC`]; so that commands work from any directory.
    pub(crate) fn spec_path(&self, given: Option<&Path>) -> PathBuf {
        if let Some(path) = given {
            return path.to_path_buf();
        }
        let beside = self.file.as_deref().and_then(Path::parent).map(|dir| dir.join("features.toml"));
        beside.filter(|path| path.is_file()).unwrap_or_else(|| PathBuf::from(DEFAULT_SPEC))
    }
}

/// Loads `path` (or [`DEFAULT_PATH`] when it exists), applies the overrides in `vars` and checks
/// the result.
pub(crate) fn load(
    path: Option<&Path>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Loaded, ConfigReport> {
    let file = path.map(Path::to_path_buf).or_else(|| {
        let default = PathBuf::from(DEFAULT_PATH);
        default.is_file().then_some(default)
    });
    let mut loader = Loader { file: file.clone(), lines: HashMap::new(), env: Vec::new(), problems: Vec::new() };
    let mut tree = match &file {
        Some(file) => loader.read(file)?,
        None => toml::Table::new(),
    };
    loader.apply_env(&mut tree, vars);
    let config = loader.deserialize(tree);
    for problem in config.problems() {
        loader.problem(problem.key, problem.problem);
    }
    if loader.problems.is_empty() {
        Ok(Loaded { config, file, overrides: loader.env.into_iter().map(|o| o.var).collect() })
    } else {
        Err(ConfigReport { problems: loader.problems })
    }
}

struct Loader {
    file: Option<PathBuf>,
    /// The line of every key written in the file.
    lines: HashMap<String, usize>,
    env: Vec<Override>,
    problems: Vec<Problem>,
}

impl Loader {
    /// Reads and parses the file; a syntax error ends loading (every syntax error is reported).
    fn read(&mut self, file: &Path) -> Result<toml::Table, ConfigReport> {
        let origin = |line| Origin::File { path: file.to_path_buf(), line };
        let fail = |line, problem: String| ConfigReport {
            problems: vec![Problem { origin: origin(line), key: String::new(), problem }],
        };
        let text = std::fs::read_to_string(file).map_err(|e| fail(None, format!("cannot be read: {e}")))?;
        let (table, errors) = DeTable::parse_recoverable(&text);
        if !errors.is_empty() {
            let problems = errors
                .iter()
                .map(|e| Problem {
                    origin: origin(e.span().map(|s| line_of(&text, s.start))),
                    key: String::new(),
                    problem: format!("is not valid TOML: {}", e.message().trim()),
                })
                .collect();
            return Err(ConfigReport { problems });
        }
        index_lines(&text, table.get_ref(), "", &mut self.lines);
        text.parse::<toml::Table>()
            .map_err(|e| fail(e.span().map(|s| line_of(&text, s.start)), e.message().to_string()))
    }

    fn apply_env(&mut self, tree: &mut toml::Table, vars: impl IntoIterator<Item = (String, String)>) {
        let (overrides, malformed) = env::overrides(vars);
        for var in malformed {
            self.problems.push(Problem {
                origin: Origin::Env(var),
                key: String::new(),
                problem: "is not a config override; write ADRANK_<SECTION>__<KEY> with a double underscore between \
                          levels, for example ADRANK_REDIS__URL"
                    .into(),
            });
        }
        for o in overrides {
            match set(tree, &o.key, o.value.clone()) {
                Ok(()) => self.env.push(o),
                Err(parent) => self.problems.push(Problem {
                    origin: Origin::Env(o.var.clone()),
                    key: o.key.join("."),
                    problem: format!("cannot be set: `{parent}` is a value, not a section"),
                }),
            }
        }
    }

    /// Deserialises `tree`, recording and removing each key serde rejects until the rest passes.
    fn deserialize(&mut self, mut tree: toml::Table) -> AdrankConfig {
        let toml::Value::Table(defaults) =
            toml::Value::try_from(AdrankConfig::default()).expect("the default config serialises; this is a bug")
        else {
            unreachable!("a struct serialises to a table; this is a bug")
        };
        let mut retried_as_string = Vec::new();
        for _ in 0..256 {
            let error = match serde_path_to_error::deserialize::<_, AdrankConfig>(toml::Value::Table(tree.clone())) {
                Ok(config) => return config,
                Err(error) => error,
            };
            let segments: Vec<String> = error
                .path()
                .iter()
                .filter_map(|s| match s {
                    Segment::Map { key } => Some(key.clone()),
                    Segment::Enum { variant } => Some(variant.clone()),
                    Segment::Seq { .. } | Segment::Unknown => None,
                })
                .collect();
            let key = segments.join(".");
            // `ADRANK_CONSUMER_GROUP=123` reads as a number; a string key wants it as written.
            if let Some(o) = self.env.iter().find(|o| o.key.join(".") == key && !retried_as_string.contains(&key))
                && !o.value.is_str()
            {
                retried_as_string.push(key.clone());
                let _ = set(&mut tree, &o.key, toml::Value::String(o.raw.clone()));
                continue;
            }
            self.problem(key, explain(error.inner().message()));
            // Put the default back where the bad value was (or drop an unknown key), so the next
            // attempt gets past it and later checks do not trip over the same mistake.
            let fixed = match lookup(&defaults, &segments) {
                Some(default) => set(&mut tree, &segments, default.clone()).is_ok(),
                None => remove(&mut tree, &segments),
            };
            if segments.is_empty() || !fixed {
                break;
            }
        }
        AdrankConfig::default()
    }

    fn problem(&mut self, key: String, problem: String) {
        let origin = self.origin_of(&key);
        self.problems.push(Problem { origin, key, problem });
    }

    /// Where `key` got its value: the environment variable that set it (or a section above it),
    /// else the file line of the key (or of its closest written ancestor), else a default.
    fn origin_of(&self, key: &str) -> Origin {
        let covers = |set: &str| key == set || key.starts_with(&format!("{set}."));
        if let Some(o) = self.env.iter().rev().find(|o| covers(&o.key.join("."))) {
            return Origin::Env(o.var.clone());
        }
        let Some(path) = &self.file else { return Origin::Default };
        let mut probe = key;
        loop {
            if let Some(line) = self.lines.get(probe) {
                let line = Some(*line);
                // A cross-field rule can fault a default below a written section: that is still
                // the file's business only when the key itself is written.
                return if probe == key || key.is_empty() {
                    Origin::File { path: path.clone(), line }
                } else {
                    Origin::Default
                };
            }
            match probe.rsplit_once('.') {
                Some((parent, _)) => probe = parent,
                None => return Origin::Default,
            }
        }
    }
}

/// serde's messages name the Rust type (`u64`, `NonZeroU32`); say it in config words.
fn explain(message: &str) -> String {
    let message = message.trim().replace("a nonzero u32", "a whole number of at least 1");
    let message =
        message.replace("expected u64", "expected a whole number").replace("expected u16", "expected a whole number");
    if message.contains("invalid socket address syntax") {
        return format!("{message}; expected ip:port, for example 127.0.0.1:8080");
    }
    if message.starts_with("unknown field") {
        return message.replacen("unknown field", "is not a known key (unknown field", 1) + ")";
    }
    message
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn index_lines(text: &str, table: &DeTable<'_>, prefix: &str, lines: &mut HashMap<String, usize>) {
    for (key, value) in table {
        let path = if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
        lines.entry(path.clone()).or_insert_with(|| line_of(text, key.span().start));
        if let toml::de::DeValue::Table(inner) = value.get_ref() {
            index_lines(text, inner, &path, lines);
        }
    }
}

/// Sets `key` in `tree`, creating sections on the way. Fails with the first segment that holds
/// a value where a section is needed.
fn set(tree: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = key.split_last() else { return Err(String::new()) };
    let mut table = tree;
    for (i, segment) in parents.iter().enumerate() {
        let entry = table.entry(segment.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(key[..=i].join(".")),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn lookup<'t>(tree: &'t toml::Table, key: &[String]) -> Option<&'t toml::Value> {
    let (first, rest) = key.split_first()?;
    let value = tree.get(first)?;
    match (rest.is_empty(), value) {
        (true, value) => Some(value),
        (false, toml::Value::Table(inner)) => lookup(inner, rest),
        (false, _) => None,
    }
}

fn remove(tree: &mut toml::Table, key: &[String]) -> bool {
    let Some((last, parents)) = key.split_last() else { return false };
    let mut table = tree;
    for segment in parents {
        match table.get_mut(segment) {
            Some(toml::Value::Table(inner)) => table = inner,
            _ => return false,
        }
    }
    table.remove(last).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Loaded, ConfigReport> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("adrank.toml");
        std::fs::write(&path, text).unwrap();
        load(Some(&path), vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn summary(report: &ConfigReport) -> Vec<(String, String)> {
        report
            .problems
            .iter()
            .map(|p| {
                let origin = match &p.origin {
                    Origin::File { line, .. } => format!("line {}", line.unwrap_or(0)),
                    other => other.to_string(),
                };
                (origin, p.key.clone())
            })
            .collect()
    }

    #[test]
    fn the_shipped_config_loads_and_equals_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PATH);
        let loaded = load(Some(&path), []).unwrap();
        assert_eq!(loaded.config, AdrankConfig::default(), "config/adrank.toml and the defaults disagree");
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "[kafka]\nbrokerz = \"x\"\nrequest_timeout_ms = \"soon\"\n\n[redis]\nurl = \"http://nope\"\n\n[serving]\nlisten = \"8080\"\n";
        let report = load_text(text, &[]).unwrap_err();
        assert_eq!(
            summary(&report),
            [
                ("line 2".into(), "kafka.brokerz".into()),
                ("line 3".into(), "kafka.request_timeout_ms".into()),
                ("line 9".into(), "serving.listen".into()),
                ("line 6".into(), "redis.url".into()),
            ]
        );
        let text = report.to_string();
        assert!(text.contains("expected one of `brokers`"), "{text}");
        assert!(text.contains("http://nope"), "{text}");
    }

    #[test]
    fn env_overrides_win_and_their_problems_name_the_variable() {
        let loaded =
            load_text("[redis]\nurl = \"redis://a:1/0\"\n", &[("ADRANK_REDIS__URL", "redis://b:2/0")]).unwrap();
        assert_eq!(loaded.config.redis.url, "redis://b:2/0");
        assert_eq!(loaded.overrides, ["ADRANK_REDIS__URL"]);

        let report = load_text("", &[("ADRANK_SERVING__LISTEN", "nowhere"), ("ADRANK_REDIS_URL", "x")]).unwrap_err();
        assert_eq!(
            summary(&report),
            [
                ("environment variable ADRANK_REDIS_URL".into(), "".into()),
                ("environment variable ADRANK_SERVING__LISTEN".into(), "serving.listen".into()),
            ]
        );
    }

    #[test]
    fn numeric_looking_strings_from_env_stay_strings() {
        let loaded = load_text("", &[("ADRANK_KAFKA__CONSUMER_GROUP", "123")]).unwrap();
        assert_eq!(loaded.config.kafka.consumer_group, "123");
    }

    #[test]
    fn syntax_errors_stop_with_a_line() {
        let report = load_text("[kafka\nbrokers = 1\n", &[]).unwrap_err();
        assert_eq!(report.problems.len(), 1, "{report}");
        assert_eq!(report.problems[0].origin, Origin::File { path: report.problems[0].origin_path(), line: Some(1) });
    }

    #[test]
    fn a_missing_file_is_one_problem() {
        let report = load(Some(Path::new("/nonexistent/adrank.toml")), []).unwrap_err();
        assert_eq!(report.problems.len(), 1);
        assert!(report.to_string().contains("/nonexistent/adrank.toml"));
    }

    impl Problem {
        fn origin_path(&self) -> PathBuf {
            match &self.origin {
                Origin::File { path, .. } => path.clone(),
                _ => PathBuf::new(),
            }
        }
    }
}
