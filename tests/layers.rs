//! The code's shape: every module imports only the pipeline stages below it (no circles), the files
//! inside each folder import each other without circles, the command line lives in the binary, and no file or function grows past what a reader takes in at once.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The pipeline stages, lowest first. A module may use `crate::X` only for an X of a lower rank.
const LAYERS: &[&[&str]] = &[
    &["error"],
    &["config"],
    &["native"],
    &["device"],
    &["dist"],
    &["experiment"],
    &["hub"],
    &["source"],
    &["tokenizer"],
    &["data"],
    &["model"],
    &["methods"],
    &["plan"],
    &["generate"],
    &["eval"],
    &["train"],
    &["report", "sweep", "export"],
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src_files() -> Vec<(String, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            (rel.split('/').next().unwrap().trim_end_matches(".rs").to_string(), p)
        })
        .collect()
}

/// The stages a file names through `crate::`: in `use crate::x…`, `use crate::{x, y…}` and inline paths.
fn crate_modules(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        if text[..i].ends_with('$') {
            continue; // `$crate` in a macro
        }
        let rest = &text[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            group[..group.find('}').unwrap()].split(',').map(|s| s.trim().split("::").next().unwrap()).collect()
        } else {
            vec![rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap()]
        };
        found.extend(names.into_iter().filter(|n| !n.is_empty()).map(String::from));
    }
    found
}

#[test]
fn every_module_imports_only_the_stages_below_it() {
    let mut wrong = Vec::new();
    for (module, path) in src_files() {
        if module == "cli" || module == "main" || module == "lib" {
            continue;
        }
        let own = rank(&module).unwrap_or_else(|| panic!("{module} is not in LAYERS; give it a place"));
        let text = std::fs::read_to_string(&path).unwrap();
        for used in crate_modules(&text) {
            match rank(&used) {
                Some(r) if used == module || r < own => {}
                // macros exported at the crate root (`crate::bail_user!`) belong to `error`
                None if used == "bail_user" => {}
                _ => wrong.push(format!("{}: uses crate::{used}", path.display())),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layer order:\n{}", wrong.join("\n"));
}

#[test]
fn the_command_line_is_the_binarys() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    assert!(!lib.contains("mod cli"), "src/lib.rs must not hold the CLI");
    let uses: BTreeMap<String, usize> = src_files()
        .into_iter()
        .filter(|(m, _)| m == "cli")
        .map(|(_, p)| (p.display().to_string(), std::fs::read_to_string(&p).unwrap().matches("crate::").count()))
        .collect();
    assert!(uses.values().all(|n| *n == 0), "cli/ uses the library as `ftexp::…`: {uses:?}");
}

/// Functions longer than this many lines, and files longer than [`MAX_FILE`], are split.
const MAX_FUNCTION: usize = 80;
const MAX_FILE: usize = 600;

#[test]
fn files_and_functions_stay_small() {
    let mut long = Vec::new();
    for (_, path) in src_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() > MAX_FILE {
            long.push(format!("{}: {} lines", path.display(), lines.len()));
        }
        for (i, line) in lines.iter().enumerate() {
            let body = line.trim_start();
            let is_fn = ["fn ", "pub fn ", "pub(super) fn ", "pub(crate) fn "].iter().any(|p| body.starts_with(p));
            if !is_fn || line.trim_end().ends_with(';') {
                continue;
            }
            let indent = line.len() - body.len();
            let close = format!("{}}}", " ".repeat(indent));
            let end = lines[i..].iter().position(|l| l.trim_end() == close).unwrap_or(0);
            if end > MAX_FUNCTION {
                long.push(format!("{}:{}: a function of {end} lines", path.display(), i + 1));
            }
        }
    }
    assert!(long.is_empty(), "too long:\n{}", long.join("\n"));
}

/// The identifiers a path names right after `prefix::`: `x` in `x::…`, each `x` of `{x, y::z, …}`.
fn names_after(rest: &str) -> Vec<&str> {
    let ident = |s: &str| -> usize { s.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(s.len()) };
    let Some(group) = rest.strip_prefix('{') else {
        return vec![&rest[..ident(rest)]];
    };
    let (mut depth, mut start, mut names) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                names.push(group[start..i].trim());
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                names.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    names.into_iter().map(|n| &n[..ident(n)]).filter(|n| !n.is_empty()).collect()
}

/// The sibling files of one folder of `src/` (by file stem; `mod` is its mod.rs), comment lines left out.
fn room_files(dir: &Path) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
            files.insert(path.file_stem().unwrap().to_string_lossy().into_owned(), code.join("\n"));
        }
    }
    files
}

/// The imports between the child files of a folder, each edge with the path that makes it. mod.rs is
/// the folder's root: every child may use its items and it may use every child, so it is no node; a
/// child's `super::X` (or `crate::<folder>::X`) of an item mod.rs re-exports (`pub use child::X`) is an
/// edge to the child that defines it.
fn sibling_imports(room: &str, files: &BTreeMap<String, String>) -> BTreeMap<(String, String), String> {
    let root = files.get("mod").map(String::as_str).unwrap_or("");
    let mut reexported = BTreeMap::new();
    for (i, _) in root.match_indices("pub use ") {
        let rest = &root[i + "pub use ".len()..];
        let Some((child, items)) = rest.split_once("::") else { continue };
        if files.contains_key(child) {
            for name in names_after(items) {
                reexported.insert(name.to_string(), child.to_string());
            }
        }
    }
    let own = format!("crate::{room}::");
    let mut edges = BTreeMap::new();
    for (file, text) in files.iter().filter(|(f, _)| *f != "mod") {
        for prefix in ["super::", own.as_str()] {
            for (i, _) in text.match_indices(prefix) {
                let before = &text[..i];
                if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':' || c == '$') {
                    continue; // `super::super::`, `x::super::` or `$crate::`
                }
                for name in names_after(&text[i + prefix.len()..]) {
                    let to =
                        if files.contains_key(name) { Some(name) } else { reexported.get(name).map(String::as_str) };
                    if let Some(to) = to.filter(|to| *to != "mod" && *to != file.as_str()) {
                        edges.entry((file.clone(), to.to_string())).or_insert_with(|| format!("{prefix}{name}"));
                    }
                }
            }
        }
    }
    edges
}

/// The groups of files that import each other round a circle (strongly connected, more than one file).
fn circles(edges: &BTreeMap<(String, String), String>) -> Vec<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a).or_default().push(b);
    }
    let reach = |from: &str| {
        let (mut seen, mut todo) = (std::collections::BTreeSet::from([from.to_string()]), vec![from]);
        while let Some(x) = todo.pop() {
            for y in next.get(x).into_iter().flatten() {
                if seen.insert(y.to_string()) {
                    todo.push(y);
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&str, _> = next.keys().map(|n| (*n, reach(n))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for (n, from_n) in &reached {
        let group: Vec<String> =
            from_n.iter().filter(|m| reached.get(m.as_str()).is_some_and(|r| r.contains(*n))).cloned().collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

#[test]
fn the_files_of_each_folder_import_each_other_without_circles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut rooms: Vec<PathBuf> = std::fs::read_dir(&src).unwrap().flatten().map(|e| e.path()).collect();
    rooms.retain(|p| p.is_dir());
    rooms.sort();
    let mut found = Vec::new();
    for dir in rooms {
        let room = dir.file_name().unwrap().to_string_lossy().into_owned();
        let edges = sibling_imports(&room, &room_files(&dir));
        for group in circles(&edges) {
            let why: Vec<String> = edges
                .iter()
                .filter(|((a, b), _)| group.contains(a) && group.contains(b))
                .map(|((a, b), path)| format!("{a} → {b} ({path})"))
                .collect();
            found.push(format!("src/{room}/: {} import each other: {}", group.join(", "), why.join("; ")));
        }
    }
    assert!(found.is_empty(), "import circles inside a folder:\n{}", found.join("\n"));
}

#[test]
fn a_circle_between_sibling_files_is_found() {
    let files: BTreeMap<String, String> = [
        ("mod", "mod a;\nmod b;\npub use b::{Thing, Other};\nuse a::f;"),
        ("a", "use super::{b::g, Thing};\nuse super::Helper;"),
        ("b", "use crate::room::a::f;\nuse super::super::x;"),
        ("c", "use super::Thing;"),
    ]
    .into_iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    let edges = sibling_imports("room", &files);
    let pairs: Vec<(&str, &str)> = edges.keys().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_eq!(pairs, [("a", "b"), ("b", "a"), ("c", "b")]);
    assert_eq!(circles(&edges), [vec!["a".to_string(), "b".to_string()]]);
}
