//! Graphs: the node-classification data (features, labels, splits, undirected adjacency) and its readers.
//!
//! # The graph folder format (Cora's, and the one for your own graphs)
//!
//! A folder holding five UTF-8, tab-separated text files:
//!
//! * `nodes.tsv`: header `node_id\tlabel\tfeature_indices`, then one row per node. Node ids are `0..N-1`,
//!   each exactly once (any order). `label` is a class id `0..C-1`, or empty / `-1` for an unlabelled node.
//!   `feature_indices` is a comma-separated list of 0-based feature indices that are 1 (bag-of-words), or of
//!   `index:value` pairs for real-valued features; every other feature is 0. It may be empty.
//! * `edges.tsv`: header `src\tdst`, one edge per line. Edges are undirected (each pair is used both ways);
//!   duplicates and self-loops are dropped (GCN adds its own self-loops).
//! * `split_train.txt`, `split_val.txt`, `split_test.txt`: one node id per line. Each must be non-empty,
//!   name labelled nodes only, and no node may be in two splits.
//!
//! Every error names the file, the line and the problem.
//!
//! Features may be row-normalised (each row divided by its sum, as Kipf & Welling do) at load time.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use candle_core::{Device, Tensor};
use distill_core::{Error, Result, Rng};

pub mod sparse;

use sparse::{propagate, EdgeSet};

/// Undirected adjacency in compressed sparse rows: the neighbours of node `i` are
/// `neighbors[offsets[i]..offsets[i + 1]]`, sorted, without self-loops or duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjacency {
    /// Row offsets, `N + 1` entries.
    pub offsets: Vec<usize>,
    /// Neighbour ids.
    pub neighbors: Vec<u32>,
}

impl Adjacency {
    /// From undirected pairs over `n` nodes (each pair is added both ways; self-loops and duplicates dropped).
    pub fn from_pairs(n: usize, pairs: &[(u32, u32)]) -> Self {
        let mut deg = vec![0usize; n];
        for &(a, b) in pairs {
            if a != b {
                deg[a as usize] += 1;
                deg[b as usize] += 1;
            }
        }
        let mut offsets = vec![0usize; n + 1];
        for i in 0..n {
            offsets[i + 1] = offsets[i] + deg[i];
        }
        let mut fill = offsets.clone();
        let mut neighbors = vec![0u32; offsets[n]];
        for &(a, b) in pairs {
            if a != b {
                neighbors[fill[a as usize]] = b;
                fill[a as usize] += 1;
                neighbors[fill[b as usize]] = a;
                fill[b as usize] += 1;
            }
        }
        // sort and deduplicate each row
        let mut out_offsets = vec![0usize; n + 1];
        let mut out = Vec::with_capacity(neighbors.len());
        for i in 0..n {
            let row = &mut neighbors[offsets[i]..offsets[i + 1]];
            row.sort_unstable();
            let mut last = None;
            for &v in row.iter() {
                if Some(v) != last {
                    out.push(v);
                    last = Some(v);
                }
            }
            out_offsets[i + 1] = out.len();
        }
        Self {
            offsets: out_offsets,
            neighbors: out,
        }
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of undirected edges.
    pub fn num_edges(&self) -> usize {
        self.neighbors.len() / 2
    }

    /// Neighbours of node `i`.
    pub fn neighbors(&self, i: usize) -> &[u32] {
        &self.neighbors[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Degree of node `i` (without a self-loop).
    pub fn degree(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }
}

/// The edges a model runs on for a set of nodes: the whole graph, or the `k`-hop neighbourhood of a few
/// target nodes (renumbered locally, with edge weights from the *whole* graph's degrees, so the targets'
/// outputs are exactly those of a full-graph pass).
#[derive(Debug)]
pub struct View {
    /// Global ids of the view's nodes, in local order (`None`: all nodes, local id = global id).
    pub nodes: Option<Tensor>,
    /// Number of nodes in the view.
    pub num_nodes: usize,
    /// GCN edges `A + I` (self-loops included), unweighted: the normalisation is [`View::gcn_norm`].
    pub gcn: EdgeSet,
    /// `1/sqrt(d_i + 1)` per node (whole-graph degree `d_i`), `[n, 1]`: `D^-1/2 (A + I) D^-1/2 x` is
    /// `gcn_norm ⊙ ((A + I)(gcn_norm ⊙ x))`, so no per-edge tensor is ever multiplied.
    pub gcn_norm: Tensor,
    /// Neighbour edges (no self-loops), unweighted.
    pub neighbors: EdgeSet,
    /// `1/d_i` per node (0 for an isolated node), `[n, 1]`: the mean over neighbours is `mean_norm ⊙ (A x)`.
    pub mean_norm: Tensor,
}

impl View {
    /// `D^-1/2 (A + I) D^-1/2 x` over this view.
    pub fn gcn_propagate(&self, x: &Tensor) -> Result<Tensor> {
        let y = propagate(&x.broadcast_mul(&self.gcn_norm)?, &self.gcn, self.num_nodes)?;
        Ok(y.broadcast_mul(&self.gcn_norm)?)
    }

    /// The mean of each node's neighbours' rows of `x`.
    pub fn mean_propagate(&self, x: &Tensor) -> Result<Tensor> {
        Ok(propagate(x, &self.neighbors, self.num_nodes)?.broadcast_mul(&self.mean_norm)?)
    }
}

/// A node-classification graph.
pub struct Graph {
    /// Data set name.
    pub name: String,
    /// Node features `[N, F]`, f32.
    pub features: Tensor,
    /// Number of features F.
    pub num_features: usize,
    /// Number of classes C.
    pub num_classes: usize,
    /// Class of each node (`None`: unlabelled).
    pub labels: Vec<Option<u32>>,
    /// Training nodes.
    pub train: Vec<u32>,
    /// Validation nodes.
    pub val: Vec<u32>,
    /// Test nodes.
    pub test: Vec<u32>,
    /// Undirected adjacency.
    pub adj: Adjacency,
    full: OnceLock<Arc<View>>,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Graph({}: {} nodes, {} edges, {} features, {} classes)",
            self.name,
            self.num_nodes(),
            self.adj.num_edges(),
            self.num_features,
            self.num_classes
        )
    }
}

impl Graph {
    /// A graph from its parts (checked: shapes, ids, labels and splits).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: &str,
        features: Tensor,
        num_classes: usize,
        labels: Vec<Option<u32>>,
        adj: Adjacency,
        train: Vec<u32>,
        val: Vec<u32>,
        test: Vec<u32>,
    ) -> Result<Self> {
        let (n, f) = features.dims2()?;
        if labels.len() != n || adj.num_nodes() != n {
            return Err(Error::Shape(format!(
                "graph `{name}`: {n} feature rows, {} labels, {} adjacency rows",
                labels.len(),
                adj.num_nodes()
            )));
        }
        Ok(Self {
            name: name.to_string(),
            features,
            num_features: f,
            num_classes,
            labels,
            train,
            val,
            test,
            adj,
            full: OnceLock::new(),
        })
    }

    /// Number of nodes.
    pub fn num_nodes(&self) -> usize {
        self.adj.num_nodes()
    }

    /// The device the features live on.
    pub fn device(&self) -> &Device {
        self.features.device()
    }

    /// The whole graph as a [`View`] (built once).
    pub fn full_view(&self) -> Result<Arc<View>> {
        if let Some(v) = self.full.get() {
            return Ok(v.clone());
        }
        let n = self.num_nodes();
        let all: Vec<u32> = (0..n as u32).collect();
        let v = Arc::new(self.view_of(None, &all, &vec![true; n])?);
        Ok(self.full.get_or_init(|| v).clone())
    }

    /// Edges among `local` (global ids in local order); `inner[k]` says whether node `local[k]` receives
    /// messages (boundary nodes of a k-hop view do not need any).
    fn view_of(&self, nodes: Option<Tensor>, local: &[u32], inner: &[bool]) -> Result<View> {
        let full = nodes.is_none();
        let pos = |g: u32| -> Option<u32> {
            if full {
                Some(g)
            } else {
                local.binary_search(&g).ok().map(|p| p as u32)
            }
        };
        let (mut gs, mut gd) = (Vec::new(), Vec::new());
        let (mut ns, mut nd) = (Vec::new(), Vec::new());
        let mut gnorm = Vec::with_capacity(local.len());
        let mut mnorm = Vec::with_capacity(local.len());
        for (li, &g) in local.iter().enumerate() {
            let di = self.adj.degree(g as usize);
            gnorm.push(1.0 / ((di + 1) as f32).sqrt());
            mnorm.push(if di > 0 { 1.0 / di as f32 } else { 0.0 });
            if !inner[li] {
                continue;
            }
            gs.push(li as u32);
            gd.push(li as u32);
            for &j in self.adj.neighbors(g as usize) {
                let Some(lj) = pos(j) else { continue };
                gs.push(lj);
                gd.push(li as u32);
                ns.push(lj);
                nd.push(li as u32);
            }
        }
        let dev = self.device();
        let n = local.len();
        Ok(View {
            nodes,
            num_nodes: n,
            gcn: EdgeSet::new(gs, gd, None, dev)?,
            gcn_norm: Tensor::from_vec(gnorm, (n, 1), dev)?,
            neighbors: EdgeSet::new(ns, nd, None, dev)?,
            mean_norm: Tensor::from_vec(mnorm, (n, 1), dev)?,
        })
    }

    /// The `hops`-hop neighbourhood of `targets` as a [`View`], and each target's local position.
    ///
    /// Message passing with `hops` layers on this view gives the targets exactly their full-graph outputs.
    pub fn khop_view(&self, targets: &[u32], hops: usize) -> Result<(View, Vec<u32>)> {
        let n = self.num_nodes();
        let mut dist = std::collections::HashMap::new();
        let mut frontier: Vec<u32> = Vec::new();
        for &t in targets {
            if t as usize >= n {
                return Err(Error::Shape(format!(
                    "node {t} does not exist (the graph has {n} nodes)"
                )));
            }
            if dist.insert(t, 0usize).is_none() {
                frontier.push(t);
            }
        }
        for d in 1..=hops {
            let mut next = Vec::new();
            for &u in &frontier {
                for &v in self.adj.neighbors(u as usize) {
                    if let std::collections::hash_map::Entry::Vacant(e) = dist.entry(v) {
                        e.insert(d);
                        next.push(v);
                    }
                }
            }
            frontier = next;
        }
        let mut local: Vec<u32> = dist.keys().copied().collect();
        local.sort_unstable();
        let inner: Vec<bool> = local.iter().map(|g| dist[g] < hops).collect();
        let nodes = Tensor::from_vec(local.clone(), local.len(), self.device())?;
        let view = self.view_of(Some(nodes), &local, &inner)?;
        let pos = targets
            .iter()
            .map(|t| local.binary_search(t).map(|p| p as u32).unwrap_or(0))
            .collect();
        Ok((view, pos))
    }

    /// Neighbour edges of the whole graph with at most `fanout` neighbours per node, drawn without replacement
    /// from `rng` (GraphSAGE's sampling), and `1/k` per node for the `k` neighbours kept (`[N, 1]`).
    pub fn sampled_neighbors(&self, fanout: usize, rng: &mut Rng) -> Result<(EdgeSet, Tensor)> {
        let (mut s, mut d) = (Vec::new(), Vec::new());
        let mut norm = Vec::with_capacity(self.num_nodes());
        let mut buf = Vec::new();
        for i in 0..self.num_nodes() {
            let nb = self.adj.neighbors(i);
            if nb.len() <= fanout {
                for &j in nb {
                    s.push(j);
                    d.push(i as u32);
                }
            } else {
                buf.clear();
                buf.extend_from_slice(nb);
                for k in 0..fanout {
                    let r = k + rng.below(buf.len() - k);
                    buf.swap(k, r);
                    s.push(buf[k]);
                    d.push(i as u32);
                }
            }
            let k = nb.len().min(fanout);
            norm.push(if k > 0 { 1.0 / k as f32 } else { 0.0 });
        }
        let n = self.num_nodes();
        Ok((
            EdgeSet::new(s, d, None, self.device())?,
            Tensor::from_vec(norm, (n, 1), self.device())?,
        ))
    }
}

/// The most feature values (nodes x features) a graph folder may hold: the features are stored dense, so an
/// out-of-range feature index in a text file would otherwise ask for any amount of memory.
pub const MAX_DENSE_FEATURES: usize = 1 << 28;

/// What a loader expects of a graph folder (checked while reading).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Number of features (indices must be below it); inferred from the data when `None`.
    pub num_features: Option<usize>,
    /// Number of classes (labels must be below it); inferred when `None`.
    pub num_classes: Option<usize>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Data lines of a TSV file after checking its header: `(line number, fields)`.
fn tsv_rows<'a>(
    path: &'a Path,
    text: &'a str,
    header: &[&str],
) -> Result<impl Iterator<Item = (usize, Vec<&'a str>)> + 'a> {
    let mut lines = text.lines();
    let first = lines
        .next()
        .ok_or_else(|| Error::data(path, "the file is empty (expected a header line)"))?;
    let cols: Vec<&str> = first.trim_end_matches('\r').split('\t').collect();
    if cols != header {
        return Err(Error::data(
            path,
            format!(
                "line 1: expected the header `{}`, found `{}`",
                header.join("\\t"),
                first.replace('\t', "\\t")
            ),
        ));
    }
    Ok(lines
        .enumerate()
        .map(|(i, l)| (i + 2, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i, l.split('\t').collect())))
}

fn parse_id(path: &Path, line: usize, what: &str, s: &str) -> Result<u32> {
    s.trim().parse::<u32>().map_err(|_| {
        Error::data(
            path,
            format!("line {line}: {what} `{s}` is not a non-negative integer"),
        )
    })
}

/// One parsed line of `nodes.tsv`: id, label, `(feature index, value)` pairs.
type NodeRow = (u32, Option<u32>, Vec<(u32, f32)>);

/// Reads a graph folder (see the module docs) into a [`Graph`] on `device`.
pub fn load_graph_dir(
    dir: &Path,
    name: &str,
    expect: &Expect,
    row_normalize: bool,
    device: &Device,
) -> Result<Graph> {
    if !dir.is_dir() {
        return Err(Error::data(
            dir,
            "graph folder not found (it needs nodes.tsv, edges.tsv and split_{train,val,test}.txt)",
        ));
    }
    parse_graph_files(dir, name, expect, row_normalize, device, &mut read)
}

/// Parses a graph folder's files, each obtained from `read(path)` in the order the loader needs them
/// (`nodes.tsv`, `edges.tsv`, `split_train.txt`, `split_val.txt`, `split_test.txt`, all under `dir`).
/// [`load_graph_dir`] reads them from disk; the fuzz target `graph_tsv` hands over text from memory.
pub fn parse_graph_files(
    dir: &Path,
    name: &str,
    expect: &Expect,
    row_normalize: bool,
    device: &Device,
    read: &mut dyn FnMut(&Path) -> Result<String>,
) -> Result<Graph> {
    // nodes
    let path = dir.join("nodes.tsv");
    let text = read(&path)?;
    let mut rows: Vec<NodeRow> = Vec::new();
    let mut widest = (0u32, 0usize); // the largest feature index and its line
    for (line, f) in tsv_rows(&path, &text, &["node_id", "label", "feature_indices"])? {
        if f.len() != 3 && f.len() != 2 {
            return Err(Error::data(
                &path,
                format!(
                    "line {line}: expected 3 tab-separated fields, found {}",
                    f.len()
                ),
            ));
        }
        let id = parse_id(&path, line, "node id", f[0])?;
        let label = match f[1].trim() {
            "" | "-1" => None,
            s => Some(parse_id(&path, line, "label", s)?),
        };
        if let (Some(l), Some(c)) = (label, expect.num_classes) {
            if l as usize >= c {
                return Err(Error::data(
                    &path,
                    format!(
                        "line {line}: label {l} is out of range (the data set has {c} classes)"
                    ),
                ));
            }
        }
        let mut feats = Vec::new();
        for item in f.get(2).copied().unwrap_or("").split(',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (i, v) = match item.split_once(':') {
                Some((i, v)) => (
                    i,
                    v.trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|v| v.is_finite())
                        .ok_or_else(|| {
                            Error::data(
                                &path,
                                format!("line {line}: feature value `{v}` is not a finite number"),
                            )
                        })?,
                ),
                None => (item, 1.0),
            };
            let i = parse_id(&path, line, "feature index", i)?;
            if let Some(nf) = expect.num_features {
                if i as usize >= nf {
                    return Err(Error::data(
                        &path,
                        format!(
                            "line {line}: feature index {i} is out of range (the data set has {nf} features, 0..{})",
                            nf - 1
                        ),
                    ));
                }
            }
            if i >= widest.0 {
                widest = (i, line);
            }
            feats.push((i, v));
        }
        rows.push((id, label, feats));
    }
    let n = rows.len();
    if n == 0 {
        return Err(Error::data(&path, "no nodes"));
    }
    let mut seen = vec![false; n];
    for (k, (id, _, _)) in rows.iter().enumerate() {
        let i = *id as usize;
        if i >= n || seen[i] {
            return Err(Error::data(
                &path,
                format!(
                    "row {}: node id {id} {} (ids must be 0..{} each exactly once)",
                    k + 2,
                    if i >= n {
                        "is out of range"
                    } else {
                        "appears twice"
                    },
                    n - 1
                ),
            ));
        }
        seen[i] = true;
    }
    let nf = expect.num_features.unwrap_or_else(|| {
        rows.iter()
            .flat_map(|r| r.2.iter().map(|(i, _)| *i as usize + 1))
            .max()
            .unwrap_or(1)
    });
    let nc = expect.num_classes.unwrap_or_else(|| {
        rows.iter()
            .filter_map(|r| r.1.map(|l| l as usize + 1))
            .max()
            .unwrap_or(1)
    });
    // the features are stored dense: refuse a size that only a typo makes (found by fuzzing: one node
    // with feature index 100000004 asked for a 400 MB row), before allocating it
    if n.checked_mul(nf).is_none_or(|e| e > MAX_DENSE_FEATURES) {
        let cause = if expect.num_features.is_some() {
            "the data set's number of features".to_string()
        } else {
            format!(
                "feature index {} on line {} (the number of features is the largest index + 1)",
                widest.0, widest.1
            )
        };
        return Err(Error::data(
            &path,
            format!(
                "{cause} makes a dense {n} x {nf} feature matrix, above the loader's limit of {MAX_DENSE_FEATURES} values (1 GiB of f32)"
            ),
        ));
    }
    let mut x = vec![0f32; n * nf];
    let mut labels = vec![None; n];
    for (id, label, feats) in &rows {
        let row = &mut x[*id as usize * nf..(*id as usize + 1) * nf];
        for &(i, v) in feats {
            row[i as usize] = v;
        }
        if row_normalize {
            let s: f32 = row.iter().sum();
            if s != 0.0 {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        labels[*id as usize] = *label;
    }
    drop(rows);

    // edges
    let path = dir.join("edges.tsv");
    let text = read(&path)?;
    let mut pairs = Vec::new();
    for (line, f) in tsv_rows(&path, &text, &["src", "dst"])? {
        if f.len() != 2 {
            return Err(Error::data(
                &path,
                format!(
                    "line {line}: expected 2 tab-separated fields, found {}",
                    f.len()
                ),
            ));
        }
        let a = parse_id(&path, line, "node id", f[0])?;
        let b = parse_id(&path, line, "node id", f[1])?;
        for v in [a, b] {
            if v as usize >= n {
                return Err(Error::data(
                    &path,
                    format!(
                        "line {line}: the edge {a} - {b} names node {v}, which is not in nodes.tsv ({n} nodes, ids 0..{})",
                        n - 1
                    ),
                ));
            }
        }
        pairs.push((a, b));
    }
    let adj = Adjacency::from_pairs(n, &pairs);

    // splits
    let mut owner: Vec<Option<&'static str>> = vec![None; n];
    let mut splits = Vec::new();
    for split in ["train", "val", "test"] {
        let path = dir.join(format!("split_{split}.txt"));
        let text = read(&path)?;
        let mut ids = Vec::new();
        for (i, l) in text.lines().enumerate() {
            let l = l.trim();
            if l.is_empty() {
                continue;
            }
            let id = parse_id(&path, i + 1, "node id", l)?;
            let v = id as usize;
            if v >= n {
                return Err(Error::data(
                    &path,
                    format!("line {}: node {id} is not in nodes.tsv ({n} nodes)", i + 1),
                ));
            }
            if let Some(other) = owner[v] {
                return Err(Error::data(
                    &path,
                    format!(
                        "line {}: node {id} is already in the {other} split (split_{other}.txt); a node may be in one split only",
                        i + 1
                    ),
                ));
            }
            if labels[v].is_none() {
                return Err(Error::data(
                    &path,
                    format!("line {}: node {id} has no label in nodes.tsv", i + 1),
                ));
            }
            owner[v] = Some(split);
            ids.push(id);
        }
        if ids.is_empty() {
            return Err(Error::data(
                &path,
                format!("the {split} split is empty (list one node id per line)"),
            ));
        }
        splits.push(ids);
    }
    let test = splits.pop().unwrap_or_default();
    let val = splits.pop().unwrap_or_default();
    let train = splits.pop().unwrap_or_default();
    let features = Tensor::from_vec(x, (n, nf), device)?;
    Graph::new(name, features, nc, labels, adj, train, val, test)
}

/// Where a data set's folder is: `root` (relative to the data dir unless absolute: `Path::join` keeps an
/// absolute path) when given, else `<data dir>/<name>`.
pub fn graph_dir(data_dir: &Path, name: &str, root: Option<&PathBuf>) -> PathBuf {
    data_dir.join(root.map(PathBuf::as_path).unwrap_or(Path::new(name)))
}

/// A random graph for benchmarks: `n` nodes, `m` undirected edges (preferential attachment-like: each edge
/// joins a uniform node to a node drawn from a skewed distribution), `f` Gaussian features with a class
/// signal, `c` classes; 10% / 10% / 80% train / val / test... in node order.
pub fn generate_graph(
    n: usize,
    m: usize,
    f: usize,
    c: usize,
    seed: u64,
    device: &Device,
) -> Result<Graph> {
    let mut rng = Rng::derive(seed, &[&"generate"]);
    let labels: Vec<Option<u32>> = (0..n).map(|_| Some(rng.below(c) as u32)).collect();
    let mut pairs = BTreeSet::new();
    while pairs.len() < m {
        let a = rng.below(n) as u32;
        // skewed partner: u^3 concentrates on low ids (hubs); half the edges stay within the class
        let u = rng.uniform();
        let mut b = ((u * u * u) * n as f64) as u32 % n as u32;
        if rng.uniform() < 0.5 {
            // find a node with the same label nearby
            for k in 0..16u32 {
                let cand = (b + k) % n as u32;
                if labels[cand as usize] == labels[a as usize] {
                    b = cand;
                    break;
                }
            }
        }
        if a != b {
            pairs.insert((a.min(b), a.max(b)));
        }
    }
    let pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
    let adj = Adjacency::from_pairs(n, &pairs);
    let mut x = vec![0f32; n * f];
    for i in 0..n {
        let l = labels[i].unwrap_or(0) as usize;
        for j in 0..f {
            x[i * f + j] = rng.normal() as f32 * 0.5 + if j % c == l { 0.5 } else { 0.0 };
        }
    }
    let features = Tensor::from_vec(x, (n, f), device)?;
    let idx: Vec<u32> = (0..n as u32).collect();
    let (a, b) = (n / 10, n / 5);
    Graph::new(
        "generated",
        features,
        c,
        labels,
        adj,
        idx[..a].to_vec(),
        idx[a..b].to_vec(),
        idx[b..].to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, nodes: &str, edges: &str, splits: [&str; 3]) {
        std::fs::write(dir.join("nodes.tsv"), nodes).unwrap();
        std::fs::write(dir.join("edges.tsv"), edges).unwrap();
        for (s, t) in ["train", "val", "test"].iter().zip(splits) {
            std::fs::write(dir.join(format!("split_{s}.txt")), t).unwrap();
        }
    }

    /// Fuzzing found it (fuzz/regressions/graph_tsv/oom-feature-index): one node with feature index
    /// 100000004 made the loader allocate a 400 MB dense row (and 4 billion with index 4e9).
    #[test]
    fn a_huge_feature_index_is_an_error_naming_its_line_not_an_allocation() {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "node_id\tlabel\tfeature_indices\n0\t0\t1\n1\t0\t000000001000000004\n",
            "src\tdst\n0\t1\n",
            ["0\n", "1\n", "0\n"],
        );
        let e = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nodes.tsv")
                && e.contains("feature index 1000000004 on line 3")
                && e.contains("dense 2 x 1000000005 feature matrix"),
            "{e}"
        );
    }

    #[test]
    fn reads_a_folder_symmetrises_edges_and_row_normalises() -> Result<()> {
        let tmp = tempfile::tempdir().unwrap();
        write(
            tmp.path(),
            "node_id\tlabel\tfeature_indices\n2\t1\t0:2.0,3:6.0\n0\t0\t1,2\n1\t\t\n3\t-1\t3\n",
            "src\tdst\n0\t1\n1\t0\n2\t2\n3\t1\n",
            ["0\n", "2\n", "\n2a\n"],
        );
        // the test split holds `2a`: not an id
        let e = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("split_test.txt") && e.contains("`2a`"), "{e}");
        std::fs::write(tmp.path().join("split_test.txt"), "").unwrap();
        let e = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the test split is empty"), "{e}");
        std::fs::write(tmp.path().join("split_test.txt"), "3\n").unwrap();
        let e = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node 3 has no label"), "{e}");
        std::fs::write(tmp.path().join("split_val.txt"), "").unwrap();
        std::fs::write(tmp.path().join("split_test.txt"), "2\n").unwrap();
        std::fs::write(tmp.path().join("split_val.txt"), "0\n").unwrap();
        let e = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("node 0 is already in the train split"), "{e}");
        std::fs::write(tmp.path().join("split_val.txt"), "\n").unwrap();
        write(
            tmp.path(),
            "node_id\tlabel\tfeature_indices\n2\t1\t0:2.0,3:6.0\n0\t0\t1,2\n1\t0\t\n3\t-1\t3\n",
            "src\tdst\n0\t1\n1\t0\n2\t2\n3\t1\n",
            ["0\n", "1\n", "2\n"],
        );
        let g = load_graph_dir(tmp.path(), "t", &Expect::default(), true, &Device::Cpu)?;
        assert_eq!((g.num_nodes(), g.num_features, g.num_classes), (4, 4, 2));
        // 0-1 twice and the self-loop 2-2 collapse: edges 0-1 and 1-3
        assert_eq!(g.adj.num_edges(), 2);
        assert_eq!(g.adj.neighbors(1), &[0, 3]);
        assert_eq!(g.adj.degree(2), 0);
        assert_eq!(g.labels, vec![Some(0), Some(0), Some(1), None]);
        let x: Vec<Vec<f32>> = g.features.to_vec2()?;
        assert_eq!(x[2], vec![0.25, 0.0, 0.0, 0.75]);
        assert_eq!(x[0], vec![0.0, 0.5, 0.5, 0.0]);
        assert_eq!(x[1], vec![0.0; 4]);
        let raw = load_graph_dir(tmp.path(), "t", &Expect::default(), false, &Device::Cpu)?;
        assert_eq!(raw.features.to_vec2::<f32>()?[2], vec![2.0, 0.0, 0.0, 6.0]);
        assert_eq!(
            (g.train.clone(), g.val.clone(), g.test.clone()),
            (vec![0], vec![1], vec![2])
        );
        Ok(())
    }

    #[test]
    fn sampling_keeps_at_most_fanout_neighbours() -> Result<()> {
        let pairs: Vec<(u32, u32)> = (1..10).map(|j| (0, j)).collect();
        let x = Tensor::zeros((10, 1), candle_core::DType::F32, &Device::Cpu)?;
        let g = Graph::new(
            "s",
            x,
            1,
            vec![Some(0); 10],
            Adjacency::from_pairs(10, &pairs),
            vec![0],
            vec![1],
            vec![2],
        )?;
        let (e, norm) = g.sampled_neighbors(3, &mut Rng::new(1))?;
        let into_0 = e.dst_host.iter().filter(|&&d| d == 0).count();
        assert_eq!(into_0, 3);
        // the 9 leaves keep their one neighbour
        assert_eq!(e.len(), 3 + 9);
        let norm: Vec<f32> = norm.flatten_all()?.to_vec1()?;
        assert!((norm[0] - 1.0 / 3.0).abs() < 1e-7 && norm[5] == 1.0);
        let src: Vec<u32> = e.src.to_vec1()?;
        let mut picked: Vec<u32> = src[..3].to_vec();
        picked.sort_unstable();
        picked.dedup();
        assert_eq!(picked.len(), 3, "without replacement");
        Ok(())
    }
}
