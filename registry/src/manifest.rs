//! A version's manifest: everything serving and evaluation need to trust and use its model.

use std::collections::BTreeMap;

use adrank_contracts::spec::TransformStats;
use serde::{Deserialize, Serialize};

/// One immutable model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The model name (a registry holds many).
    pub name: String,
    /// 1, 2, 3, … per name, in publication order.
    pub version: u64,
    /// When it was published (ms since the Unix epoch), by whom and why.
    pub created_at_ms: i64,
    pub created_by: String,
    pub reason: String,
    /// The ONNX file.
    pub onnx: Artifact,
    /// The trainer's weights, for warm-starting a child version (absent for imported models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Artifact>,
    /// The feature spec version the model reads (serving refuses a spec it cannot serve).
    pub spec_version: String,
    /// The graph's inputs and outputs.
    pub signature: Signature,
    /// The constants its feature transforms need (standardisation).
    pub transform_stats: TransformStats,
    /// What it was trained on, when adrank trained it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingInfo>,
    /// The version it was warm-started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// Headline metrics (validation log loss and the like), by name.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Free-form labels set at publication, for example the retraining cycle that made it
    /// (`retrain_cycle`), so that a resumed cycle finds its version instead of publishing twice.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// A stored file, addressed by its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// The object's path inside the registry.
    pub path: String,
    /// Hex SHA-256 of its bytes, checked on every load.
    pub sha256: String,
    pub bytes: u64,
}

/// Inputs and outputs of a model graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub inputs: Vec<TensorSignature>,
    pub outputs: Vec<TensorSignature>,
}

/// One input or output: its name, element type and shape (`None` for a dynamic dimension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSignature {
    pub name: String,
    /// ONNX's element type name: `float32`, `int64`, …
    pub elem_type: String,
    pub shape: Vec<Option<i64>>,
}

impl std::fmt::Display for TensorSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.map_or("?".into(), |d| d.to_string())).collect();
        write!(f, "{} {}[{}]", self.name, self.elem_type, dims.join(", "))
    }
}

impl Signature {
    /// The signature every adrank model of a spec has: `ids` int64 `[batch, id_width]`,
    /// `dense` float32 `[batch, dense_width]` -> `pctr` float32 `[batch, 1]`.
    pub fn expected(id_width: usize, dense_width: usize) -> Self {
        let tensor = |name: &str, elem_type: &str, width: usize| TensorSignature {
            name: name.into(),
            elem_type: elem_type.into(),
            shape: vec![None, Some(width as i64)],
        };
        Self {
            inputs: vec![tensor("ids", "int64", id_width), tensor("dense", "float32", dense_width)],
            outputs: vec![tensor("pctr", "float32", 1)],
        }
    }

    /// Every way this signature differs from `expected`, as sentences; empty when it fits.
    /// Inputs are matched by name; the batch dimension must be dynamic.
    pub fn mismatches(&self, expected: &Signature) -> Vec<String> {
        let mut problems = Vec::new();
        for (what, mine, theirs) in
            [("input", &self.inputs, &expected.inputs), ("output", &self.outputs, &expected.outputs)]
        {
            for want in theirs {
                match mine.iter().find(|t| t.name == want.name) {
                    None => problems.push(format!("missing {what} `{}` (expected {want})", want.name)),
                    Some(have) if have != want => problems.push(format!("{what} is {have}; expected {want}")),
                    Some(_) => {}
                }
            }
            for have in mine {
                if !theirs.iter().any(|t| t.name == have.name) {
                    problems.push(format!("unexpected {what} {have}"));
                }
            }
        }
        problems
    }
}

/// The training run behind a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    /// The event-time window trained on, `[since, until)` in ms.
    pub since_ms: i64,
    pub until_ms: i64,
    pub examples: u64,
    pub clicks: u64,
    /// The architecture and the trainer's full report, as the trainer wrote them.
    pub architecture: serde_json::Value,
    pub report: serde_json::Value,
}
