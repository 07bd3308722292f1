//! Upstream-format copy of Cora: the Planetoid pickles `ind.cora.*`, written as Python 2's `cPickle`
//! (protocol 2) writes them: the same opcodes, memo numbering and batching as the real files.
//!
//! From the prepared folder alone the real files' bytes cannot all be recovered: `test.index` is in an
//! order the prepared `split_test.txt` (sorted) no longer holds, `tx` / `ty` follow that order, and the
//! `graph` lists keep duplicates and an order that `edges.tsv` dropped. These are written with the test
//! ids sorted and each neighbour list ascending and without duplicates (which converts to the same text),
//! and are returned as not byte-identical. `x`, `y`, `allx` and `ally` come out byte for byte as upstream.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

/// Number of bag-of-words features of Cora (the width of `x`, `tx`, `allx`).
pub const FEATURES: usize = 1433;

/// The file the card downloads directly (copied to the mirror unchanged).
pub const CITES: &str = "linqs_cora.cites";

/// The sources written here whose bytes differ from the real upstream files.
pub const NOT_IDENTICAL: [&str; 4] = [
    "ind.cora.graph",
    "ind.cora.test.index",
    "ind.cora.tx",
    "ind.cora.ty",
];

/// A protocol-2 pickle writer that numbers memo entries as `cPickle` does.
struct Writer {
    out: Vec<u8>,
    memo: u32,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            out: vec![0x80, 2],
            memo: 0,
        }
    }

    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    /// BINPUT / LONG_BINPUT of the next memo index.
    fn put(&mut self) {
        self.memo += 1;
        match u8::try_from(self.memo) {
            Ok(k) => self.out.extend_from_slice(&[b'q', k]),
            Err(_) => {
                self.out.push(b'r');
                self.out.extend_from_slice(&self.memo.to_le_bytes());
            }
        }
    }

    fn get(&mut self, k: u8) {
        self.out.extend_from_slice(&[b'h', k]);
    }

    fn int(&mut self, v: i64) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend_from_slice(&[b'K', b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(b'M');
            self.out.extend_from_slice(&w.to_le_bytes());
        } else if let Ok(d) = i32::try_from(v) {
            self.out.push(b'J');
            self.out.extend_from_slice(&d.to_le_bytes());
        } else {
            self.out.extend_from_slice(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn uint(&mut self, v: usize) {
        self.int(i64::try_from(v).unwrap_or(i64::MAX));
    }

    fn string(&mut self, s: &[u8]) {
        match u8::try_from(s.len()) {
            Ok(n) => self.out.extend_from_slice(&[b'U', n]),
            Err(_) => {
                self.out.push(b'T');
                let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
                self.out.extend_from_slice(&n.to_le_bytes());
            }
        }
        self.out.extend_from_slice(s);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    /// `_reconstruct(ndarray, (0,), 'b')`, `_reconstruct` and `ndarray` taken from the memo when given.
    fn reconstruct(&mut self, memo: Option<(u8, u8)>) {
        match memo {
            Some((r, n)) => {
                self.get(r);
                self.get(n);
            }
            None => {
                self.global("numpy.core.multiarray", "_reconstruct");
                self.put();
                self.global("numpy", "ndarray");
                self.put();
            }
        }
        self.int(0);
        self.op(0x85);
        self.string(b"b");
        self.op(0x87);
        self.op(b'R');
        self.put();
    }

    /// `numpy.dtype(code, 0, 1)` with its little-endian state (`dtype` from the memo when given).
    fn dtype(&mut self, code: &[u8], dtype_memo: Option<u8>) {
        match dtype_memo {
            Some(k) => self.get(k),
            None => {
                self.global("numpy", "dtype");
                self.put();
            }
        }
        self.string(code);
        self.int(0);
        self.int(1);
        self.op(0x87);
        self.op(b'R');
        self.put();
        self.op(b'(');
        self.int(3);
        self.string(b"<");
        self.op(b'N');
        self.op(b'N');
        self.op(b'N');
        self.int(-1);
        self.int(-1);
        self.int(0);
        self.op(b't');
        self.op(b'b');
    }

    /// The array state after the dtype: not Fortran, the raw bytes; closes the state tuple and BUILDs.
    fn raw(&mut self, raw: &[u8]) {
        self.op(0x89);
        self.string(raw);
        self.op(b't');
        self.op(b'b');
    }

    fn finish(mut self) -> Vec<u8> {
        self.op(b'.');
        self.out
    }
}

/// A `scipy.sparse.csr_matrix` of `rows.len()` x `cols` with ones at each row's (given, ascending)
/// column indices, pickled as the Planetoid files are.
pub fn csr_pickle(rows: &[Vec<usize>], cols: usize) -> Vec<u8> {
    let nnz: usize = rows.iter().map(Vec::len).sum();
    csr_pickle_values(rows, cols, &vec![1.0; nnz])
}

/// [`csr_pickle`] with the given values (`<f4`, one per index, in order).
pub fn csr_pickle_values(rows: &[Vec<usize>], cols: usize, values: &[f32]) -> Vec<u8> {
    let as_i32 = |v: usize| i32::try_from(v).unwrap_or(i32::MAX).to_le_bytes();
    let mut indptr = Vec::with_capacity(4 * (rows.len() + 1));
    let mut indices = Vec::new();
    let mut n = 0;
    indptr.extend_from_slice(&as_i32(0));
    for r in rows {
        n += r.len();
        indptr.extend_from_slice(&as_i32(n));
        for &c in r {
            indices.extend_from_slice(&as_i32(c));
        }
    }
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut w = Writer::new();
    w.global("scipy.sparse.csr", "csr_matrix");
    w.put(); // 1
    w.op(b')');
    w.op(0x81);
    w.put(); // 2
    w.op(b'}');
    w.put(); // 3
    w.op(b'(');
    w.string(b"format");
    w.put(); // 4
    w.string(b"csr");
    w.string(b"_shape");
    w.put(); // 5
    w.uint(rows.len());
    w.uint(cols);
    w.op(0x86);
    w.string(b"indptr");
    w.put(); // 6
    w.reconstruct(None); // 7, 8, 9
    w.op(b'(');
    w.int(1);
    w.uint(rows.len() + 1);
    w.op(0x85);
    w.dtype(b"i4", None); // 10, 11
    w.raw(&indptr);
    w.string(b"_cs_matrix__has_sorted_indices");
    w.put(); // 12
    w.op(0x88);
    w.string(b"indices");
    w.put(); // 13
    w.reconstruct(Some((7, 8))); // 14
    w.op(b'(');
    w.int(1);
    w.uint(n);
    w.op(0x85);
    w.get(11);
    w.raw(&indices);
    w.string(b"maxprint");
    w.put(); // 15
    w.int(50);
    w.string(b"data");
    w.put(); // 16
    w.reconstruct(Some((7, 8))); // 17
    w.op(b'(');
    w.int(1);
    w.uint(values.len());
    w.op(0x85);
    w.dtype(b"f4", Some(10)); // 18
    w.raw(&data);
    w.op(b'u');
    w.op(b'b');
    w.finish()
}

/// A one-hot `<i4` numpy matrix of `labels.len()` x `classes`, pickled as the Planetoid files are.
pub fn onehot_pickle(labels: &[usize], classes: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity(4 * labels.len() * classes);
    for &l in labels {
        for c in 0..classes {
            raw.extend_from_slice(&i32::from(c == l).to_le_bytes());
        }
    }
    let mut w = Writer::new();
    w.reconstruct(None); // 1, 2, 3
    w.op(b'(');
    w.int(1);
    w.uint(labels.len());
    w.uint(classes);
    w.op(0x86);
    w.dtype(b"i4", None); // 4, 5
    w.raw(&raw);
    w.finish()
}

/// A `collections.defaultdict(list)` `{i: adj[i]}` (keys ascending), pickled as the Planetoid graph is
/// (items and list elements in batches of 1000, a batch of one without MARK).
pub fn graph_pickle(adj: &[Vec<usize>]) -> Vec<u8> {
    let mut w = Writer::new();
    w.global("collections", "defaultdict");
    w.put();
    w.global("__builtin__", "list");
    w.put();
    w.op(0x85);
    w.op(b'R');
    w.put();
    let keys: Vec<usize> = (0..adj.len()).collect();
    for batch in keys.chunks(1000) {
        let many = batch.len() > 1;
        if many {
            w.op(b'(');
        }
        for &k in batch {
            w.uint(k);
            w.op(b']');
            w.put();
            for part in adj.get(k).map_or(&[][..], Vec::as_slice).chunks(1000) {
                if let [one] = part {
                    w.uint(*one);
                    w.op(b'a');
                } else {
                    w.op(b'(');
                    for &m in part {
                        w.uint(m);
                    }
                    w.op(b'e');
                }
            }
        }
        w.op(if many { b'u' } else { b's' });
    }
    w.finish()
}

/// The lines of `dir/name` (which must end in a newline), after an optional expected header.
fn lines(dir: &Path, name: &str, header: Option<&str>) -> Result<Vec<String>> {
    let p = dir.join(name);
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if let Some(h) = header {
        if lines.first().map(String::as_str) != Some(h) {
            bail!("{}: the first line is not `{h}`", p.display());
        }
        lines.remove(0);
    }
    Ok(lines)
}

fn num(s: &str, file: &str, line: usize) -> Result<usize> {
    s.parse()
        .map_err(|e| anyhow!("{file}: line {line}: '{s}' is not a number: {e}"))
}

/// Writes the upstream files of the prepared data set in `prepared` into `mirror` (= MIRROR/NAME/).
pub fn write_upstream(prepared: &Path, mirror: &Path) -> Result<Vec<String>> {
    // nodes.tsv: id, label, features
    let mut labels = Vec::new();
    let mut features = Vec::new();
    for (i, line) in lines(
        prepared,
        "nodes.tsv",
        Some("node_id\tlabel\tfeature_indices"),
    )?
    .iter()
    .enumerate()
    {
        let at = i + 2;
        let mut f = line.split('\t');
        let (Some(id), Some(label), Some(feats), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            bail!("nodes.tsv: line {at}: not 3 tab-separated fields");
        };
        if num(id, "nodes.tsv", at)? != labels.len() {
            bail!("nodes.tsv: line {at}: node ids are not 0, 1, 2, ...");
        }
        labels.push(num(label, "nodes.tsv", at)?);
        let feats: Vec<usize> = if feats.is_empty() {
            Vec::new()
        } else {
            feats
                .split(',')
                .map(|s| num(s, "nodes.tsv", at))
                .collect::<Result<_>>()?
        };
        if feats.iter().any(|&c| c >= FEATURES) {
            bail!("nodes.tsv: line {at}: a feature index is not below {FEATURES}");
        }
        features.push(feats);
    }
    let n = labels.len();
    let classes = lines(prepared, "classes.tsv", Some("label\tname\tcount"))?.len();
    if labels.iter().any(|&l| l >= classes) {
        bail!("nodes.tsv: a label is not below the {classes} classes of classes.tsv");
    }
    let ids = |name: &str| -> Result<Vec<usize>> {
        lines(prepared, name, None)?
            .iter()
            .enumerate()
            .map(|(i, s)| num(s, name, i + 1))
            .collect()
    };
    let train = ids("split_train.txt")?;
    let mut test = ids("split_test.txt")?;
    test.sort_unstable();
    let na = n
        .checked_sub(test.len())
        .ok_or_else(|| anyhow!("split_test.txt has more ids than nodes.tsv has nodes"))?;
    if test != (na..n).collect::<Vec<_>>() {
        bail!("split_test.txt is not the last {} nodes", test.len());
    }
    if train != (0..train.len()).collect::<Vec<_>>() || train.len() > na {
        bail!("split_train.txt is not 0, 1, 2, ... below the first test node");
    }
    let mut adj = vec![Vec::new(); n];
    for (i, line) in lines(prepared, "edges.tsv", Some("src\tdst"))?
        .iter()
        .enumerate()
    {
        let at = i + 2;
        let Some((a, b)) = line.split_once('\t') else {
            bail!("edges.tsv: line {at}: not 2 tab-separated fields");
        };
        let (a, b) = (num(a, "edges.tsv", at)?, num(b, "edges.tsv", at)?);
        if a >= n || b >= n {
            bail!("edges.tsv: line {at}: node id not below {n}");
        }
        adj[a].push(b);
        adj[b].push(a);
    }
    for l in &mut adj {
        l.sort_unstable();
        l.dedup();
    }

    std::fs::create_dir_all(mirror).with_context(|| format!("creating {}", mirror.display()))?;
    let nt = train.len();
    let test_index: String = test.iter().map(|t| format!("{t}\n")).collect();
    let files: [(&str, Vec<u8>); 8] = [
        ("ind.cora.x", csr_pickle(&features[..nt], FEATURES)),
        ("ind.cora.y", onehot_pickle(&labels[..nt], classes)),
        ("ind.cora.tx", csr_pickle(&features[na..], FEATURES)),
        ("ind.cora.ty", onehot_pickle(&labels[na..], classes)),
        ("ind.cora.allx", csr_pickle(&features[..na], FEATURES)),
        ("ind.cora.ally", onehot_pickle(&labels[..na], classes)),
        ("ind.cora.graph", graph_pickle(&adj)),
        ("ind.cora.test.index", test_index.into_bytes()),
    ];
    for (name, bytes) in files {
        let p = mirror.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    // the file the card downloads as it is
    let (from, to) = (prepared.join(CITES), mirror.join(CITES));
    std::fs::copy(&from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(NOT_IDENTICAL.iter().map(|s| s.to_string()).collect())
}
