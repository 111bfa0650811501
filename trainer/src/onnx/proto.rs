//! Just enough of the protocol-buffer wire format to write ONNX models (`onnx.proto`, IR
//! version 8). Writing needs no schema compiler: a message is its fields' tags and values.
//! Reading ONNX files made elsewhere is ONNX Runtime's job (see `registry import`).

/// One message being written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Message(Vec<u8>);

const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;

impl Message {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn raw_varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u64) {
        self.raw_varint((u64::from(field) << 3) | wire_type);
    }

    /// An `int32`, `int64` or enum field (negative values as ten-byte two's complement, as
    /// protobuf does).
    pub(crate) fn int(mut self, field: u32, v: i64) -> Self {
        self.key(field, VARINT);
        self.raw_varint(v as u64);
        self
    }

    pub(crate) fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, LENGTH_DELIMITED);
        self.raw_varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub(crate) fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }

    pub(crate) fn message(self, field: u32, v: &Message) -> Self {
        self.bytes(field, &v.0)
    }

    /// A packed `repeated int64`.
    pub(crate) fn packed_ints(self, field: u32, values: &[i64]) -> Self {
        let mut packed = Message::new();
        for &v in values {
            packed.raw_varint(v as u64);
        }
        self.bytes(field, &packed.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_protobuf_reference_examples() {
        // From the protobuf encoding guide: field 1 = 150 is 08 96 01; field 2 = "testing".
        assert_eq!(Message::new().int(1, 150).into_bytes(), [0x08, 0x96, 0x01]);
        assert_eq!(Message::new().string(2, "testing").into_bytes(), b"\x12\x07testing");
        // Packed repeated field 4 = [3, 270, 86942].
        assert_eq!(
            Message::new().packed_ints(4, &[3, 270, 86942]).into_bytes(),
            [0x22, 0x06, 0x03, 0x8E, 0x02, 0x9E, 0xA7, 0x05]
        );
        // A negative int64 takes ten bytes.
        assert_eq!(Message::new().int(1, -1).into_bytes().len(), 11);
    }
}
