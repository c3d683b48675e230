//! `cargo xtask imports`: the import graph of a crate's modules, and a
//! check that it has no circles.
//!
//! Two levels, each of which must be acyclic:
//! - the crate's top-level modules (a folder module counts as one node):
//!   `a` -> `b` when a file of `a` names `crate::b`;
//! - the files of each folder module: `x.rs` -> `y.rs` when `x.rs` names
//!   `super::y` (a child) or `mod.rs` names `y::` (`pub use y::...`).
//!
//! `mod` declarations are not edges; a file-level `use super::*` is refused
//! (it hides which sibling a file needs; a test module's is its own file). Comments are skipped; the scan is textual,
//! which is enough for code that imports by path.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// A directed graph of module or file names.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The two levels of a crate's import graph: top-level modules, then the
/// files of each folder module.
pub struct Imports {
    /// Top-level modules.
    pub top: Graph,
    /// Folder module name -> the graph of its files.
    pub folders: BTreeMap<String, Graph>,
}

/// Code of a file without comments.
fn code(path: &Path) -> Result<String> {
    let text = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The identifiers that follow `prefix` in `code` (`crate::` -> `dataplane`).
fn names_after<'a>(code: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    code.match_indices(prefix).filter_map(move |(i, _)| {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let rest = &code[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// Whether `code` names `module::` (a path into a child module).
fn mentions(code: &str, module: &str) -> bool {
    let pat = format!("{module}::");
    code.match_indices(&pat).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
            || code[..i].ends_with("crate::")
    })
}

/// Names used as `crate::{a, b::c}` in a grouped import: the first name of
/// each item of the outer braces.
fn grouped_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let pat = format!("{prefix}{{");
    for (i, _) in code.match_indices(&pat) {
        let mut depth = 0;
        let mut items = vec![String::new()];
        for c in code[i + pat.len()..].chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => items.push(String::new()),
                c if depth == 0 => items.last_mut().into_iter().for_each(|s| s.push(c)),
                _ => {}
            }
        }
        for item in items {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// The modules `code` declares with a `#[path = ..]` attribute.
fn path_mods(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut lines = code.lines().map(str::trim);
    while let Some(l) = lines.next() {
        if !l.starts_with("#[path") {
            continue;
        }
        if let Some(decl) = lines.next() {
            let decl = decl
                .trim_start_matches("pub(crate) ")
                .trim_start_matches("pub ");
            if let Some(name) = decl.strip_prefix("mod ") {
                out.insert(name.trim_end_matches(';').trim().to_string());
            }
        }
    }
    out
}

fn rs_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            out.extend(rs_files(&p)?);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The import graph of the crate whose sources are in `src`.
pub fn scan(src: &Path) -> Result<Imports> {
    let mut top = Graph::new();
    let mut folders: BTreeMap<String, Graph> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for p in rs_files(src)? {
        let rel = p.strip_prefix(src).context("path")?;
        let first = rel.components().next().context("empty path")?;
        let name = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        modules.insert(name);
    }
    for p in rs_files(src)? {
        let rel = p.strip_prefix(src).context("path")?.to_path_buf();
        let parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let module = parts[0].clone();
        if module == "main" && modules.contains("lib") {
            // The binary of a library crate is a crate of its own.
            continue;
        }
        if parts.iter().any(|c| c == "tests" || c.ends_with("_tests")) {
            // Test modules in files of their own test their parent.
            continue;
        }
        let code = code(&p)?;
        if code.lines().any(|l| l.starts_with("use super::*")) {
            bail!(
                "{}: `use super::*` hides which sibling it needs",
                p.display()
            );
        }
        let mut used: BTreeSet<String> = names_after(&code, "crate::").map(String::from).collect();
        used.extend(grouped_after(&code, "crate::"));
        let root = parts.len() == 1 && (module == "lib" || module == "main");
        let node = top.entry(module.clone()).or_default();
        for u in used {
            if u == module {
                continue;
            }
            if modules.contains(&u) {
                node.insert(u);
            } else if u
                .chars()
                .next()
                .is_some_and(|c| c.is_uppercase() || c.is_lowercase())
                && !root
            {
                // An item of the crate root (`crate::Verdict` in main.rs).
                let root_file = if modules.contains("lib") {
                    "lib"
                } else {
                    "main"
                };
                if modules.contains(root_file) && module != root_file {
                    node.insert(root_file.to_string());
                }
            }
        }
        if root {
            for m in &modules {
                if m != &module && m != "lib" && m != "main" && mentions(&code, m) {
                    node.insert(m.clone());
                }
            }
        }
        // Files of a folder module (one level: `a/b.rs`, `a/mod.rs`).
        if parts.len() == 2 {
            let file = parts[1].clone();
            let dir = p.parent().context("parent")?;
            let siblings: BTreeSet<String> = rs_files(dir)?
                .iter()
                .filter(|s| s.parent() == Some(dir))
                .map(|s| {
                    s.file_stem()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .filter(|s| s != "mod")
                .collect();
            // Modules mod.rs includes from elsewhere (`#[path = ".."] mod
            // ct;`: the pipelines compiled once per IP family) are
            // siblings too, with no file here.
            let mod_rs = dir.join("mod.rs");
            let siblings: BTreeSet<String> = if mod_rs.exists() {
                let mut all = siblings;
                all.extend(path_mods(&self::code(&mod_rs)?));
                all
            } else {
                siblings
            };
            let graph = folders.entry(module.clone()).or_default();
            let mut deps: BTreeSet<String> = BTreeSet::new();
            if file == "mod" {
                for s in &siblings {
                    if mentions(&code, s) {
                        deps.insert(s.clone());
                    }
                }
            } else {
                deps.extend(names_after(&code, "super::").map(String::from));
                deps.extend(grouped_after(&code, "super::"));
                deps.extend(names_after(&code, &format!("crate::{module}::")).map(String::from));
                if deps.iter().any(|d| !siblings.contains(d) && d != &file) {
                    // `super::Item` from mod.rs.
                    deps.insert("mod".into());
                }
                deps.retain(|d| d == "mod" || siblings.contains(d));
            }
            deps.remove(&file);
            graph.entry(file).or_default().extend(deps);
        }
    }
    Ok(Imports { top, folders })
}

/// A circle in `g`, if it has one (as the list of nodes around it).
pub fn circle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        n: &str,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(g, m, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if !state.contains_key(n)
            && let Some(c) = visit(g, n, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(name: &str, g: &Graph) -> String {
    let mut out = format!("{name}:\n");
    for (n, deps) in g {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        out.push_str(&format!("  {n} -> {}\n", deps.join(", ")));
    }
    out
}

/// Prints the graphs of the agent's and the datapath's crates and fails on
/// a circle.
pub fn run(root: &Path) -> Result<()> {
    let mut circles = Vec::new();
    for krate in ["proxy-user", "proxy-ebpf"] {
        let imports = scan(&root.join(krate).join("src"))?;
        print!("{}", show(&format!("{krate} modules"), &imports.top));
        if let Some(c) = circle(&imports.top) {
            circles.push(format!("{krate}: {}", c.join(" -> ")));
        }
        for (folder, g) in &imports.folders {
            print!("{}", show(&format!("{krate} {folder}/"), g));
            if let Some(c) = circle(g) {
                circles.push(format!("{krate} {folder}/: {}", c.join(" -> ")));
            }
        }
    }
    if !circles.is_empty() {
        bail!("import circles:\n{}", circles.join("\n"));
    }
    println!("no import circles");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_circle_and_none_where_there_is_none() {
        let g = |edges: &[(&str, &str)]| {
            let mut g = Graph::new();
            for (a, b) in edges {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        assert_eq!(circle(&g(&[("a", "b"), ("b", "c"), ("a", "c")])), None);
        let c = circle(&g(&[("a", "b"), ("b", "c"), ("c", "a")])).expect("a circle");
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
    }

    #[test]
    fn reads_paths_and_groups() {
        let code = "use crate::{model::{A, B}, plan, sync::X};\nlet x = crate::metrics::f();";
        let mut names: Vec<String> = names_after(code, "crate::").map(String::from).collect();
        names.extend(grouped_after(code, "crate::"));
        names.sort();
        names.dedup();
        assert_eq!(names, ["metrics", "model", "plan", "sync"]);
    }

    #[test]
    fn modules_included_by_path_are_siblings() {
        let code = "mod icmp;\n#[path = \"../pipeline/ct.rs\"]\npub(crate) mod ct;\n#[path = \"x.rs\"]\nmod nat;";
        assert_eq!(
            path_mods(code).into_iter().collect::<Vec<_>>(),
            ["ct", "nat"]
        );
    }

    /// The repository's own crates have no circles (this is what CI checks).
    #[test]
    fn the_workspace_has_no_import_circles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        run(&root).expect("no import circles");
    }
}
