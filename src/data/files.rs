//! A data set's rows as JSON values, from a JSON array, JSON Lines, CSV or Parquet file, or a
//! directory of such shards, each row with where it came from (file, record number, line) for errors.
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::Problems;

/// File name endings of data files.
pub const DATA_EXTENSIONS: [&str; 4] = ["json", "jsonl", "csv", "parquet"];

/// One record of a data set, and where it is: `rows.json: record 3 (line 4)`.
pub struct Row {
    pub value: Value,
    pub at: String,
}

/// A column a record needs, and the config key that names it (for the error when a file lacks it).
pub struct Needed<'a> {
    pub column: &'a str,
    pub key: &'a str,
}

/// The data files `path` names: the file itself, or a directory's data files in name order.
pub fn data_files(path: &Path) -> Result<Vec<PathBuf>, Problems> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(Problems::one(format!("{}: data file not found; check `data.path`", path.display())));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(path).map_err(|e| Problems::one(format!("{}: cannot read: {e}", path.display())))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !hidden(p) && extension(p).is_some_and(|e| DATA_EXTENSIONS.contains(&e.as_str())))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Problems::one(format!(
            "{}: the directory holds no data files (.json, .jsonl, .csv or .parquet); check `data.path`",
            path.display()
        )));
    }
    Ok(files)
}

fn hidden(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))
}

fn extension(p: &Path) -> Option<String> {
    p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase)
}

/// Every row of `files`, in order.
pub fn read_rows(files: &[PathBuf], needed: &[Needed]) -> Result<Vec<Row>, Problems> {
    let mut rows = Vec::new();
    for file in files {
        rows.extend(read_file(file, needed)?);
    }
    Ok(rows)
}

fn read_file(path: &Path, needed: &[Needed]) -> Result<Vec<Row>, Problems> {
    match extension(path).as_deref() {
        Some("parquet") => read_parquet(path, needed),
        Some("csv") => read_csv(path, needed),
        _ => read_json(path),
    }
}

fn read_text(path: &Path) -> Result<String, Problems> {
    let name = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        Problems::one(match e.kind() {
            std::io::ErrorKind::NotFound => format!("{name}: data file not found; check `data.path`"),
            _ => format!("{name}: cannot read: {e}"),
        })
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Problems::one(format!("{name}:{line}: not UTF-8 text (byte {at}); save the file as UTF-8"))
    })?;
    // Some editors start UTF-8 files with a byte-order mark; JSON and CSV parsers do not expect one.
    Ok(text.strip_prefix('\u{feff}').map(String::from).unwrap_or(text))
}

/// A JSON array of records, or one record per line (JSON Lines).
fn read_json(path: &Path) -> Result<Vec<Row>, Problems> {
    let name = path.display();
    let text = read_text(path)?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Problems::one(format!(
            "{name}: the file is empty; it must hold a JSON array of records or one JSON record per line"
        )));
    }
    if trimmed.starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            Problems::one(format!("{name}:{}:{}: invalid JSON: {}", e.line(), e.column(), strip_position(&e)))
        })?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, value)| Row { value, at: format!("{name}: record {}", i + 1) })
            .collect());
    }
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| match one_object(&text) {
            Some(hint) => Problems::one(format!("{name}: {hint}")),
            None => Problems::one(format!("{name}:{}:{}: invalid JSON: {}", i + 1, e.column(), strip_position(&e))),
        })?;
        rows.push(Row { value, at: format!("{name}: record {} (line {})", rows.len() + 1, i + 1) });
    }
    Ok(rows)
}

/// What to say when the whole file is one JSON object (a pretty-printed object is not JSON Lines).
fn one_object(text: &str) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) else { return None };
    let list = map.iter().find_map(|(k, v)| Some((k, v.as_array().filter(|a| a.iter().all(Value::is_object))?.len())));
    let inner = match list {
        Some((key, n)) => format!(" (its `{key}` holds a list of {n} records: put that list at the top of the file)"),
        None => String::new(),
    };
    Some(format!(
        "holds one JSON object{inner}; ftexp reads a JSON array of records, `[{{…}}, {{…}}]`, or one record per line (JSON Lines)"
    ))
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The error for a file whose columns lack one a record needs.
fn missing_column(path: &Path, columns: &[String], needed: &[Needed]) -> Result<(), Problems> {
    let Some(n) = needed.iter().find(|n| !columns.iter().any(|c| c == n.column)) else { return Ok(()) };
    Err(Problems::one(format!(
        "{}: has no column `{}` (its columns: {}); set `{}` to the column that holds it",
        path.display(),
        n.column,
        columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
        n.key
    )))
}

/// A CSV file with a header row; every value is a string.
fn read_csv(path: &Path, needed: &[Needed]) -> Result<Vec<Row>, Problems> {
    let name = path.display();
    let text = read_text(path)?;
    if let Some(line) = unclosed_quote(&text) {
        return Err(Problems::one(format!(
            "{name}:{line}: a quoted field opens on this line and its quote never closes, so the rest of the file would be read into it; close the field with `\"`, or write a quote inside a quoted field as `\"\"`"
        )));
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let bad = |e: csv::Error| {
        let line = e.position().map_or(String::new(), |p| format!(":{}", p.line()));
        Problems::one(format!("{name}{line}: invalid CSV: {e}"))
    };
    let headers: Vec<String> = reader.headers().map_err(bad)?.iter().map(String::from).collect();
    if headers.is_empty() || headers.iter().all(String::is_empty) {
        return Err(Problems::one(format!("{name}: the file is empty; a CSV data set starts with a header row")));
    }
    missing_column(path, &headers, needed)?;
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(bad)?;
        let line = record.position().map_or(0, |p| p.line());
        let map: Map<String, Value> =
            headers.iter().cloned().zip(record.iter().map(|v| Value::String(v.to_string()))).collect();
        rows.push(Row { value: Value::Object(map), at: format!("{name}: record {} (line {line})", rows.len() + 1) });
    }
    Ok(rows)
}

/// The line of the quoted field still open at the end of `text`, read as the CSV reader reads it: a
/// quote opens a field only at the field's start, and inside one `""` is a quote, not its end.
fn unclosed_quote(text: &str) -> Option<usize> {
    let (mut line, mut opened) = (1, None);
    let (mut field_start, mut bytes) = (true, text.bytes().peekable());
    while let Some(b) = bytes.next() {
        match (opened, b) {
            (_, b'\n') => {
                line += 1;
                field_start = opened.is_none();
            }
            (None, b'"') if field_start => (opened, field_start) = (Some(line), false),
            (None, b',') => field_start = true,
            (Some(_), b'"') if bytes.peek() == Some(&b'"') => {
                bytes.next();
            }
            (Some(_), b'"') => opened = None,
            (None, b'\r') => {}
            _ => field_start = false,
        }
    }
    opened
}

/// A Parquet file's rows: strings as strings, lists of structs (conversations) as lists of objects. A
/// damaged file is refused naming it, whether the reader returns an error or panics on it.
fn read_parquet(path: &Path, needed: &[Needed]) -> Result<Vec<Row>, Problems> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| Problems::one(format!("{name}: cannot read: {e}")))?;
    let damaged = |detail: String| {
        Problems::one(format!(
            "{name}: cannot read as Parquet ({detail}); the file is damaged or not Parquet: write it again, or point `data.path` at another file"
        ))
    };
    match crate::error::catch_panic(|| parquet_rows(path, file, needed)) {
        Ok(Ok(rows)) => Ok(rows),
        Ok(Err(Read::Columns(p))) => Err(p),
        Ok(Err(Read::Parquet(e))) => Err(damaged(e.to_string())),
        Err(panic) => Err(damaged(format!("the Parquet reader failed: {panic}"))),
    }
}

enum Read {
    Columns(Problems),
    Parquet(parquet::errors::ParquetError),
}

fn parquet_rows(path: &Path, file: std::fs::File, needed: &[Needed]) -> Result<Vec<Row>, Read> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(file).map_err(Read::Parquet)?;
    let schema = reader.metadata().file_metadata().schema_descr();
    let columns: Vec<String> = schema.root_schema().get_fields().iter().map(|f| f.name().to_string()).collect();
    missing_column(path, &columns, needed).map_err(Read::Columns)?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(None).map_err(Read::Parquet)? {
        let row = row.map_err(Read::Parquet)?;
        rows.push(Row { value: row.to_json_value(), at: format!("{}: record {}", path.display(), rows.len() + 1) });
    }
    Ok(rows)
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
