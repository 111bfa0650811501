//! ONNX messages (`onnx.proto` field numbers) and a small graph builder.

use super::proto::Message;

/// `TensorProto.DataType`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ElemType {
    Float = 1,
    Int64 = 7,
}

/// The IR version of opset 17's release (ONNX 1.12).
const IR_VERSION: i64 = 8;
/// The default domain's opset the graphs use.
pub const OPSET: i64 = 17;

/// A dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim<'a> {
    Fixed(i64),
    Named(&'a str),
}

/// An attribute of a node.
#[derive(Debug, Clone)]
pub(crate) enum Attr<'a> {
    Int(&'a str, i64),
    Ints(&'a str, &'a [i64]),
}

/// A graph under construction: nodes in topological order, initializers, inputs, outputs.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
    inputs: Vec<Message>,
    outputs: Vec<Message>,
}

fn value_info(name: &str, elem: ElemType, dims: &[Dim<'_>]) -> Message {
    let mut shape = Message::new();
    for dim in dims {
        let d = match dim {
            Dim::Fixed(v) => Message::new().int(1, *v),
            Dim::Named(p) => Message::new().string(2, p),
        };
        shape = shape.message(1, &d);
    }
    let tensor = Message::new().int(1, elem as i64).message(2, &shape);
    let type_proto = Message::new().message(1, &tensor);
    Message::new().string(1, name).message(2, &type_proto)
}

impl Graph {
    pub(crate) fn input(&mut self, name: &str, elem: ElemType, dims: &[Dim<'_>]) {
        self.inputs.push(value_info(name, elem, dims));
    }

    pub(crate) fn output(&mut self, name: &str, elem: ElemType, dims: &[Dim<'_>]) {
        self.outputs.push(value_info(name, elem, dims));
    }

    /// A float constant of shape `dims`.
    pub(crate) fn floats(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, values.len(), "{name}: shape and data differ");
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, ElemType::Float, dims, &raw)
    }

    /// An int64 constant of shape `dims`.
    pub(crate) fn ints(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        debug_assert_eq!(dims.iter().product::<i64>() as usize, values.len(), "{name}: shape and data differ");
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, ElemType::Int64, dims, &raw)
    }

    fn initializer(&mut self, name: &str, elem: ElemType, dims: &[i64], raw_le: &[u8]) -> String {
        // TensorProto: dims = 1, data_type = 2, name = 8, raw_data = 9 (little-endian).
        self.initializers
            .push(Message::new().packed_ints(1, dims).int(2, elem as i64).string(8, name).bytes(9, raw_le));
        name.to_string()
    }

    /// Adds a node; its single output is named `output`, which is returned.
    pub(crate) fn node(&mut self, op: &str, inputs: &[&str], output: &str, attrs: &[Attr<'_>]) -> String {
        // NodeProto: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
        let mut node = Message::new();
        for input in inputs {
            node = node.string(1, input);
        }
        node = node.string(2, output).string(3, output).string(4, op);
        for attr in attrs {
            // AttributeProto: name = 1, i = 3, ints = 8, type = 20 (INT = 2, INTS = 7).
            let a = match attr {
                Attr::Int(name, v) => Message::new().string(1, name).int(3, *v).int(20, 2),
                Attr::Ints(name, vs) => vs.iter().fold(Message::new().string(1, name), |m, v| m.int(8, *v)).int(20, 7),
            };
            node = node.message(5, &a);
        }
        self.nodes.push(node);
        output.to_string()
    }

    /// The serialised `ModelProto`.
    pub(crate) fn into_model(self, name: &str, metadata: &[(&str, &str)]) -> Vec<u8> {
        // GraphProto: node = 1, name = 2, initializer = 5, input = 11, output = 12.
        let mut graph = Message::new();
        for node in &self.nodes {
            graph = graph.message(1, node);
        }
        graph = graph.string(2, name);
        for tensor in &self.initializers {
            graph = graph.message(5, tensor);
        }
        for input in &self.inputs {
            graph = graph.message(11, input);
        }
        for output in &self.outputs {
            graph = graph.message(12, output);
        }
        // ModelProto: ir_version = 1, producer_name = 2, producer_version = 3, graph = 7,
        // opset_import = 8 (OperatorSetIdProto: domain = 1, version = 2), metadata_props = 14.
        let opset = Message::new().string(1, "").int(2, OPSET);
        let mut model = Message::new()
            .int(1, IR_VERSION)
            .string(2, "adrank")
            .string(3, env!("CARGO_PKG_VERSION"))
            .message(7, &graph)
            .message(8, &opset);
        for (key, value) in metadata {
            model = model.message(14, &Message::new().string(1, key).string(2, value));
        }
        model.into_bytes()
    }
}
