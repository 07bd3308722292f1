//! A small, strict reader of Python pickles (protocols 0 to 2, binary opcodes only): just what the pickles
//! of numpy arrays, scipy CSR matrices and plain containers written by Python 2's `cPickle` use. Nothing is
//! executed: the virtual machine builds a tree of values (calls such as `numpy.dtype('f4')` stay
//! uninterpreted `Object` nodes), and the accessors below recognise the few shapes that matter here
//! (`numpy.ndarray`, `scipy.sparse.csr_matrix`). Every error names the file and the byte offset of the
//! opcode (or of the opcode that made the value) at fault; malformed input never panics.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};

/// The index of a value in [`Pickle`]'s arena.
pub type Id = usize;

/// An object's argument tuple items, BUILD state and SETITEM(S) items.
pub type ObjectParts<'a> = (&'a [Id], Option<Id>, &'a [(Id, Id)]);

/// How an [`Node::Object`] was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// `REDUCE`: `callable(*args)`.
    Reduce,
    /// `NEWOBJ`: `cls.__new__(cls, *args)`.
    NewObj,
}

/// One value of the unpickled tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer (BININT*, LONG1 up to 8 bytes).
    Int(i64),
    /// A Python 2 `str` (SHORT_BINSTRING, BINSTRING): raw bytes.
    Bytes(Vec<u8>),
    /// A `unicode` (BINUNICODE).
    Text(String),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict, items in pickle order.
    Dict(Vec<(Id, Id)>),
    /// A `module.name` reference (GLOBAL).
    Global {
        /// The module.
        module: String,
        /// The name in it.
        name: String,
    },
    /// The result of a call (REDUCE / NEWOBJ), with its BUILD state and any SETITEM(S) items.
    Object {
        /// REDUCE or NEWOBJ.
        made: Made,
        /// The callable (or class).
        callable: Id,
        /// The argument tuple.
        args: Id,
        /// The BUILD state, if any.
        state: Option<Id>,
        /// Items set on it with SETITEM(S) (e.g. a `collections.defaultdict`).
        items: Vec<(Id, Id)>,
    },
}

/// An unpickled value tree.
#[derive(Debug)]
pub struct Pickle {
    name: String,
    /// Each node with the offset of the opcode that made it.
    nodes: Vec<(usize, Node)>,
    root: Id,
}

/// The element type of a numpy array (little-endian only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// `<i4`.
    I4,
    /// `<i8`.
    I8,
    /// `<f4`.
    F4,
    /// `<f8`.
    F8,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::I4 | Dtype::F4 => 4,
            Dtype::I8 | Dtype::F8 => 8,
        }
    }
}

/// A numpy array as pickled: C order, little-endian, of a [`Dtype`].
#[derive(Debug, Clone, PartialEq)]
pub struct NdArray<'a> {
    /// The shape.
    pub shape: Vec<usize>,
    /// The element type.
    pub dtype: Dtype,
    /// The raw bytes (`product(shape) * dtype.size()` of them).
    pub data: &'a [u8],
}

impl NdArray<'_> {
    /// The elements as integers, in C order (`Err` for a float array).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match self.dtype {
            Dtype::I4 => Ok(self
                .data
                .chunks_exact(4)
                .map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect()),
            Dtype::I8 => Ok(self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect()),
            other => bail!("expected an integer array, found dtype {other:?}"),
        }
    }

    /// The elements as f64, in C order (integers converted).
    pub fn to_f64(&self) -> Vec<f64> {
        match self.dtype {
            Dtype::F4 => self
                .data
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect(),
            Dtype::F8 => self
                .data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            Dtype::I4 | Dtype::I8 => self
                .to_i64()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v as f64)
                .collect(),
        }
    }
}

/// A scipy CSR matrix, checked: `indptr` has `rows + 1` non-decreasing entries from 0 to `nnz`, every
/// column index is below `cols`.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row pointers (`rows + 1`).
    pub indptr: Vec<usize>,
    /// Column indices (`nnz`).
    pub indices: Vec<usize>,
    /// Values (`nnz`).
    pub data: Vec<f64>,
}

impl Csr {
    /// Row `r`'s column indices and values (empty past the last row).
    pub fn row(&self, r: usize) -> (&[usize], &[f64]) {
        let (Some(&a), Some(&b)) = (self.indptr.get(r), self.indptr.get(r + 1)) else {
            return (&[], &[]);
        };
        (
            self.indices.get(a..b).unwrap_or(&[]),
            self.data.get(a..b).unwrap_or(&[]),
        )
    }
}

/// The name of pickle opcode `op` (for errors), or "unknown".
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

/// The virtual machine's state while parsing.
struct Vm<'a> {
    name: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run.
    at: usize,
    nodes: Vec<(usize, Node)>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
}

impl Vm<'_> {
    fn err(&self, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: offset {}: {msg}", self.name, self.at)
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(self.err(format!(
                "{} needs {n} more bytes but the file ends at {}",
                opcode_name(self.bytes.get(self.at).copied().unwrap_or(0)),
                self.bytes.len()
            )));
        };
        let s = self.bytes.get(self.pos..end).unwrap_or(&[]);
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32> {
        let b = self.take(4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `\n`-terminated ASCII line (GLOBAL's module and name).
    fn line(&mut self) -> Result<String> {
        let rest = self.bytes.get(self.pos..).unwrap_or(&[]);
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.err("GLOBAL: no newline before the end of the file"));
        };
        let s = self.take(n + 1)?;
        let s = s.get(..n).unwrap_or(&[]);
        if !s.iter().all(|b| b.is_ascii_graphic()) {
            return Err(self.err("GLOBAL: module or name is not printable ASCII"));
        }
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn push(&mut self, node: Node) {
        self.nodes.push((self.at, node));
        self.stack.push(self.nodes.len() - 1);
    }

    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.base() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("no MARK to pop to"));
        };
        Ok(self.stack.split_off(m.min(self.stack.len())))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let Some(&id) = self.memo.get(&key) else {
            return Err(self.err(format!("memo entry {key} was never stored")));
        };
        self.stack.push(id);
        Ok(())
    }

    fn node_mut(&mut self, id: Id) -> Result<&mut Node> {
        let at = self.at;
        let name = self.name;
        self.nodes
            .get_mut(id)
            .map(|(_, n)| n)
            .ok_or_else(|| anyhow!("{name}: offset {at}: no value {id}"))
    }

    fn set_items(&mut self, pairs: Vec<Id>) -> Result<()> {
        if !pairs.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS: odd number of keys and values"));
        }
        let target = self.top()?;
        let pairs: Vec<(Id, Id)> = pairs.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        let e = self.err("SETITEM(S) on a value that is not a dict or an object");
        match self.node_mut(target)? {
            Node::Dict(items) | Node::Object { items, .. } => {
                items.extend(pairs);
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn append(&mut self, values: Vec<Id>) -> Result<()> {
        let target = self.top()?;
        let e = self.err("APPEND(S) on a value that is not a list");
        match self.node_mut(target)? {
            Node::List(items) => {
                items.extend(values);
                Ok(())
            }
            _ => Err(e),
        }
    }

    fn call(&mut self, made: Made) -> Result<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        if !matches!(self.nodes.get(args), Some((_, Node::Tuple(_)))) {
            return Err(self.err("the arguments of REDUCE / NEWOBJ are not a tuple"));
        }
        self.push(Node::Object {
            made,
            callable,
            args,
            state: None,
            items: Vec::new(),
        });
        Ok(())
    }

    fn run(mut self) -> Result<Pickle> {
        loop {
            self.at = self.pos;
            let Some(&op) = self.bytes.get(self.pos) else {
                return Err(self.err("the file ends without STOP"));
            };
            self.pos += 1;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 2 {
                        return Err(self.err(format!("protocol {v} (only 0 to 2 are read)")));
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Node::Global { module, name });
                }
                b'q' => {
                    let k = self.u8()?;
                    self.memo_put(u32::from(k))?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()?;
                    self.memo_get(u32::from(k))?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'(' => self.marks.push(self.stack.len()),
                b')' => self.push(Node::Tuple(Vec::new())),
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Node::Tuple(items));
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Node::Tuple(items));
                }
                b'}' => self.push(Node::Dict(Vec::new())),
                b']' => self.push(Node::List(Vec::new())),
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.append(vec![v])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?;
                }
                b'U' => {
                    let n = usize::from(self.u8()?);
                    let s = self.take(n)?.to_vec();
                    self.push(Node::Bytes(s));
                }
                b'T' => {
                    let n = self.i32()?;
                    let Ok(n) = usize::try_from(n) else {
                        return Err(self.err(format!("BINSTRING: negative length {n}")));
                    };
                    let s = self.take(n)?.to_vec();
                    self.push(Node::Bytes(s));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let s = self.take(n)?.to_vec();
                    let Ok(s) = String::from_utf8(s) else {
                        return Err(self.err("BINUNICODE: not valid UTF-8"));
                    };
                    self.push(Node::Text(s));
                }
                b'J' => {
                    let v = self.i32()?;
                    self.push(Node::Int(i64::from(v)));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(i64::from(v)));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Node::Int(i64::from(v)));
                }
                0x8a => {
                    let n = usize::from(self.u8()?);
                    if n > 8 {
                        return Err(self.err(format!("LONG1 of {n} bytes (at most 8 are read)")));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= i64::from(x) << (8 * i);
                    }
                    // sign-extend from the top byte
                    if n > 0 && n < 8 && b.last().is_some_and(|&x| x & 0x80 != 0) {
                        v |= -1i64 << (8 * n);
                    }
                    self.push(Node::Int(v));
                }
                b'N' => self.push(Node::None),
                0x88 => self.push(Node::Bool(true)),
                0x89 => self.push(Node::Bool(false)),
                b'R' => self.call(Made::Reduce)?,
                0x81 => self.call(Made::NewObj)?,
                b'b' => {
                    let st = self.pop()?;
                    let target = self.top()?;
                    let e_twice = self.err("BUILD on an object that already has a state");
                    let e_kind = self.err("BUILD on a value that is not an object");
                    match self.node_mut(target)? {
                        Node::Object { state: Some(_), .. } => return Err(e_twice),
                        Node::Object { state, .. } => *state = Some(st),
                        _ => return Err(e_kind),
                    }
                }
                b'.' => {
                    let root = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.err("STOP with values or marks left on the stack"));
                    }
                    if self.pos != self.bytes.len() {
                        return Err(
                            self.err(format!("{} bytes after STOP", self.bytes.len() - self.pos))
                        );
                    }
                    return Ok(Pickle {
                        name: self.name.to_string(),
                        nodes: self.nodes,
                        root,
                    });
                }
                other => {
                    return Err(self.err(format!(
                        "opcode 0x{other:02x} ({}) is not supported",
                        opcode_name(other)
                    )))
                }
            }
        }
    }
}

impl Pickle {
    /// Runs the pickle in `bytes` (from the file `name`, named in errors) and keeps the value tree.
    pub fn parse(name: &str, bytes: &[u8]) -> Result<Pickle> {
        Vm {
            name,
            bytes,
            pos: 0,
            at: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
        .run()
    }

    /// The unpickled value.
    pub fn root(&self) -> Id {
        self.root
    }

    /// The file name given to [`Pickle::parse`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Value `id` (`Node::None` for an id not in the arena, which no accessor hands out).
    pub fn node(&self, id: Id) -> &Node {
        self.nodes.get(id).map_or(&Node::None, |(_, n)| n)
    }

    /// An error about value `id`, naming the file and the offset of the opcode that made it.
    pub fn err(&self, id: Id, msg: impl std::fmt::Display) -> anyhow::Error {
        let at = self.nodes.get(id).map_or(0, |(at, _)| *at);
        anyhow!("{}: value made at offset {at}: {msg}", self.name)
    }

    /// Value `id` as an integer.
    pub fn int(&self, id: Id) -> Result<i64> {
        match self.node(id) {
            Node::Int(v) => Ok(*v),
            other => Err(self.err(id, format!("expected an integer, found {}", kind(other)))),
        }
    }

    /// Value `id` as a non-negative integer that fits `usize`.
    pub fn usize(&self, id: Id) -> Result<usize> {
        let v = self.int(id)?;
        usize::try_from(v).map_err(|_| self.err(id, format!("expected a count, found {v}")))
    }

    /// Value `id` as a boolean.
    pub fn bool(&self, id: Id) -> Result<bool> {
        match self.node(id) {
            Node::Bool(v) => Ok(*v),
            other => Err(self.err(id, format!("expected a boolean, found {}", kind(other)))),
        }
    }

    /// Value `id` as a string's bytes (a Python 2 `str`, or a `unicode` as UTF-8).
    pub fn bytes(&self, id: Id) -> Result<&[u8]> {
        match self.node(id) {
            Node::Bytes(b) => Ok(b),
            Node::Text(s) => Ok(s.as_bytes()),
            other => Err(self.err(id, format!("expected a string, found {}", kind(other)))),
        }
    }

    /// Value `id` as a tuple's items.
    pub fn tuple(&self, id: Id) -> Result<&[Id]> {
        match self.node(id) {
            Node::Tuple(t) => Ok(t),
            other => Err(self.err(id, format!("expected a tuple, found {}", kind(other)))),
        }
    }

    /// Value `id` as a tuple of exactly `n` items.
    pub fn tuple_n(&self, id: Id, n: usize) -> Result<&[Id]> {
        let t = self.tuple(id)?;
        if t.len() != n {
            return Err(self.err(id, format!("expected a tuple of {n}, found {}", t.len())));
        }
        Ok(t)
    }

    /// Value `id` as a list's items.
    pub fn list(&self, id: Id) -> Result<&[Id]> {
        match self.node(id) {
            Node::List(t) => Ok(t),
            other => Err(self.err(id, format!("expected a list, found {}", kind(other)))),
        }
    }

    /// Whether value `id` is the global `module.name`.
    pub fn is_global(&self, id: Id, module: &str, name: &str) -> bool {
        matches!(self.node(id), Node::Global { module: m, name: n } if m == module && n == name)
    }

    /// Checks that value `id` is the global `module.name`.
    pub fn expect_global(&self, id: Id, module: &str, name: &str) -> Result<()> {
        match self.node(id) {
            _ if self.is_global(id, module, name) => Ok(()),
            Node::Global { module: m, name: n } => {
                Err(self.err(id, format!("expected {module}.{name}, found {m}.{n}")))
            }
            other => Err(self.err(
                id,
                format!("expected {module}.{name}, found {}", kind(other)),
            )),
        }
    }

    /// Value `id` as an object made by calling the global `module.name`: its (args, state, items).
    pub fn object_of(&self, id: Id, module: &str, name: &str) -> Result<ObjectParts<'_>> {
        match self.node(id) {
            Node::Object {
                callable,
                args,
                state,
                items,
                ..
            } => {
                self.expect_global(*callable, module, name)?;
                Ok((self.tuple(*args)?, *state, items))
            }
            other => Err(self.err(
                id,
                format!("expected a {module}.{name} object, found {}", kind(other)),
            )),
        }
    }

    /// Value `id` as a `numpy.dtype` (`numpy.dtype('i4', 0, 1)` with state `(3, '<', ...)`).
    pub fn dtype(&self, id: Id) -> Result<Dtype> {
        let (args, state, items) = self.object_of(id, "numpy", "dtype")?;
        if !items.is_empty() {
            return Err(self.err(id, "numpy.dtype with items"));
        }
        let [code, _, _] = args else {
            return Err(self.err(
                id,
                format!("numpy.dtype with {} arguments, not 3", args.len()),
            ));
        };
        let code = self.bytes(*code)?;
        let Some(state) = state else {
            return Err(self.err(id, "numpy.dtype without a state"));
        };
        let st = self.tuple(state)?;
        let (Some(&version), Some(&order)) = (st.first(), st.get(1)) else {
            return Err(self.err(state, "numpy.dtype state shorter than 2"));
        };
        let version = self.int(version)?;
        if !(3..=4).contains(&version) {
            return Err(self.err(state, format!("numpy.dtype state version {version}")));
        }
        let order = self.bytes(order)?;
        let dt = match code {
            b"i4" => Dtype::I4,
            b"i8" => Dtype::I8,
            b"f4" => Dtype::F4,
            b"f8" => Dtype::F8,
            other => {
                return Err(self.err(
                    id,
                    format!(
                        "numpy dtype '{}' (only i4, i8, f4, f8 are read)",
                        String::from_utf8_lossy(other)
                    ),
                ))
            }
        };
        if order != b"<" {
            return Err(self.err(
                state,
                format!(
                    "numpy dtype byte order '{}' (only little-endian '<' is read)",
                    String::from_utf8_lossy(order)
                ),
            ));
        }
        Ok(dt)
    }

    /// Value `id` as a numpy array (`numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')` with
    /// state `(1, shape, dtype, is_fortran, raw bytes)`); C order required unless at most 1-D.
    pub fn ndarray(&self, id: Id) -> Result<NdArray<'_>> {
        let (args, state, items) = self.object_of(id, "numpy.core.multiarray", "_reconstruct")?;
        if !items.is_empty() {
            return Err(self.err(id, "numpy array with items"));
        }
        let [cls, _, _] = args else {
            return Err(self.err(
                id,
                format!("_reconstruct with {} arguments, not 3", args.len()),
            ));
        };
        self.expect_global(*cls, "numpy", "ndarray")?;
        let Some(state) = state else {
            return Err(self.err(id, "numpy array without a state"));
        };
        let st = self.tuple_n(state, 5)?;
        let [version, shape, dtype, fortran, raw] = st else {
            return Err(self.err(state, "numpy array state is not a 5-tuple"));
        };
        let version = self.int(*version)?;
        if version != 1 {
            return Err(self.err(state, format!("numpy array state version {version}")));
        }
        let shape: Vec<usize> = self
            .tuple(*shape)?
            .iter()
            .map(|&d| self.usize(d))
            .collect::<Result<_>>()?;
        let dtype = self.dtype(*dtype)?;
        if self.bool(*fortran)? && shape.len() > 1 {
            return Err(self.err(state, "Fortran-ordered numpy array"));
        }
        let data = self.bytes(*raw)?;
        let want = shape
            .iter()
            .try_fold(dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(state, format!("numpy array shape {shape:?} overflows")))?;
        if data.len() != want {
            return Err(self.err(
                *raw,
                format!(
                    "numpy array of shape {shape:?} and dtype {dtype:?} needs {want} bytes, has {}",
                    data.len()
                ),
            ));
        }
        Ok(NdArray { shape, dtype, data })
    }

    /// Value `id` as a 1-D numpy array of non-negative integers.
    fn index_array(&self, id: Id, what: &str) -> Result<Vec<usize>> {
        let a = self.ndarray(id)?;
        if a.shape.len() != 1 {
            return Err(self.err(
                id,
                format!("{what}: expected a 1-D array, shape {:?}", a.shape),
            ));
        }
        a.to_i64()
            .map_err(|e| self.err(id, format!("{what}: {e}")))?
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                usize::try_from(v)
                    .map_err(|_| self.err(id, format!("{what}[{i}] = {v} is negative")))
            })
            .collect()
    }

    /// Value `id` as a `scipy.sparse.csr.csr_matrix` (NEWOBJ with no arguments, BUILD with the dict of
    /// `format`, `_shape`, `indptr`, `indices`, `data`, and optionally `maxprint` and the sorted-indices
    /// flags), checked.
    pub fn csr_matrix(&self, id: Id) -> Result<Csr> {
        let (args, state, items) = self.object_of(id, "scipy.sparse.csr", "csr_matrix")?;
        if !args.is_empty() || !items.is_empty() {
            return Err(self.err(id, "csr_matrix with constructor arguments or items"));
        }
        let Some(state) = state else {
            return Err(self.err(id, "csr_matrix without a state"));
        };
        let Node::Dict(entries) = self.node(state) else {
            return Err(self.err(state, "csr_matrix state is not a dict"));
        };
        let (mut format, mut shape, mut indptr, mut indices, mut data) =
            (None, None, None, None, None);
        for &(k, v) in entries {
            let slot = match self.bytes(k)? {
                b"format" => &mut format,
                b"_shape" => &mut shape,
                b"indptr" => &mut indptr,
                b"indices" => &mut indices,
                b"data" => &mut data,
                b"maxprint"
                | b"_cs_matrix__has_sorted_indices"
                | b"_has_sorted_indices"
                | b"_has_canonical_format" => continue,
                other => {
                    return Err(self.err(
                        k,
                        format!(
                            "csr_matrix: unexpected attribute '{}'",
                            String::from_utf8_lossy(other)
                        ),
                    ))
                }
            };
            if slot.replace(v).is_some() {
                return Err(self.err(k, "csr_matrix: attribute given twice"));
            }
        }
        let need = |slot: Option<Id>, what: &str| {
            slot.ok_or_else(|| self.err(state, format!("csr_matrix without '{what}'")))
        };
        let format = need(format, "format")?;
        if self.bytes(format)? != b"csr" {
            return Err(self.err(format, "csr_matrix whose format is not 'csr'"));
        }
        let shape = need(shape, "_shape")?;
        let dims = self.tuple_n(shape, 2)?;
        let (rows, cols) = match dims {
            [r, c] => (self.usize(*r)?, self.usize(*c)?),
            _ => return Err(self.err(shape, "csr_matrix shape is not a pair")),
        };
        let indptr_id = need(indptr, "indptr")?;
        let indptr = self.index_array(indptr_id, "indptr")?;
        let indices_id = need(indices, "indices")?;
        let indices = self.index_array(indices_id, "indices")?;
        let data_id = need(data, "data")?;
        let data_arr = self.ndarray(data_id)?;
        if data_arr.shape.len() != 1 {
            return Err(self.err(data_id, "csr_matrix data is not 1-D"));
        }
        let data = data_arr.to_f64();
        if indptr.len() != rows.saturating_add(1) {
            return Err(self.err(
                indptr_id,
                format!("indptr has {} entries for {rows} rows", indptr.len()),
            ));
        }
        if indptr.first() != Some(&0) || indptr.windows(2).any(|w| w[0] > w[1]) {
            return Err(self.err(indptr_id, "indptr does not rise from 0"));
        }
        let nnz = indptr.last().copied().unwrap_or(0);
        if indices.len() != nnz || data.len() != nnz {
            return Err(self.err(
                indices_id,
                format!(
                    "indptr ends at {nnz} but there are {} indices and {} values",
                    indices.len(),
                    data.len()
                ),
            ));
        }
        if let Some((i, c)) = indices.iter().enumerate().find(|(_, &c)| c >= cols) {
            return Err(self.err(
                indices_id,
                format!("indices[{i}] = {c} is not below the {cols} columns"),
            ));
        }
        Ok(Csr {
            rows,
            cols,
            indptr,
            indices,
            data,
        })
    }
}

/// A short name of a node's kind, for errors.
fn kind(n: &Node) -> &'static str {
    match n {
        Node::None => "None",
        Node::Bool(_) => "a boolean",
        Node::Int(_) => "an integer",
        Node::Bytes(_) => "a string",
        Node::Text(_) => "a unicode string",
        Node::Tuple(_) => "a tuple",
        Node::List(_) => "a list",
        Node::Dict(_) => "a dict",
        Node::Global { .. } => "a global",
        Node::Object { .. } => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Result<Pickle> {
        Pickle::parse("t.pkl", b)
    }

    fn err(b: &[u8]) -> String {
        format!("{:#}", parse(b).expect_err("should fail"))
    }

    #[test]
    fn ints_and_strings() {
        let p = parse(b"\x80\x02(K\x05M\x00\x01J\xff\xff\xff\xff\x8a\x02\x00\x80U\x02hiX\x02\x00\x00\x00\xc3\xa9N\x88t.")
            .unwrap();
        let t = p.tuple(p.root()).unwrap().to_vec();
        assert_eq!(p.int(t[0]).unwrap(), 5);
        assert_eq!(p.int(t[1]).unwrap(), 256);
        assert_eq!(p.int(t[2]).unwrap(), -1);
        assert_eq!(p.int(t[3]).unwrap(), -32768);
        assert_eq!(p.bytes(t[4]).unwrap(), b"hi");
        assert_eq!(p.bytes(t[5]).unwrap(), "é".as_bytes());
        assert_eq!(p.node(t[6]), &Node::None);
        assert!(p.bool(t[7]).unwrap());
    }

    #[test]
    fn memo_shares_mutable_values() {
        // l = []; memo 1 = l; d = {'a': l}; append 7 to l afterwards through the memo
        let p = parse(b"\x80\x02}q\x00U\x01a]q\x01sh\x01K\x07a0.");
        // POP ('0') is not supported: the error names it and its offset
        let e = format!("{:#}", p.expect_err("POP"));
        assert!(e.contains("t.pkl: offset 17: opcode 0x30 (POP)"), "{e}");
        let p = parse(b"\x80\x02(}q\x00U\x01a]q\x01sh\x01K\x07at.").unwrap();
        let t = p.tuple(p.root()).unwrap().to_vec();
        let Node::Dict(items) = p.node(t[0]) else {
            panic!("not a dict")
        };
        let l = p.list(items[0].1).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(p.int(l[0]).unwrap(), 7);
        assert_eq!(t[1], items[0].1);
    }

    #[test]
    fn malformed_input_names_offset() {
        assert!(err(b"").contains("t.pkl: offset 0: the file ends without STOP"));
        assert!(err(b"\x80\x03N.").contains("offset 0: protocol 3"));
        assert!(err(b"\x80\x02T\x10\x00\x00\x00abc.")
            .contains("offset 2: BINSTRING needs 16 more bytes"));
        assert!(err(b"\x80\x02T\xff\xff\xff\xffabc.").contains("negative length"));
        assert!(err(b"\x80\x02h\x03.").contains("offset 2: memo entry 3 was never stored"));
        assert!(err(b"\x80\x02t.").contains("offset 2: no MARK"));
        assert!(err(b"\x80\x02(\x85.").contains("offset 3: stack underflow"));
        assert!(err(b"\x80\x02NN.").contains("offset 4: STOP with values"));
        assert!(err(b"\x80\x02N.x").contains("1 bytes after STOP"));
        assert!(err(b"\x80\x02NNa.").contains("APPEND(S) on a value that is not a list"));
        assert!(err(b"\x80\x02]N.").contains("stack"));
        assert!(err(b"\x80\x02cnumpy\n").contains("GLOBAL: no newline"));
        assert!(err(b"\x80\x02\x8a\x09").contains("LONG1 of 9 bytes"));
        assert!(err(b"\x80\x02NNR.").contains("REDUCE / NEWOBJ are not a tuple"));
        assert!(err(b"\x80\x02\x95").contains("opcode 0x95 (FRAME) is not supported"));
        assert!(err(b"\x80\x02NNb.").contains("BUILD on a value that is not an object"));
    }

    /// `numpy.array([[1, 2], [3, 4]], dtype='<i4')` as Python 2 pickles it, with `dtype` and raw bytes
    /// given.
    fn array_pickle(code: &[u8], order: &[u8], shape: &[u8], raw: &[u8]) -> Vec<u8> {
        let mut b = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03(K\x01".to_vec();
        b.extend_from_slice(shape);
        b.extend_from_slice(b"cnumpy\ndtype\nq\x04U");
        b.push(code.len() as u8);
        b.extend_from_slice(code);
        b.extend_from_slice(b"K\x00K\x01\x87Rq\x05(K\x03U");
        b.push(order.len() as u8);
        b.extend_from_slice(order);
        b.extend_from_slice(b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U");
        b.push(raw.len() as u8);
        b.extend_from_slice(raw);
        b.extend_from_slice(b"tb.");
        b
    }

    #[test]
    fn ndarray() {
        let raw: Vec<u8> = [1i32, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let p = Pickle::parse("a", &array_pickle(b"i4", b"<", b"K\x02K\x02\x86", &raw)).unwrap();
        let a = p.ndarray(p.root()).unwrap();
        assert_eq!(a.shape, vec![2, 2]);
        assert_eq!(a.to_i64().unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(a.to_f64(), vec![1.0, 2.0, 3.0, 4.0]);

        let e = |b: Vec<u8>| {
            let p = Pickle::parse("a", &b).unwrap();
            format!("{:#}", p.ndarray(p.root()).expect_err("bad array"))
        };
        let msg = e(array_pickle(b"i4", b"<", b"K\x02K\x03\x86", &raw));
        assert!(msg.contains("needs 24 bytes, has 16"), "{msg}");
        let msg = e(array_pickle(b"i4", b">", b"K\x02K\x02\x86", &raw));
        assert!(msg.contains("byte order '>'"), "{msg}");
        let msg = e(array_pickle(b"O8", b"|", b"K\x02K\x02\x86", &raw));
        assert!(msg.contains("numpy dtype 'O8'"), "{msg}");
        let msg = e(array_pickle(
            b"i4",
            b"<",
            b"J\xff\xff\xff\xffK\x02\x86",
            &raw,
        ));
        assert!(msg.contains("expected a count, found -1"), "{msg}");
    }
}
