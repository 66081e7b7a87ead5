//! The code's shape: every module imports only the pipeline stages below it (no circles), the command
//! line lives in the binary, and no file or function grows past what a reader takes in at once.
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
    &["generate"],
    &["eval"],
    &["train"],
    &["plan", "report", "sweep", "export"],
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
