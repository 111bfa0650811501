//! ONNX models whose weights live in files beside them (`torch.onnx.export` writes
//! `model.onnx.data` by default): read those files and write one self-contained model, since the
//! registry stores one blob and serving loads it from memory, far from the folder it came from.
//!
//! Only the protocol-buffer fields on the way to a tensor are read (`onnx.proto`): the model's
//! graph (7); a graph's nodes (1), initializers (5) and sparse initializers (15); a node's
//! attributes (5); an attribute's tensor (5), graph (6), tensors (10), graphs (11), sparse tensor
//! (22) and sparse tensors (23); a sparse tensor's values (1) and indices (2). Every other field
//! is copied byte for byte. A tensor with `data_location` EXTERNAL (14 = 1) has its
//! `external_data` entries (13: `location`, `offset`, `length`) replaced by `raw_data` (9).

use std::path::{Component, Path};

/// The most a protocol-buffer message may weigh: ONNX Runtime refuses larger models in memory.
const MAX_MODEL_BYTES: usize = (2 << 30) - 1;

/// `onnx` with every external tensor read from `folder` and inlined; unchanged when none is.
/// The error names the tensor and the file.
pub fn inline_external_data(onnx: &[u8], folder: &Path) -> Result<Vec<u8>, String> {
    let mut inlined = 0;
    let out = rewrite(onnx, Kind::Model, folder, &mut inlined)?;
    if inlined == 0 {
        return Ok(onnx.to_vec());
    }
    if out.len() > MAX_MODEL_BYTES {
        return Err(format!(
            "with its external weights the model weighs {} bytes, over the 2 GiB a single ONNX model may hold",
            out.len()
        ));
    }
    Ok(out)
}

/// Which message is being read, so that its tensor-bearing fields can be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
}

impl Kind {
    /// The kind of message a length-delimited field holds, when it is one to follow.
    fn child(self, field: u64) -> Option<Kind> {
        match (self, field) {
            (Kind::Model, 7) => Some(Kind::Graph),
            (Kind::Graph, 1) => Some(Kind::Node),
            (Kind::Graph, 5) => Some(Kind::Tensor),
            (Kind::Graph, 15) => Some(Kind::SparseTensor),
            (Kind::Node, 5) => Some(Kind::Attribute),
            (Kind::Attribute, 5 | 10) => Some(Kind::Tensor),
            (Kind::Attribute, 6 | 11) => Some(Kind::Graph),
            (Kind::Attribute, 22 | 23) => Some(Kind::SparseTensor),
            (Kind::SparseTensor, 1 | 2) => Some(Kind::Tensor),
            _ => None,
        }
    }
}

const RAW_DATA: u64 = 9;
const EXTERNAL_DATA: u64 = 13;
const DATA_LOCATION: u64 = 14;
const EXTERNAL: u64 = 1;

/// One field as read: its number, wire type, and its bytes (the value of a length-delimited
/// field; the whole encoded field otherwise).
struct Field<'a> {
    number: u64,
    wire: u64,
    value: &'a [u8],
    encoded: &'a [u8],
}

fn fields(message: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut fields = Vec::new();
    let mut at = 0;
    while at < message.len() {
        let start = at;
        let key = varint(message, &mut at)?;
        let (number, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => {
                let from = at;
                varint(message, &mut at)?;
                &message[from..at]
            }
            1 | 5 => {
                let width = if wire == 1 { 8 } else { 4 };
                let value = message.get(at..at + width).ok_or("a fixed-width field runs past the end")?;
                at += width;
                value
            }
            2 => {
                let len = usize::try_from(varint(message, &mut at)?).map_err(|_| "a field too long")?;
                let value = message.get(at..at.saturating_add(len)).ok_or("a field runs past the end")?;
                at += len;
                value
            }
            other => return Err(format!("wire type {other} (field {number}) is not protocol buffers ONNX uses")),
        };
        fields.push(Field { number, wire, value, encoded: &message[start..at] });
    }
    Ok(fields)
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at).ok_or("a number runs past the end")?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a number longer than ten bytes".into())
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, number: u64, value: &[u8]) {
    put_varint(out, (number << 3) | 2);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn rewrite(message: &[u8], kind: Kind, folder: &Path, inlined: &mut usize) -> Result<Vec<u8>, String> {
    let fields = fields(message)?;
    if kind == Kind::Tensor {
        let external =
            fields.iter().any(|f| f.number == DATA_LOCATION && f.wire == 0 && first_varint(f.value) == EXTERNAL);
        if external {
            *inlined += 1;
            return inline_tensor(&fields, folder);
        }
        return Ok(message.to_vec());
    }
    let mut out = Vec::with_capacity(message.len());
    for field in &fields {
        match (field.wire, kind.child(field.number)) {
            (2, Some(child)) => put_bytes(&mut out, field.number, &rewrite(field.value, child, folder, inlined)?),
            _ => out.extend_from_slice(field.encoded),
        }
    }
    Ok(out)
}

fn first_varint(value: &[u8]) -> u64 {
    varint(value, &mut 0).unwrap_or(0)
}

/// The tensor with its external data read and written as `raw_data`.
fn inline_tensor(fields: &[Field<'_>], folder: &Path) -> Result<Vec<u8>, String> {
    let name = fields
        .iter()
        .find(|f| f.number == 8 && f.wire == 2)
        .map(|f| String::from_utf8_lossy(f.value).into_owned())
        .unwrap_or_default();
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for entry in fields.iter().filter(|f| f.number == EXTERNAL_DATA && f.wire == 2) {
        let (mut key, mut value) = (String::new(), String::new());
        for part in self::fields(entry.value)? {
            match part.number {
                1 => key = String::from_utf8_lossy(part.value).into_owned(),
                2 => value = String::from_utf8_lossy(part.value).into_owned(),
                _ => {}
            }
        }
        let number = |v: &str| {
            v.parse::<u64>().map_err(|_| format!("tensor `{name}`: its external {key} `{v}` is not a number"))
        };
        match key.as_str() {
            "location" => location = Some(value),
            "offset" => offset = number(&value)?,
            "length" => length = Some(number(&value)?),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| format!("tensor `{name}` is stored externally but names no location"))?;
    let relative = Path::new(&location);
    if !relative.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(format!("tensor `{name}`: its data file `{location}` is not inside the model's folder"));
    }
    let path = folder.join(relative);
    let data = std::fs::read(&path).map_err(|e| {
        format!("tensor `{name}`: cannot read its data file {} ({e}); keep it beside the model", path.display())
    })?;
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = match length {
        Some(length) => start.saturating_add(usize::try_from(length).unwrap_or(usize::MAX)),
        None => data.len(),
    };
    let bytes = data.get(start..end).ok_or_else(|| {
        format!("tensor `{name}`: bytes {start}..{end} lie outside {} ({} bytes)", path.display(), data.len())
    })?;
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for field in fields {
        if !matches!(field.number, EXTERNAL_DATA | DATA_LOCATION | RAW_DATA) {
            out.extend_from_slice(field.encoded);
        }
    }
    put_bytes(&mut out, RAW_DATA, bytes);
    Ok(out)
}

#[cfg(test)]
mod tests;
