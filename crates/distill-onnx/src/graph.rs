//! [`Graph`]: builds an ONNX model node by node, with unique value names, initializers taken from candle
//! tensors (named after the parameter they hold), typed inputs and outputs with symbolic dimensions, and
//! checks that every node reads only values defined before it.

use std::collections::{HashMap, HashSet};

use candle_core::{DType, Tensor, TensorId};
use prost::Message;

use crate::proto::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto,
    ValueInfoProto,
};
use crate::{Error, Result};

/// The ONNX IR version written (8: ONNX 1.10 to 1.12, the format of opset 15 to 17).
pub const IR_VERSION: i64 = 8;
/// The default-domain operator set imported: 17 is the first with `LayerNormalization`, and both
/// onnxruntime and tract run every operator distill emits at this version.
pub const OPSET: i64 = 17;

/// One dimension of an input's or output's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A named size chosen at run time (e.g. `batch`); equal names are equal sizes.
    Sym(String),
}

impl Dim {
    /// The symbolic batch dimension, `batch`.
    pub fn batch() -> Self {
        Dim::Sym("batch".into())
    }
}

impl From<usize> for Dim {
    fn from(n: usize) -> Self {
        Dim::Fixed(n)
    }
}

impl From<&str> for Dim {
    fn from(name: &str) -> Self {
        Dim::Sym(name.to_string())
    }
}

/// The element type of an input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `float` (f32).
    F32,
    /// `int64`.
    I64,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::I64 => DataType::Int64,
        }
    }
}

/// A node attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// An integer.
    Int(&'static str, i64),
    /// A list of integers.
    Ints(&'static str, Vec<i64>),
    /// A float.
    Float(&'static str, f32),
    /// A string.
    Str(&'static str, String),
}

impl Attr {
    fn proto(&self) -> AttributeProto {
        let base = |name: &str, t: AttributeType| AttributeProto {
            name: name.to_string(),
            r#type: t as i32,
            ..Default::default()
        };
        match self {
            Attr::Int(n, v) => AttributeProto {
                i: *v,
                ..base(n, AttributeType::Int)
            },
            Attr::Ints(n, v) => AttributeProto {
                ints: v.clone(),
                ..base(n, AttributeType::Ints)
            },
            Attr::Float(n, v) => AttributeProto {
                f: *v,
                ..base(n, AttributeType::Float)
            },
            Attr::Str(n, v) => AttributeProto {
                s: v.as_bytes().to_vec(),
                ..base(n, AttributeType::String)
            },
        }
    }
}

/// An ONNX graph under construction.
///
/// Every value (input, initializer, node output) has a unique name: a requested name that is taken gets a
/// `_1`, `_2`, … suffix, and the name actually used is returned. Initializers made from a candle tensor are
/// named after that tensor's parameter name when [`Graph::name_params`] was told it (PyTorch state-dict
/// names, so `fc1.weight` in the `.onnx` is `fc1.weight` in the checkpoint), and a tensor used twice is
/// stored once.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use distill_onnx::{Attr, Dim, Elem, Graph};
/// # fn main() -> distill_onnx::Result<()> {
/// let mut g = Graph::new("tiny");
/// let w = Tensor::new(&[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0]], &Device::Cpu)?;
/// g.name_params([("fc.weight".to_string(), w.clone())]);
/// let x = g.input("input", Elem::F32, &[Dim::batch(), 2.into()])?;
/// let w = g.param(&w, "weight")?;
/// let y = g.op("Gemm", &[&x, &w], &[Attr::Int("transB", 1)], "fc")?;
/// g.output(&y, "logits", Elem::F32, &[Dim::batch(), 3.into()])?;
/// let bytes = g.encode()?;
/// assert!(bytes.len() > 24);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Graph {
    name: String,
    doc: String,
    metadata: Vec<(String, String)>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    /// Every value name defined so far.
    defined: HashSet<String>,
    /// Parameter names of tensors (from [`Graph::name_params`]).
    param_names: HashMap<TensorId, String>,
    /// Initializers already made from a tensor.
    stored: HashMap<TensorId, String>,
}

impl Graph {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            doc: String::new(),
            metadata: Vec::new(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            defined: HashSet::new(),
            param_names: HashMap::new(),
            stored: HashMap::new(),
        }
    }

    /// Tells the graph the parameter names of tensors (e.g. a network's variables by state-dict name), so
    /// [`Graph::param`] names their initializers after them.
    pub fn name_params(&mut self, named: impl IntoIterator<Item = (String, Tensor)>) {
        for (name, t) in named {
            self.param_names.insert(t.id(), name);
        }
    }

    /// The parameter name of `t`, if [`Graph::name_params`] gave one.
    pub fn param_name(&self, t: &Tensor) -> Option<&str> {
        self.param_names.get(&t.id()).map(String::as_str)
    }

    /// The module prefix of `t`'s parameter name (`layer1.0.conv1` for `layer1.0.conv1.weight`), else
    /// `fallback`: a readable base for the names of the nodes a layer emits.
    pub fn prefix_of(&self, t: &Tensor, fallback: &str) -> String {
        match self.param_name(t) {
            Some(n) => n.rsplit_once('.').map_or(n, |(p, _)| p).to_string(),
            None => fallback.to_string(),
        }
    }

    /// Sets the model's documentation string (what the inputs are, what preprocessing they need).
    pub fn set_doc(&mut self, doc: &str) {
        self.doc = doc.to_string();
    }

    /// Adds a `key: value` entry to the model's metadata (`metadata_props`).
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// A fresh value name based on `base`.
    fn fresh(&mut self, base: &str) -> String {
        let base = if base.is_empty() { "value" } else { base };
        let mut name = base.to_string();
        let mut i = 0;
        while self.defined.contains(&name) {
            i += 1;
            name = format!("{base}_{i}");
        }
        self.defined.insert(name.clone());
        name
    }

    /// Whether a value called `name` exists.
    pub fn has_value(&self, name: &str) -> bool {
        self.defined.contains(name)
    }

    /// Declares a graph input `name` (exactly that name) of element type `elem` and shape `dims`.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> Result<String> {
        if name.is_empty() || self.defined.contains(name) {
            return Err(Error::Name(format!(
                "input `{name}`: the name is empty or already used"
            )));
        }
        self.defined.insert(name.to_string());
        self.inputs.push(value_info(name, elem, dims));
        Ok(name.to_string())
    }

    /// Declares `value` a graph output called `name` with element type `elem` and shape `dims` (an
    /// `Identity` node renames it when the names differ).
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim]) -> Result<()> {
        if self.outputs.iter().any(|o| o.name == name) {
            return Err(Error::Name(format!("output `{name}` is declared twice")));
        }
        if value != name {
            if self.defined.contains(name) {
                return Err(Error::Name(format!(
                    "output `{name}`: another value already has this name"
                )));
            }
            self.check_defined("Identity", name, &[value])?;
            self.defined.insert(name.to_string());
            self.nodes.push(NodeProto {
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                name: name.to_string(),
                op_type: "Identity".into(),
                ..Default::default()
            });
        } else if !self.defined.contains(name) {
            return Err(Error::Name(format!(
                "output `{name}` names no value of the graph"
            )));
        }
        self.outputs.push(value_info(name, elem, dims));
        Ok(())
    }

    /// An initializer holding `t` (converted to f32), named after its parameter name (see
    /// [`Graph::name_params`]) or else `fallback`; the same tensor twice gives the same initializer.
    pub fn param(&mut self, t: &Tensor, fallback: &str) -> Result<String> {
        if let Some(name) = self.stored.get(&t.id()) {
            return Ok(name.clone());
        }
        let base = self
            .param_name(t)
            .map_or_else(|| fallback.to_string(), str::to_string);
        let name = self.fresh(&base);
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        self.initializers.push(f32_tensor(&name, t.dims(), &values));
        self.stored.insert(t.id(), name.clone());
        Ok(name)
    }

    /// An f32 constant of shape `dims` (empty for a scalar).
    pub fn const_f32(&mut self, base: &str, values: &[f32], dims: &[usize]) -> Result<String> {
        check_len(base, values.len(), dims)?;
        let name = self.fresh(base);
        self.initializers.push(f32_tensor(&name, dims, values));
        Ok(name)
    }

    /// An i64 constant of shape `dims` (empty for a scalar).
    pub fn const_i64(&mut self, base: &str, values: &[i64], dims: &[usize]) -> Result<String> {
        check_len(base, values.len(), dims)?;
        let name = self.fresh(base);
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: DataType::Int64 as i32,
            name: name.clone(),
            raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        Ok(name)
    }

    /// A 1-D i64 constant (axes, shapes, pads, ...).
    pub fn ints(&mut self, base: &str, values: &[i64]) -> Result<String> {
        self.const_i64(base, values, &[values.len()])
    }

    /// A node `op_type(inputs) {attrs}` with one output, named after `name`; returns the output's name.
    /// An empty input name is ONNX's "optional input left out".
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: &[Attr],
        name: &str,
    ) -> Result<String> {
        self.check_defined(op_type, name, inputs)?;
        let out = self.fresh(name);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op_type.to_string(),
            attribute: attrs.iter().map(Attr::proto).collect(),
            ..Default::default()
        });
        Ok(out)
    }

    fn check_defined(&self, op_type: &str, name: &str, inputs: &[&str]) -> Result<()> {
        match inputs
            .iter()
            .find(|i| !i.is_empty() && !self.defined.contains(**i))
        {
            Some(missing) => Err(Error::Name(format!(
                "node `{name}` ({op_type}) reads `{missing}`, which no input, initializer or earlier node defines"
            ))),
            None => Ok(()),
        }
    }

    /// Number of nodes so far.
    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// The model: IR version [`IR_VERSION`], opset [`OPSET`], producer `distill`. Fails when the graph has
    /// no input or no output.
    pub fn to_model(&self) -> Result<ModelProto> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Err(Error::Name(format!(
                "graph `{}` has {} inputs and {} outputs; it needs at least one of each",
                self.name,
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        Ok(ModelProto {
            ir_version: IR_VERSION,
            producer_name: "distill".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            domain: String::new(),
            model_version: 1,
            doc_string: self.doc.clone(),
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: self.name.clone(),
                initializer: self.initializers.clone(),
                doc_string: String::new(),
                input: self.inputs.clone(),
                output: self.outputs.clone(),
            }),
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            metadata_props: self
                .metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
        })
    }

    /// The model as protobuf bytes (the content of a `.onnx` file).
    pub fn encode(&self) -> Result<Vec<u8>> {
        Ok(self.to_model()?.encode_to_vec())
    }
}

fn check_len(base: &str, len: usize, dims: &[usize]) -> Result<()> {
    let n: usize = dims.iter().product();
    if n != len {
        return Err(Error::Name(format!(
            "constant `{base}`: {len} values for shape {dims:?}"
        )));
    }
    Ok(())
}

fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: DataType::Float as i32,
        name: name.to_string(),
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => dimension::Value::DimValue(*n as i64),
                Dim::Sym(s) => dimension::Value::DimParam(s.clone()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem.data_type() as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_are_unique_and_params_named_and_shared() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f32, 2.0]], &dev)?;
        let other = Tensor::new(&[3f32], &dev)?;
        let mut g = Graph::new("t");
        g.name_params([("fc.weight".to_string(), w.clone())]);
        let x = g.input("input", Elem::F32, &[Dim::batch(), 2.into()])?;
        assert_eq!(g.param(&w, "w")?, "fc.weight");
        assert_eq!(g.param(&w, "w")?, "fc.weight", "stored once");
        assert_eq!(g.param(&other, "fc.weight")?, "fc.weight_1");
        assert_eq!(g.prefix_of(&w, "x"), "fc");
        assert_eq!(g.prefix_of(&other, "x"), "x");
        let a = g.op("Relu", &[&x], &[], "fc")?;
        let b = g.op("Relu", &[&a], &[], "fc")?;
        assert_eq!((a.as_str(), b.as_str()), ("fc", "fc_1"));
        g.output(&b, "logits", Elem::F32, &[Dim::batch(), 2.into()])?;
        let m = g.to_model()?;
        let graph = m.graph.as_ref().unwrap();
        assert_eq!(graph.initializer.len(), 2);
        assert_eq!(graph.node.last().unwrap().op_type, "Identity");
        assert_eq!(graph.output[0].name, "logits");
        assert_eq!(m.opset_import[0].version, OPSET);
        // decoding the bytes gives the same model back
        let back = ModelProto::decode(g.encode()?.as_slice()).expect("decodes");
        assert_eq!(back, m);
        let raw = &graph.initializer[0].raw_data;
        assert_eq!(raw.len(), 8);
        assert_eq!(f32::from_le_bytes(raw[4..8].try_into().unwrap()), 2.0);
        Ok(())
    }

    #[test]
    fn mistakes_are_errors_naming_the_value() {
        let mut g = Graph::new("t");
        let e = g
            .op("Relu", &["nowhere"], &[], "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nowhere`") && e.contains("Relu"), "{e}");
        let e = g.to_model().unwrap_err().to_string();
        assert!(e.contains("0 inputs"), "{e}");
        g.input("x", Elem::F32, &[1.into()]).unwrap();
        assert!(g.input("x", Elem::I64, &[]).is_err());
        let e = g.output("y", "y", Elem::F32, &[]).unwrap_err().to_string();
        assert!(e.contains("`y`"), "{e}");
        g.output("x", "out", Elem::F32, &[1.into()]).unwrap();
        assert!(g.output("x", "out", Elem::F32, &[1.into()]).is_err());
        let e = g.const_f32("c", &[1.0, 2.0], &[3]).unwrap_err().to_string();
        assert!(e.contains("2 values for shape [3]"), "{e}");
    }
}
