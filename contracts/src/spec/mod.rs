//! The feature spec: every feature a model reads, where its raw value comes from, and how it
//! becomes a model input.
//!
//! The spec lives in `config/features.toml`. It is checked as a whole (every problem reported
//! at once) and has a stable version hash ([`FeatureSpec::version`]) that each model manifest
//! records: serving refuses a model whose spec it cannot serve.
//!
//! Raw values are looked up by name in one flat record ([`crate::events::RawFeatures`]); a
//! feature's `source` says where serving fetches that name from (the request, its context, the
//! user, ad or advertiser hash in Redis), and the impression log keeps the record exactly, so
//! the trainer reads what serving saw.

mod stats;
mod transform;

use std::{collections::BTreeSet, fmt, path::Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use stats::{Standardisation, TransformStats};
pub use transform::{Encoded, RowDefaults, Transformer, short_version};

use crate::events::ORACLE_FIELD;

/// The most buckets one hashed feature may have (it sizes an embedding table).
pub const MAX_BUCKETS: u32 = 1 << 26;

/// Every feature, in input order: the order of the model's id and dense columns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    #[serde(rename = "feature")]
    pub features: Vec<Feature>,
}

/// One feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Unique name.
    pub name: String,
    /// Where serving gets the raw value.
    pub source: Source,
    /// What kind of value it is.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The raw field read (categorical and numeric features). Default: the feature's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// The two categorical features crossed (cross features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cross: Option<[String; 2]>,
    /// The raw click and impression counters (rate features only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clicks: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impressions: Option<String>,
    /// The steps from raw value to model input, in order.
    pub transform: Vec<Step>,
    /// The raw value used when the real one is missing, non-finite or of the wrong type. Without
    /// one, a missing categorical gets id 0 (its own bucket) and a missing number 0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<DefaultValue>,
}

/// Where serving gets a raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The ranking request, per candidate (bid, candidate-side fields).
    Request,
    /// The request's context (surface, hour, device).
    Context,
    /// The user's hash in the online store.
    User,
    /// The ad's hash in the online store.
    Ad,
    /// The advertiser's hash in the online store.
    Advertiser,
    /// The user's history with the candidate's ad category or advertiser: the online store's
    /// counters of that pair (`user_category_clicks_7d`, `user_advertiser_impressions_1d`, …).
    History,
    /// A cross of two other categorical features.
    Cross,
    /// The slot the impression was shown in (0 = the top), known only once it was served. The
    /// trainer reads it from the training log's `position` column, so the model learns position
    /// bias apart from relevance; serving scores every candidate as if shown in the top slot
    /// (the default), so the bias never reorders candidates.
    Position,
}

/// The pairs the online store keeps history counters of: a user with an ad category, a user
/// with an advertiser. A history feature's counters are named `{pair}_clicks_{window}`, …
pub const HISTORY_PREFIXES: [&str; 2] = ["user_category", "user_advertiser"];

/// The raw field a `position` feature reads: the trainer fills it from the logged slot.
pub const POSITION_FIELD: &str = "position";

/// What kind of value a feature holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A category, hashed into buckets.
    Categorical,
    /// A number.
    Numeric,
    /// A rate derived from click and impression counters.
    Rate,
}

/// A default raw value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DefaultValue {
    Number(f64),
    Category(String),
}

/// One transform step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// Category -> id in 1..=buckets (0 is the missing bucket), by a stable 64-bit hash.
    Hash { buckets: u32 },
    /// Number -> id: 1 + the count of boundaries at or below it (0 when missing).
    Bucketise { boundaries: Vec<f64> },
    /// Clamp into [min, max].
    Clip { min: f64, max: f64 },
    /// sign(x) * ln(1 + |x|): log scaling that is defined for every finite number.
    Log1p,
    /// (x - mean) / std with constants learned from training data; they belong to the model
    /// version (its transform statistics), not to the spec.
    Standardise,
    /// (clicks + prior_ctr * prior_weight) / (impressions + prior_weight): a CTR that starts at
    /// the prior and moves to the observed rate as impressions accumulate.
    SmoothedCtr { prior_ctr: f64, prior_weight: f64 },
}

/// A spec that cannot be used: every problem found, by feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// Where the spec came from (a file path, or a description).
    pub origin: String,
    /// `(feature name or "", problem)`.
    pub problems: Vec<(String, String)>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the feature spec {} has {} problem(s):", self.origin, self.problems.len())?;
        for (feature, problem) in &self.problems {
            if feature.is_empty() {
                write!(f, "\n  - {problem}")?;
            } else {
                write!(f, "\n  - feature `{feature}`: {problem}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for SpecError {}

/// What a feature contributes to a model row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// One integer id column; ids are in `0..cardinality`.
    Id { cardinality: u64 },
    /// One float column.
    Dense,
}

impl Feature {
    /// The raw field a categorical or numeric feature reads.
    pub fn input_name(&self) -> &str {
        self.input.as_deref().unwrap_or(&self.name)
    }

    /// The column this feature fills.
    pub fn output(&self) -> Output {
        match self.transform.last() {
            Some(Step::Hash { buckets }) => Output::Id { cardinality: u64::from(*buckets) + 1 },
            Some(Step::Bucketise { boundaries }) => Output::Id { cardinality: boundaries.len() as u64 + 2 },
            _ => Output::Dense,
        }
    }

    fn problems(&self, spec: &FeatureSpec) -> Vec<String> {
        let mut problems = Vec::new();
        let mut problem = |p: String| problems.push(p);
        let steps = &self.transform;
        let is_number_step = |s: &Step| matches!(s, Step::Clip { .. } | Step::Log1p | Step::Standardise);
        match (self.kind, self.source) {
            (Kind::Categorical, Source::Cross) => match &self.cross {
                None => problem("is a cross but names no `cross = [a, b]`".into()),
                Some(pair) => {
                    for name in pair {
                        match spec.features.iter().find(|f| &f.name == name) {
                            None => problem(format!("crosses `{name}`, which is not a feature")),
                            Some(f) if f.kind != Kind::Categorical || f.source == Source::Cross => {
                                problem(format!("crosses `{name}`, which is not a plain categorical feature"))
                            }
                            Some(_) => {}
                        }
                    }
                    if pair[0] == pair[1] {
                        problem("crosses a feature with itself".into());
                    }
                }
            },
            (_, Source::Cross) => problem("has source cross but is not categorical".into()),
            _ if self.cross.is_some() => problem("names `cross` but its source is not cross".into()),
            _ => {}
        }
        match self.kind {
            Kind::Categorical => {
                if !matches!(steps.as_slice(), [Step::Hash { .. }]) {
                    problem("is categorical: its transform must be exactly [{ op = \"hash\", buckets = N }]".into());
                }
                if matches!(self.default, Some(DefaultValue::Number(_))) {
                    problem("is categorical: its default must be a string".into());
                }
            }
            Kind::Numeric | Kind::Rate => {
                let body = match (self.kind, steps.split_first()) {
                    (Kind::Rate, Some((Step::SmoothedCtr { .. }, rest))) => rest,
                    (Kind::Rate, _) => {
                        problem("is a rate: its transform must start with { op = \"smoothed_ctr\", … }".into());
                        &steps[..]
                    }
                    _ => &steps[..],
                };
                let middle = match body.split_last() {
                    Some((Step::Bucketise { .. }, middle)) => middle,
                    _ => body,
                };
                if let Some(bad) = middle.iter().find(|s| !is_number_step(s)) {
                    problem(format!(
                        "has step `{}` where only clip, log1p, standardise (and a final bucketise) fit",
                        bad.name()
                    ));
                }
                if matches!(self.default, Some(DefaultValue::Category(_))) {
                    problem("is numeric: its default must be a number".into());
                }
            }
        }
        match self.kind {
            Kind::Rate => {
                if self.clicks.is_none() || self.impressions.is_none() {
                    problem("is a rate: it needs `clicks` and `impressions` (the raw counters)".into());
                }
                if self.input.is_some() {
                    problem("is a rate: it reads `clicks` and `impressions`, not `input`".into());
                }
            }
            _ if self.clicks.is_some() || self.impressions.is_some() => {
                problem("names `clicks`/`impressions` but is not a rate".into());
            }
            _ => {}
        }
        if self.source == Source::Cross && self.input.is_some() {
            problem("is a cross: it reads its two features, not `input`".into());
        }
        if self.source == Source::History {
            let reads_history =
                |name: &str| HISTORY_PREFIXES.iter().any(|p| name.strip_prefix(p).is_some_and(|r| r.starts_with('_')));
            let raw = match self.kind {
                Kind::Categorical => {
                    problem("has source history: it must be numeric or a rate (history is counters)".into());
                    vec![]
                }
                Kind::Numeric => vec![self.input_name()],
                Kind::Rate => self.clicks.iter().chain(&self.impressions).map(String::as_str).collect(),
            };
            if let Some(name) = raw.into_iter().find(|name| !reads_history(name)) {
                problem(format!(
                    "has source history but reads `{name}`: history counters are named {}_…",
                    HISTORY_PREFIXES.join("_… or ")
                ));
            }
        }
        if self.source == Source::Position && (self.kind != Kind::Numeric || self.input_name() != POSITION_FIELD) {
            problem(format!("has source position: it must be numeric and read `{POSITION_FIELD}`"));
        }
        for step in steps {
            if let Some(p) = step.problem() {
                problem(p);
            }
        }
        let mut raw_names = vec![self.input_name()];
        raw_names.extend(self.clicks.as_deref());
        raw_names.extend(self.impressions.as_deref());
        if raw_names.contains(&ORACLE_FIELD) || self.name == ORACLE_FIELD {
            problem(format!("reads `{ORACLE_FIELD}`, the evaluation-only truth; no feature may"));
        }
        if let Some(DefaultValue::Number(x)) = self.default
            && !x.is_finite()
        {
            problem("has a non-finite default".into());
        }
        problems
    }
}

impl Step {
    fn name(&self) -> &'static str {
        match self {
            Self::Hash { .. } => "hash",
            Self::Bucketise { .. } => "bucketise",
            Self::Clip { .. } => "clip",
            Self::Log1p => "log1p",
            Self::Standardise => "standardise",
            Self::SmoothedCtr { .. } => "smoothed_ctr",
        }
    }

    fn problem(&self) -> Option<String> {
        match self {
            Self::Hash { buckets } if *buckets == 0 || *buckets > MAX_BUCKETS => {
                Some(format!("hash buckets is {buckets}; expected 1 to {MAX_BUCKETS}"))
            }
            Self::Bucketise { boundaries }
                if boundaries.is_empty()
                    || boundaries.iter().any(|b| !b.is_finite())
                    || boundaries.windows(2).any(|w| w[0] >= w[1]) =>
            {
                Some("bucketise boundaries must be finite and strictly increasing (at least one)".into())
            }
            Self::Clip { min, max } if !(min.is_finite() && max.is_finite() && min < max) => {
                Some(format!("clip needs finite min < max (got {min}, {max})"))
            }
            Self::SmoothedCtr { prior_ctr, prior_weight }
                if !(*prior_ctr > 0.0 && *prior_ctr < 1.0 && *prior_weight > 0.0 && prior_weight.is_finite()) =>
            {
                Some(format!(
                    "smoothed_ctr needs 0 < prior_ctr < 1 and prior_weight > 0 (got {prior_ctr}, {prior_weight})"
                ))
            }
            _ => None,
        }
    }
}

impl FeatureSpec {
    /// Reads and checks a spec file.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SpecError {
            origin: origin.clone(),
            problems: vec![(String::new(), format!("cannot be read: {e}"))],
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and checks a spec. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, SpecError> {
        let spec: Self = toml::from_str(text).map_err(|e| SpecError {
            origin: origin.into(),
            problems: vec![(String::new(), e.to_string().trim().replace('\n', " "))],
        })?;
        spec.check(origin)?;
        Ok(spec)
    }

    /// Every problem in the spec, reported together.
    pub fn check(&self, origin: &str) -> Result<(), SpecError> {
        let mut problems = Vec::new();
        if self.features.is_empty() {
            problems.push((String::new(), "has no features".to_string()));
        }
        let mut names = BTreeSet::new();
        for feature in &self.features {
            if feature.name.trim().is_empty() {
                problems.push((String::new(), "a feature has an empty name".into()));
            }
            if !names.insert(feature.name.as_str()) {
                problems.push((feature.name.clone(), "is defined twice".into()));
            }
            problems.extend(feature.problems(self).into_iter().map(|p| (feature.name.clone(), p)));
        }
        if problems.is_empty() { Ok(()) } else { Err(SpecError { origin: origin.into(), problems }) }
    }

    /// The spec's version: a SHA-256 of its canonical form. Comments, whitespace and key order
    /// in the file do not change it; any change to a feature does.
    pub fn version(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a spec serialises; this is a bug");
        let digest = Sha256::digest(&canonical);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The features that fill id columns, in column order.
    pub fn id_features(&self) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(|f| matches!(f.output(), Output::Id { .. }))
    }

    /// Each id feature's name and largest id (its cardinality less one), in column order: what a
    /// model's embedding tables must take.
    pub fn largest_ids(&self) -> Vec<(String, i64)> {
        self.id_features()
            .map(|f| match f.output() {
                Output::Id { cardinality } => (f.name.clone(), i64::try_from(cardinality - 1).unwrap_or(i64::MAX)),
                Output::Dense => unreachable!("id features fill id columns"),
            })
            .collect()
    }

    /// The features that fill dense columns, in column order.
    pub fn dense_features(&self) -> impl Iterator<Item = &Feature> {
        self.features.iter().filter(|f| f.output() == Output::Dense)
    }
}

#[cfg(test)]
mod tests;
