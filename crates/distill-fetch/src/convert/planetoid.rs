//! Cora from the Planetoid pickles (`kimiyoung/planetoid`, `data/ind.cora.*`) to the graph-folder text
//! format, assembled as Kipf's `gcn/utils.py load_data` does:
//!
//! * nodes `0..len(allx)` take their features and labels from `allx` / `ally`; node `test.index[k]` takes
//!   row `k` of `tx` / `ty` (the test ids must be exactly `len(allx)..len(allx) + len(tx)`, as in Cora);
//! * label = the position of the single 1 of the one-hot row (argmax);
//! * features are binary: `nodes.tsv` lists the ascending column indices of each row's non-zeros;
//! * edges: the `graph` adjacency lists, symmetrised, duplicates dropped, once per pair with `src < dst`;
//! * split: train = `0..len(y)`, val = `len(y)..len(y) + 500`, test = `test.index` sorted;
//! * `classes.tsv`: the LINQS class names, matched to the labels by class size ([`CLASSES`]).
//!
//! `x` / `y` are only checked (they must be the first `len(y)` rows of `allx` / `ally`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::pickle::{Csr, Pickle};

/// The card's `[[source]]` names, in the order the conversion reads them.
pub const SOURCES: [&str; 8] = [
    "ind.cora.x",
    "ind.cora.y",
    "ind.cora.tx",
    "ind.cora.ty",
    "ind.cora.allx",
    "ind.cora.ally",
    "ind.cora.graph",
    "ind.cora.test.index",
];

/// The LINQS class name of each label with its number of nodes: the names are matched to the Planetoid
/// labels by these (distinct) class sizes; the conversion fails if the counts differ.
pub const CLASSES: [(&str, usize); 7] = [
    ("Theory", 351),
    ("Reinforcement_Learning", 217),
    ("Genetic_Algorithms", 418),
    ("Neural_Networks", 818),
    ("Probabilistic_Methods", 426),
    ("Case_Based", 298),
    ("Rule_Learning", 180),
];

/// Number of validation nodes (those right after the training nodes), as in `load_data`.
pub const VAL_NODES: usize = 500;

/// The assembled graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cora {
    /// Each node's ascending feature indices.
    pub features: Vec<Vec<usize>>,
    /// Each node's label.
    pub labels: Vec<usize>,
    /// Undirected edges, `src < dst`, sorted, unique.
    pub edges: Vec<(usize, usize)>,
    /// Training node ids.
    pub train: Vec<usize>,
    /// Validation node ids.
    pub val: Vec<usize>,
    /// Test node ids, sorted.
    pub test: Vec<usize>,
}

/// Converts the upstream files in `sources` into the data set's layout in `out`.
pub fn convert(sources: &Path, out: &Path) -> Result<()> {
    let read = |name: &str| -> Result<Vec<u8>> {
        let p = sources.join(name);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let csr = |name: &str| -> Result<Csr> {
        let p = Pickle::parse(name, &read(name)?)?;
        p.csr_matrix(p.root())
    };
    let onehot = |name: &str| -> Result<Vec<usize>> { onehot_labels(name, &read(name)?) };
    let x = csr("ind.cora.x")?;
    let y = onehot("ind.cora.y")?;
    let tx = csr("ind.cora.tx")?;
    let ty = onehot("ind.cora.ty")?;
    let allx = csr("ind.cora.allx")?;
    let ally = onehot("ind.cora.ally")?;
    let graph = graph_lists("ind.cora.graph", &read("ind.cora.graph")?)?;
    let test_index = parse_test_index("ind.cora.test.index", &read("ind.cora.test.index")?)?;
    let cora = assemble(&x, &y, &tx, &ty, &allx, &ally, &graph, &test_index)?;
    let classes = classes_tsv(&cora.labels)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = [
        ("nodes.tsv", nodes_tsv(&cora)),
        ("edges.tsv", edges_tsv(&cora.edges)),
        ("split_train.txt", ids_txt(&cora.train)),
        ("split_val.txt", ids_txt(&cora.val)),
        ("split_test.txt", ids_txt(&cora.test)),
        ("classes.tsv", classes),
    ];
    for (name, text) in files {
        let p = out.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// The labels of a pickled one-hot numpy matrix (rows x classes, integer or float): each row must hold
/// exactly one 1 and zeros elsewhere.
pub fn onehot_labels(name: &str, bytes: &[u8]) -> Result<Vec<usize>> {
    let p = Pickle::parse(name, bytes)?;
    let a = p.ndarray(p.root())?;
    let [rows, cols] = a.shape[..] else {
        bail!("{name}: expected a 2-D label matrix, shape {:?}", a.shape);
    };
    if cols == 0 {
        bail!("{name}: label matrix with no columns");
    }
    let values = a.to_f64();
    let mut labels = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = values.get(r * cols..(r + 1) * cols).unwrap_or(&[]);
        let ones: Vec<usize> = (0..row.len()).filter(|&c| row[c] == 1.0).collect();
        let zeros = row.iter().filter(|&&v| v == 0.0).count();
        match ones[..] {
            [c] if zeros + 1 == cols => labels.push(c),
            _ => bail!("{name}: row {r} is not one-hot: {row:?}"),
        }
    }
    Ok(labels)
}

/// The adjacency lists of the pickled `collections.defaultdict(list)` `{node: [neighbours]}`, indexed by
/// node: the keys must be exactly `0..n` (in any order), the neighbours in `0..n`.
pub fn graph_lists(name: &str, bytes: &[u8]) -> Result<Vec<Vec<usize>>> {
    let p = Pickle::parse(name, bytes)?;
    let root = p.root();
    let (args, state, items) = p.object_of(root, "collections", "defaultdict")?;
    match args {
        [f] if p.is_global(*f, "__builtin__", "list") || p.is_global(*f, "builtins", "list") => {}
        _ => return Err(p.err(root, "graph: expected defaultdict(list)")),
    }
    if state.is_some() {
        return Err(p.err(root, "graph: defaultdict with a state"));
    }
    let n = items.len();
    let mut lists: Vec<Option<Vec<usize>>> = vec![None; n];
    for &(k, v) in items {
        let node = p.usize(k)?;
        let slot = lists.get_mut(node).ok_or_else(|| {
            p.err(
                k,
                format!("graph: node {node} is not below the {n} entries"),
            )
        })?;
        if slot.is_some() {
            return Err(p.err(k, format!("graph: node {node} appears twice")));
        }
        let neigh: Vec<usize> = p
            .list(v)?
            .iter()
            .map(|&m| {
                let m = p.usize(m)?;
                if m >= n {
                    return Err(p.err(v, format!("graph: node {node} has neighbour {m} >= {n}")));
                }
                Ok(m)
            })
            .collect::<Result<_>>()?;
        *slot = Some(neigh);
    }
    // n keys, each below n, none twice: every slot is filled
    Ok(lists.into_iter().map(Option::unwrap_or_default).collect())
}

/// The node ids of `test.index`: one decimal integer per line.
pub fn parse_test_index(name: &str, bytes: &[u8]) -> Result<Vec<usize>> {
    let text = std::str::from_utf8(bytes).map_err(|e| anyhow!("{name}: not UTF-8 text: {e}"))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            line.trim()
                .parse::<usize>()
                .map_err(|e| anyhow!("{name}: line {}: '{line}' is not a node id: {e}", i + 1))
        })
        .collect()
}

/// Row `r` of a binary CSR matrix as ascending feature indices (values must all be 1).
fn feature_row(name: &str, m: &Csr, r: usize) -> Result<Vec<usize>> {
    let (idx, val) = m.row(r);
    if let Some(v) = val.iter().find(|&&v| v != 1.0) {
        bail!("{name}: row {r} has the value {v} (features must be binary, stored as 1)");
    }
    let mut idx = idx.to_vec();
    idx.sort_unstable();
    if idx.windows(2).any(|w| w[0] == w[1]) {
        bail!("{name}: row {r} names a column twice");
    }
    Ok(idx)
}

/// Assembles the graph from the parsed upstream parts (see the module docs), checking their consistency.
#[allow(clippy::too_many_arguments)]
pub fn assemble(
    x: &Csr,
    y: &[usize],
    tx: &Csr,
    ty: &[usize],
    allx: &Csr,
    ally: &[usize],
    graph: &[Vec<usize>],
    test_index: &[usize],
) -> Result<Cora> {
    let (na, nt) = (allx.rows, tx.rows);
    if ally.len() != na || ty.len() != nt || x.rows != y.len() {
        bail!(
            "row counts differ: allx {na} / ally {}, tx {nt} / ty {}, x {} / y {}",
            ally.len(),
            ty.len(),
            x.rows,
            y.len()
        );
    }
    if x.cols != allx.cols || tx.cols != allx.cols {
        bail!(
            "feature counts differ: x {}, tx {}, allx {}",
            x.cols,
            tx.cols,
            allx.cols
        );
    }
    if y.len() > na {
        bail!("ind.cora.x has {} rows, more than allx's {na}", y.len());
    }
    for r in 0..y.len() {
        if feature_row("ind.cora.x", x, r)? != feature_row("ind.cora.allx", allx, r)? {
            bail!("ind.cora.x row {r} differs from ind.cora.allx row {r}");
        }
        if y.get(r) != ally.get(r) {
            bail!("ind.cora.y row {r} differs from ind.cora.ally row {r}");
        }
    }
    let n = na + nt;
    if test_index.len() != nt {
        bail!(
            "ind.cora.test.index has {} ids for the {nt} rows of tx",
            test_index.len()
        );
    }
    let mut features = Vec::with_capacity(n);
    let mut labels = Vec::with_capacity(n);
    for r in 0..na {
        features.push(feature_row("ind.cora.allx", allx, r)?);
        labels.push(ally.get(r).copied().unwrap_or(0));
    }
    features.resize(n, Vec::new());
    labels.resize(n, 0);
    let mut seen = vec![false; nt];
    for (k, &id) in test_index.iter().enumerate() {
        let slot = id.checked_sub(na).filter(|&s| s < nt).ok_or_else(|| {
            anyhow!(
                "ind.cora.test.index: line {}: node {id} is not in {na}..{n}",
                k + 1
            )
        })?;
        if std::mem::replace(&mut seen[slot], true) {
            bail!("ind.cora.test.index: line {}: node {id} given twice", k + 1);
        }
        features[id] = feature_row("ind.cora.tx", tx, k)?;
        labels[id] = ty.get(k).copied().unwrap_or(0);
    }
    if graph.len() != n {
        bail!("ind.cora.graph has {} nodes, the features {n}", graph.len());
    }
    let mut edges = BTreeSet::new();
    for (a, neigh) in graph.iter().enumerate() {
        for &b in neigh {
            if a == b {
                bail!("ind.cora.graph: node {a} has a self-loop");
            }
            edges.insert((a.min(b), a.max(b)));
        }
    }
    let train: Vec<usize> = (0..y.len()).collect();
    let val_end = y.len() + VAL_NODES;
    if val_end > na {
        bail!("the {VAL_NODES} validation nodes after the {} training nodes pass the {na} rows of allx", y.len());
    }
    let val: Vec<usize> = (y.len()..val_end).collect();
    let mut test = test_index.to_vec();
    test.sort_unstable();
    Ok(Cora {
        features,
        labels,
        edges: edges.into_iter().collect(),
        train,
        val,
        test,
    })
}

/// `nodes.tsv`: header `node_id\tlabel\tfeature_indices`, one row per node.
pub fn nodes_tsv(c: &Cora) -> String {
    let mut s = String::from("node_id\tlabel\tfeature_indices\n");
    for (i, (f, l)) in c.features.iter().zip(&c.labels).enumerate() {
        let f: Vec<String> = f.iter().map(usize::to_string).collect();
        let _ = writeln!(s, "{i}\t{l}\t{}", f.join(","));
    }
    s
}

/// `edges.tsv`: header `src\tdst`, one row per edge.
pub fn edges_tsv(edges: &[(usize, usize)]) -> String {
    let mut s = String::from("src\tdst\n");
    for (a, b) in edges {
        let _ = writeln!(s, "{a}\t{b}");
    }
    s
}

/// A split file: one id per line.
pub fn ids_txt(ids: &[usize]) -> String {
    let mut s = String::new();
    for i in ids {
        let _ = writeln!(s, "{i}");
    }
    s
}

/// `classes.tsv`: header `label\tname\tcount`; fails unless the label counts are those of [`CLASSES`].
pub fn classes_tsv(labels: &[usize]) -> Result<String> {
    let mut counts = vec![0usize; CLASSES.len()];
    for &l in labels {
        let c = counts
            .get_mut(l)
            .ok_or_else(|| anyhow!("label {l} is not below the {} classes", CLASSES.len()))?;
        *c += 1;
    }
    let mut s = String::from("label\tname\tcount\n");
    for (l, ((name, want), got)) in CLASSES.iter().zip(&counts).enumerate() {
        if want != got {
            bail!(
                "label {l} has {got} nodes, but the class-name table expects {want} ({name}); label counts: {counts:?}"
            );
        }
        let _ = writeln!(s, "{l}\t{name}\t{got}");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::planetoid as up;

    fn csr(rows: &[Vec<usize>], cols: usize) -> Csr {
        let p = Pickle::parse("m", &up::csr_pickle(rows, cols)).unwrap();
        p.csr_matrix(p.root()).unwrap()
    }

    fn msg(r: Result<impl std::fmt::Debug>) -> String {
        format!("{:#}", r.expect_err("should fail"))
    }

    #[test]
    fn small_graph_assembles() {
        // 4 nodes: 0, 1 in allx (0 also in x), 2 and 3 in tx (test.index 3, 2)
        let allx = csr(&[vec![0, 2], vec![1]], 3);
        let x = csr(&[vec![0, 2]], 3);
        let tx = csr(&[vec![2], vec![0, 1]], 3);
        let ally = onehot_labels("ally", &up::onehot_pickle(&[1, 0], 2)).unwrap();
        let y = onehot_labels("y", &up::onehot_pickle(&[1], 2)).unwrap();
        let ty = onehot_labels("ty", &up::onehot_pickle(&[0, 1], 2)).unwrap();
        assert_eq!((ally.clone(), ty.clone()), (vec![1, 0], vec![0, 1]));
        let graph = graph_lists(
            "g",
            &up::graph_pickle(&[vec![1, 3, 3], vec![0], vec![], vec![0, 2]]),
        )
        .unwrap();
        let ti = parse_test_index("ti", b"3\n2\n").unwrap();
        let err = msg(assemble(&x, &y, &tx, &ty, &allx, &ally, &graph, &ti));
        assert!(err.contains("500 validation nodes"), "{err}");

        // the same through a copy of assemble's split-free parts: check features, labels, edges
        let mut big_allx: Vec<Vec<usize>> = vec![vec![1]; 600];
        big_allx[0] = vec![0, 2];
        let allx = csr(&big_allx, 3);
        let mut ally = vec![0; 600];
        ally[0] = 1;
        let graph: Vec<Vec<usize>> = (0..602)
            .map(|i| match i {
                0 => vec![601, 1, 601],
                1 => vec![0],
                601 => vec![0],
                _ => vec![],
            })
            .collect();
        let ti = parse_test_index("ti", b"601\n600\n").unwrap();
        let c = assemble(&x, &y, &tx, &ty, &allx, &ally, &graph, &ti).unwrap();
        assert_eq!(c.features[0], vec![0, 2]);
        assert_eq!(c.features[601], vec![2]);
        assert_eq!(c.features[600], vec![0, 1]);
        assert_eq!((c.labels[601], c.labels[600]), (0, 1));
        assert_eq!(c.edges, vec![(0, 1), (0, 601)]);
        assert_eq!(c.train, vec![0]);
        assert_eq!(c.val, (1..501).collect::<Vec<_>>());
        assert_eq!(c.test, vec![600, 601]);
        let nodes = nodes_tsv(&c);
        assert!(nodes.starts_with("node_id\tlabel\tfeature_indices\n0\t1\t0,2\n1\t0\t1\n"));
        assert!(nodes.ends_with("600\t1\t0,1\n601\t0\t2\n"));
        assert_eq!(edges_tsv(&c.edges), "src\tdst\n0\t1\n0\t601\n");
        assert_eq!(ids_txt(&c.test), "600\n601\n");

        // test ids out of range or repeated, x not a prefix of allx, a self-loop
        let bad = parse_test_index("ti", b"601\n602\n").unwrap();
        let e = msg(assemble(&x, &y, &tx, &ty, &allx, &ally, &graph, &bad));
        assert!(e.contains("line 2: node 602 is not in 600..602"), "{e}");
        let bad = parse_test_index("ti", b"601\n601\n").unwrap();
        let e = msg(assemble(&x, &y, &tx, &ty, &allx, &ally, &graph, &bad));
        assert!(e.contains("line 2: node 601 given twice"), "{e}");
        let e = msg(assemble(
            &csr(&[vec![1]], 3),
            &y,
            &tx,
            &ty,
            &allx,
            &ally,
            &graph,
            &ti,
        ));
        assert!(e.contains("ind.cora.x row 0 differs"), "{e}");
        let mut looped = graph.clone();
        looped[5] = vec![5];
        let e = msg(assemble(&x, &y, &tx, &ty, &allx, &ally, &looped, &ti));
        assert!(e.contains("node 5 has a self-loop"), "{e}");
    }

    #[test]
    fn malformed_parts_are_named() {
        let e = msg(parse_test_index("ind.cora.test.index", b"12\n1x\n"));
        assert!(
            e.contains("ind.cora.test.index: line 2: '1x' is not a node id"),
            "{e}"
        );
        let e = msg(onehot_labels(
            "ind.cora.y",
            &up::onehot_pickle(&[0], 2)[..40],
        ));
        assert!(e.contains("ind.cora.y: offset"), "{e}");
        // a row with two ones: hand-made raw bytes in the writer's layout
        let mut two = up::onehot_pickle(&[0], 2);
        let at = two.len() - 8 - 3; // raw bytes end 3 bytes before the end (TUPLE BUILD STOP)
        two[at + 4] = 1;
        let e = msg(onehot_labels("ind.cora.ty", &two));
        assert!(e.contains("ind.cora.ty: row 0 is not one-hot"), "{e}");
        let e = msg(graph_lists(
            "ind.cora.graph",
            &up::graph_pickle(&[vec![2], vec![0]]),
        ));
        assert!(e.contains("node 0 has neighbour 2 >= 2"), "{e}");
        let e = msg(graph_lists(
            "ind.cora.graph",
            &up::csr_pickle(&[vec![0]], 1),
        ));
        assert!(e.contains("expected collections.defaultdict"), "{e}");
        let e = msg(classes_tsv(&[0, 1, 2]));
        assert!(
            e.contains("label 0 has 1 nodes, but the class-name table expects 351"),
            "{e}"
        );
        let e = msg(classes_tsv(&[7]));
        assert!(e.contains("label 7 is not below the 7 classes"), "{e}");
        // a non-binary feature value
        let p = up::csr_pickle_values(&[vec![0]], 1, &[2.0]);
        let p = Pickle::parse("ind.cora.allx", &p).unwrap();
        let m = p.csr_matrix(p.root()).unwrap();
        let e = msg(feature_row("ind.cora.allx", &m, 0));
        assert!(e.contains("row 0 has the value 2"), "{e}");
    }

    #[test]
    fn class_table_matches_counts() {
        let mut labels = Vec::new();
        for (l, (_, n)) in CLASSES.iter().enumerate() {
            labels.extend(std::iter::repeat_n(l, *n));
        }
        let s = classes_tsv(&labels).unwrap();
        assert!(s.starts_with("label\tname\tcount\n0\tTheory\t351\n"));
        assert!(s.ends_with("6\tRule_Learning\t180\n"));
    }

    fn sha256(p: &Path) -> String {
        use sha2::Digest as _;
        let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        format!("{:x}", sha2::Sha256::digest(&b))
    }

    /// `$DISTILL_DATA/cora`, or `None` (with the reason on stderr) when it is missing outside CI.
    fn prepared_cora() -> Option<std::path::PathBuf> {
        distill_data::testing::required_dir("DISTILL_DATA", Some("cora"), "the Cora round trip")
            .map(|d| d.join("cora"))
    }

    /// write_upstream(prepared) then convert() gives the prepared files byte for byte; the sources not
    /// listed as re-made differently match the card's checksums of the real upstream files.
    #[test]
    fn round_trip_on_prepared_copy() {
        let Some(prepared) = prepared_cora() else {
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let (mirror, out) = (tmp.path().join("mirror"), tmp.path().join("out"));
        let odd = up::write_upstream(&prepared, &mirror).unwrap();

        let card = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/cora/dataset.toml");
        let card: toml::Value = toml::from_str(&std::fs::read_to_string(&card).unwrap()).unwrap();
        let sources = card
            .get("upstream")
            .and_then(|s| s.as_array())
            .expect("[[upstream]]");
        let names: Vec<&str> = sources
            .iter()
            .map(|s| s.get("name").and_then(|n| n.as_str()).expect("name"))
            .collect();
        assert_eq!(names, SOURCES, "the card's sources");
        for s in sources {
            let name = s.get("name").and_then(|n| n.as_str()).unwrap();
            let want = s.get("sha256").and_then(|n| n.as_str()).unwrap();
            let got = sha256(&mirror.join(name));
            if odd.iter().any(|o| o == name) {
                assert_ne!(
                    got, want,
                    "{name} is listed as re-made differently but matches upstream"
                );
            } else {
                assert_eq!(got, want, "{name} differs from the real upstream file");
            }
        }

        // the card downloads linqs_cora.cites into out/ before the conversion runs
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(mirror.join(up::CITES), out.join(up::CITES)).unwrap();
        convert(&mirror, &out).unwrap();
        let sums = std::fs::read_to_string(prepared.join("SHA256SUMS")).unwrap();
        let mut checked = 0;
        for line in sums.lines() {
            let (want, name) = line.split_once("  ").expect("sha256sum line");
            assert_eq!(sha256(&out.join(name)), want, "{name}");
            checked += 1;
        }
        assert_eq!(checked, 7);
    }
}
