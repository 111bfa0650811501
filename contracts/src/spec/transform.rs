//! Raw features -> model inputs. The one implementation: serving calls it on the record it
//! assembles from the request and the online store, the trainer on the record logged with each
//! impression, so both produce the same tensors from the same record.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use super::{DefaultValue, Feature, FeatureSpec, Kind, Source, SpecError, Step, TransformStats, stats::Running};
use crate::events::{Input, Lookup, RawFeatures, RawValue};

/// A spec compiled together with a model version's statistics.
#[derive(Debug, Clone)]
pub struct Transformer {
    features: Vec<Compiled>,
    /// Every raw input the features read, sorted and distinct; each read names its place here.
    inputs: Vec<String>,
    /// Per feature: the places in `inputs` it reads, and its column among the ids or among the
    /// dense numbers (whichever it writes).
    reads: Vec<Vec<usize>>,
    columns: Vec<usize>,
    id_width: usize,
    dense_width: usize,
    spec_version: String,
}

/// One feature's model input: an id (hashed or bucketised) or a dense number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encoded {
    Id(i64),
    Dense(f32),
}

/// How many features of one row fell back to their default (missing, non-finite or
/// unparseable raw values). Serving counts these; a row full of defaults is a sign of trouble.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RowDefaults(pub u32);

#[derive(Debug, Clone)]
enum Compiled {
    Hash { category: Category, seed: u64, buckets: u64 },
    Cross { a: Category, b: Category, seed: u64, buckets: u64 },
    Number { input: NumberInput, steps: Vec<NumberStep>, bucketise: Option<Vec<f64>> },
}

/// A raw input's name and its place in [`Transformer::inputs`] (0 until placed).
#[derive(Debug, Clone)]
struct Name {
    name: String,
    index: usize,
}

impl Name {
    fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), index: 0 }
    }

    fn input(&self) -> Input<'_> {
        Input { name: &self.name, index: self.index }
    }
}

#[derive(Debug, Clone)]
struct Category {
    input: Name,
    default: Option<String>,
}

#[derive(Debug, Clone)]
enum NumberInput {
    Field { input: Name, default: f64 },
    Rate { clicks: Name, impressions: Name, prior_ctr: f64, prior_weight: f64 },
}

impl Compiled {
    /// Every input name this feature reads.
    fn names_mut(&mut self) -> Vec<&mut Name> {
        match self {
            Self::Hash { category, .. } => vec![&mut category.input],
            Self::Cross { a, b, .. } => vec![&mut a.input, &mut b.input],
            Self::Number { input: NumberInput::Field { input, .. }, .. } => vec![input],
            Self::Number { input: NumberInput::Rate { clicks, impressions, .. }, .. } => vec![clicks, impressions],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum NumberStep {
    Clip(f64, f64),
    Log1p,
    Standardise { mean: f64, std: f64 },
}

/// Separates the two values of a cross before hashing, so ("ab", "c") and ("a", "bc") differ.
const CROSS_SEPARATOR: u8 = 0x1f;

impl Transformer {
    /// Compiles `spec` with `stats`. Fails when a `standardise` step has no statistics, or the
    /// statistics are unusable.
    pub fn new(spec: &FeatureSpec, stats: &TransformStats) -> Result<Self, SpecError> {
        let mut problems = Vec::new();
        let features = spec
            .features
            .iter()
            .map(|f| compile(spec, f, Some(stats)).map_err(|p| problems.push((f.name.clone(), p))))
            .collect::<Vec<_>>();
        for name in stats.standardise.keys() {
            if !spec.features.iter().any(|f| &f.name == name && f.transform.contains(&Step::Standardise)) {
                problems.push((name.clone(), "has standardisation statistics but no standardise step".into()));
            }
        }
        if !problems.is_empty() {
            return Err(SpecError { origin: format!("version {}", short_version(&spec.version())), problems });
        }
        let mut features: Vec<Compiled> =
            features.into_iter().map(|f| f.expect("errors were returned above")).collect();
        let mut inputs: Vec<String> = features.iter_mut().flat_map(|f| f.names_mut()).map(|n| n.name.clone()).collect();
        inputs.sort();
        inputs.dedup();
        for name in features.iter_mut().flat_map(|f| f.names_mut()) {
            name.index = inputs.binary_search(&name.name).expect("collected just above");
        }
        let reads = features.iter_mut().map(|f| f.names_mut().iter().map(|n| n.index).collect()).collect();
        let (mut id, mut dense) = (0, 0);
        let columns = features
            .iter()
            .map(|f| {
                let count = if f.is_id() { &mut id } else { &mut dense };
                *count += 1;
                *count - 1
            })
            .collect();
        Ok(Self {
            reads,
            columns,
            id_width: spec.id_features().count(),
            dense_width: spec.dense_features().count(),
            features,
            inputs,
            spec_version: spec.version(),
        })
    }

    /// Id columns per row.
    pub fn id_width(&self) -> usize {
        self.id_width
    }

    /// Dense columns per row.
    pub fn dense_width(&self) -> usize {
        self.dense_width
    }

    /// Every raw input the features read, sorted and distinct (see [`Input`]).
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    /// The version of the spec this transformer was compiled from.
    pub fn spec_version(&self) -> &str {
        &self.spec_version
    }

    /// Appends one row: `id_width` ids to `ids`, `dense_width` floats to `dense`.
    pub fn transform<L: Lookup + ?Sized>(&self, raw: &L, ids: &mut Vec<i64>, dense: &mut Vec<f32>) -> RowDefaults {
        let mut defaults = 0;
        for feature in &self.features {
            match feature.encode(raw, &mut defaults) {
                Encoded::Id(x) => ids.push(x),
                Encoded::Dense(x) => dense.push(x),
            }
        }
        RowDefaults(defaults)
    }

    /// Features per row: ids and dense numbers together.
    pub fn features(&self) -> usize {
        self.features.len()
    }

    /// The places in [`Self::inputs`] that feature `k` (in spec order) reads: its value depends
    /// on nothing else.
    pub fn reads(&self, k: usize) -> &[usize] {
        &self.reads[k]
    }

    /// Feature `k`'s column among a row's ids, or among its dense numbers: whichever kind
    /// [`Self::encode`] gives.
    pub fn column(&self, k: usize) -> usize {
        self.columns[k]
    }

    /// Feature `k`'s model input from `raw`: what [`Self::transform`] writes at its column.
    pub fn encode<L: Lookup + ?Sized>(&self, k: usize, raw: &L) -> Encoded {
        self.features[k].encode(raw, &mut 0)
    }
}

impl Compiled {
    /// Whether the feature's input is an id column (else a dense one).
    fn is_id(&self) -> bool {
        !matches!(self, Self::Number { bucketise: None, .. })
    }

    /// The model input from `raw`; `defaults` counts the raw values that fell back to theirs.
    fn encode<L: Lookup + ?Sized>(&self, raw: &L, defaults: &mut u32) -> Encoded {
        match self {
            Self::Hash { category, seed, buckets } => {
                let value = category.value(raw, defaults);
                Encoded::Id(value.map_or(0, |v| bucket(v.as_bytes(), *seed, *buckets)))
            }
            Self::Cross { a, b, seed, buckets } => {
                let (a, b) = (a.value(raw, defaults), b.value(raw, defaults));
                Encoded::Id(match (a, b) {
                    (Some(a), Some(b)) => {
                        let mut key = Vec::with_capacity(a.len() + b.len() + 1);
                        key.extend_from_slice(a.as_bytes());
                        key.push(CROSS_SEPARATOR);
                        key.extend_from_slice(b.as_bytes());
                        bucket(&key, *seed, *buckets)
                    }
                    _ => 0,
                })
            }
            Self::Number { input, steps, bucketise } => {
                let mut x = input.value(raw, defaults);
                for step in steps {
                    x = step.apply(x);
                }
                match bucketise {
                    Some(boundaries) => Encoded::Id(1 + boundaries.partition_point(|b| *b <= x) as i64),
                    // A value too large for f32 would become infinite: clamp it instead.
                    None => Encoded::Dense(x.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32),
                }
            }
        }
    }
}

/// Learns the statistics `spec` needs from raw records (the trainer calls this on its training
/// window): for each `standardise` step, the mean and deviation of the values reaching it.
pub(super) fn fit<'a>(spec: &FeatureSpec, records: impl IntoIterator<Item = &'a RawFeatures>) -> TransformStats {
    let pipelines: Vec<(String, NumberInput, Vec<NumberStep>)> = spec
        .features
        .iter()
        .filter_map(|f| {
            let cut = f.transform.iter().position(|s| *s == Step::Standardise)?;
            let partial = Feature { transform: f.transform[..cut].to_vec(), ..f.clone() };
            match compile(spec, &partial, None) {
                Ok(Compiled::Number { input, steps, .. }) => Some((f.name.clone(), input, steps)),
                _ => None,
            }
        })
        .collect();
    let mut running = vec![Running::default(); pipelines.len()];
    for raw in records {
        for ((_, input, steps), acc) in pipelines.iter().zip(&mut running) {
            let mut ignored = 0;
            let x = steps.iter().fold(input.value(raw, &mut ignored), |x, step| step.apply(x));
            acc.push(x);
        }
    }
    TransformStats {
        standardise: pipelines.into_iter().zip(running).map(|((name, _, _), acc)| (name, acc.finish())).collect(),
    }
}

impl TransformStats {
    /// Learns the statistics `spec` needs from raw records; see [`Transformer::new`].
    pub fn fit<'a>(spec: &FeatureSpec, records: impl IntoIterator<Item = &'a RawFeatures>) -> Self {
        fit(spec, records)
    }
}

fn compile(spec: &FeatureSpec, feature: &Feature, stats: Option<&TransformStats>) -> Result<Compiled, String> {
    let seed = xxh3_64(feature.name.as_bytes());
    let category = |f: &Feature| Category {
        input: Name::new(f.input_name()),
        default: match &f.default {
            Some(DefaultValue::Category(s)) => Some(s.clone()),
            _ => None,
        },
    };
    if feature.source == Source::Cross {
        let [a, b] = feature.cross.as_ref().ok_or("a cross without `cross`")?;
        let find = |name: &str| spec.features.iter().find(|f| f.name == name).ok_or(format!("unknown feature {name}"));
        let buckets = match feature.transform.as_slice() {
            [Step::Hash { buckets }] => u64::from(*buckets),
            _ => return Err("a cross must hash".into()),
        };
        return Ok(Compiled::Cross { a: category(find(a)?), b: category(find(b)?), seed, buckets });
    }
    if feature.kind == Kind::Categorical {
        return match feature.transform.as_slice() {
            [Step::Hash { buckets }] => {
                Ok(Compiled::Hash { category: category(feature), seed, buckets: u64::from(*buckets) })
            }
            _ => Err("a categorical feature must hash".into()),
        };
    }
    let mut steps = feature.transform.as_slice();
    let input = match (feature.kind, steps.first()) {
        (Kind::Rate, Some(Step::SmoothedCtr { prior_ctr, prior_weight })) => {
            steps = &steps[1..];
            NumberInput::Rate {
                clicks: Name::new(feature.clicks.clone().ok_or("a rate without `clicks`")?),
                impressions: Name::new(feature.impressions.clone().ok_or("a rate without `impressions`")?),
                prior_ctr: *prior_ctr,
                prior_weight: *prior_weight,
            }
        }
        (Kind::Rate, _) => return Err("a rate must start with smoothed_ctr".into()),
        _ => NumberInput::Field {
            input: Name::new(feature.input_name()),
            default: match feature.default {
                Some(DefaultValue::Number(x)) => x,
                _ => 0.0,
            },
        },
    };
    let bucketise = match steps.split_last() {
        Some((Step::Bucketise { boundaries }, rest)) => {
            steps = rest;
            Some(boundaries.clone())
        }
        _ => None,
    };
    let steps = steps
        .iter()
        .map(|step| match step {
            Step::Clip { min, max } => Ok(NumberStep::Clip(*min, *max)),
            Step::Log1p => Ok(NumberStep::Log1p),
            Step::Standardise => match stats {
                // Fitting: the pipeline is cut before its standardise step, so this is unused.
                None => Ok(NumberStep::Standardise { mean: 0.0, std: 1.0 }),
                Some(stats) => match stats.standardise.get(&feature.name) {
                    Some(s) if s.mean.is_finite() && s.std.is_finite() && s.std > 0.0 => {
                        Ok(NumberStep::Standardise { mean: s.mean, std: s.std })
                    }
                    Some(s) => Err(format!("has unusable standardisation statistics (mean {}, std {})", s.mean, s.std)),
                    None => Err("has a standardise step but the model's transform statistics have none for it".into()),
                },
            },
            other => Err(format!("cannot apply `{}` to a number here", other.name())),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Compiled::Number { input, steps, bucketise })
}

impl Category {
    /// The category as text: a string as it is, a finite number in its shortest exact form
    /// (`3`, `0.25`), anything else the default (counted).
    fn value<'r, L: Lookup + ?Sized>(&'r self, raw: &'r L, defaults: &mut u32) -> Option<std::borrow::Cow<'r, str>> {
        match raw.get(self.input.input()) {
            Some(RawValue::Str(s)) => Some(s.as_ref().into()),
            Some(RawValue::Num(x)) if x.is_finite() => Some(format_number(*x).into()),
            _ => {
                *defaults += 1;
                self.default.as_deref().map(Into::into)
            }
        }
    }
}

impl NumberInput {
    fn value<L: Lookup + ?Sized>(&self, raw: &L, defaults: &mut u32) -> f64 {
        match self {
            Self::Field { input, default } => number(raw.get(input.input())).unwrap_or_else(|| {
                *defaults += 1;
                *default
            }),
            Self::Rate { clicks, impressions, prior_ctr, prior_weight } => {
                // A new entity has no counters yet: that is zero of each, and the rate is the prior.
                let mut counter = |name: &Name| {
                    number(raw.get(name.input())).map(|x| x.max(0.0)).unwrap_or_else(|| {
                        *defaults += 1;
                        0.0
                    })
                };
                let (clicks, impressions) = (counter(clicks), counter(impressions));
                (clicks + prior_ctr * prior_weight) / (impressions + prior_weight)
            }
        }
    }
}

impl NumberStep {
    fn apply(self, x: f64) -> f64 {
        match self {
            Self::Clip(min, max) => x.clamp(min, max),
            Self::Log1p => x.signum() * x.abs().ln_1p(),
            Self::Standardise { mean, std } => (x - mean) / std,
        }
    }
}

/// A finite number, from a number or a string that parses as one.
fn number(value: Option<&RawValue>) -> Option<f64> {
    let x = match value? {
        RawValue::Num(x) => *x,
        RawValue::Str(s) => s.trim().parse().ok()?,
        RawValue::Missing => return None,
    };
    x.is_finite().then_some(x)
}

fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 9.0e15 { format!("{}", x as i64) } else { format!("{x}") }
}

/// 1..=buckets by a stable hash; 0 stays reserved for "missing".
fn bucket(bytes: &[u8], seed: u64, buckets: u64) -> i64 {
    (1 + xxh3_64_with_seed(bytes, seed) % buckets) as i64
}

/// The first 12 characters of a spec version, for messages.
pub fn short_version(version: &str) -> &str {
    &version[..12.min(version.len())]
}
