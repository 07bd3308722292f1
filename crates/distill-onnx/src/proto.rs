//! The subset of the ONNX protobuf messages an exported model needs, declared with prost's derive.
//!
//! Field numbers and enum values are those of the official `onnx/onnx.proto` (ONNX IR version 8 and later
//! keep them): a field left out here is simply never written, so any ONNX reader accepts what we encode.
//! Comments give the `onnx.proto` message and field each declaration mirrors.

/// `AttributeProto.AttributeType` (onnx.proto): the attribute kinds this crate writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    /// `UNDEFINED = 0`.
    Undefined = 0,
    /// `FLOAT = 1`.
    Float = 1,
    /// `INT = 2`.
    Int = 2,
    /// `STRING = 3`.
    String = 3,
    /// `TENSOR = 4`.
    Tensor = 4,
    /// `FLOATS = 6`.
    Floats = 6,
    /// `INTS = 7`.
    Ints = 7,
}

/// `TensorProto.DataType` (onnx.proto): the element types this crate writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    /// `UNDEFINED = 0`.
    Undefined = 0,
    /// `FLOAT = 1` (f32).
    Float = 1,
    /// `INT32 = 6`.
    Int32 = 6,
    /// `INT64 = 7`.
    Int64 = 7,
    /// `BOOL = 9`.
    Bool = 9,
}

/// `AttributeProto`: a named attribute of a node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    /// `string name = 1`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `float f = 2`.
    #[prost(float, tag = "2")]
    pub f: f32,
    /// `int64 i = 3`.
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// `bytes s = 4` (UTF-8).
    #[prost(bytes = "vec", tag = "4")]
    pub s: Vec<u8>,
    /// `TensorProto t = 5`.
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    /// `repeated float floats = 7`.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// `repeated int64 ints = 8`.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// `string doc_string = 13`.
    #[prost(string, tag = "13")]
    pub doc_string: String,
    /// `AttributeType type = 20`.
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
}

/// `ValueInfoProto`: a graph input's or output's name and type.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    /// `string name = 1`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// `TypeProto type = 2`.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    /// `string doc_string = 3`.
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// `NodeProto`: one operator call.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    /// `repeated string input = 1`.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// `repeated string output = 2`.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// `string name = 3`.
    #[prost(string, tag = "3")]
    pub name: String,
    /// `string op_type = 4`.
    #[prost(string, tag = "4")]
    pub op_type: String,
    /// `repeated AttributeProto attribute = 5`.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// `string doc_string = 6`.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// `string domain = 7` (empty: the default ONNX operator set).
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `StringStringEntryProto`: a metadata key and value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    /// `string key = 1`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `string value = 2`.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `OperatorSetIdProto`: an operator set the model imports.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    /// `string domain = 1` (empty: the default ONNX domain).
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `int64 version = 2`.
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `ModelProto`: the file's top-level message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    /// `int64 ir_version = 1`.
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    /// `string producer_name = 2`.
    #[prost(string, tag = "2")]
    pub producer_name: String,
    /// `string producer_version = 3`.
    #[prost(string, tag = "3")]
    pub producer_version: String,
    /// `string domain = 4`.
    #[prost(string, tag = "4")]
    pub domain: String,
    /// `int64 model_version = 5`.
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    /// `string doc_string = 6`.
    #[prost(string, tag = "6")]
    pub doc_string: String,
    /// `GraphProto graph = 7`.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// `repeated OperatorSetIdProto opset_import = 8`.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// `repeated StringStringEntryProto metadata_props = 14`.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `GraphProto`: nodes in topological order, initializers, inputs and outputs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    /// `repeated NodeProto node = 1`.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// `string name = 2`.
    #[prost(string, tag = "2")]
    pub name: String,
    /// `repeated TensorProto initializer = 5`.
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    /// `string doc_string = 10`.
    #[prost(string, tag = "10")]
    pub doc_string: String,
    /// `repeated ValueInfoProto input = 11`.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// `repeated ValueInfoProto output = 12`.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `TensorProto`: a constant tensor (an initializer or a `Constant` node's value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// `repeated int64 dims = 1`.
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    /// `int32 data_type = 2` (a [`DataType`]).
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    /// `repeated int64 int64_data = 7`.
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    /// `string name = 8`.
    #[prost(string, tag = "8")]
    pub name: String,
    /// `bytes raw_data = 9`: fixed-width little-endian elements, row-major.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    /// `string doc_string = 12`.
    #[prost(string, tag = "12")]
    pub doc_string: String,
}

/// `TensorShapeProto`: a list of dimensions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    /// `repeated Dimension dim = 1`.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// `TensorShapeProto`'s nested messages.
pub mod tensor_shape_proto {
    /// `TensorShapeProto.Dimension`: a fixed size or a named (symbolic) one.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// `oneof value { int64 dim_value = 1; string dim_param = 2; }`.
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        /// `string denotation = 3`.
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// `Dimension`'s oneof.
    pub mod dimension {
        /// `oneof value`.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            /// `int64 dim_value = 1`.
            #[prost(int64, tag = "1")]
            DimValue(i64),
            /// `string dim_param = 2`.
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

/// `TypeProto`: the type of a value (only tensors here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    /// `oneof value { Tensor tensor_type = 1; ... }`.
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    /// `string denotation = 6`.
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// `TypeProto`'s nested messages.
pub mod type_proto {
    /// `TypeProto.Tensor`: element type and shape.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        /// `int32 elem_type = 1` (a [`super::DataType`]).
        #[prost(enumeration = "super::DataType", tag = "1")]
        pub elem_type: i32,
        /// `TensorShapeProto shape = 2`.
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// `TypeProto`'s oneof.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `Tensor tensor_type = 1`.
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The wire bytes of small messages, worked out by hand from onnx.proto's field numbers: a field's key
    /// is `(number << 3) | wire_type` (0 varint, 2 length-delimited, 5 32-bit).
    #[test]
    fn field_numbers_on_the_wire() {
        let opset = OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        };
        // version = 2 (varint): key 0x10, value 17
        assert_eq!(opset.encode_to_vec(), [0x10, 17]);

        let dim = tensor_shape_proto::Dimension {
            value: Some(tensor_shape_proto::dimension::Value::DimParam("b".into())),
            denotation: String::new(),
        };
        // dim_param = 2 (bytes): key 0x12, length 1, 'b'
        assert_eq!(dim.encode_to_vec(), [0x12, 1, b'b']);

        let attr = AttributeProto {
            name: "axis".into(),
            i: 1,
            r#type: AttributeType::Int as i32,
            ..Default::default()
        };
        // name = 1 (0x0a), i = 3 (0x18), type = 20 (key (20 << 3) | 0 = 160 = varint a0 01)
        assert_eq!(
            attr.encode_to_vec(),
            [0x0a, 4, b'a', b'x', b'i', b's', 0x18, 1, 0xa0, 0x01, 2]
        );

        let t = TensorProto {
            dims: vec![2],
            data_type: DataType::Float as i32,
            raw_data: 1.5f32
                .to_le_bytes()
                .into_iter()
                .chain(2.0f32.to_le_bytes())
                .collect(),
            ..Default::default()
        };
        // dims = 1 (packed: 0x0a len 1, 2), data_type = 2 (0x10 1), raw_data = 9 (0x4a len 8 ...)
        let mut expected = vec![0x0a, 1, 2, 0x10, 1, 0x4a, 8];
        expected.extend(1.5f32.to_le_bytes());
        expected.extend(2.0f32.to_le_bytes());
        assert_eq!(t.encode_to_vec(), expected);

        let model = ModelProto {
            ir_version: 8,
            graph: Some(GraphProto {
                name: "g".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        // ir_version = 1 (0x08 8), graph = 7 (0x3a len 3: name = 2 (0x12 1 'g'))
        assert_eq!(model.encode_to_vec(), [0x08, 8, 0x3a, 3, 0x12, 1, b'g']);
    }
}
