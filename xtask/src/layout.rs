//! Checks of the workspace's shape that no compiler makes: `ARCHITECTURE.md`'s code map names every
//! module under `crates/*/src` (and `xtask/src`), and the two daemons' top-level modules import
//! each other without cycles. Both run as unit tests in `cargo test --workspace`.

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// Every `.rs` file under `dir`, relative to it, sorted.
    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "rs") {
                    out.push(p.strip_prefix(dir).unwrap().to_path_buf());
                }
            }
        }
        out.sort();
        out
    }

    /// The module names a source folder defines: file stems and folder names, without the crate
    /// roots (`lib`, `main`) and folder roots (`mod`).
    fn modules(src: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for f in rust_files(src) {
            for c in f.components() {
                let name = c.as_os_str().to_string_lossy();
                let name = name.trim_end_matches(".rs");
                if !matches!(name, "lib" | "main" | "mod") {
                    out.insert(name.to_string());
                }
            }
        }
        out
    }

    /// The text of the code map's section for `heading` (`### `heading``), up to the next heading.
    fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
        let start = doc.find(&format!("### `{heading}`"))?;
        let rest = &doc[start + 4..];
        let end = rest.find("\n#").unwrap_or(rest.len());
        Some(&rest[..end])
    }

    #[test]
    fn code_map_names_every_module() {
        let root = root();
        let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
        let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(root.join("crates"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("src").is_dir())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                (format!("crates/{name}"), p.join("src"))
            })
            .collect();
        dirs.push(("xtask".into(), root.join("xtask/src")));
        let mut missing = Vec::new();
        for (heading, src) in dirs {
            let Some(text) = section(&doc, &heading) else {
                missing.push(format!("{heading}: no `### `{heading}`` section"));
                continue;
            };
            for m in modules(&src) {
                if !text.contains(&format!("`{m}`")) {
                    missing.push(format!("{heading}: module `{m}`"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "ARCHITECTURE.md's code map does not name:\n  {}",
            missing.join("\n  ")
        );
    }

    /// Edges `a -> b` between the top-level modules of a crate: a file under module `a` names
    /// `crate::b`.
    fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for f in rust_files(src) {
            let first = f.components().next().unwrap().as_os_str().to_string_lossy();
            let from = first.trim_end_matches(".rs").to_string();
            if matches!(from.as_str(), "lib" | "main") {
                continue;
            }
            let text = std::fs::read_to_string(src.join(&f)).unwrap();
            for (i, _) in text.match_indices("crate::") {
                let to: String = text[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !to.is_empty() && to != from {
                    graph.entry(from.clone()).or_default().insert(to);
                }
            }
            graph.entry(from).or_default();
        }
        graph
    }

    /// One cycle of the graph, if it has any (depth-first search with colours).
    fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
        fn visit(
            n: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            state: &mut BTreeMap<String, u8>,
            path: &mut Vec<String>,
        ) -> Option<Vec<String>> {
            state.insert(n.to_string(), 1);
            path.push(n.to_string());
            for m in graph.get(n).into_iter().flatten() {
                match state.get(m.as_str()).copied().unwrap_or(0) {
                    1 => {
                        let at = path.iter().position(|p| p == m).unwrap_or(0);
                        let mut cycle = path[at..].to_vec();
                        cycle.push(m.clone());
                        return Some(cycle);
                    }
                    0 => {
                        if let Some(c) = visit(m, graph, state, path) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            path.pop();
            state.insert(n.to_string(), 2);
            None
        }
        let mut state = BTreeMap::new();
        for n in graph.keys() {
            if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
                if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                    return Some(c);
                }
            }
        }
        None
    }

    #[test]
    fn cycle_finder_finds_a_cycle_and_accepts_a_dag() {
        let g = |edges: &[(&str, &str)]| {
            let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for (a, b) in edges {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        assert_eq!(find_cycle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
        let c = find_cycle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn daemons_have_no_module_import_cycles() {
        for krate in ["orchestratord", "pool-managerd"] {
            let graph = import_graph(&root().join("crates").join(krate).join("src"));
            assert!(graph.len() > 3, "{krate}: too few modules found: {graph:?}");
            if let Some(cycle) = find_cycle(&graph) {
                panic!("{krate}: module import cycle {}", cycle.join(" -> "));
            }
        }
    }
}
