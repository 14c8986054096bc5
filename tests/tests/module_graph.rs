//! Every crate's top-level modules import in one direction: the graph of
//! `crate::X` references between them (read from the source, tests
//! included) has no cycle.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Top-level module -> the top-level modules its files name.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// Each crate's source directory, from the workspace root, and the fewest
/// modules it has (so a wrong path cannot pass by reading nothing).
const CRATES: &[(&str, usize)] = &[
    ("balancer-common/src", 5),
    ("balancer-ebpf/src", 10),
    ("balancer-user/src", 10),
    ("bench/src", 10),
    ("tests/src", 5),
    ("xtask/src", 5),
];

#[test]
fn modules_import_in_one_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (dir, fewest) in CRATES {
        let graph = graph(&root.join(dir));
        assert!(
            graph.len() >= *fewest,
            "{dir}: read too few modules: {graph:?}"
        );
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{dir}: module import cycle: {}", cycle.join(" -> "));
        }
    }
}

/// The parser finds paths in both spellings, and a cycle through them.
#[test]
fn a_cycle_is_found() {
    assert_eq!(
        referenced("use crate::{a::B, b, c::{self, D}};\nfn f() { crate::d::e() }"),
        ["a", "b", "c", "d"].map(String::from).into()
    );
    let graph: Graph = [("a", "b"), ("b", "c"), ("c", "a")]
        .map(|(m, n)| (m.to_owned(), [n.to_owned()].into()))
        .into();
    assert_eq!(
        find_cycle(&graph).expect("a cycle"),
        ["a", "b", "c", "a"].map(String::from)
    );
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    collect_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("non-empty");
        let module = first.as_os_str().to_str().expect("utf-8");
        let module = module.strip_suffix(".rs").unwrap_or(module).to_owned();
        if module == "lib" || module == "main" {
            continue;
        }
        let text = fs::read_to_string(&file).expect("readable source");
        let uses = graph.entry(module.clone()).or_default();
        uses.extend(referenced(&text).into_iter().filter(|m| *m != module));
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for uses in graph.values_mut() {
        uses.retain(|m| modules.contains(m));
    }
    graph
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            collect_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The first path segment after every `crate::`, and of every path in a
/// `crate::{...}` group.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Segments that start a path at depth 1 of the group.
            let mut depth = 1;
            let mut start_of_path = true;
            let mut ident = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    ident.push(c);
                    continue;
                }
                if !ident.is_empty() && start_of_path && depth == 1 {
                    found.insert(std::mem::take(&mut ident));
                }
                ident.clear();
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        start_of_path = true;
                        continue;
                    }
                    _ => {}
                }
                if !c.is_whitespace() {
                    start_of_path = false;
                }
            }
        } else {
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !ident.is_empty() {
                found.insert(ident);
            }
        }
    }
    found
}

/// One cycle, as a path that ends where it starts.
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}
