//! Model weights as bytes, for warm starts: a registry version keeps its trainer checkpoint
//! beside its ONNX file, so a child version starts from its parent's exact weights.
//!
//! Format: `ADRANKW1`, a little-endian u64 header length, a JSON header (architecture, input
//! shape, tensor lengths), then every tensor as little-endian f32: the embedding table first,
//! then the dense tensors in [`Model::dense_params`] order.

use serde::{Deserialize, Serialize};

use crate::model::{Architecture, InputShape, Model};

const MAGIC: &[u8; 8] = b"ADRANKW1";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    architecture: Architecture,
    shape: InputShape,
    /// Length of each tensor, embedding table first.
    tensors: Vec<usize>,
}

/// Why bytes are not a checkpoint of the expected model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a usable adrank checkpoint: {0}")]
pub struct CheckpointError(String);

/// The model's weights as bytes.
pub fn to_bytes(model: &Model) -> Vec<u8> {
    let embeddings = &model.embeddings().table;
    let dense = model.dense_params();
    let header = Header {
        architecture: model.architecture(),
        shape: model.input_shape(),
        tensors: std::iter::once(embeddings.len()).chain(dense.iter().map(|t| t.len())).collect(),
    };
    let header = serde_json::to_vec(&header).expect("headers serialise; this is a bug");
    let mut bytes = Vec::with_capacity(16 + header.len() + 4 * header.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    for tensor in std::iter::once(embeddings.as_slice()).chain(dense) {
        bytes.extend(tensor.iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

/// A model from [`to_bytes`]'s output.
pub fn from_bytes(bytes: &[u8]) -> Result<Model, CheckpointError> {
    let error = |why: &str| CheckpointError(why.into());
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(error("it does not start with ADRANKW1"));
    }
    let header_len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")) as usize;
    let header_end = 16usize.checked_add(header_len).filter(|&e| e <= bytes.len()).ok_or(error("truncated header"))?;
    let header: Header =
        serde_json::from_slice(&bytes[16..header_end]).map_err(|e| CheckpointError(format!("bad header: {e}")))?;
    let mut model = Model::new(&header.architecture, &header.shape, 0.5, 0);
    let expected: Vec<usize> =
        std::iter::once(model.embeddings().table.len()).chain(model.dense_params().iter().map(|t| t.len())).collect();
    if expected != header.tensors {
        return Err(error("its tensor sizes do not match its architecture"));
    }
    let total: usize = expected.iter().sum();
    let data = &bytes[header_end..];
    if data.len() != 4 * total {
        return Err(CheckpointError(format!("expected {} bytes of weights, found {}", 4 * total, data.len())));
    }
    let mut values = data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")));
    for w in model.embeddings_mut().table.iter_mut() {
        *w = values.next().expect("lengths were checked");
    }
    for tensor in model.dense_params_mut() {
        for w in tensor.iter_mut() {
            *w = values.next().expect("lengths were checked");
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_gives_back_the_same_model() {
        let shape = InputShape { id_cardinalities: vec![5, 9], dense_width: 3 };
        for architecture in [
            Architecture::Logistic,
            Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![6, 3], wide: true },
        ] {
            let model = Model::new(&architecture, &shape, 0.05, 11);
            let bytes = to_bytes(&model);
            assert_eq!(from_bytes(&bytes).unwrap(), model);
            assert!(from_bytes(&bytes[..bytes.len() - 1]).is_err(), "a truncated checkpoint is refused");
            assert!(from_bytes(b"ADRANKW2........").is_err());
        }
    }
}
