//! The workspace's layering, checked from the source text:
//!
//! * within each crate under `crates/` and `plugins/`, no two source files import each other, directly or
//!   round a longer loop (the file-level "uses" graph of its `src/` has no cycle);
//! * no plugin's Cargo.toml depends on another plugin;
//! * the CLI names a plugin crate only in its table of builtin plugins;
//! * distill-core stays under 7500 lines (7000 until issue 21 added the export and predict entry points
//!   and the import contract, ~300 lines of contract code).
//!
//! The graph: a file's module path comes from its path (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`,
//! `lib.rs` / `main.rs` the crate root). File A uses file B when A names a path that resolves into B:
//! `crate::x::…`, `use crate::{x, y::{z}}`, `super::x`, `self::x`, or `child::…` for a module `child`
//! that A declares. A path ends in the deepest module that is a file of its own; a name re-exported
//! (`use`) by a module resolves to where the re-export points, and to no file when it points outside the
//! crate. Declaring a module (`mod child;`) and re-exporting from it (`pub use child::Item;`) are not
//! uses. Comments, string literals and `#[cfg(test)] mod tests { … }` bodies are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The crates whose sources are checked: every folder under crates/ and plugins/ with a src/.
fn crate_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for group in ["crates", "plugins"] {
        let base = root().join(group);
        let entries =
            std::fs::read_dir(&base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.join("src").is_dir() {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    assert!(dirs.len() >= 5, "found only {dirs:?}");
    dirs
}

/// Every `.rs` file under `dir`, recursively, as paths relative to `dir` with `/` separators.
fn rust_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in entries {
            let p = e.expect("directory entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(base).expect("under base");
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------------------
// Source text
// ---------------------------------------------------------------------------------------------------------

/// `src` with comments, string literals and char literals blanked out (newlines kept, so offsets and line
/// numbers stay those of the original).
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            // raw string r"…", r#"…"#
            let mut j = i + 1;
            let mut hashes = 0;
            while j < b.len() && b[j] == '#' {
                hashes += 1;
                j += 1;
            }
            if j >= b.len() || b[j] != '"' {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            for &x in &b[i..j.min(b.len())] {
                out.push(blank(x));
            }
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            let end = (j + 1).min(b.len());
            for &x in &b[i..end] {
                out.push(blank(x));
            }
            i = end;
        } else if c == '\'' {
            // a char literal ('x', '\n', '\u{1F600}'), else a lifetime
            let end = if next == Some('\\') {
                (i + 2..b.len()).find(|&j| b[j] == '\'').map(|j| j + 1)
            } else if b.get(i + 2) == Some(&'\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for &x in &b[i..end] {
                        out.push(blank(x));
                    }
                    i = end;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Blanks out the bodies of `#[cfg(test)] mod NAME { … }` in stripped text.
fn skip_test_modules(text: &str) -> String {
    let mut out: Vec<char> = text.chars().collect();
    let mut from = 0;
    while let Some(pos) = text[from..].find("#[cfg(test)]") {
        let at = from + pos;
        from = at + 1;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        let Some(after_mod) = rest.strip_prefix("mod ") else {
            continue;
        };
        let name_len = after_mod.chars().take_while(|&c| is_ident_char(c)).count();
        if !after_mod[name_len..].trim_start().starts_with('{') {
            continue; // `mod tests;`: a file of its own
        }
        // char offsets equal byte offsets for the ASCII parts we look at; work on chars to be safe
        let start_chars = text[..at].chars().count();
        let mut depth = 0usize;
        let mut k = start_chars;
        let mut opened = false;
        while k < out.len() {
            match out[k] {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => {
                    depth -= 1;
                    if opened && depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
            k += 1;
        }
        let end = k.min(out.len());
        for c in &mut out[start_chars..end] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    }
    out.into_iter().collect()
}

/// The module path of a file from its path relative to src/ (`a/b.rs`, `a/b/mod.rs` -> `[a, b]`;
/// `lib.rs`, `main.rs` -> `[]`). `None` for files that are not modules of the crate (src/bin/*).
fn module_path(rel: &str) -> Option<Vec<String>> {
    let no_ext = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = no_ext.split('/').map(String::from).collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return Some(Vec::new());
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// One `use` path: its segments (`self` at the end stripped), the name it binds, and whether it is `pub`.
#[derive(Debug, Clone)]
struct UsePath {
    segments: Vec<String>,
    name: Option<String>,
    glob: bool,
    public: bool,
    offset: usize,
}

/// Expands a use tree (`a::{b, c::{d as e, *}}`) into paths.
fn expand_use_tree(
    tree: &str,
    prefix: &[String],
    public: bool,
    offset: usize,
    out: &mut Vec<UsePath>,
) {
    let tree = tree.trim();
    // split on top-level `::` up to a `{`
    if let Some(brace) = tree.find('{') {
        let head = tree[..brace].trim().trim_end_matches("::").trim();
        let mut base: Vec<String> = prefix.to_vec();
        base.extend(
            head.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from),
        );
        let inner_end = tree.rfind('}').unwrap_or(tree.len());
        let inner = &tree[brace + 1..inner_end];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use_tree(&inner[start..i], &base, public, offset, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use_tree(&inner[start..], &base, public, offset, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim().to_string())),
        None => (tree, None),
    };
    let mut segments: Vec<String> = prefix.to_vec();
    segments.extend(
        path.split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    let glob = segments.last().is_some_and(|s| s == "*");
    if glob {
        segments.pop();
    }
    if segments.last().is_some_and(|s| s == "self") && segments.len() > 1 {
        segments.pop();
    }
    let name = if glob {
        None
    } else {
        alias.or_else(|| segments.last().cloned())
    };
    out.push(UsePath {
        segments,
        name,
        glob,
        public,
        offset,
    });
}

/// A source file: its `use` paths and its other path mentions (`crate::…` etc. and `child::…` for a
/// declared child module), with byte offsets into the stripped text.
#[derive(Debug, Default)]
struct Parsed {
    text: String,
    uses: Vec<UsePath>,
    mentions: Vec<(Vec<String>, usize)>,
    declared: BTreeSet<String>,
}

fn parse_file(src: &str) -> Parsed {
    let text = skip_test_modules(&strip(src));
    let mut p = Parsed::default();
    // module declarations: `mod x;` (a file) -- inline `mod x { … }` bodies belong to this file
    let tokens: Vec<(usize, &str)> = text
        .match_indices(|c: char| !is_ident_char(c))
        .scan(0usize, |start, (i, sep)| {
            let tok = (*start, &text[*start..i]);
            *start = i + sep.len();
            Some(tok)
        })
        .filter(|(_, t)| !t.is_empty())
        .collect();
    for w in tokens.windows(2) {
        if w[0].1 == "mod" {
            let after = text[w[1].0 + w[1].1.len()..].trim_start();
            if after.starts_with(';') {
                p.declared.insert(w[1].1.to_string());
            }
        }
    }
    // use statements (blanked out afterwards so their paths are not counted twice)
    let mut blanked: Vec<u8> = text.clone().into_bytes();
    for &(at, tok) in &tokens {
        if tok != "use" {
            continue;
        }
        let before = text[..at].trim_end();
        let prev_ok = before.is_empty()
            || before.ends_with(';')
            || before.ends_with('{')
            || before.ends_with('}')
            || before.ends_with(']')
            || before.ends_with("pub")
            || before.ends_with(')');
        if !prev_ok {
            continue;
        }
        let public = before.ends_with("pub") || (before.ends_with(')') && before.contains("pub("));
        let public = public && {
            // `pub use` / `pub(crate) use` directly before
            let line_start = before.rfind(['\n', ';', '{', '}']).map_or(0, |i| i + 1);
            before[line_start..].trim_start().starts_with("pub")
        };
        let Some(end) = text[at..].find(';') else {
            continue;
        };
        let tree = &text[at + 3..at + end];
        expand_use_tree(tree, &[], public, at, &mut p.uses);
        for b in &mut blanked[at..at + end] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    }
    let rest = String::from_utf8(blanked).expect("ASCII blanks keep UTF-8");
    // path mentions: crate::, super::, self::, child:: at a path start
    let rb = rest.as_bytes();
    for (at, _) in rest.match_indices("::") {
        let head_start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|&(_, c)| is_ident_char(c))
            .last()
            .map_or(at, |(i, _)| i);
        let head = &rest[head_start..at];
        if head.is_empty() {
            continue;
        }
        if head_start > 0 {
            let prev = rb[head_start - 1];
            if prev == b':' || prev == b'$' {
                continue;
            }
        }
        if !(head == "crate" || head == "super" || head == "self" || p.declared.contains(head)) {
            continue;
        }
        let mut segs = vec![head.to_string()];
        let mut j = at;
        while rest[j..].starts_with("::") {
            let seg: String = rest[j + 2..]
                .chars()
                .take_while(|&c| is_ident_char(c))
                .collect();
            if seg.is_empty() {
                break;
            }
            j += 2 + seg.len();
            segs.push(seg);
        }
        p.mentions.push((segs, head_start));
    }
    p.text = text;
    p
}

// ---------------------------------------------------------------------------------------------------------
// The graph
// ---------------------------------------------------------------------------------------------------------

/// The file-level uses graph of one crate: files (relative to src/) and edges `from -> to` with the line
/// and path of their first occurrence.
#[derive(Debug)]
struct Graph {
    files: Vec<String>,
    edges: BTreeMap<(usize, usize), (usize, String)>,
}

/// Where a name in a module leads.
enum Target {
    File(usize),
    Outside,
}

struct Crate {
    modules: BTreeMap<Vec<String>, usize>,
    parsed: Vec<Parsed>,
    paths: Vec<Vec<String>>,
}

impl Crate {
    /// Defines `name` at top level (a crude but sufficient look for glob re-exports).
    fn defines(&self, file: usize, name: &str) -> bool {
        let text = &self.parsed[file].text;
        [
            "fn ", "struct ", "enum ", "trait ", "type ", "const ", "static ", "mod ", "union ",
        ]
        .iter()
        .any(|kw| {
            text.match_indices(&format!("{kw}{name}")).any(|(i, m)| {
                text[i + m.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !is_ident_char(c))
                    && (i == 0 || !is_ident_char(text.as_bytes()[i - 1] as char))
            })
        })
    }

    /// Resolves `segs` (absolute: from the crate root) to the file it ends in.
    fn resolve(&self, segs: &[String], depth: usize) -> Target {
        let mut cur: Vec<String> = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let mut child = cur.clone();
            child.push(s.clone());
            if self.modules.contains_key(&child) {
                cur = child;
                continue;
            }
            let file = self.modules[&cur];
            if depth < 8 {
                // a name this module imports or re-exports
                for u in &self.parsed[file].uses {
                    if u.name.as_deref() == Some(s.as_str()) {
                        return match self.absolute(&cur, &u.segments) {
                            Some(abs) => {
                                let mut full = abs;
                                full.extend_from_slice(&segs[i + 1..]);
                                self.resolve(&full, depth + 1)
                            }
                            None => Target::Outside,
                        };
                    }
                }
                for u in self.parsed[file].uses.iter().filter(|u| u.glob) {
                    if let Some(abs) = self.absolute(&cur, &u.segments) {
                        if let Some(&g) = self.modules.get(&abs) {
                            if self.defines(g, s) {
                                let mut full = abs;
                                full.extend_from_slice(&segs[i..]);
                                return self.resolve(&full, depth + 1);
                            }
                        }
                    }
                }
            }
            return Target::File(file);
        }
        Target::File(self.modules[&cur])
    }

    /// `segs` as written in module `module`, made absolute; `None` when it starts outside the crate.
    fn absolute(&self, module: &[String], segs: &[String]) -> Option<Vec<String>> {
        let first = segs.first()?;
        let mut base: Vec<String>;
        let mut rest = segs;
        match first.as_str() {
            "crate" => {
                base = Vec::new();
                rest = &segs[1..];
            }
            "self" => {
                base = module.to_vec();
                rest = &segs[1..];
            }
            "super" => {
                base = module.to_vec();
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            child => {
                let mut m = module.to_vec();
                m.push(child.to_string());
                if !self.modules.contains_key(&m) {
                    return None;
                }
                base = module.to_vec();
            }
        }
        base.extend_from_slice(rest);
        Some(base)
    }
}

/// Builds the graph of a crate from its source files: `(path relative to src/, text)`.
fn graph_from_sources(sources: &[(String, String)]) -> Graph {
    let mut files = Vec::new();
    let mut modules = BTreeMap::new();
    let mut parsed = Vec::new();
    let mut paths = Vec::new();
    for (rel, text) in sources {
        let Some(m) = module_path(rel) else { continue };
        modules.insert(m.clone(), files.len());
        files.push(rel.clone());
        parsed.push(parse_file(text));
        paths.push(m);
    }
    let krate = Crate {
        modules,
        parsed,
        paths,
    };
    let mut edges = BTreeMap::new();
    for (from, p) in krate.parsed.iter().enumerate() {
        let module = &krate.paths[from];
        let line_of = |off: usize| p.text[..off].matches('\n').count() + 1;
        let mut add = |segs: &[String], off: usize| {
            let Some(abs) = krate.absolute(module, segs) else {
                return;
            };
            if let Target::File(to) = krate.resolve(&abs, 0) {
                if to != from {
                    edges
                        .entry((from, to))
                        .or_insert_with(|| (line_of(off), segs.join("::")));
                }
            }
        };
        for u in p.uses.iter().filter(|u| !u.public) {
            add(&u.segments, u.offset);
        }
        for (segs, off) in &p.mentions {
            add(segs, *off);
        }
    }
    Graph { files, edges }
}

/// One cycle per strongly connected component with more than one file, as the files in order round the
/// loop (the first repeated at the end). Empty when the graph is acyclic.
fn find_cycles(n: usize, edges: &BTreeSet<(usize, usize)>) -> Vec<Vec<usize>> {
    tangles(n, edges).into_iter().map(|(_, c)| c).collect()
}

/// The strongly connected components with more than one file (sorted), each with one cycle through it.
fn tangles(n: usize, edges: &BTreeSet<(usize, usize)>) -> Vec<(Vec<usize>, Vec<usize>)> {
    let adj: Vec<Vec<usize>> = (0..n)
        .map(|a| {
            edges
                .iter()
                .filter(|&&(x, _)| x == a)
                .map(|&(_, b)| b)
                .collect()
        })
        .collect();
    // Tarjan's strongly connected components
    struct State {
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        sccs: Vec<Vec<usize>>,
    }
    fn visit(v: usize, adj: &[Vec<usize>], s: &mut State) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &adj[v] {
            match s.index[w] {
                None => {
                    visit(w, adj, s);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                _ => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            s.sccs.push(scc);
        }
    }
    let mut s = State {
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        sccs: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(v, &adj, &mut s);
        }
    }
    let mut cycles = Vec::new();
    for scc in s.sccs.into_iter().filter(|c| c.len() > 1) {
        // shortest loop from the component's smallest file back to itself (BFS inside the component)
        let start = *scc.iter().min().expect("non-empty");
        let inside: BTreeSet<usize> = scc.iter().copied().collect();
        let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = None;
        'bfs: while let Some(v) = queue.pop_front() {
            for &w in &adj[v] {
                if w == start {
                    last = Some(v);
                    break 'bfs;
                }
                if inside.contains(&w) && !prev.contains_key(&w) {
                    prev.insert(w, v);
                    queue.push_back(w);
                }
            }
        }
        let mut path = vec![start];
        let mut v = last.expect("a component with several files has a loop");
        while v != start {
            path.push(v);
            v = prev[&v];
        }
        path.push(start);
        path.reverse();
        let mut members = scc;
        members.sort();
        cycles.push((members, path));
    }
    cycles.sort();
    cycles
}

/// The cycles of a crate's graph, described with the file names and the path that makes each edge.
fn describe_cycles(g: &Graph) -> Vec<String> {
    let edge_set: BTreeSet<(usize, usize)> = g.edges.keys().copied().collect();
    tangles(g.files.len(), &edge_set)
        .into_iter()
        .map(|(members, c)| {
            let hops: Vec<String> = c
                .windows(2)
                .map(|w| {
                    let (line, path) = &g.edges[&(w[0], w[1])];
                    format!("{}:{line} ({path})", g.files[w[0]])
                })
                .collect();
            let names: Vec<&str> = c.iter().map(|&i| g.files[i].as_str()).collect();
            let mut text = format!("{}\n      via {}", names.join(" -> "), hops.join(", "));
            if members.len() + 1 > c.len() {
                let all: Vec<&str> = members.iter().map(|&i| g.files[i].as_str()).collect();
                text.push_str(&format!(
                    "\n      (one loop of a tangle of {} files: {})",
                    all.len(),
                    all.join(", ")
                ));
            }
            text
        })
        .collect()
}

fn crate_graph(dir: &Path) -> Graph {
    let src = dir.join("src");
    let sources: Vec<(String, String)> = rust_files(&src)
        .into_iter()
        .map(|rel| {
            let p = src.join(&rel);
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (rel, text)
        })
        .collect();
    graph_from_sources(&sources)
}

// ---------------------------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------------------------

/// Prints every crate's file-level graph: `cargo test -p distill-tests --test layering -- --ignored
/// --nocapture print_import_graphs`.
#[test]
#[ignore = "prints the graphs for a reader; checks nothing"]
fn print_import_graphs() {
    for dir in crate_dirs() {
        let g = crate_graph(&dir);
        println!("{}", dir.display());
        for (&(a, b), (line, path)) in &g.edges {
            println!(
                "  {} -> {}  ({}:{line} {path})",
                g.files[a], g.files[b], g.files[a]
            );
        }
    }
}

#[test]
fn no_two_source_files_import_each_other() {
    let mut problems = Vec::new();
    for dir in crate_dirs() {
        let g = crate_graph(&dir);
        let rel = dir
            .strip_prefix(root())
            .unwrap_or(&dir)
            .display()
            .to_string();
        for c in describe_cycles(&g) {
            problems.push(format!("{rel}/src: {c}"));
        }
    }
    assert!(
        problems.is_empty(),
        "import cycles between source files (break each by moving what both sides need into its own \
         module):\n  {}",
        problems.join("\n  ")
    );
}

/// The package names of the plugins (plugins/*/Cargo.toml).
fn plugin_packages() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for dir in crate_dirs()
        .into_iter()
        .filter(|d| d.parent().is_some_and(|p| p.ends_with("plugins")))
    {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
        let name = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
            })
            .unwrap_or_else(|| panic!("{}: no package name", manifest.display()));
        out.push((manifest, name));
    }
    out
}

/// The dependency names of a Cargo.toml's `[*dependencies]` tables (`[dependencies.x]` included).
fn dependency_names(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if let Some(header) = line.strip_prefix('[') {
            let header = header.trim_end_matches(']').trim();
            let last = header.rsplit('.').next().unwrap_or(header);
            in_deps = last.ends_with("dependencies");
            if let Some(i) = header.find("dependencies.") {
                names.push(header[i + "dependencies.".len()..].to_string());
            }
            continue;
        }
        if in_deps {
            if let Some((k, _)) = line.split_once('=') {
                let k = k.trim();
                let k = k.strip_suffix(".workspace").unwrap_or(k).trim_matches('"');
                if !k.is_empty() && !k.starts_with('#') {
                    names.push(k.to_string());
                }
            }
        }
    }
    names
}

#[test]
fn no_plugin_depends_on_another_plugin() {
    let plugins = plugin_packages();
    assert!(plugins.len() >= 5, "found only {plugins:?}");
    let names: BTreeSet<&str> = plugins.iter().map(|(_, n)| n.as_str()).collect();
    let mut problems = Vec::new();
    for (manifest, own) in &plugins {
        let text = std::fs::read_to_string(manifest).expect("read above");
        for dep in dependency_names(&text) {
            if dep != *own && names.contains(dep.as_str()) {
                problems.push(format!(
                    "{} depends on the plugin {dep}",
                    manifest.strip_prefix(root()).unwrap_or(manifest).display()
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "plugins depend only on distill's crates, never on one another (move what they share into a \
         crate under crates/):\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_cli_names_plugin_crates_only_in_its_builtin_table() {
    let crates: Vec<String> = plugin_packages()
        .into_iter()
        .map(|(_, n)| n.replace('-', "_"))
        .collect();
    let src = root().join("crates/distill-cli/src");
    let mut problems = Vec::new();
    let mut table_entries = 0;
    for rel in rust_files(&src) {
        let path = src.join(&rel);
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (i, line) in strip(&text).lines().enumerate() {
            let named = crates.iter().find(|c| {
                line.match_indices(c.as_str()).any(|(at, m)| {
                    let before = line[..at].chars().next_back();
                    let after = line[at + m.len()..].chars().next();
                    before.is_none_or(|c| !is_ident_char(c))
                        && after.is_none_or(|c| !is_ident_char(c))
                })
            });
            let Some(named) = named else { continue };
            if line.contains("make: || Box::new(distill_") {
                table_entries += 1;
                continue;
            }
            problems.push(format!(
                "crates/distill-cli/src/{rel}:{}: names {named}: {}",
                i + 1,
                text.lines().nth(i).unwrap_or("").trim()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the CLI reaches plugins only through the Plugin trait (find the plugin in the registry); plugin \
         crates are named only in the BUILTINS table:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        table_entries >= crates.len(),
        "expected a BUILTINS entry per plugin ({crates:?}), found {table_entries}"
    );
}

#[test]
fn distill_core_stays_small() {
    let src = root().join("crates/distill-core/src");
    let mut total = 0;
    let mut per_file = Vec::new();
    for rel in rust_files(&src) {
        let path = src.join(&rel);
        let n = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .lines()
            .count();
        total += n;
        per_file.push((n, rel));
    }
    per_file.sort_by(|a, b| b.cmp(a));
    // 7,500 until 2026-12-07, when the results protocol (stats.rs: per-example scores and the paired
    // bootstrap; train/measure.rs: the latency protocol and per-phase memory, ~1,000 lines with their tests)
    // came into core, where reports and the training loop live; the statistics then moved into a crate of
    // their own (distill-stats) when the methods table's losses came into core
    assert!(
        total < 9000,
        "crates/distill-core/src has {total} lines (limit 9000): the contracts belong in core, layers in \
         distill-nn, readers in distill-data; largest files: {:?}",
        &per_file[..per_file.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------------------
// The checker itself
// ---------------------------------------------------------------------------------------------------------

fn sources(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect()
}

fn edge_names(g: &Graph) -> Vec<(String, String)> {
    g.edges
        .keys()
        .map(|&(a, b)| (g.files[a].clone(), g.files[b].clone()))
        .collect()
}

#[test]
fn cycle_finder_on_three_modules() {
    // a -> b -> c -> a
    let cyclic = BTreeSet::from([(0, 1), (1, 2), (2, 0)]);
    assert_eq!(find_cycles(3, &cyclic), [vec![0, 1, 2, 0]]);
    // a -> b -> c, a -> c: no cycle
    let acyclic = BTreeSet::from([(0, 1), (1, 2), (0, 2)]);
    assert!(find_cycles(3, &acyclic).is_empty());
    // two separate loops are both reported
    let two = BTreeSet::from([(0, 1), (1, 0), (2, 3), (3, 2), (1, 2)]);
    assert_eq!(find_cycles(4, &two), [vec![0, 1, 0], vec![2, 3, 2]]);
}

#[test]
fn graph_from_source_text() {
    // main.rs declares a, b, c; a uses b's item, b uses c, c uses a root item: a loop through main.rs
    let looped = sources(&[
        ("main.rs", "mod a;\nmod b;\nmod c;\nfn helper() {}\nfn main() { a::run(); }\n"),
        ("a.rs", "use crate::{b::{self, Thing}, c};\npub fn run() { b::go(); }\n"),
        ("b.rs", "// crate::a::run is only a comment\npub struct Thing;\npub fn go() { crate::c::x(); }\n"),
        ("c.rs", "pub fn x() { let _ = \"crate::a\"; super::helper(); }\n"),
    ]);
    let g = graph_from_sources(&looped);
    let expected: Vec<(String, String)> = [
        ("main.rs", "a.rs"),
        ("a.rs", "b.rs"),
        ("a.rs", "c.rs"),
        ("b.rs", "c.rs"),
        ("c.rs", "main.rs"),
    ]
    .iter()
    .map(|&(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(edge_names(&g), expected);
    let cycles = describe_cycles(&g);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(cycles[0].starts_with("main.rs -> a.rs"), "{}", cycles[0]);

    // lib.rs re-exports; modules use the re-exported names and a nested module its parent: no loop
    let layered = sources(&[
        ("lib.rs", "pub mod net;\npub mod train;\npub use net::Net;\npub use std::io::Error;\n"),
        ("net.rs", "use crate::Error;\npub struct Net;\n#[cfg(test)]\nmod tests { use crate::train::x; }\n"),
        ("train.rs", "pub mod files;\nuse crate::Net;\npub fn x(_: &Net) -> Result<(), crate::Error> { files::f() }\n"),
        ("train/files.rs", "use super::super::net::Net;\npub fn f() -> Result<(), std::io::Error> { let _ = '\"'; Ok(()) }\n"),
    ]);
    let g = graph_from_sources(&layered);
    assert!(describe_cycles(&g).is_empty(), "{:?}", describe_cycles(&g));
    let edges = edge_names(&g);
    assert!(
        edges.contains(&("train.rs".into(), "net.rs".into())),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("train.rs".into(), "train/files.rs".into())),
        "{edges:?}"
    );
    assert!(
        edges.contains(&("train/files.rs".into(), "net.rs".into())),
        "{edges:?}"
    );
    assert!(!edges.iter().any(|(a, _)| a == "lib.rs"), "{edges:?}");
    // a child using its parent's item is an edge child -> parent; a loop when the parent uses the child
    let child_parent = sources(&[
        ("lib.rs", "mod m;\n"),
        ("m/mod.rs", "mod k;\npub fn top() { k::leaf(); }\n"),
        ("m/k.rs", "pub fn leaf() { super::top(); }\n"),
    ]);
    let g = graph_from_sources(&child_parent);
    let cycles = describe_cycles(&g);
    assert_eq!(cycles.len(), 1, "{cycles:?}");
    assert!(
        cycles[0].contains("m/mod.rs -> m/k.rs -> m/mod.rs"),
        "{}",
        cycles[0]
    );
}

#[test]
fn cargo_dependency_names() {
    let manifest = "[package]\nname = \"distill-x\"\n[dependencies]\ndistill-core.workspace = true\n\
                    serde = { version = \"1\" }\n[dev-dependencies]\ndistill-vision = { path = \"../v\" }\n\
                    [target.'cfg(unix)'.dependencies]\nlibc = \"0.2\"\n[dependencies.distill-graph]\npath = \"g\"\n\
                    [features]\ncuda = []\n";
    assert_eq!(
        dependency_names(manifest),
        [
            "distill-core",
            "serde",
            "distill-vision",
            "libc",
            "distill-graph"
        ]
    );
}
