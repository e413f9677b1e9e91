//! The module dependency graph of the workspace's crates, and the test that it has no cycles.
//!
//! A module that imports a module that imports it back cannot be understood, tested or moved
//! on its own (the agent's `config` ↔ `attestation` ↔ `workload` circle was what stood in the
//! way of a Kubernetes attestor). So `cargo xtask test` fails on any such circle, naming it.
//!
//! The graph is built from the source, without compiling it: every `.rs` file reachable through
//! `mod` declarations from a crate root (`src/lib.rs`, `src/main.rs`, `src/bin/*.rs`) of each
//! package under `agent/`, `server/` and `crates/`; every `use` and every path that starts with
//! `crate::`, `super::` or `self::` (in code and in macro arguments); `pub use` re-exports are
//! followed to the module that defines the item.
//!
//! What counts as a cycle: at each level of the module tree, code in sibling module `a` (or
//! below it) naming something in sibling `b` (or below it) is an edge `a → b`, and a circle of
//! such edges fails. A module using what its ancestors define, or declaring and using its own
//! children, is not an edge: a child is part of its parent. `#[cfg(test)]` items are left out:
//! a test may set itself up with any part of its crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use syn::visit::Visit;

/// A module: its path from the crate root (empty for the root).
type ModPath = Vec<String>;

/// One crate's modules and the references between them.
#[derive(Debug, Default)]
pub struct Crate {
    /// `agent/src/lib.rs`, ...
    pub root: PathBuf,
    modules: BTreeMap<ModPath, Module>,
    references: Vec<Reference>,
}

#[derive(Debug, Default)]
struct Module {
    children: BTreeSet<String>,
    /// `pub use` re-exports: the name, and the absolute path it stands for.
    reexports: BTreeMap<String, Vec<String>>,
}

/// Code in `from` names the absolute path `target`, at `file:line`.
#[derive(Clone, Debug)]
struct Reference {
    from: ModPath,
    target: Vec<String>,
    file: PathBuf,
    line: usize,
}

/// An edge between two siblings, with where it comes from.
#[derive(Clone, Debug)]
struct Edge {
    file: PathBuf,
    line: usize,
}

/// A circle of modules that import each other.
#[derive(Debug)]
pub struct Cycle {
    crate_root: PathBuf,
    /// The modules in order, each importing the next, the last importing the first; with the
    /// place of each import.
    steps: Vec<(String, Edge)>,
}

// === impl Crate ===

impl Crate {
    /// Reads the crate whose root file is `root`.
    pub fn load(root: &Path) -> Result<Self> {
        let mut krate = Crate {
            root: root.to_path_buf(),
            ..Default::default()
        };
        krate.load_file(root, Vec::new(), true)?;
        Ok(krate)
    }

    fn load_file(&mut self, file: &Path, path: ModPath, owns_dir: bool) -> Result<()> {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        // Where `mod x;` in this file looks for x: next to a mod.rs/lib.rs/main.rs, else in a
        // directory named after the file.
        let dir = match (owns_dir, file.parent()) {
            (true, Some(d)) => d.to_path_buf(),
            (false, Some(d)) => d.join(file.file_stem().unwrap_or_default()),
            (_, None) => PathBuf::from("."),
        };
        self.load_items(&ast.items, file, &dir, path)
    }

    fn load_items(
        &mut self,
        items: &[syn::Item],
        file: &Path,
        dir: &Path,
        path: ModPath,
    ) -> Result<()> {
        self.modules.entry(path.clone()).or_default();
        let mut refs = Refs {
            from: &path,
            file,
            out: Vec::new(),
        };
        for item in items {
            if is_test_only(item) {
                continue;
            }
            match item {
                syn::Item::Mod(m) => {
                    let name = m.ident.to_string();
                    let mut child = path.clone();
                    child.push(name.clone());
                    if let Some(module) = self.modules.get_mut(&path) {
                        module.children.insert(name.clone());
                    }
                    match &m.content {
                        Some((_, inline)) => {
                            self.load_items(inline, file, &dir.join(&name), child)?;
                        }
                        None => {
                            let flat = dir.join(format!("{name}.rs"));
                            let nested = dir.join(&name).join("mod.rs");
                            if flat.exists() {
                                self.load_file(&flat, child, false)?;
                            } else if nested.exists() {
                                self.load_file(&nested, child, true)?;
                            }
                            // Else a `#[path]` module or generated code: not ours to check.
                        }
                    }
                }
                syn::Item::Use(u) => {
                    let mut paths = Vec::new();
                    flatten_use(&u.tree, Vec::new(), &mut paths);
                    let public = !matches!(u.vis, syn::Visibility::Inherited);
                    let line = u.use_token.span.start().line;
                    for (segments, alias) in paths {
                        let Some(target) = self.absolute(&path, &segments) else {
                            continue;
                        };
                        if public
                            && let Some(alias) = alias
                            && let Some(module) = self.modules.get_mut(&path)
                        {
                            module.reexports.insert(alias, target.clone());
                        }
                        self.references.push(Reference {
                            from: path.clone(),
                            target,
                            file: file.to_path_buf(),
                            line,
                        });
                    }
                }
                other => refs.visit_item(other),
            }
        }
        let found = std::mem::take(&mut refs.out);
        for r in found {
            if let Some(target) = self.absolute(&path, &r.target) {
                self.references.push(Reference { target, ..r });
            }
        }
        Ok(())
    }

    /// `segments` as written in module `at`, made absolute; `None` for other crates' paths.
    fn absolute(&self, at: &ModPath, segments: &[String]) -> Option<Vec<String>> {
        let (first, rest) = segments.split_first()?;
        let mut base = match first.as_str() {
            "crate" => Vec::new(),
            "self" => at.clone(),
            "super" => {
                let mut base = at.clone();
                base.pop()?;
                let mut rest = rest;
                while rest.first().map(String::as_str) == Some("super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                return Some(base);
            }
            // A child module named without `self::` (2018 paths).
            name if self
                .modules
                .get(at)
                .is_some_and(|m| m.children.contains(name)) =>
            {
                let mut base = at.clone();
                base.push(name.to_string());
                base
            }
            _ => return None,
        };
        base.extend(rest.iter().cloned());
        Some(base)
    }

    /// The module an absolute path lands in, following re-exports.
    fn resolve(&self, target: &[String]) -> ModPath {
        let mut target = target.to_vec();
        // Bounded: re-exports could in principle point at each other.
        for _ in 0..16 {
            let mut module = Vec::new();
            let mut redirected = None;
            for (i, segment) in target.iter().enumerate() {
                let Some(m) = self.modules.get(&module) else {
                    break;
                };
                if m.children.contains(segment) {
                    module.push(segment.clone());
                    continue;
                }
                if let Some(to) = m.reexports.get(segment) {
                    let mut next = to.clone();
                    next.extend(target[i + 1..].iter().cloned());
                    redirected = Some(next);
                }
                break;
            }
            match redirected {
                Some(next) if next != target => target = next,
                _ => return module,
            }
        }
        Vec::new()
    }

    /// The sibling edges at every level of the module tree: parent → (from child → to child).
    fn edges(&self) -> BTreeMap<ModPath, BTreeMap<(String, String), Edge>> {
        let mut out: BTreeMap<ModPath, BTreeMap<(String, String), Edge>> = BTreeMap::new();
        for r in &self.references {
            let to = self.resolve(&r.target);
            let common = r.from.iter().zip(&to).take_while(|(a, b)| a == b).count();
            // An ancestor or a descendant: not between siblings.
            let (Some(a), Some(b)) = (r.from.get(common), to.get(common)) else {
                continue;
            };
            out.entry(r.from[..common].to_vec())
                .or_default()
                .entry((a.clone(), b.clone()))
                .or_insert_with(|| Edge {
                    file: r.file.clone(),
                    line: r.line,
                });
        }
        out
    }

    /// Every circle of imports between sibling modules (one per strongly connected set).
    pub fn cycles(&self) -> Vec<Cycle> {
        let mut cycles = Vec::new();
        for (parent, edges) in self.edges() {
            let mut graph: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (a, b) in edges.keys() {
                graph.entry(a).or_default().push(b);
            }
            // The shortest circle through each module, each circle once.
            let mut reported: BTreeSet<Vec<&str>> = BTreeSet::new();
            for start in graph.keys() {
                let Some(circle) = find_cycle(&graph, start) else {
                    continue;
                };
                let mut canonical = circle.clone();
                if let Some(min) = (0..canonical.len()).min_by_key(|&i| canonical[i]) {
                    canonical.rotate_left(min);
                }
                if !reported.insert(canonical) {
                    continue;
                }
                let prefix = |m: &str| {
                    let mut p = vec!["crate".to_string()];
                    p.extend(parent.iter().cloned());
                    p.push(m.to_string());
                    p.join("::")
                };
                let steps = circle
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        let next = circle[(i + 1) % circle.len()];
                        let edge = edges[&(m.to_string(), next.to_string())].clone();
                        (prefix(m), edge)
                    })
                    .collect();
                cycles.push(Cycle {
                    crate_root: self.root.clone(),
                    steps,
                });
            }
        }
        cycles
    }
}

/// The shortest circle through `start`, if there is one.
fn find_cycle<'a>(graph: &BTreeMap<&'a str, Vec<&'a str>>, start: &'a str) -> Option<Vec<&'a str>> {
    // Breadth-first from start's successors back to start: the shortest circle.
    let mut previous: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &next in graph.get(node).map(Vec::as_slice).unwrap_or_default() {
            if next == start {
                let mut circle = vec![node];
                let mut at = node;
                while at != start {
                    at = previous[at];
                    circle.push(at);
                }
                circle.reverse();
                return Some(circle);
            }
            if next != start && !previous.contains_key(next) {
                previous.insert(next, node);
                queue.push_back(next);
            }
        }
    }
    None
}

fn is_test_only(item: &syn::Item) -> bool {
    let attrs = match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Enum(e) => &e.attrs,
        syn::Item::Const(c) => &c.attrs,
        syn::Item::Static(s) => &s.attrs,
        _ => return false,
    };
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every path a use tree imports, with the name it is imported as (`None` for globs).
fn flatten_use(
    tree: &syn::UseTree,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) {
    let with = |name: String| {
        let mut p = prefix.clone();
        p.push(name);
        p
    };
    match tree {
        syn::UseTree::Path(p) => flatten_use(&p.tree, with(p.ident.to_string()), out),
        syn::UseTree::Name(n) if n.ident == "self" => {
            let name = prefix.last().cloned();
            out.push((prefix.clone(), name));
        }
        syn::UseTree::Name(n) => out.push((with(n.ident.to_string()), Some(n.ident.to_string()))),
        syn::UseTree::Rename(r) => {
            out.push((with(r.ident.to_string()), Some(r.rename.to_string())))
        }
        syn::UseTree::Glob(_) => out.push((prefix, None)),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                flatten_use(t, prefix.clone(), out);
            }
        }
    }
}

/// Collects the `crate::`/`super::`/`self::` paths of one module's items.
struct Refs<'a> {
    from: &'a ModPath,
    file: &'a Path,
    out: Vec<Reference>,
}

// === impl Refs ===

impl Refs<'_> {
    fn push(&mut self, segments: Vec<String>, line: usize) {
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super" | "self")
        ) {
            self.out.push(Reference {
                from: self.from.clone(),
                target: segments,
                file: self.file.to_path_buf(),
                line,
            });
        }
    }

    /// Paths in a macro's arguments (`tracing::info!(.. crate::x::y() ..)`), which syn does
    /// not parse as paths.
    fn scan_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        let tokens: Vec<proc_macro2::TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                proc_macro2::TokenTree::Group(g) => self.scan_tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id)
                    if matches!(id.to_string().as_str(), "crate" | "super" | "self") =>
                {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    while let (
                        Some(proc_macro2::TokenTree::Punct(a)),
                        Some(proc_macro2::TokenTree::Punct(b)),
                        Some(proc_macro2::TokenTree::Ident(next)),
                    ) = (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.push(segments, line);
                    }
                    i = j - 1;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Refs<'_> {
    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
        let line = path
            .segments
            .first()
            .map(|s| s.ident.span().start().line)
            .unwrap_or(0);
        self.push(segments, line);
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        // `use` inside a function body.
        let mut paths = Vec::new();
        flatten_use(&u.tree, Vec::new(), &mut paths);
        for (segments, _) in paths {
            self.push(segments, u.use_token.span.start().line);
        }
    }

    fn visit_item_mod(&mut self, _: &'ast syn::ItemMod) {
        // Handled as modules of their own.
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // `#[cfg(...)]`, doc comments: no module references.
    }
}

// === impl Cycle ===

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.crate_root.display())?;
        for (module, edge) in &self.steps {
            write!(
                f,
                "{module} imports (at {}:{}) → ",
                edge.file.display(),
                edge.line
            )?;
        }
        match self.steps.first() {
            Some((first, _)) => write!(f, "{first}"),
            None => Ok(()),
        }
    }
}

/// The crate roots of every package under `agent/`, `server/` and `crates/` in `workspace`.
pub fn crate_roots(workspace: &Path) -> Result<Vec<PathBuf>> {
    let mut packages = vec![workspace.join("agent"), workspace.join("server")];
    let crates = workspace.join("crates");
    for entry in
        std::fs::read_dir(&crates).with_context(|| format!("listing {}", crates.display()))?
    {
        let path = entry?.path();
        if path.join("Cargo.toml").exists() {
            packages.push(path);
        }
    }
    let mut roots = Vec::new();
    for package in packages {
        let src = package.join("src");
        for root in ["lib.rs", "main.rs"] {
            if src.join(root).exists() {
                roots.push(src.join(root));
            }
        }
        if let Ok(bins) = std::fs::read_dir(src.join("bin")) {
            for bin in bins {
                let path = bin?.path();
                if path.extension().is_some_and(|e| e == "rs") {
                    roots.push(path);
                }
            }
        }
    }
    roots.sort();
    Ok(roots)
}

/// Every import cycle in the workspace's crates.
pub fn workspace_cycles(workspace: &Path) -> Result<Vec<Cycle>> {
    let mut cycles = Vec::new();
    for root in crate_roots(workspace)? {
        for mut cycle in Crate::load(&root)?.cycles() {
            // Paths from the workspace root read better in a test failure.
            let relative = |p: &Path| p.strip_prefix(workspace).unwrap_or(p).to_path_buf();
            cycle.crate_root = relative(&cycle.crate_root);
            for (_, edge) in &mut cycle.steps {
                edge.file = relative(&edge.file);
            }
            cycles.push(cycle);
        }
    }
    Ok(cycles)
}

/// `cargo xtask modules`: lists the cycles, fails if there is one.
pub fn check(workspace: &Path) -> Result<()> {
    let cycles = workspace_cycles(workspace)?;
    for cycle in &cycles {
        println!("{cycle}");
    }
    anyhow::ensure!(cycles.is_empty(), "{} module import cycle(s)", cycles.len());
    println!("no module import cycles");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate made of `files` (path, text) in a temp dir.
    fn fixture(files: &[(&str, &str)]) -> (tempfile::TempDir, Crate) {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let krate = Crate::load(&dir.path().join("src/lib.rs")).unwrap();
        (dir, krate)
    }

    #[test]
    fn the_workspace_has_no_module_cycles() {
        let cycles = workspace_cycles(&crate::root()).unwrap();
        let report: Vec<String> = cycles.iter().map(ToString::to_string).collect();
        assert!(
            cycles.is_empty(),
            "modules that import each other:\n{}",
            report.join("\n")
        );
    }

    #[test]
    fn a_circle_of_siblings_is_found_and_named() {
        let (_dir, krate) = fixture(&[
            ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
            ("src/b.rs", "pub struct B(super::c::C);\n"),
            // In a macro, through a re-export of the parent.
            (
                "src/c/mod.rs",
                "mod inner;\npub use self::inner::C;\nfn f() { tracing::info!(\"{}\", crate::a::A); }\n",
            ),
            ("src/c/inner.rs", "pub struct C;\n"),
        ]);
        let cycles = krate.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        let text = cycles[0].to_string();
        assert!(text.contains("crate::a imports (at "), "{text}");
        assert!(text.contains("src/a.rs:1) → crate::b imports"), "{text}");
        assert!(text.contains("src/b.rs:1) → crate::c imports"), "{text}");
        assert!(text.contains("src/c/mod.rs:3) → crate::a"), "{text}");
    }

    #[test]
    fn nested_siblings_and_re_exports_of_the_root() {
        let (_dir, krate) = fixture(&[
            (
                "src/lib.rs",
                "pub mod w;\npub mod cfg;\npub use cfg::Config;\n",
            ),
            ("src/w/mod.rs", "pub mod x;\npub mod y;\n"),
            ("src/w/x.rs", "use super::y::Y;\npub struct X;\n"),
            (
                "src/w/y.rs",
                "pub struct Y(crate::Config);\nfn f(_: super::x::X) {}\n",
            ),
            ("src/cfg.rs", "pub struct Config;\n"),
        ]);
        let cycles = krate.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        let text = cycles[0].to_string();
        assert!(text.contains("crate::w::x imports"), "{text}");
        assert!(text.contains("crate::w::y imports"), "{text}");
    }

    #[test]
    fn parents_children_and_tests_are_not_cycles() {
        let (_dir, krate) = fixture(&[
            ("src/lib.rs", "pub mod a;\npub mod b;\npub fn helper() {}\n"),
            // The parent uses its child, the child its parent's items.
            (
                "src/a/mod.rs",
                "mod inner;\npub use inner::Inner;\npub struct Outer(inner::Inner);\n",
            ),
            (
                "src/a/inner.rs",
                "pub struct Inner;\nfn f() { crate::helper(); let _ = super::Outer; }\n",
            ),
            // b uses a; a uses b only in tests.
            ("src/b.rs", "use crate::a::Inner;\n"),
            ("src/a/extra.rs", ""),
        ]);
        assert!(krate.cycles().is_empty());
        let (_dir, krate) = fixture(&[
            ("src/lib.rs", "mod a;\nmod b;\n"),
            ("src/a.rs", "#[cfg(test)]\nmod tests { use crate::b::B; }\n"),
            (
                "src/b.rs",
                "pub struct B;\nfn f() { let _ = crate::a::A; }\n",
            ),
        ]);
        assert!(krate.cycles().is_empty());
    }
}
